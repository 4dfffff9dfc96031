//! The in-memory diff index (`track::index`) at a million entities: what it costs in memory per
//! entity, and the diff of one 1000-entity page against it — look each digest up, compare the
//! content hash, stamp the sighting — as a refresh does for an entity that is not where the index
//! expects it; and the in-order check (`gateway_in_order`) that a refresh makes first, comparing
//! an entity's raw hash with the entry expected next.
//!
//! Beside the layout the index had first: a std `HashMap` with SipHash over the 16 key bytes and
//! a 64-bit generation per entry. Memory is counted by a counting global allocator around building
//! each index, so it includes the table's real growth and load factor. CPU time of the bench
//! thread (see `support/thread_cpu.rs`). Run with `cargo bench --bench index`.

#[path = "support/thread_cpu.rs"]
mod thread_cpu;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use odata_delta_gateway::track::feed::{Index, IndexEntry, Slot};
use odata_delta_gateway::track::hash::{ContentHash, KeyHash};
use odata_delta_gateway::track::index::RawHash;
use thread_cpu::ThreadCpu;

/// Bytes currently allocated through the global allocator.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ENTITIES: u32 = 1_000_000;
const PAGE: u32 = 1000;

/// The index entry as it was: a 64-bit generation.
#[derive(Clone, Copy)]
struct OldEntry {
    content: ContentHash,
    seen: u64,
}

/// Key hashes the way `KeyHash::of` makes them, from predicates `1`, `2`, …
fn key(i: u32) -> KeyHash {
    KeyHash::of(&i.to_string())
}

fn content(i: u32, revision: u32) -> ContentHash {
    let h = blake3::hash(format!("{i}/{revision}").as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    ContentHash(out)
}

/// Build a map of `n` entries, one insert at a time like an index load; returns it and the bytes
/// it holds on the heap.
fn build<V, S: BuildHasher + Default>(
    n: u32,
    entry: impl Fn(u32) -> V,
) -> (HashMap<KeyHash, V, S>, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut map = HashMap::default();
    for i in 1..=n {
        map.insert(key(i), entry(i));
    }
    let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    (map, bytes)
}

/// One page of digests (key hash, content hash) spread over the collection, every 100th changed.
fn page(n: u32) -> Vec<(KeyHash, ContentHash)> {
    let step = n / PAGE;
    (0..PAGE)
        .map(|j| {
            let i = 1 + j * step;
            (key(i), content(i, if j % 100 == 0 { 2 } else { 1 }))
        })
        .collect()
}

fn index(c: &mut Criterion<ThreadCpu>) {
    let (mut old, old_bytes): (HashMap<KeyHash, OldEntry>, usize) = build(ENTITIES, |i| OldEntry {
        content: content(i, 1),
        seen: 0,
    });
    let (mut new, new_bytes) = {
        let before = LIVE.load(Ordering::Relaxed);
        let mut index = Index::default();
        for i in 1..=ENTITIES {
            let entry = IndexEntry {
                raw: RawHash::of(&i.to_le_bytes()),
                ..IndexEntry::loaded(u64::from(i), content(i, 1))
            };
            index.insert(key(i), entry).expect("room for a million");
        }
        let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        (index, bytes)
    };
    println!(
        "index of {ENTITIES} entities: before {} bytes ({:.1} B/entity), now {} bytes ({:.1} B/entity)",
        old_bytes,
        old_bytes as f64 / f64::from(ENTITIES),
        new_bytes,
        new_bytes as f64 / f64::from(ENTITIES)
    );
    let digests = page(ENTITIES);
    let mut group = c.benchmark_group("diff_page_1M");
    group.throughput(Throughput::Elements(u64::from(PAGE)));
    group.bench_function("gateway", |b| {
        let mut slot = Slot::default();
        b.iter(|| {
            let generation = slot.next_generation();
            let mut changed = 0u32;
            for (k, c) in black_box(&digests) {
                if let Some(e) = new.get_mut(k) {
                    e.seen = generation;
                    changed += u32::from(e.content != *c);
                }
            }
            black_box(changed)
        })
    });
    // What a refresh of a feed that changed little does instead of the lookup: compare each
    // entity's raw hash with the entry expected next, in array order.
    let raws: Vec<RawHash> = (1..=PAGE).map(|i| RawHash::of(&i.to_le_bytes())).collect();
    group.bench_function("gateway_in_order", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            for (position, raw) in black_box(&raws).iter().enumerate() {
                hits += u32::from(new.raw_at(position) == Some(*raw));
            }
            black_box(hits)
        })
    });
    group.bench_function("before_siphash_u64", |b| {
        let mut generation = 0u64;
        b.iter(|| {
            generation += 1;
            let mut changed = 0u32;
            for (k, c) in black_box(&digests) {
                if let Some(e) = old.get_mut(k) {
                    e.seen = generation;
                    changed += u32::from(e.content != *c);
                }
            }
            black_box(changed)
        })
    });
    group.finish();
    // The pass a refresh makes after its enumeration to find removal candidates.
    let mut group = c.benchmark_group("candidates_1M");
    group.throughput(Throughput::Elements(u64::from(ENTITIES)));
    group.sample_size(10);
    group.bench_function("gateway", |b| {
        b.iter(|| black_box(new.values().filter(|e| e.seen != 7).count()))
    });
    group.bench_function("before_siphash_u64", |b| {
        b.iter(|| black_box(old.values().filter(|e| e.seen != 7).count()))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpu)
        .without_plots()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = index
}
criterion_main!(benches);

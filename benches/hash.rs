//! The per-entity kernels of a refresh, each beside the naive alternative DESIGN.md rejects:
//!
//! - `digest`: key + canonical content hash of one entity from its raw bytes (`Hasher::digest`)
//!   against parsing it into a `serde_json::Value`, dropping control information, serializing with
//!   sorted members and hashing that.
//! - `page_parse`: reading a 1000-entity upstream page into borrowed raw entities (`Page::parse`)
//!   against parsing it into a `serde_json::Value`.
//! - `page_digest`: both together, page in → 1000 digests out, the way a refresh consumes a page.
//! - `digest_parts`: where `Hasher::digest`'s time goes — scanning the members (which gives the key),
//!   writing the canonical form from them, and blake3 over it.
//!
//! Times are the bench thread's CPU time (see `support/thread_cpu.rs`), so that ratios hold on a
//! machine shared with other work. Run with `cargo bench --bench hash`; compare the `gateway` and
//! `naive` lines of each group.

mod support;
#[path = "support/thread_cpu.rs"]
mod thread_cpu;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use odata_delta_gateway::odata::entity_id::{EntityKey, KeyProperty, KeyType};
use odata_delta_gateway::odata::json::{Canonicalizer, Member, object_members, write_canonical};
use odata_delta_gateway::odata::page::Page;
use odata_delta_gateway::track::hash::Hasher;
use serde_json::Value;
use thread_cpu::ThreadCpu;

const PAGE: u32 = 1000;

fn id_key() -> Vec<KeyProperty> {
    vec![KeyProperty {
        name: "ID".into(),
        ty: KeyType::Integer,
        enum_type: None,
    }]
}

/// The naive digest: (key hash, content hash) through `serde_json::Value`.
fn naive_digest(raw: &[u8], ignore: &[String]) -> ([u8; 16], [u8; 16]) {
    let value: Value = serde_json::from_slice(raw).expect("the bench data is JSON");
    naive_digest_value(value, ignore)
}

fn naive_digest_value(mut value: Value, ignore: &[String]) -> ([u8; 16], [u8; 16]) {
    let predicate = value.get("ID").expect("every entity has an ID").to_string();
    if let Value::Object(members) = &mut value {
        for name in ignore {
            members.remove(name);
        }
    }
    drop_control_information(&mut value);
    // A no-op with serde_json's default BTreeMap-backed maps, which already serialize sorted; kept so
    // the comparison stays honest if `preserve_order` is ever switched on.
    value.sort_all_objects();
    let canonical = serde_json::to_vec(&value).expect("a Value serializes");
    (
        truncate(blake3::hash(predicate.as_bytes())),
        truncate(blake3::hash(&canonical)),
    )
}

fn drop_control_information(value: &mut Value) {
    match value {
        Value::Object(members) => {
            members.retain(|name, _| !name.contains('@'));
            members.values_mut().for_each(drop_control_information);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_control_information),
        _ => {}
    }
}

fn truncate(h: blake3::Hash) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

fn digest(c: &mut Criterion<ThreadCpu>) {
    let entities: Vec<String> = (1..=PAGE).map(|id| support::entity(id, 1)).collect();
    let bytes: usize = entities.iter().map(String::len).sum();
    let key = id_key();
    let ignore = vec!["modifiedAt".to_owned()];
    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Elements(u64::from(PAGE)));
    group.bench_function("gateway", |b| {
        let mut hasher = Hasher::default();
        b.iter(|| {
            for e in &entities {
                black_box(
                    hasher
                        .digest(e.as_bytes(), &key, &ignore)
                        .expect("the bench data is valid"),
                );
            }
        })
    });
    group.bench_function("naive_value", |b| {
        b.iter(|| {
            for e in &entities {
                black_box(naive_digest(e.as_bytes(), &ignore));
            }
        })
    });
    group.finish();
    println!(
        "digest: {PAGE} entities per iteration, {} bytes on average",
        bytes / PAGE as usize
    );
}

fn page_parse(c: &mut Criterion<ThreadCpu>) {
    let body = support::page_body(1..PAGE + 1, |_| 1, None, Some("Items?$skiptoken=1000"));
    let mut group = c.benchmark_group("page_parse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("gateway_raw", |b| {
        b.iter(|| {
            let page = Page::parse(black_box(body.as_bytes())).expect("a valid page");
            assert_eq!(page.entities.len(), PAGE as usize);
            black_box(page.next_link);
        })
    });
    group.bench_function("naive_value", |b| {
        b.iter_batched(
            || (),
            |()| {
                let page: Value =
                    serde_json::from_slice(black_box(body.as_bytes())).expect("a valid page");
                assert_eq!(page["value"].as_array().map(Vec::len), Some(PAGE as usize));
                page
            },
            // Dropping a Value tree is part of its cost in a refresh too, but keep it out of the
            // timing so the comparison is of parsing alone.
            BatchSize::SmallInput,
        )
    });
    group.finish();
    println!(
        "page_parse: one page of {PAGE} entities, {} bytes",
        body.len()
    );
}

fn page_digest(c: &mut Criterion<ThreadCpu>) {
    let body = support::page_body(1..PAGE + 1, |_| 1, None, Some("Items?$skiptoken=1000"));
    let key = id_key();
    let ignore: Vec<String> = Vec::new();
    let mut group = c.benchmark_group("page_digest");
    group.throughput(Throughput::Elements(u64::from(PAGE)));
    group.bench_function("gateway", |b| {
        let mut hasher = Hasher::default();
        b.iter(|| {
            let page = Page::parse(black_box(body.as_bytes())).expect("a valid page");
            for raw in &page.entities {
                black_box(
                    hasher
                        .digest(raw.get().as_bytes(), &key, &ignore)
                        .expect("the bench data is valid"),
                );
            }
        })
    });
    group.bench_function("naive_value", |b| {
        b.iter(|| {
            let page: Value =
                serde_json::from_slice(black_box(body.as_bytes())).expect("a valid page");
            let Value::Object(mut page) = page else {
                panic!("a page is an object")
            };
            let Some(Value::Array(entities)) = page.remove("value") else {
                panic!("a page has a value array")
            };
            for entity in entities {
                black_box(naive_digest_value(entity, &ignore));
            }
        })
    });
    group.finish();
}

fn digest_parts(c: &mut Criterion<ThreadCpu>) {
    let entities: Vec<String> = (1..=PAGE).map(|id| support::entity(id, 1)).collect();
    let skip = |name: &[u8]| name == b"modifiedAt";
    let canonical: Vec<Vec<u8>> = entities
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            write_canonical(e.as_bytes(), &skip, &mut out).expect("the bench data is valid");
            out
        })
        .collect();
    let mut group = c.benchmark_group("digest_parts");
    group.throughput(Throughput::Elements(u64::from(PAGE)));
    // The scan alone, for scale: the canonical writer does it too, once.
    group.bench_function("members", |b| {
        let mut scanned: Vec<Member> = Vec::new();
        b.iter(|| {
            for e in &entities {
                object_members(black_box(e.as_bytes()), &mut scanned).expect("valid");
                black_box(scanned.len());
            }
        })
    });
    // The one pass of `Hasher::digest`: canonical form and top-level members together.
    group.bench_function("canonical", |b| {
        let mut writer = Canonicalizer::default();
        let (mut members, mut out) = (Vec::new(), Vec::new());
        b.iter(|| {
            for e in &entities {
                members.clear();
                out.clear();
                writer
                    .write_object(black_box(e.as_bytes()), &skip, &mut members, &mut out)
                    .expect("valid");
                black_box(out.len());
            }
        })
    });
    group.bench_function("blake3", |b| {
        b.iter(|| {
            for c in &canonical {
                black_box(blake3::hash(black_box(c)));
            }
        })
    });
    // The floor the issue measures against: blake3 over each entity's raw bytes.
    group.bench_function("blake3_raw", |b| {
        b.iter(|| {
            for e in &entities {
                black_box(blake3::hash(black_box(e.as_bytes())));
            }
        })
    });
    group.finish();
}

fn key_scan(c: &mut Criterion<ThreadCpu>) {
    let entities: Vec<String> = (1..=PAGE).map(|id| support::entity(id, 1)).collect();
    let key = id_key();
    let members: Vec<Vec<Member>> = entities
        .iter()
        .map(|e| {
            let mut m = Vec::new();
            object_members(e.as_bytes(), &mut m).expect("the bench data is valid");
            m
        })
        .collect();
    let mut group = c.benchmark_group("key");
    group.throughput(Throughput::Elements(u64::from(PAGE)));
    // What reading keys alone costs (as removal confirmation does): one scan of the top-level
    // members, then the key read from them.
    group.bench_function("scan_and_read", |b| {
        let mut scanned: Vec<Member> = Vec::new();
        b.iter(|| {
            for e in &entities {
                object_members(black_box(e.as_bytes()), &mut scanned).expect("valid");
                black_box(EntityKey::read(e.as_bytes(), &scanned, &key).expect("valid"));
            }
        })
    });
    // The key alone, from members a scan already found (inside `Hasher::digest`, the canonical
    // writer's scan): nothing is parsed again.
    group.bench_function("read", |b| {
        b.iter(|| {
            for (e, m) in entities.iter().zip(&members) {
                black_box(EntityKey::read(black_box(e.as_bytes()), m, &key).expect("valid"));
            }
        })
    });
    group.bench_function("naive_value", |b| {
        b.iter(|| {
            for e in &entities {
                let value: Value = serde_json::from_slice(black_box(e.as_bytes())).expect("valid");
                black_box(value.get("ID").map(Value::to_string));
            }
        })
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
    targets = digest, page_parse, page_digest, digest_parts, key_scan
}
criterion_main!(benches);

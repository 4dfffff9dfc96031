//! Writing a tracked response page (`odata::delta::write_page`): 1000 stored entities with their
//! control information renamed for the response's version, as a first read or a delta serves them,
//! and a delta page of 990 changed entities and 10 tombstones. CPU time of the bench thread (see
//! `support/thread_cpu.rs`). Run with `cargo bench --bench delta`.

// Only the entities of the shared test data are needed here, not its pages.
#[allow(dead_code)]
mod support;
#[path = "support/thread_cpu.rs"]
mod thread_cpu;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use odata_delta_gateway::odata::ODataVersion;
use odata_delta_gateway::odata::delta::{Entry, PageContext, PageEnd, Reason, write_page};
use odata_delta_gateway::odata::json::write_compact;
use thread_cpu::ThreadCpu;

const PAGE: u32 = 1000;

fn context(version: ODataVersion, delta: bool) -> PageContext<'static> {
    PageContext {
        version,
        service_root: "http://gateway.example/odata/v4/shop",
        entity_set: "Items",
        select: None,
        delta,
        count: None,
    }
}

fn delta_page(c: &mut Criterion<ThreadCpu>) {
    // Stored bodies are the upstream's, compacted.
    let bodies: Vec<Vec<u8>> = (1..=PAGE)
        .map(|id| {
            let mut out = Vec::new();
            write_compact(support::entity(id, 2).as_bytes(), &mut out);
            out
        })
        .collect();
    let ids: Vec<String> = (1..=PAGE).map(|id| format!("Items({id})")).collect();
    let keys: Vec<String> = (1..=PAGE).map(|id| format!("\"ID\":{id}")).collect();
    let entities: Vec<Entry> = bodies.iter().map(|b| Entry::Entity(b)).collect();
    // Every 100th entry a tombstone, like a delta after a few deletes.
    let mixed: Vec<Entry> = (0..PAGE as usize)
        .map(|i| {
            if i % 100 == 99 {
                Entry::Removed {
                    entity_id: &ids[i],
                    key_members: keys[i].as_bytes(),
                    reason: Reason::Deleted,
                }
            } else {
                Entry::Entity(&bodies[i])
            }
        })
        .collect();
    let next = PageEnd::Next("http://gateway.example/odata/v4/shop/Items?$skiptoken=abc".into());
    let delta = PageEnd::Delta("http://gateway.example/odata/v4/shop/Items?$deltatoken=abc".into());
    let mut group = c.benchmark_group("delta_page");
    group.throughput(Throughput::Elements(u64::from(PAGE)));
    for (name, version) in [("4.0", ODataVersion::V40), ("4.01", ODataVersion::V401)] {
        group.bench_function(format!("entities_{name}"), |b| {
            let ctx = context(version, false);
            b.iter(|| black_box(write_page(&ctx, black_box(&entities), &next)))
        });
        group.bench_function(format!("delta_with_tombstones_{name}"), |b| {
            let ctx = context(version, true);
            b.iter(|| black_box(write_page(&ctx, black_box(&mixed), &delta)))
        });
    }
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
    targets = delta_page
}
criterion_main!(benches);

//! The store layout on its own (redb, no gateway): a first load of N rows of about 300 bytes, each
//! with one `changes` entry, written in batches of 20k rows, then 10k updates at random rows in one
//! more batch. Two layouts, side by side in one run:
//! - `random keys`: the layout before schema 2 — `entities` keyed by feed ‖ 128-bit key hash,
//!   `changes` by feed ‖ version ‖ key hash, so a first load inserts at random places;
//! - `row numbers`: schema 2 — `entities` keyed by feed ‖ row ‖ version and `changes` by feed ‖
//!   version ‖ row, with the row number assigned on first sight, so a first load appends.
//!
//! Each layout runs with every batch durable (`Durability::Immediate`, as the old first load
//! committed) and the row-number layout also as the gateway now writes it (batches
//! `Durability::None`, one durable publish at the end). Prints wall time and file size.
//! `cargo bench --bench store_layout` (1M rows; `STORE_BENCH_ROWS=100000` for fewer); under
//! `cargo test --benches` it runs 10k rows as a smoke test.

use std::time::Instant;

use redb::{Database, Durability, TableDefinition};

const ENTITIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("entities");
const CHANGES_RANDOM: TableDefinition<&[u8; 40], ()> = TableDefinition::new("changes");
const CHANGES_ROWS: TableDefinition<&[u8; 32], ()> = TableDefinition::new("changes");

const BATCH: u64 = 20_000;
const UPDATES: u64 = 10_000;
const FEED: [u8; 16] = [0x5a; 16];

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    RandomKeys,
    RowNumbers,
}

fn key_hash(i: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(&i.to_be_bytes()).as_bytes()[..16]);
    out
}

fn value(i: u64, round: u64) -> Vec<u8> {
    let mut v =
        format!(r#"{{"ID":{i},"name":"Customer {i}","round":{round},"note":""#).into_bytes();
    v.resize(290, b'x');
    v.extend_from_slice(br#""}"#);
    v
}

fn entity_key(layout: Layout, i: u64, version: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&FEED);
    match layout {
        Layout::RandomKeys => k[16..].copy_from_slice(&key_hash(i)),
        Layout::RowNumbers => {
            k[16..24].copy_from_slice(&i.to_be_bytes());
            k[24..].copy_from_slice(&version.to_be_bytes());
        }
    }
    k
}

fn write(
    db: &Database,
    layout: Layout,
    durability: Durability,
    rows: impl Iterator<Item = u64>,
    version: u64,
) {
    let mut tx = db.begin_write().unwrap();
    tx.set_durability(durability).unwrap();
    {
        let mut entities = tx.open_table(ENTITIES).unwrap();
        match layout {
            Layout::RandomKeys => {
                let mut changes = tx.open_table(CHANGES_RANDOM).unwrap();
                for i in rows {
                    entities
                        .insert(
                            &entity_key(layout, i, version),
                            value(i, version).as_slice(),
                        )
                        .unwrap();
                    let mut c = [0u8; 40];
                    c[..16].copy_from_slice(&FEED);
                    c[16..24].copy_from_slice(&version.to_be_bytes());
                    c[24..].copy_from_slice(&key_hash(i));
                    changes.insert(&c, ()).unwrap();
                }
            }
            Layout::RowNumbers => {
                let mut changes = tx.open_table(CHANGES_ROWS).unwrap();
                for i in rows {
                    entities
                        .insert(
                            &entity_key(layout, i, version),
                            value(i, version).as_slice(),
                        )
                        .unwrap();
                    let mut c = [0u8; 32];
                    c[..16].copy_from_slice(&FEED);
                    c[16..24].copy_from_slice(&version.to_be_bytes());
                    c[24..].copy_from_slice(&i.to_be_bytes());
                    changes.insert(&c, ()).unwrap();
                }
            }
        }
    }
    tx.commit().unwrap();
}

/// A durable empty commit: what the gateway's publish costs besides the feed meta.
fn publish(db: &Database) {
    let tx = db.begin_write().unwrap();
    tx.commit().unwrap();
}

fn run(name: &str, layout: Layout, batches: Durability, n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.redb");
    let db = Database::create(&path).unwrap();
    let started = Instant::now();
    let mut at = 0;
    while at < n {
        let end = (at + BATCH).min(n);
        write(&db, layout, batches, at..end, 1);
        at = end;
    }
    publish(&db);
    let load = started.elapsed();
    let size = std::fs::metadata(&path).unwrap().len();

    // 10k updates at random rows, as one refresh after 1% changed would write them.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let picks: Vec<u64> = (0..UPDATES.min(n))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        })
        .collect();
    let started = Instant::now();
    write(&db, layout, batches, picks.into_iter(), 2);
    publish(&db);
    let update = started.elapsed();
    println!(
        "| {name} | {:.2} s | {} MiB | {:.3} s |",
        load.as_secs_f64(),
        size >> 20,
        update.as_secs_f64()
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("STORE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1_000_000 } else { 10_000 });
    println!(
        "{n} rows of ~300 B + one changes entry each, batches of {BATCH}; then {UPDATES} updates"
    );
    println!("| layout | first load | file after load | 10k updates |");
    println!("| --- | --- | --- | --- |");
    run(
        "random keys, every batch durable (before)",
        Layout::RandomKeys,
        Durability::Immediate,
        n,
    );
    run(
        "row numbers, every batch durable",
        Layout::RowNumbers,
        Durability::Immediate,
        n,
    );
    run(
        "row numbers, batches not durable until the publish (now)",
        Layout::RowNumbers,
        Durability::None,
        n,
    );
}

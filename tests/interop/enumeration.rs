//! Writes to CAP while the gateway enumerates it. CAP pages by offset unless told to page by key:
//! deleting rows that the enumeration has already read shifts every later row one place towards
//! the start, so each such delete makes the enumeration miss one row that still exists, and an
//! insert before the read position makes it see one row twice. None of the missed rows may become
//! a tombstone (C27): every tombstone the gateway publishes must be for a row that is really gone
//! from CAP. After a quiet sync the replica holds exactly CAP's collection (C28).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cap::{Cap, CapApi, ROOT, id_of};
use crate::check::{assert_converged, entries};
use crate::rng::Rng;
use crate::support::gateway::{Client, Gateway, Replica, Shape};

const ROWS: u32 = 5000;
const CAP_PAGE: u32 = 100;
const ROUNDS: usize = 3;
/// Pause between two writes, so that they spread over the whole enumeration.
const WRITE_EVERY: Duration = Duration::from_millis(4);
/// Fewer writes than this during one delta request means the writes and the enumeration did not
/// overlap, and the round proved nothing.
const MIN_WRITES_DURING_SYNC: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SAP CAP from npm (node and npm); run by .ci/run"]
async fn deletes_behind_an_offset_paged_enumeration_publish_no_false_tombstones_c27() {
    let test = "shifting-pages";
    let Some(cap) = Cap::start(test, ROWS, CAP_PAGE) else {
        return;
    };
    let api = cap.api();
    let gw = Gateway::start(&cap.base).await;
    let client = Client::default();
    let mut replica = Replica::new("Customers", &["ID"], Shape::V401);
    replica.page_size = Some(1000);
    let url = gw.url(&format!("{ROOT}/Customers"));
    replica
        .initial(&client, &url)
        .await
        .unwrap_or_else(|r| panic!("initial read: {} {}", r.status, r.text()));
    assert_eq!(replica.rows.len(), ROWS as usize);

    let mut deleted = BTreeSet::new();
    let mut tombstoned = BTreeSet::new();
    let mut next_victim = 1;
    for round in 0..ROUNDS {
        let link = replica.delta_link.clone().expect("a delta link");
        let stop = Arc::new(AtomicBool::new(false));
        let deleter = tokio::spawn(delete_lowest_until(api.clone(), next_victim, stop.clone()));
        let started = Instant::now();
        let synced = replica.sync(&client).await;
        let took = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        let gone = deleter.await.expect("the deleter finishes");
        next_victim += gone.len() as i64;
        deleted.extend(gone.iter().copied());
        if let Err(r) = synced {
            panic!("round {round}: GET {link}: {} {}", r.status, r.text());
        }
        eprintln!(
            "{test}: round {round}: {} deletes during a delta request of {} ms, {} tombstones",
            gone.len(),
            took.as_millis(),
            replica.last_removed.len()
        );
        assert!(
            gone.len() >= MIN_WRITES_DURING_SYNC,
            "round {round}: only {} deletes while the gateway enumerated for {} ms",
            gone.len(),
            took.as_millis()
        );
        let got = entries(&replica);
        for (id, reason) in &got.removed {
            let still_there = api.get(*id).await;
            assert!(
                deleted.contains(id) && still_there.is_none(),
                "C27: round {round}: GET {link} published a tombstone for Customers({id}), which \
                 {}; rows deleted so far: {:?}..{:?}",
                match &still_there {
                    Some(row) => format!("CAP still holds: {row}"),
                    None => "is gone although the test never deleted it".to_owned(),
                },
                deleted.first(),
                deleted.last(),
            );
            assert_eq!(reason, "deleted", "C18: Customers({id})");
        }
        assert!(
            got.upserted.is_empty(),
            "round {round}: nothing was inserted or changed, yet the delta has {:?}",
            got.upserted
        );
        tombstoned.extend(got.removed.keys().copied());
    }

    // Quiet: every delete is now published, and nothing else.
    replica
        .sync(&client)
        .await
        .unwrap_or_else(|r| panic!("quiet sync: {} {}", r.status, r.text()));
    tombstoned.extend(entries(&replica).removed.keys().copied());
    assert_eq!(
        tombstoned, deleted,
        "C28: the rows deleted over the rounds are exactly the rows tombstoned"
    );
    assert_converged(&replica, &api.read_all("").await, "after a quiet sync");
    let confirmations = cap.log_lines_with("ID in (");
    eprintln!(
        "{test}: {} removal confirmations in CAP's log, e.g. {:?}",
        confirmations.len(),
        confirmations.first()
    );
}

/// Delete `first`, `first + 1`, … (rows at the start of the key order, which the enumeration has
/// read already) until told to stop; never re-inserts. Returns the deleted IDs.
async fn delete_lowest_until(api: CapApi, first: i64, stop: Arc<AtomicBool>) -> Vec<i64> {
    let mut gone = Vec::new();
    let mut id = first;
    while !stop.load(Ordering::SeqCst) {
        api.delete(id).await;
        gone.push(id);
        id += 1;
        tokio::time::sleep(WRITE_EVERY).await;
    }
    gone
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SAP CAP from npm (node and npm); run by .ci/run"]
async fn random_writes_during_offset_paged_enumerations_publish_no_false_tombstones_c27_c28() {
    let test = "churn-offset";
    let Some(cap) = Cap::start(test, 3000, CAP_PAGE) else {
        return;
    };
    churn_rounds(test, &cap, Shape::V40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SAP CAP from npm (node and npm); run by .ci/run"]
async fn random_writes_during_keyset_paged_enumerations_publish_no_false_tombstones_c27_c28() {
    let test = "churn-keyset";
    let Some(cap) = Cap::start_keyset_paged(test, 3000, CAP_PAGE) else {
        return;
    };
    churn_rounds(test, &cap, Shape::V401).await;
}

/// What a churner did while one delta request ran.
#[derive(Default)]
struct Churn {
    writes: usize,
    deleted: BTreeSet<i64>,
}

/// Rounds of: random inserts (in front of every row, with negative IDs, and at the end), patches
/// and deletes through CAP's API while the replica's delta request enumerates; then a quiet sync.
async fn churn_rounds(test: &str, cap: &Cap, shape: Shape) {
    let api = cap.api();
    let gw = Gateway::start(&cap.base).await;
    let client = Client::default();
    let mut replica = Replica::new("Customers", &["ID"], shape);
    replica.page_size = Some(700);
    replica
        .initial(&client, &gw.url(&format!("{ROOT}/Customers")))
        .await
        .unwrap_or_else(|r| panic!("initial read: {} {}", r.status, r.text()));
    let mut rng = Rng::from_env(test);
    let mut live: Vec<i64> = api.read_all("").await.iter().map(id_of).collect();
    let mut ids = NewIds {
        front: -1,
        back: 1_000_001,
    };
    let mut deleted = BTreeSet::new();
    for round in 0..ROUNDS {
        let link = replica.delta_link.clone().expect("a delta link");
        let stop = Arc::new(AtomicBool::new(false));
        let churner = tokio::spawn(churn_until(api.clone(), rng, live, ids, stop.clone()));
        let synced = replica.sync(&client).await;
        stop.store(true, Ordering::SeqCst);
        let churn;
        (rng, live, ids, churn) = churner.await.expect("the churner finishes");
        deleted.extend(churn.deleted.iter().copied());
        if let Err(r) = synced {
            panic!("round {round}: GET {link}: {} {}", r.status, r.text());
        }
        eprintln!(
            "{test}: round {round}: {} writes during the delta request, {} entities and {} \
             tombstones in it",
            churn.writes,
            replica.last_upserted.len(),
            replica.last_removed.len()
        );
        assert!(
            churn.writes >= MIN_WRITES_DURING_SYNC,
            "round {round}: only {} writes while the gateway enumerated",
            churn.writes
        );
        for id in entries(&replica).removed.keys() {
            let still_there = api.get(*id).await;
            assert!(
                deleted.contains(id) && still_there.is_none(),
                "C27: round {round}: GET {link} published a tombstone for Customers({id}), which \
                 CAP still holds: {still_there:?}"
            );
        }
    }
    replica
        .sync(&client)
        .await
        .unwrap_or_else(|r| panic!("quiet sync: {} {}", r.status, r.text()));
    assert_converged(&replica, &api.read_all("").await, "after a quiet sync");
}

/// The next IDs to insert: before every existing row, and after.
#[derive(Clone, Copy)]
struct NewIds {
    front: i64,
    back: i64,
}

/// Random writes until told to stop: a third inserts (never reusing an ID), a third patches, a
/// third deletes. Hands its state back for the next round.
async fn churn_until(
    api: CapApi,
    mut rng: Rng,
    mut live: Vec<i64>,
    mut ids: NewIds,
    stop: Arc<AtomicBool>,
) -> (Rng, Vec<i64>, NewIds, Churn) {
    let mut churn = Churn::default();
    while !stop.load(Ordering::SeqCst) {
        match rng.below(3) {
            0 => {
                let id = if rng.chance(50) {
                    ids.front -= 1;
                    ids.front + 1
                } else {
                    ids.back += 1;
                    ids.back - 1
                };
                let row =
                    serde_json::json!({"ID": id, "name": format!("Inserted {id}"), "city": "Oslo"});
                api.insert(&row).await;
                live.push(id);
            }
            1 => {
                let id = *rng.pick(&live);
                let patch = serde_json::json!({"score": rng.between(0, 999)});
                api.patch(id, &patch).await;
            }
            _ => {
                let id = live.swap_remove(rng.below(live.len()));
                api.delete(id).await;
                churn.deleted.insert(id);
            }
        }
        churn.writes += 1;
        tokio::time::sleep(WRITE_EVERY).await;
    }
    (rng, live, ids, churn)
}

//! Random CRUD rounds made through CAP's own API, behind the gateway's back: after every round a
//! replica following the gateway's deltas holds exactly CAP's collection, and the delta held exactly
//! the rows the round touched — in both payload shapes (C11, C12, C16-C18, C27, C28).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::cap::{Cap, CapApi, ROOT, id_of};
use crate::check::{assert_converged, entries};
use crate::rng::Rng;
use crate::support::gateway::{Client, Gateway, Replica, Shape};

const ROUNDS: usize = 8;
const CITIES: [&str; 5] = ["Berlin", "Paris", "Oslo", "Lisbon", "Prague"];
/// IDs of inserted rows start here, far from the generated 1..N, and are never reused.
const FIRST_NEW_ID: i64 = 100_001;

#[tokio::test]
async fn a_4_0_replica_follows_random_crud_made_through_caps_own_api() {
    crud_rounds("crud-v40", Shape::V40).await;
}

#[tokio::test]
async fn a_4_01_replica_follows_random_crud_made_through_caps_own_api() {
    crud_rounds("crud-v401", Shape::V401).await;
}

/// The keys one round wrote.
#[derive(Default, Debug)]
struct Round {
    inserted: BTreeSet<i64>,
    patched: BTreeSet<i64>,
    deleted: BTreeSet<i64>,
}

async fn crud_rounds(test: &str, shape: Shape) {
    let Some(cap) = Cap::start(test, 2000, 250) else {
        return;
    };
    let api = cap.api();
    let mut rng = Rng::from_env(test);
    let gw = Gateway::start(&cap.base).await;
    let client = Client::default();
    let mut replica = Replica::new("Customers", &["ID"], shape);
    replica.page_size = Some(500);
    replica
        .initial(&client, &gw.url(&format!("{ROOT}/Customers")))
        .await
        .unwrap_or_else(|r| panic!("initial read: {} {}", r.status, r.text()));
    let rows = api.read_all("").await;
    assert_converged(&replica, &rows, "initial read");
    let mut live: Vec<i64> = rows.iter().map(id_of).collect();
    let mut next_id = FIRST_NEW_ID;

    for round in 0..ROUNDS {
        let done = random_round(&api, &mut rng, &mut live, &mut next_id).await;
        replica
            .sync(&client)
            .await
            .unwrap_or_else(|r| panic!("round {round}: delta {} {}", r.status, r.text()));
        assert_converged(&replica, &api.read_all("").await, &format!("round {round}"));

        let got = entries(&replica);
        let expected_upserts: BTreeSet<i64> = done
            .inserted
            .union(&done.patched)
            .filter(|id| !done.deleted.contains(id))
            .copied()
            .collect();
        assert_eq!(
            got.upserted, expected_upserts,
            "round {round}: the delta holds exactly the inserted and patched rows ({done:?})"
        );
        for (id, reason) in &got.removed {
            assert!(
                done.deleted.contains(id),
                "C27: round {round} tombstoned Customers({id}), which was not deleted ({done:?})"
            );
            assert_eq!(reason, "deleted", "C18: Customers({id})");
        }
        for id in done.deleted.difference(&done.inserted) {
            assert!(
                got.removed.contains_key(id),
                "C28: round {round} deleted Customers({id}), the delta has no tombstone ({done:?})"
            );
        }
    }
    // CAP would accept a $deltatoken and copy it into its nextLinks: the gateway must not send one.
    let leaked = cap.log_lines_with("deltatoken");
    assert!(
        leaked.is_empty(),
        "$deltatoken forwarded to CAP: {leaked:?}"
    );
}

/// 5 to 25 random writes: patches of existing rows, inserts with new IDs, deletes.
async fn random_round(
    api: &CapApi,
    rng: &mut Rng,
    live: &mut Vec<i64>,
    next_id: &mut i64,
) -> Round {
    let mut done = Round::default();
    for _ in 0..rng.between(5, 25) {
        let roll = rng.below(10);
        if live.is_empty() || (4..=6).contains(&roll) {
            let id = *next_id;
            *next_id += 1;
            api.insert(&new_customer(rng, id)).await;
            live.push(id);
            done.inserted.insert(id);
        } else if roll <= 3 {
            let id = *rng.pick(live);
            api.patch(id, &random_patch(rng)).await;
            done.patched.insert(id);
        } else {
            let id = live.swap_remove(rng.below(live.len()));
            api.delete(id).await;
            done.deleted.insert(id);
        }
    }
    done
}

fn new_customer(rng: &mut Rng, id: i64) -> Value {
    json!({
        "ID": id,
        "name": format!("New {id}"),
        "email": format!("n{id}@example.com"),
        "city": rng.pick(&CITIES),
        "balance": decimal(rng),
        "score": rng.between(0, 999),
        "birthday": format!("19{:02}-{:02}-{:02}", rng.between(30, 99), rng.between(1, 12), rng.between(1, 28)),
    })
}

/// A non-empty random subset of the writable properties. Some patches write a value the row may
/// already hold: CAP still moves `modifiedAt`, so the row has changed all the same.
fn random_patch(rng: &mut Rng) -> Value {
    let mut patch = serde_json::Map::new();
    while patch.is_empty() {
        if rng.chance(40) {
            patch.insert("name".into(), json!(format!("Renamed {}", rng.below(1000))));
        }
        if rng.chance(40) {
            patch.insert("city".into(), json!(rng.pick(&CITIES)));
        }
        if rng.chance(30) {
            patch.insert("balance".into(), decimal(rng));
        }
        if rng.chance(30) {
            patch.insert("score".into(), json!(rng.between(0, 999)));
        }
        if rng.chance(10) {
            patch.insert("email".into(), Value::Null);
        }
    }
    Value::Object(patch)
}

/// A Decimal(15,2), written as CAP writes it (a string) or as a JSON number; CAP accepts both
/// and answers with a string either way.
fn decimal(rng: &mut Rng) -> Value {
    let cents = rng.between(0, 9_999_999);
    if rng.chance(50) {
        json!(format!("{}.{:02}", cents / 100, cents % 100))
    } else {
        json!(cents as f64 / 100.0)
    }
}

//! The diff finds every change wherever it sits in the upstream's order. A refresh takes an entity
//! whose bytes are those of the entry the index expects next as unchanged without reading its key,
//! so these tests put changes, removals and inserts next to each other, at both ends, across page
//! boundaries, and let the order shift under the index, and check that every delta holds exactly
//! what changed (C28) and never a false tombstone (C27).

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::gateway::{BehindGateway, Client, Replica, Shape, TRACK};
use support::shop::{ROOT, customer, shop_paged};

/// The IDs of the changed entities and of the tombstones of a 4.01 delta, read to its end.
async fn delta_ids(client: &Client, link: &str) -> (BTreeSet<i64>, BTreeSet<i64>, String) {
    let (mut changed, mut removed) = (BTreeSet::new(), BTreeSet::new());
    let mut url = link.to_owned();
    // Bounded: the fake upstream holds a few hundred entities in pages of at least 7.
    for _ in 0..200 {
        let page = client.delta_page(&url, true).await;
        for entry in page["value"].as_array().expect("value array") {
            let id = entry["ID"]
                .as_i64()
                .expect("every 4.01 entry carries its key");
            if entry.get("@removed").is_some() {
                removed.insert(id);
            } else {
                changed.insert(id);
            }
        }
        if let Some(next) = page["@nextLink"].as_str() {
            url = next.to_owned();
        } else {
            let delta = page["@deltaLink"]
                .as_str()
                .expect("delta link on the last page");
            return (changed, removed, delta.to_owned());
        }
    }
    panic!("the delta of {link} did not end within 200 pages")
}

/// A customer of any ID (the shop's own start at 1).
fn row(id: i64) -> Value {
    json!({"ID": id, "name": format!("Customer {id}"), "city": "Oslo", "score": 1})
}

fn ids(list: &[i64]) -> BTreeSet<i64> {
    list.iter().copied().collect()
}

fn touch(up: &support::FakeUpstream, id: i64, score: i64) {
    assert!(up.update("Customers", json!(id), json!({ "score": score })));
}

#[tokio::test]
async fn runs_of_changes_removals_and_inserts_anywhere_in_the_order_are_all_found_c27_c28() {
    // Pages of 10: entities 10/11 straddle a page boundary.
    let BehindGateway { up, gw, client } = BehindGateway::over(shop_paged(200, 10).await).await;
    let (first, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(first.len(), 200);

    // A run of changes; a run of removals followed at once by a change; a lone removal across a
    // page boundary; inserts before the first entity and after the last; the last entity changed.
    for id in [5, 6, 7, 23, 199] {
        touch(&up, id, 1000 + id);
    }
    for id in [20, 21, 22, 10] {
        assert!(up.delete("Customers", json!(id)));
    }
    touch(&up, 11, 5000);
    for id in [-2, -1, 500] {
        up.insert("Customers", row(id));
    }
    let (changed, removed, link) = delta_ids(&client, &link).await;
    assert_eq!(changed, ids(&[-2, -1, 5, 6, 7, 11, 23, 199, 500]));
    assert_eq!(removed, ids(&[10, 20, 21, 22]));

    // Nothing more changed: nothing more reported.
    let (changed, removed, link) = delta_ids(&client, &link).await;
    assert!(
        changed.is_empty() && removed.is_empty(),
        "{changed:?} {removed:?}"
    );

    // Now that the order has shifted by the inserts and removals, changes right after each of
    // them, and a key that comes back where it was.
    for id in [1, 12, 24, 198] {
        touch(&up, id, 3000 + id);
    }
    // Its bytes are those it had before it left: still a change, its return.
    up.insert("Customers", customer(21));
    let (changed, removed, _) = delta_ids(&client, &link).await;
    assert_eq!(changed, ids(&[1, 12, 21, 24, 198]));
    assert!(removed.is_empty(), "{removed:?}");
}

#[tokio::test]
async fn an_entity_changed_back_to_earlier_bytes_is_reported_each_time_c28() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop_paged(30, 7).await).await;
    let (_, mut link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    let original = customer(15)["score"].as_i64().unwrap();
    // A, B, A, B: every step is a change, though each state's bytes were seen before.
    for score in [1, original, 1, original] {
        touch(&up, 15, score);
        let (changed, removed, next) = delta_ids(&client, &link).await;
        assert_eq!(changed, ids(&[15]), "score {score}");
        assert!(removed.is_empty());
        link = next;
    }
}

#[tokio::test]
async fn a_replica_converges_while_every_round_reorders_the_collection_c28() {
    // Every round removes and re-inserts a block of keys, inserts below the lowest key and
    // changes entities next to all of it, so that the positions the index expects keep moving.
    let BehindGateway { up, gw, client } = BehindGateway::over(shop_paged(120, 9).await).await;
    for shape in [Shape::V40, Shape::V401] {
        let mut replica = Replica::new("Customers", &["ID"], shape);
        replica
            .initial(&client, &gw.url(&format!("{ROOT}/Customers")))
            .await
            .unwrap();
        for round in 0..6i64 {
            let block = 10 + round * 15;
            for id in block..block + 4 {
                up.delete("Customers", json!(id));
            }
            for id in [block + 4, block + 5, block - 1] {
                up.update(
                    "Customers",
                    json!(id),
                    json!({ "city": format!("R{round}") }),
                );
            }
            up.insert("Customers", row(-(round + 1) - 10 * (shape as i64)));
            for id in block..block + 2 {
                up.insert("Customers", customer(id));
            }
            replica.sync(&client).await.unwrap();
            let expected = replica.expected(&up.rows("Customers"), |_: &Value| true);
            assert_eq!(replica.rows, expected, "{shape:?} round {round}");
        }
    }
}

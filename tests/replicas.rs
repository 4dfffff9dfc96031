//! Several gateways on one PostgreSQL store (`--store postgres://…`): a token issued by one works
//! on the others, and a sync client whose requests land on either replica converges (C28), with
//! refreshes of one feed serialized across the replicas.
//!
//! These need a PostgreSQL server: `ODG_TEST_POSTGRES` names a database whose user may create
//! databases (`.ci/run` starts a temporary cluster and sets it). Each test works in a database of
//! its own, created here.

mod support;

use serde_json::json;
use support::gateway::{Client, Gateway, Replica, Shape, TRACK};
use support::shop::{Churn, ROOT, shop_paged};
use support::{Fault, Faults};

/// A fresh, empty database on the test server; its URL.
async fn fresh_database(name: &str) -> String {
    let base = std::env::var("ODG_TEST_POSTGRES")
        .expect("ODG_TEST_POSTGRES must name a PostgreSQL database for this test");
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("connect to ODG_TEST_POSTGRES");
    tokio::spawn(connection);
    let db = format!("odg_{name}_{}", std::process::id());
    for statement in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        client
            .batch_execute(&statement)
            .await
            .expect("create a test database");
    }
    // Same server and user, another database.
    let (head, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{head}/{db}")
}

async fn replica_on(upstream: &str, store: &str) -> Gateway {
    let store = store.to_owned();
    Gateway::start_with(upstream, None, move |f| f.store = Some(store)).await
}

/// `link` pointed at `gw` instead of the replica that issued it.
fn on(gw: &Gateway, link: &str) -> String {
    let path = link.splitn(4, '/').nth(3).expect("an absolute link");
    gw.url(&format!("/{path}"))
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
async fn a_token_issued_by_one_replica_works_on_another() {
    let store = fresh_database("token").await;
    let up = shop_paged(30, 7).await;
    let (a, b) = (
        replica_on(&up.base_url(), &store).await,
        replica_on(&up.base_url(), &store).await,
    );
    let client = Client::default();
    let (first, link) = client
        .read_all(&a.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(first.len(), 30);
    up.update("Customers", json!(4), json!({"name": "renamed"}));
    up.delete("Customers", json!(9));
    // B never saw the feed: it verifies A's token with the shared secret and reads the store.
    let r = client.get(&on(&b, &link), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    let entries = page["value"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{page}");
    assert!(
        entries.iter().any(|e| e["name"] == "renamed"),
        "the change: {page}"
    );
    // And B's next link works on A.
    let next = page["@odata.deltaLink"].as_str().unwrap();
    let r = client.get(&on(&a, next), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"], json!([]));
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
async fn a_replica_converges_while_its_requests_alternate_between_gateways_c28() {
    let store = fresh_database("converge").await;
    let up = shop_paged(80, 9).await;
    let gateways = [
        replica_on(&up.base_url(), &store).await,
        replica_on(&up.base_url(), &store).await,
    ];
    let client = Client::default();
    for shape in [Shape::V40, Shape::V401] {
        let mut replica = Replica::new("Customers", &["ID"], shape);
        replica
            .initial(&client, &gateways[0].url(&format!("{ROOT}/Customers")))
            .await
            .unwrap();
        let mut churn = Churn::new(0x5eed + shape as u64, 1000 + 100 * shape as i64);
        for round in 0..8 {
            churn.round(&up, 12);
            // Every other round the next request goes to the other replica, which has to learn
            // what the first published before it compares anything.
            let gw = &gateways[round % 2];
            let link = replica.delta_link.clone().expect("a delta link");
            replica.delta_link = Some(on(gw, &link));
            replica.sync(&client).await.unwrap();
            let expected = replica.expected(&up.rows("Customers"), |_| true);
            assert_eq!(replica.rows, expected, "{shape:?} round {round}");
        }
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
async fn pollers_spread_over_three_replicas_cause_one_enumeration_per_round() {
    let store = fresh_database("pollers").await;
    let up = shop_paged(60, 10).await;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(replica_on(&up.base_url(), &store).await);
    }
    let client = Client::default();
    let (_, mut link) = client
        .read_all(&gateways[0].url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    for round in 0..3 {
        up.update("Customers", json!(round + 1), json!({"name": "changed"}));
        // The first enumeration's first page is slow, so that every replica's refresh overlaps it.
        up.push_fault(Fault::Delay { page: 0, ms: 300 });
        up.clear_requests();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (client, url) = (client.clone(), on(&gateways[i % 3], &link));
            tasks.push(tokio::spawn(async move { client.get(&url, &[]).await }));
        }
        let mut next = None;
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let page = r.json();
            let ids: Vec<i64> = page["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["ID"].as_i64().unwrap())
                .collect();
            assert_eq!(ids, vec![round + 1], "round {round}: {page}");
            next = page["@odata.deltaLink"].as_str().map(str::to_owned);
        }
        let enumerations = up
            .requests()
            .iter()
            .filter(|r| {
                r.collection_set.as_deref() == Some("Customers")
                    && !r.path_and_query.contains("skiptoken")
                    && !r.path_and_query.contains("top=0")
            })
            .count();
        assert!(
            (1..=2).contains(&enumerations),
            "round {round}: {enumerations} enumerations for 16 pollers on 3 replicas: {:?}",
            up.requests()
                .iter()
                .map(|r| r.path_and_query.clone())
                .collect::<Vec<_>>()
        );
        link = next.unwrap();
    }
}

/// Tracked reads of `set` the upstream saw start, not counting next pages and counts.
fn enumerations(up: &support::FakeUpstream, set: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| {
            r.collection_set.as_deref() == Some(set)
                && !r.path_and_query.contains("skiptoken")
                && !r.path_and_query.contains("top=0")
        })
        .count()
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
async fn replicas_that_waited_for_a_refresh_finding_nothing_answer_from_it_without_enumerating() {
    let store = fresh_database("unchanged").await;
    let up = shop_paged(60, 10).await;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(replica_on(&up.base_url(), &store).await);
    }
    let client = Client::default();
    let (_, link) = client
        .read_all(&gateways[0].url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    for round in 0..3 {
        // Nothing changes. The first enumeration's first page is slow, so that the requests on
        // the other replicas arrive while it runs and wait for its lock.
        up.push_fault(Fault::Delay { page: 0, ms: 400 });
        up.clear_requests();
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (client, url) = (client.clone(), on(&gateways[i % 3], &link));
            tasks.push(tokio::spawn(async move { client.get(&url, &[]).await }));
            if i == 0 {
                // The first request takes the lock before the others ask.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["value"], json!([]), "round {round}");
        }
        assert_eq!(
            enumerations(&up, "Customers"),
            1,
            "round {round}: one enumeration, found nothing, answers all 12 requests on 3 replicas"
        );
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
async fn a_replica_behind_brings_its_index_up_from_the_changes_another_published_c28() {
    let store = fresh_database("catchup").await;
    let up = shop_paged(200, 50).await;
    let (a, b) = (
        replica_on(&up.base_url(), &store).await,
        replica_on(&up.base_url(), &store).await,
    );
    let client = Client::default();
    let mut replica = Replica::new("Customers", &["ID"], Shape::V401);
    replica
        .initial(&client, &a.url(&format!("{ROOT}/Customers")))
        .await
        .unwrap();
    let mut churn = Churn::new(0xc47c, 5000);
    for round in 0..6 {
        // Round 0 gives B its index (read whole: it has none); every later request finds the
        // index of the replica it lands on one version behind the other's.
        churn.round(&up, 6);
        let gw = if round % 2 == 0 { &b } else { &a };
        let link = replica.delta_link.clone().expect("a delta link");
        replica.delta_link = Some(on(gw, &link));
        replica.sync(&client).await.unwrap();
        let expected = replica.expected(&up.rows("Customers"), |_| true);
        assert_eq!(replica.rows, expected, "round {round}");
    }
    let caught_up = |gw: &Gateway| gw.shared.metrics.index_catch_ups.get();
    assert_eq!(caught_up(&a), 3, "A caught up in rounds 1, 3 and 5");
    assert_eq!(
        caught_up(&b),
        2,
        "B read its index whole in round 0, then caught up in 2 and 4"
    );
}

const ALICE: &str = "Basic YWxpY2U6MQ==";

/// A replica refreshing its feeds in use every second, with webhooks to loopback allowed.
async fn polling_replica_on(upstream: &str, store: &str) -> Gateway {
    let store = store.to_owned();
    let toml = "poll_interval = \"1s\"\n[notifications]\nallowed_hosts = [\"127.0.0.1\"]\nmax_attempts = 2\nretry_backoff = \"200ms\"\n";
    Gateway::start_with(upstream, Some(toml), move |f| f.store = Some(store)).await
}

/// The `changed` events among `hook`'s notifications so far.
fn changed_events(hook: &mut support::receiver::Receiver) -> Vec<serde_json::Value> {
    hook.notifications()
        .into_iter()
        .flat_map(|(note, _)| note["value"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["event"] == "changed")
        .collect()
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
async fn a_webhook_is_notified_once_per_change_across_replicas_and_by_the_survivor_of_one() {
    use std::time::Duration;
    let store = fresh_database("webhooks").await;
    let up = support::shop::names_only(5).await;
    let mut hook = support::receiver::Receiver::start().await;
    let (a, b) = (
        polling_replica_on(&up.base_url(), &store).await,
        polling_replica_on(&up.base_url(), &store).await,
    );
    let client = Client::default();
    let as_alice = [("Prefer", "odata.track-changes"), ("Authorization", ALICE)];
    let r = client
        .get(&a.url(&format!("{ROOT}/Customers")), &as_alice)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    // Both replicas have the feed on their schedule: Alice's requests landed on both.
    let r = client
        .get(&on(&b, &link), &[("Authorization", ALICE)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = client
        .send_json(
            http::Method::POST,
            &a.url(&format!("{ROOT}/$subscriptions")),
            &[("Authorization", ALICE)],
            &json!({"deltaLink": link, "notificationUrl": hook.url("/h")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // B lists it: created on A, read from the store.
    let listed = client
        .get(
            &b.url(&format!("{ROOT}/$subscriptions/{id}")),
            &[("Authorization", ALICE)],
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    // Long enough for both replicas' schedules to have taken it in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    hook.drain();
    for round in 0..2 {
        up.update("Customers", json!(round + 1), json!({"name": "changed"}));
        tokio::time::sleep(Duration::from_secs(4)).await;
        let events = changed_events(&mut hook);
        assert_eq!(
            events.len(),
            1,
            "round {round}: one notification for one change, from either replica: {events:?}"
        );
        assert_eq!(events[0]["subscriptionId"], id.as_str());
    }
    // A goes away; B keeps the subscription's notifications going.
    a.stop().await;
    up.update("Customers", json!(5), json!({"name": "after A"}));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = changed_events(&mut hook);
    assert_eq!(events.len(), 1, "B notifies alone: {events:?}");
    let delta = client
        .get(
            &on(&b, events[0]["deltaLink"].as_str().unwrap()),
            &[("Authorization", ALICE)],
        )
        .await;
    assert_eq!(delta.status, 200, "{}", delta.text());
    assert_eq!(delta.json()["value"][0]["name"], "after A");
}

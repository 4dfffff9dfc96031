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

//! Replicas on a PostgreSQL store (`--store postgres://…`) while the server restarts under a
//! refresh: requests get 503 with an OData error instead of hanging or failing with 500, nothing
//! of the cut-short refresh is committed, and service resumes by itself once the server is back.
//!
//! Needs the test server (`ODG_TEST_POSTGRES`) and its cluster (`ODG_TEST_POSTGRES_BIN`,
//! `ODG_TEST_POSTGRES_DATA`), which `.ci/run` sets. In a binary of their own: cargo runs test
//! binaries one after another, so no other test of the server runs while one of these has it
//! down; and these take turns ([`SERVER`]).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::gateway::{Client, Gateway, Replica, Resp, Shape, TRACK};
use support::postgres::{Cluster, fresh_database, pending_rows, watch};
use support::shop::{ROOT, customer, rescored, shop_paged};
use support::{Fault, Faults};

/// Held by each test while it uses the server, which the others stop and start.
static SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn replica_on(upstream: &str, store: &str) -> Gateway {
    let store = store.to_owned();
    Gateway::start_with(upstream, None, move |f| f.store = Some(store)).await
}

/// `link` pointed at `gw` instead of the replica that issued it.
fn on(gw: &Gateway, link: &str) -> String {
    let path = link.splitn(4, '/').nth(3).expect("an absolute link");
    gw.url(&format!("/{path}"))
}

/// A 503 with an OData error body and `Retry-After`: the store is unavailable, the request is
/// not wrong.
fn assert_unavailable(r: &Resp, what: &str) {
    let text = r.text();
    assert_eq!(r.status, 503, "{what}: {}", &text[..text.len().min(400)]);
    let body = r.json();
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{what}: {body}"
    );
    assert!(r.header("retry-after").is_some(), "{what}: no Retry-After");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES, ODG_TEST_POSTGRES_BIN and ODG_TEST_POSTGRES_DATA"]
async fn a_postgres_restart_mid_refresh_answers_503_commits_nothing_and_service_resumes_c29() {
    let _turn = SERVER.lock().await;
    let cluster = Cluster::from_env();
    let store = fresh_database("restart").await;
    let n = 3000;
    let up = shop_paged(n, 300).await;
    let (a, b) = (
        replica_on(&up.base_url(), &store).await,
        replica_on(&up.base_url(), &store).await,
    );
    let client = Client::default();
    let mut replica = Replica::new("Customers", &["ID"], Shape::V40);
    replica
        .initial(&client, &a.url(&format!("{ROOT}/Customers")))
        .await
        .unwrap();
    let link = replica.delta_link.clone().unwrap();

    // Every row changes, so A's refresh writes a batch at its pending version after a few pages;
    // then the upstream is slow.
    for i in 1..=n {
        up.update("Customers", json!(i), rescored(i, 1));
    }
    up.push_fault(Fault::Delay { page: 8, ms: 3_000 });
    let (bg, url) = (client.clone(), link.clone());
    let in_flight = tokio::spawn(async move {
        let asked = Instant::now();
        let r = bg.get(&url, &[]).await;
        (r, asked.elapsed())
    });
    let db = watch(&store).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending_rows(&db).await.is_none_or(|(_, rows)| rows == 0) {
        assert!(Instant::now() < deadline, "A wrote no batch within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(db);

    cluster.stop_fast();
    let stopped = Instant::now();
    // New tracked requests, on the refreshing replica and on the other: a delta and a first read.
    for (gw, name) in [(&a, "A"), (&b, "B")] {
        let asked = Instant::now();
        let r = client.get(&on(gw, &link), &[]).await;
        assert_unavailable(&r, &format!("a delta on {name} while the server is down"));
        let r = client
            .get(
                &gw.url(&format!("{ROOT}/Customers?$filter=ID%20lt%2010")),
                &TRACK,
            )
            .await;
        assert_unavailable(
            &r,
            &format!("a first read on {name} while the server is down"),
        );
        eprintln!("{name}: two 503s in {} ms", asked.elapsed().as_millis());
        assert!(asked.elapsed() < Duration::from_secs(20), "{name} hung");
    }
    let (r, took) = in_flight.await.unwrap();
    assert_unavailable(&r, "the request whose refresh lost the server");
    eprintln!("the in-flight request: 503 after {} ms", took.as_millis());
    assert!(took < Duration::from_secs(30), "the in-flight request hung");

    cluster.start();
    eprintln!("server down for {} ms", stopped.elapsed().as_millis());
    // What A read of the first thousand rows is undone upstream, so anything of its cut-short
    // refresh that were served would show as a change the upstream no longer has.
    for i in 1..=1000 {
        up.update("Customers", json!(i), rescored(i, 0));
    }
    for i in 2991..=n {
        up.delete("Customers", json!(i));
    }
    // The same replicas, not restarted: the first request after the server is back is served.
    let back = Instant::now();
    replica.delta_link = Some(on(&b, &link));
    replica
        .sync(&client)
        .await
        .unwrap_or_else(|r| panic!("after the restart: {} {}", r.status, r.text()));
    eprintln!(
        "first delta after the restart: {} ms",
        back.elapsed().as_millis()
    );
    assert_eq!(
        replica.rows,
        replica.expected(&up.rows("Customers"), |_| true)
    );
    assert_eq!(
        (replica.last_upserted.len(), replica.last_removed.len()),
        (1990, 10),
        "exactly the changes since the link: rows 1001..=2990 changed, 2991..=3000 deleted"
    );
    let db = watch(&store).await;
    assert_eq!(pending_rows(&db).await, None, "a batch left pending");
    // And A, whose connections all broke, serves again too.
    let r = client
        .get(&on(&a, replica.delta_link.as_ref().unwrap()), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"], json!([]));
    let r = client
        .get(
            &a.url(&format!("{ROOT}/Customers?$filter=ID%20lt%2010")),
            &TRACK,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().map(Vec::len), Some(9));
}

/// A restart ends the session that holds a feed's refresh lock while the refresh goes on reading
/// the upstream; once the server is back another replica may take the lock and refresh the feed.
/// The first refresh must then commit nothing, neither rows nor a version: its lock is gone (C29).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES, ODG_TEST_POSTGRES_BIN and ODG_TEST_POSTGRES_DATA"]
async fn a_refresh_whose_lock_a_restart_ended_commits_nothing_after_another_replica_refreshed() {
    let _turn = SERVER.lock().await;
    let cluster = Cluster::from_env();
    let store = fresh_database("lostlock").await;
    let n = 3000;
    let up = shop_paged(n, 300).await;
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
    let link = replica.delta_link.clone().unwrap();

    for i in 1..=n {
        up.update("Customers", json!(i), rescored(i, 1));
    }
    // A writes a batch, then waits for a slow page long enough for the server to restart and B
    // to refresh the feed.
    up.push_fault(Fault::Delay { page: 8, ms: 8_000 });
    let (bg, url) = (client.clone(), link.clone());
    let on_a = tokio::spawn(async move { bg.get(&url, &[]).await });
    let db = watch(&store).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending_rows(&db).await.is_none_or(|(_, rows)| rows == 0) {
        assert!(Instant::now() < deadline, "A wrote no batch within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(db);
    let restarted = Instant::now();
    cluster.stop_fast();
    cluster.start();
    for i in 1..=1000 {
        up.update("Customers", json!(i), rescored(i, 0));
    }
    for i in 2991..=n {
        up.delete("Customers", json!(i));
    }
    replica.delta_link = Some(on(&b, &link));
    replica
        .sync(&client)
        .await
        .unwrap_or_else(|r| panic!("B after the restart: {} {}", r.status, r.text()));
    let b_done = restarted.elapsed();
    assert_eq!(
        (replica.last_upserted.len(), replica.last_removed.len()),
        (1990, 10)
    );
    let r = on_a.await.unwrap();
    eprintln!(
        "restart and B's refresh took {} ms; A answered {} after {} ms",
        b_done.as_millis(),
        r.status,
        restarted.elapsed().as_millis()
    );
    assert!(
        b_done < Duration::from_secs(8),
        "B's refresh did not end before A's slow page: the test proves nothing"
    );
    assert_unavailable(&r, "the refresh that lost its lock");

    // What B published stands: its link has nothing new, on either replica, and the first link
    // still has exactly the changes.
    let db = watch(&store).await;
    assert_eq!(pending_rows(&db).await, None, "a batch left pending");
    for gw in [&a, &b] {
        let r = client
            .get(
                &on(gw, replica.delta_link.as_ref().unwrap()),
                &[("OData-MaxVersion", "4.01")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["value"], json!([]));
    }
    let mut again = Replica::new("Customers", &["ID"], Shape::V401);
    again
        .initial(&client, &b.url(&format!("{ROOT}/Customers")))
        .await
        .unwrap();
    assert_eq!(again.rows, again.expected(&up.rows("Customers"), |_| true));
    let mut first = Replica::new("Customers", &["ID"], Shape::V401);
    first.rows = again.rows.clone();
    for i in 1..=n {
        // The state as of the first link: every row in round 0.
        first.rows.insert(format!("Customers({i})"), customer(i));
    }
    first.delta_link = Some(on(&a, &link));
    first.sync(&client).await.unwrap();
    assert_eq!(first.rows, again.rows);
}

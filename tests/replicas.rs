//! Several gateways on one PostgreSQL store (`--store postgres://…`): a token issued by one works
//! on the others, and a sync client whose requests land on either replica converges (C28), with
//! refreshes of one feed serialized across the replicas.
//!
//! These need a PostgreSQL server: `ODG_TEST_POSTGRES` names a database whose user may create
//! databases (`.ci/run` starts a temporary cluster and sets it). Each test works in a database of
//! its own (`support::postgres`). The test that restarts the server is in `replicas_restart.rs`,
//! a binary of its own, so that no other test runs while the server is down.

mod support;

use serde_json::json;
use support::gateway::{Client, Gateway, GatewayProcess, Replica, Shape, TRACK};
use support::postgres::{fresh_database, pending_rows, watch};
use support::shop::{Churn, ROOT, rescored, shop_paged};
use support::{Fault, Faults};

async fn replica_on(upstream: &str, store: &str) -> Gateway {
    let store = store.to_owned();
    Gateway::start_with(upstream, None, move |f| f.store = Some(store)).await
}

/// `link` pointed at `gw` instead of the replica that issued it.
fn on(gw: &Gateway, link: &str) -> String {
    let path = link.splitn(4, '/').nth(3).expect("an absolute link");
    gw.url(&format!("/{path}"))
}

/// `link` pointed at the gateway process `gw`.
fn on_process(gw: &GatewayProcess, link: &str) -> String {
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

/// `kill -9` of the gateway process that holds a feed's refresh lock, in the middle of its
/// enumeration and with a batch of the refresh already written: the other process, whose request
/// for the same delta link waited for the lock meanwhile, takes the feed over as soon as the
/// killed one's session is gone, enumerates the upstream itself, and answers exactly the changes;
/// nothing of the cut-short refresh is served and every token stays valid (C29, C28).
#[tokio::test]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
async fn sigkill_of_the_replica_refreshing_a_feed_frees_it_for_another_that_loses_nothing_c29() {
    use std::time::{Duration, Instant};
    use support::PageHooks;

    let store = fresh_database("sigkill").await;
    let db = watch(&store).await;
    let n = 3000;
    let up = shop_paged(n, 300).await;
    let (_keep_a, dir_a) = support::gateway::data_dir();
    let (_keep_b, dir_b) = support::gateway::data_dir();
    let a = GatewayProcess::spawn(&up.base_url(), &dir_a, &["--store", &store]);
    let b = GatewayProcess::spawn(&up.base_url(), &dir_b, &["--store", &store]);
    let client = Client::default();
    let mut replica = Replica::new("Customers", &["ID"], Shape::V401);
    replica
        .initial(&client, &a.url(&format!("{ROOT}/Customers")))
        .await
        .unwrap();
    assert_eq!(replica.rows.len(), n as usize);
    let link = replica.delta_link.clone().unwrap();

    for i in 1..=n {
        up.update("Customers", json!(i), rescored(i, 1));
    }
    up.clear_requests();
    // Every row changed, so A writes a batch once its rows weigh enough (a replaced row counts as
    // a store page), after the seventh upstream page; from the ninth on the upstream is slow.
    for page in 8..12 {
        up.push_fault(Fault::Delay { page, ms: 60_000 });
    }
    let (bg, url) = (client.clone(), link.clone());
    let request = tokio::spawn(async move { bg.try_send(http::Method::GET, &url, &[], "").await });
    // A is mid-enumeration: its first pages are read and a batch of changed rows is written at
    // its pending version, and the upstream holds its next page.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (pending, _) = loop {
        if let Some((version, rows)) = pending_rows(&db).await
            && rows > 0
        {
            break (version, rows);
        }
        assert!(
            Instant::now() < deadline,
            "A wrote no batch within 30 s; pages asked: {}",
            up.collection_requests("Customers")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    up.clear_requests();
    let first_page_by_b = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = first_page_by_b.clone();
    up.set_hook(move |_| {
        seen.lock().unwrap().get_or_insert_with(Instant::now);
    });
    // What A read of the first thousand rows is undone upstream, so anything of A's cut-short
    // refresh that were served would show as a change the upstream no longer has.
    for i in 1..=1000 {
        up.update("Customers", json!(i), rescored(i, 0));
    }
    for i in 2991..=n {
        up.delete("Customers", json!(i));
    }
    // The same link on B, while A still holds the feed's lock: B waits rather than enumerating.
    replica.delta_link = Some(on_process(&b, &link));
    let bg = client.clone();
    let on_b = tokio::spawn(async move {
        let asked = Instant::now();
        let outcome = replica.sync(&bg).await;
        (replica, outcome.map(|_| asked.elapsed()))
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        up.collection_requests("Customers"),
        0,
        "B enumerated while A held the feed"
    );
    a.kill9();
    let killed = Instant::now();
    let answer = request.await.unwrap();
    assert!(answer.is_err(), "A answered although killed: {answer:?}");
    up.clear_faults();

    let (replica, outcome) = on_b.await.unwrap();
    let answered = outcome.unwrap_or_else(|r| panic!("B: {} {}", r.status, r.text()));
    assert_eq!(
        replica.rows,
        replica.expected(&up.rows("Customers"), |_| true)
    );
    assert_eq!(
        (replica.last_upserted.len(), replica.last_removed.len()),
        (1990, 10),
        "exactly the changes since the link: rows 1001..=2990 changed, 2991..=3000 deleted"
    );
    // B enumerated the upstream itself, once A's session (and so its lock) was gone.
    let began = first_page_by_b
        .lock()
        .unwrap()
        .expect("B read the upstream");
    eprintln!(
        "B's first upstream page {} ms after the kill; its answer took {} ms after it asked",
        began.duration_since(killed).as_millis(),
        answered.as_millis()
    );
    assert!(began.duration_since(killed) < Duration::from_secs(10));
    assert!(up.collection_requests("Customers") >= (n as usize) / 300);
    // A's batch was discarded, not published: nothing is pending, B published a later version.
    assert_eq!(pending_rows(&db).await, None);
    let published: i64 = db
        .query_one("SELECT version FROM odg_feeds", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        published > pending,
        "B published {published}, A wrote at {pending}"
    );
    // The token A issued and the one B issued both still work.
    for link in [&link, replica.delta_link.as_ref().unwrap()] {
        let count = on_process(&b, link).replace("/Customers?", "/Customers/$count?");
        let r = client.get(&count, &[]).await;
        assert_eq!(r.status, 200, "{link}: {}", r.text());
    }
}

/// A first tracked read streams its first pages while the load runs; their next link, sent by a
/// proxy to another replica, waits there for the load to be published and goes on with its rows,
/// instead of failing as if the load had been cut short (C12, C3).
#[tokio::test]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
async fn a_next_link_of_a_first_read_still_loading_on_one_replica_is_served_by_another() {
    let store = fresh_database("streamed").await;
    let up = shop_paged(200, 20).await;
    let (a, b) = (
        replica_on(&up.base_url(), &store).await,
        replica_on(&up.base_url(), &store).await,
    );
    // The load's seventh upstream page is slow (the sixth request is the check of the client's
    // credentials before its first page is served from the store).
    up.push_fault(Fault::Delay { page: 6, ms: 1500 });
    let client = Client::default();
    let prefer = [("Prefer", "odata.track-changes, odata.maxpagesize=10")];
    let r = client
        .get(&a.url(&format!("{ROOT}/Customers")), &prefer)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    let mut ids: Vec<i64> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ID"].as_i64().unwrap())
        .collect();
    assert!(
        page.get("@odata.deltaLink").is_none(),
        "the first page came before the load ended"
    );
    let next = page["@odata.nextLink"].as_str().expect("a next link");
    let (rest, link) = client.read_all(&on(&b, next), &[]).await;
    ids.extend(rest.iter().map(|e| e["ID"].as_i64().unwrap()));
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>());
    // And the delta link B gave works on A.
    up.delete("Customers", json!(7));
    let r = client.get(&on(&a, &link), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().map(Vec::len), Some(1));
}

/// Requests a replica classified as tracked (first reads, their pages and deltas).
fn tracked_requests(gw: &Gateway) -> u64 {
    ["initial", "page", "delta"]
        .into_iter()
        .map(|kind| {
            gw.shared
                .metrics
                .requests
                .get_or_create(&odata_delta_gateway::metrics::RequestKind::new(kind))
                .get()
        })
        .sum()
}

/// Three replicas on one database behind a real nginx that sends each request to the next of them
/// in turn: a sync client that talks to nginx only converges over random CRUD rounds in both
/// payload shapes (C28), every replica serves part of its requests, and a delta link answers the
/// same on each replica asked directly (C9, C22 for the links, which point at nginx).
#[tokio::test]
#[ignore = "needs PostgreSQL (set ODG_TEST_POSTGRES to a database URL) and a real nginx; run by .ci/run"]
async fn a_replica_behind_nginx_round_robin_over_three_gateways_converges_in_both_shapes_c28() {
    use support::nginx::{Nginx, nginx_binary};

    let binary = nginx_binary().expect("nginx is not installed: this test needs a real nginx");
    let store = fresh_database("nginx").await;
    let up = shop_paged(80, 9).await;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let store = store.clone();
        gateways.push(
            Gateway::start_with(&up.base_url(), None, move |f| {
                f.store = Some(store);
                f.trusted_proxies = vec!["127.0.0.1".into()];
            })
            .await,
        );
    }
    let ports: Vec<u16> = gateways.iter().map(|g| g.addr.port()).collect();
    let nginx = Nginx::round_robin(&binary, &ports);
    let public = nginx.public_base();
    let before: Vec<u64> = gateways.iter().map(tracked_requests).collect();
    let client = Client::default();
    let mut last_link = None;
    for shape in [Shape::V40, Shape::V401] {
        let mut replica = Replica::new("Customers", &["ID"], shape);
        // Pages of 20, so that next links too are followed on other replicas than their issuer's.
        replica.page_size = Some(20);
        replica
            .initial(&client, &format!("{public}{ROOT}/Customers"))
            .await
            .unwrap();
        let mut churn = Churn::new(0xc0ffee + shape as u64, 1000 + 100 * shape as i64);
        for round in 0..8 {
            churn.round(&up, 12);
            replica
                .sync(&client)
                .await
                .unwrap_or_else(|r| panic!("{shape:?} round {round}: {} {}", r.status, r.text()));
            let expected = replica.expected(&up.rows("Customers"), |_| true);
            assert_eq!(replica.rows, expected, "{shape:?} round {round}");
        }
        assert!(
            replica.issued.iter().all(|l| l.starts_with(&public)),
            "a link off nginx: {:?}",
            replica.issued
        );
        last_link = replica.delta_link.clone();
    }
    let served: Vec<u64> = gateways
        .iter()
        .zip(&before)
        .map(|(g, b)| tracked_requests(g) - b)
        .collect();
    assert!(
        served.iter().all(|&n| n > 0),
        "every replica serves some of the requests: {served:?}"
    );
    eprintln!("tracked requests served by each replica: {served:?}");

    // One link, issued through nginx by whichever replica, asked of each replica directly: each
    // verifies it with the shared secret and answers the same change from the shared store.
    let link = last_link.expect("a delta link");
    let path = link.strip_prefix(&public).expect("a link on nginx");
    let id = up.rows("Customers")[0]["ID"].clone();
    assert!(up.update("Customers", id.clone(), json!({"name": "once more"})));
    for (i, gw) in gateways.iter().enumerate() {
        let r = client
            .get(&gw.url(path), &[("OData-MaxVersion", "4.01")])
            .await;
        assert_eq!(r.status, 200, "replica {i}: {}", r.text());
        let page = r.json();
        let entries = page["value"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "replica {i}: {page}");
        assert_eq!(entries[0]["ID"], id, "replica {i}: {page}");
        assert_eq!(entries[0]["name"], "once more", "replica {i}: {page}");
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

#[tokio::test]
#[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
async fn two_replicas_scheduling_one_feed_enumerate_it_about_once_per_interval_between_them() {
    use std::time::Duration;
    let store = fresh_database("schedules").await;
    let up = support::shop::names_only(5).await;
    let (a, b) = (
        polling_replica_on(&up.base_url(), &store).await,
        polling_replica_on(&up.base_url(), &store).await,
    );
    let client = Client::default();
    let r = client
        .get(&a.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    // The feed goes on both replicas' schedules.
    let r = client.get(&on(&b, &link), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    up.clear_requests();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let n = enumerations(&up, "Customers");
    // A 1 s interval over 8 s: about eight between the two schedules, not sixteen. Each replica
    // takes the other's refresh when it is younger than 90 % of the interval.
    assert!(
        (6..=11).contains(&n),
        "{n} enumerations in 8 s by two schedules of 1 s"
    );
    // And both still answer from what the schedules keep fresh.
    up.update("Customers", json!(2), json!({"name": "seen by both"}));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for gw in [&a, &b] {
        let r = client.get(&on(gw, &link), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["value"][0]["name"], "seen by both");
    }
}

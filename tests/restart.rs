//! Black-box tests of durability: delta links and next links issued before a restart — graceful,
//! or `kill -9` of the real binary at any instant, even in the middle of a refresh — keep working
//! afterwards, and a sync client applying every delta still holds exactly the upstream's collection
//! (C28, C29).
//!
//! A restarted gateway listens on a new port, while the links it issued carry the old one (their
//! base comes from the request's Host header). The tests move each old link to the new address
//! before following it, as a stable public URL would in a real deployment; the path and the token
//! are left exactly as issued.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::gateway::{Client, Gateway, GatewayProcess, Replica, Shape, data_dir};
use support::shop::{Churn, ROOT, customer, shop};
use support::{FakeUpstream, Fault, Faults, PageHooks};
use tokio::sync::Notify;

const TRACK: [(&str, &str); 1] = [("Prefer", "odata.track-changes")];

/// `link` with its host and port replaced by `addr`.
fn moved(link: &str, addr: SocketAddr) -> String {
    let mut url = url::Url::parse(link).expect("an absolute link");
    url.set_ip_host(addr.ip()).expect("an http URL");
    url.set_port(Some(addr.port())).expect("an http URL");
    url.to_string()
}

/// The entries of a 4.0 delta by entity-id: the entity without control information, or
/// `{"removed": reason}` for a tombstone.
fn changes(entries: &[Value]) -> BTreeMap<String, Value> {
    entries
        .iter()
        .map(|e| match e.get("id").and_then(Value::as_str) {
            Some(id) => (id.to_owned(), json!({"removed": e["reason"]})),
            None => {
                let mut entity = e.clone();
                entity
                    .as_object_mut()
                    .expect("an entity object")
                    .retain(|k, _| !k.starts_with('@'));
                (format!("Customers({})", e["ID"]), entity)
            }
        })
        .collect()
}

/// What a delta must hold: the current upstream state of the `changed` customers, and a
/// `deleted` tombstone for each of the `deleted` ones.
fn expected(up: &FakeUpstream, changed: &[i64], deleted: &[i64]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for &id in changed {
        let row = up.row("Customers", json!(id)).expect("a changed customer");
        out.insert(format!("Customers({id})"), row);
    }
    for &id in deleted {
        assert!(up.row("Customers", json!(id)).is_none());
        out.insert(format!("Customers({id})"), json!({"removed": "deleted"}));
    }
    out
}

fn customers_url(addr: SocketAddr) -> String {
    format!("http://{addr}{ROOT}/Customers")
}

#[tokio::test]
async fn a_delta_link_issued_before_a_graceful_restart_returns_exactly_the_changes_since_c29() {
    let up = shop(50).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let (entries, link) = client.read_all(&customers_url(gw.addr), &TRACK).await;
    assert_eq!(entries.len(), 50);
    let dir = gw.stop().await;

    // Changes while the gateway is down and after it is back.
    up.insert("Customers", customer(51));
    up.update("Customers", json!(5), json!({"name": "Renamed"}));
    up.delete("Customers", json!(7));
    let gw = Gateway::start_in(dir, &up.base_url(), None, |_| {}).await;
    up.update("Customers", json!(6), json!({"score": 1234}));
    up.delete("Customers", json!(8));

    let (entries, next) = client.read_all(&moved(&link, gw.addr), &[]).await;
    assert_eq!(
        changes(&entries),
        expected(&up, &[51, 5, 6], &[7, 8]),
        "C11: exactly the changes since the link"
    );
    // The new link starts from there: nothing more.
    let (entries, _) = client.read_all(&next, &[]).await;
    assert_eq!(entries, Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_links_survive_kill_9_of_the_binary_c29() {
    let up = shop(50).await;
    let (_dir, path) = data_dir();
    let client = Client::default();
    let gw = GatewayProcess::spawn(&up.base_url(), &path, &[]);
    let (_, first) = client.read_all(&customers_url(gw.addr), &TRACK).await;

    up.insert("Customers", customer(101));
    up.update("Customers", json!(5), json!({"name": "Round 1"}));
    up.delete("Customers", json!(7));
    up.update("Customers", json!(9), json!({"city": "Lima"}));
    let (entries, second) = client.read_all(&first, &[]).await;
    assert_eq!(changes(&entries), expected(&up, &[101, 5, 9], &[7]));

    gw.kill9();
    up.update("Customers", json!(101), json!({"name": "Round 2"}));
    up.delete("Customers", json!(5));
    up.insert("Customers", customer(102));
    up.update("Customers", json!(8), json!({"score": 55}));
    let gw = GatewayProcess::spawn(&up.base_url(), &path, &[]);

    let (entries, _) = client.read_all(&moved(&second, gw.addr), &[]).await;
    assert_eq!(
        changes(&entries),
        expected(&up, &[101, 102, 8], &[5]),
        "the second link: exactly the changes since it"
    );
    // The very first link still works and yields everything since it, each entity once with its
    // latest state (C12).
    let (entries, _) = client.read_all(&moved(&first, gw.addr), &[]).await;
    assert_eq!(
        changes(&entries),
        expected(&up, &[101, 102, 8, 9], &[5, 7]),
        "the first link: everything since it"
    );
    // C23 on a link from before the crash.
    let count = moved(&first, gw.addr).replace("/Customers?", "/Customers/$count?");
    assert_eq!(client.get(&count, &[]).await.text(), "6");
}

/// The definition of done across a crash: a replica reading once with track-changes and
/// then applying every delta holds exactly the upstream's collection after every round of random
/// changes, although the binary is killed with SIGKILL and restarted half-way (C28, C29).
async fn a_replica_converges_across_kill_9(shape: Shape) {
    let up = shop(200).await;
    up.set_page_size(Some(17));
    let (_dir, path) = data_dir();
    let client = Client::default();
    let mut gw = GatewayProcess::spawn(&up.base_url(), &path, &[]);
    let mut replica = Replica::new("Customers", &["ID"], shape);
    replica.page_size = Some(23);
    replica
        .initial(&client, &customers_url(gw.addr))
        .await
        .unwrap();
    let mut churn = Churn::new(0x2545f4914f6cdd1d, 201);
    for round in 0..6 {
        churn.round(&up, 30);
        if round == 3 {
            gw.kill9();
            gw = GatewayProcess::spawn(&up.base_url(), &path, &[]);
            replica.delta_link = replica.delta_link.map(|l| moved(&l, gw.addr));
        }
        replica.sync(&client).await.unwrap();
        let expected = replica.expected(&up.rows("Customers"), |_| true);
        assert_eq!(replica.rows, expected, "{shape:?} round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_converges_across_kill_9_and_restart_in_the_4_0_shape_c28_c29() {
    a_replica_converges_across_kill_9(Shape::V40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_converges_across_kill_9_and_restart_in_the_4_01_shape_c28_c29() {
    a_replica_converges_across_kill_9(Shape::V401).await;
}

/// What a replica held when it was given a delta link.
struct Checkpoint {
    rows: BTreeMap<String, Value>,
    link: String,
}

/// A replica that starts from `checkpoint` and follows its link, moved to the gateway at `addr`,
/// converges on the upstream.
async fn converges_from(
    client: &Client,
    up: &FakeUpstream,
    checkpoint: &Checkpoint,
    addr: SocketAddr,
    shape: Shape,
) {
    let mut replica = Replica::new("Customers", &["ID"], shape);
    replica.rows = checkpoint.rows.clone();
    replica.delta_link = Some(moved(&checkpoint.link, addr));
    replica
        .sync(client)
        .await
        .unwrap_or_else(|r| panic!("{}: {} {}", checkpoint.link, r.status, r.text()));
    let expected = replica.expected(&up.rows("Customers"), |_| true);
    assert_eq!(replica.rows, expected, "from {}", checkpoint.link);
}

/// Wait until the fake has fired every queued fault (the request it was meant for has arrived).
async fn until_faults_fired(up: &FakeUpstream) {
    let started = Instant::now();
    while up.pending_faults() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the refresh never reached the faulty page"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_refresh_keeps_every_issued_link_working_c29() {
    let up = shop(300).await;
    // 15 upstream pages per enumeration, 40 entities per gateway page.
    up.set_page_size(Some(20));
    let (_dir, path) = data_dir();
    let client = Client::default();
    let gw = GatewayProcess::spawn(&up.base_url(), &path, &[]);
    let mut replica = Replica::new("Customers", &["ID"], Shape::V40);
    replica.page_size = Some(40);
    replica
        .initial(&client, &customers_url(gw.addr))
        .await
        .unwrap();
    let mut checkpoints = vec![Checkpoint {
        rows: replica.rows.clone(),
        link: replica.delta_link.clone().unwrap(),
    }];
    let mut churn = Churn::new(0x853c49e6748fea9b, 301);
    for _ in 0..2 {
        churn.round(&up, 25);
        replica.sync(&client).await.unwrap();
        checkpoints.push(Checkpoint {
            rows: replica.rows.clone(),
            link: replica.delta_link.clone().unwrap(),
        });
    }
    let issued = replica.issued.clone();
    // 300 entities in pages of 40, then three delta links.
    let next_links = issued.iter().filter(|l| l.contains("$skiptoken=")).count();
    assert_eq!((next_links, issued.len()), (7, 10), "{issued:?}");

    // The next refresh stalls on its 8th upstream page; the gateway dies there.
    churn.round(&up, 25);
    up.push_fault(Fault::Delay { page: 7, ms: 2000 });
    let in_flight = {
        let client = client.clone();
        let link = replica.delta_link.clone().unwrap();
        tokio::spawn(async move { client.try_send(http::Method::GET, &link, &[], "").await })
    };
    until_faults_fired(&up).await;
    gw.kill9();
    let answer = in_flight.await.unwrap();
    assert!(answer.is_err(), "the refresh finished before the kill");

    churn.round(&up, 25);
    let gw = GatewayProcess::spawn(&up.base_url(), &path, &[]);
    // Every link issued before the crash still answers, next links included.
    for link in &issued {
        let (_, delta) = client.read_all(&moved(link, gw.addr), &[]).await;
        assert!(delta.contains("$deltatoken="), "{delta}");
    }
    // And every delta link still gives exactly what its holder lacks.
    for checkpoint in &checkpoints {
        converges_from(&client, &up, checkpoint, gw.addr, Shape::V40).await;
    }
    replica.delta_link = replica.delta_link.map(|l| moved(&l, gw.addr));
    replica.sync(&client).await.unwrap();
    assert_eq!(
        replica.rows,
        replica.expected(&up.rows("Customers"), |_| true)
    );
}

/// SIGKILL at varying instants after a refresh has read the last upstream page — while it confirms
/// removals, commits, writes the answer, or just after — never loses an issued link nor a change
/// (C29).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_instant_of_a_refresh_loses_nothing_c29() {
    let up = shop(300).await;
    up.set_page_size(Some(20));
    let (_dir, path) = data_dir();
    let client = Client::default();
    let mut gw = GatewayProcess::spawn(&up.base_url(), &path, &[]);
    let mut replica = Replica::new("Customers", &["ID"], Shape::V401);
    replica
        .initial(&client, &customers_url(gw.addr))
        .await
        .unwrap();
    let mut churn = Churn::new(0xda942042e4dd58b5, 301);
    for delay_ms in [0u64, 1, 2, 3, 5, 8, 13, 21] {
        churn.round(&up, 20);
        let last_page = up.rows("Customers").len().div_ceil(20) - 1;
        let reached = Arc::new(Notify::new());
        let signal = reached.clone();
        up.set_hook(move |page| {
            if page.index == last_page {
                signal.notify_one();
            }
        });
        let link = replica.delta_link.clone().unwrap();
        let in_flight = {
            let client = client.clone();
            let link = link.clone();
            tokio::spawn(async move { client.try_send(http::Method::GET, &link, &[], "").await })
        };
        tokio::time::timeout(Duration::from_secs(5), reached.notified())
            .await
            .expect("the refresh reads the last upstream page");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        gw.kill9();
        up.clear_hook();
        // Whether it was answered or not, the replica does not apply it and follows its old link
        // again after the restart.
        let answered = in_flight.await.unwrap().ok().filter(|r| r.status == 200);
        gw = GatewayProcess::spawn(&up.base_url(), &path, &[]);
        replica.delta_link = Some(moved(&link, gw.addr));
        replica.sync(&client).await.unwrap();
        assert_eq!(
            replica.rows,
            replica.expected(&up.rows("Customers"), |_| true),
            "killed {delay_ms} ms after the last upstream page was asked for"
        );
        // A link that was answered before the kill was issued, so it works too; what it returns
        // is already in the replica.
        if let Some(page) = answered.map(|r| r.json()) {
            let issued = page["@odata.deltaLink"].as_str().expect("one page");
            let from_there = Checkpoint {
                rows: replica.rows.clone(),
                link: issued.to_owned(),
            };
            converges_from(&client, &up, &from_there, gw.addr, Shape::V401).await;
        }
    }
}

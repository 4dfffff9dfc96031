//! Graceful shutdown: in-flight requests finish, then the listener is gone; with the real binary,
//! SIGTERM during a refresh exits 0 within `shutdown_grace` and commits nothing partial.

mod support;

use std::time::Duration;

use serde_json::json;
use support::gateway::{Client, Gateway, GatewayProcess};
use support::{EntitySetDef, FakeUpstream, Fault, Faults};

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_stops_listening() {
    let up = FakeUpstream::start().await;
    up.define_set(EntitySetDef::new("Customers", "Customer").key("ID", "Edm.Int32"));
    up.insert_many("Customers", (1..=10).map(|i| json!({ "ID": i })));
    let gw = Gateway::start(&up.base_url()).await;
    let url = gw.url("/odata/v4/shop/Customers");
    up.push_fault(Fault::Delay { page: 0, ms: 700 });
    let client = Client::default();
    let in_flight = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url, &[("Prefer", "odata.track-changes")]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.addr;
    let _dir = gw.stop().await;
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 10);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

/// The real binary with `shutdown_grace` from a config file, on `dir`.
fn spawn_with_grace(upstream: &str, dir: &std::path::Path, grace: &str) -> GatewayProcess {
    let toml = dir.with_extension("toml");
    std::fs::write(&toml, format!("shutdown_grace = \"{grace}\"\n")).unwrap();
    GatewayProcess::spawn(upstream, dir, &["--config", toml.to_str().unwrap()])
}

/// A tracked read of 30 customers in pages of 10, its delta link, and an update of customer 3.
async fn read_then_change(up: &FakeUpstream, gw: &GatewayProcess) -> String {
    let (_, link) = Client::default()
        .read_all(
            &gw.url("/odata/v4/shop/Customers"),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    up.update("Customers", json!(3), json!({ "name": "changed" }));
    link
}

/// Wait until the fake has received `n` collection GETs in all.
async fn wait_for_collection_requests(up: &FakeUpstream, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while up.collection_requests("Customers") < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refresh did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn on_port(link: &str, gw: &GatewayProcess) -> String {
    let old = link["http://".len()..].split('/').next().unwrap();
    link.replacen(old, &gw.addr.to_string(), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_refresh_longer_than_the_grace_exits_0_in_time_and_commits_nothing() {
    let up = support::shop::shop(30).await;
    up.set_page_size(Some(10));
    let (_dir, dir) = support::gateway::data_dir();
    let mut gw = spawn_with_grace(&up.base_url(), &dir, "2s");
    let link = read_then_change(&up, &gw).await;
    let before = up.collection_requests("Customers");
    // The delta's refresh reads its first page, then hangs on the second one far past the grace.
    up.push_fault(Fault::Delay {
        page: 1,
        ms: 60_000,
    });
    let in_flight = {
        let url = link.clone();
        tokio::spawn(async move {
            Client::default()
                .try_send(http::Method::GET, &url, &[], "")
                .await
        })
    };
    wait_for_collection_requests(&up, before + 2).await;
    let asked = std::time::Instant::now();
    gw.terminate();
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(10)))
        .expect("the gateway exits");
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "exited after {took:?}, with a grace of 2 s"
    );
    assert!(
        in_flight.await.unwrap().is_err(),
        "the abandoned request got no answer"
    );
    let logs = gw.stderr_lines().join("\n");
    assert!(
        logs.contains("did not finish within shutdown_grace"),
        "{logs}"
    );

    // Nothing of the abandoned refresh was committed: the delta link issued before still works
    // and reports the change once.
    up.clear_faults();
    let gw = spawn_with_grace(&up.base_url(), &dir, "2s");
    let r = Client::default().get(&on_port(&link, &gw), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let changed = r.json()["value"].as_array().unwrap().clone();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["ID"], 3);
    assert_eq!(changed[0]["name"], "changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_refresh_shorter_than_the_grace_answers_it_then_exits_0() {
    let up = support::shop::shop(30).await;
    up.set_page_size(Some(10));
    let (_dir, dir) = support::gateway::data_dir();
    let mut gw = spawn_with_grace(&up.base_url(), &dir, "20s");
    let link = read_then_change(&up, &gw).await;
    let before = up.collection_requests("Customers");
    up.push_fault(Fault::Delay { page: 1, ms: 1500 });
    let in_flight = {
        let url = link.clone();
        tokio::spawn(async move { Client::default().get(&url, &[]).await })
    };
    wait_for_collection_requests(&up, before + 2).await;
    gw.terminate();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 1);
    let next = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(10)))
        .expect("the gateway exits once the request is answered");
    assert!(status.success(), "exit status {status:?}");

    // The refresh committed whole: both links work after a restart.
    let gw = spawn_with_grace(&up.base_url(), &dir, "20s");
    let client = Client::default();
    let r = client.get(&on_port(&next, &gw), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 0);
    let r = client.get(&on_port(&link, &gw), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 1);
}

/// A refresh whose client went away goes on in a task of its own; a stopping gateway waits for
/// it, so that the store is closed once the gateway has stopped and the data dir opens at once
/// (before, the store stayed open under the stopped gateway until that refresh ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_its_client_left_has_ended_and_closed_the_store_once_the_gateway_stopped() {
    let up = FakeUpstream::start().await;
    up.define_set(EntitySetDef::new("Customers", "Customer").key("ID", "Edm.Int32"));
    up.insert_many("Customers", (1..=10).map(|i| json!({ "ID": i })));
    let gw = Gateway::start(&up.base_url()).await;
    let url = gw.url("/odata/v4/shop/Customers");
    up.push_fault(Fault::Delay { page: 0, ms: 500 });
    let client = Client::default();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(150),
        client.get(&url, &[("Prefer", "odata.track-changes")]),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the client gives up before the upstream answers"
    );
    let dir = gw.stop().await;
    let store = odata_delta_gateway::store::Store::open(dir.path())
        .expect("the store is closed once the gateway has stopped");
    let sizes = store.sizes().unwrap();
    assert_eq!(sizes.feeds, 1, "the refresh ended and published: {sizes:?}");
    assert_eq!(sizes.entity_states, 10, "{sizes:?}");
}

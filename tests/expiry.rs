//! Token lifetime and retention (C25): delta links older than the TTL answer 410 Gone with a
//! `Location` that starts over, and tombstones older than the TTL are purged.

mod support;

use std::time::Duration;

use serde_json::json;
use support::gateway::{Client, Gateway, GatewayProcess};
use support::{EntitySetDef, FakeUpstream};

const ROOT: &str = "/odata/v4/shop";

async fn shop() -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("city", "Edm.String"),
    );
    up.insert_many(
        "Customers",
        (1..=20).map(|i| json!({"ID": i, "city": "Berlin"})),
    );
    up
}

#[tokio::test]
async fn an_expired_delta_link_is_410_with_a_location_that_starts_over_c25() {
    let up = shop().await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| f.token_ttl = Some("2s".into())).await;
    let client = Client::default();
    let url = gw.url(&format!(
        "{ROOT}/Customers?$filter=city%20eq%20'Berlin'&$select=city"
    ));
    let headers = [("Prefer", "odata.track-changes, odata.maxpagesize=5")];
    let first = client.get(&url, &headers).await.json();
    let next = first["@odata.nextLink"].as_str().unwrap().to_owned();
    let mut page = first;
    while let Some(n) = page["@odata.nextLink"].as_str() {
        page = client.get(n, &[]).await.json();
    }
    let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();
    assert_eq!(client.get(&link, &[]).await.status, 200);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    for expired in [&link, &next] {
        let r = client.get(expired, &[]).await;
        assert_eq!(r.status, 410, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "DeltaTokenExpired");
        let location = r.header("location").unwrap().to_owned();
        assert!(
            location.starts_with(&gw.url(&format!("{ROOT}/Customers?"))),
            "{location}"
        );
        assert!(
            !location.contains("deltatoken") && !location.contains("skiptoken"),
            "{location}"
        );
        assert!(
            location.contains("$filter=") && location.contains("$select=city"),
            "{location}"
        );
        // The Location works: a fresh tracked enumeration.
        let again = client
            .get(&location, &[("Prefer", "odata.track-changes")])
            .await;
        assert_eq!(again.status, 200, "{}", again.text());
        let body = again.json();
        assert_eq!(body["value"].as_array().unwrap().len(), 20);
        assert!(body["@odata.deltaLink"].is_string());
        // …and also answers 200 without the preference.
        assert_eq!(client.get(&location, &[]).await.status, 200);
    }
}

#[tokio::test]
async fn tombstones_older_than_the_ttl_are_purged_c25() {
    let up = shop().await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.token_ttl = Some("1s".into());
        f.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = Client::default();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes")],
        )
        .await
        .json();
    let link = r["@odata.deltaLink"].as_str().unwrap().to_owned();
    for id in 1..=5 {
        up.delete("Customers", json!(id));
    }
    let delta = client.get(&link, &[]).await.json();
    assert_eq!(delta["value"].as_array().unwrap().len(), 5);
    // Keep the feed in use (fresh tracked reads) while the tombstones age past the TTL and the
    // margin (whole seconds: up to 4 s for a 1 s TTL).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(450)).await;
        let r = client
            .get(
                &gw.url(&format!("{ROOT}/Customers")),
                &[("Prefer", "odata.track-changes")],
            )
            .await;
        assert_eq!(r.status, 200);
    }
    // The next commit purges what is older than the TTL.
    up.insert("Customers", json!({"ID": 99, "city": "Rome"}));
    let fresh = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    assert_eq!(fresh.status, 200);
    let metrics = client
        .get(&format!("http://{}/metrics", gw.admin_addr().unwrap()), &[])
        .await
        .text();
    let purged: f64 = metrics
        .lines()
        .find(|l| l.starts_with("odg_tombstones_purged_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric missing: {metrics}"));
    assert_eq!(purged, 5.0, "{metrics}");
}

#[tokio::test]
async fn feeds_unused_for_longer_than_the_ttl_are_dropped_and_their_links_answer_410() {
    let up = shop().await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.token_ttl = Some("1s".into());
        f.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = Client::default();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes")],
        )
        .await
        .json();
    let link = r["@odata.deltaLink"].as_str().unwrap().to_owned();
    let metrics_url = format!("http://{}/metrics", gw.admin_addr().unwrap());
    let dropped = || async {
        let text = client.get(&metrics_url, &[]).await.text();
        text.lines()
            .find(|l| l.starts_with("odg_feeds_dropped_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut waited = 0;
    while dropped().await < 1.0 {
        assert!(waited < 80, "the idle feed was not dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 410, "{}", r.text());
    // Starting over works and builds the feed again.
    let again = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["value"].as_array().unwrap().len(), 20);
}

/// The unix ms of the current wall clock.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The 4.0 tombstone ids and the ids of changed entities of a delta page.
fn delta_ids(page: &serde_json::Value) -> (Vec<String>, Vec<i64>) {
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    for e in page["value"].as_array().unwrap() {
        match e.get("id").and_then(|v| v.as_str()) {
            Some(id) => removed.push(id.to_owned()),
            None => changed.push(e["ID"].as_i64().unwrap()),
        }
    }
    removed.sort();
    changed.sort();
    (removed, changed)
}

/// C25 at the edge of the lifetime, on the gateway's clock pinned to chosen instants: a delta link
/// issued in second S is valid through second S + TTL, and at its very end still gets the
/// tombstones of a version committed in second S, even when the refresh behind that answer purges.
/// One second later it is 410, and the tombstones are purged once no valid token can need them.
#[tokio::test]
async fn a_delta_link_in_the_last_second_of_its_lifetime_still_gets_its_tombstones_c25() {
    const TTL_SECS: u64 = 86_400;
    let up = shop().await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.token_ttl = Some("1d".into());
        f.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let clock = &gw.shared.clock;
    let second = wall_ms() / 1000;
    clock.pin_ms(second * 1000 + 100);
    let client = Client::default();
    let customers = gw.url(&format!("{ROOT}/Customers"));
    let track = [("Prefer", "odata.track-changes")];
    let first = client.get(&customers, &track).await.json();
    let link = first["@odata.deltaLink"].as_str().unwrap().to_owned();

    // Deleted, and committed as a version within the second the link was issued in.
    for id in 1..=3 {
        up.delete("Customers", json!(id));
    }
    clock.pin_ms(second * 1000 + 500);
    let latest = client
        .get(&format!("{customers}?$deltatoken=latest"), &track)
        .await;
    assert_eq!(latest.status, 200, "{}", latest.text());

    // The last moment of the link's lifetime; the refresh behind the answer commits (and purges).
    clock.pin_ms((second + TTL_SECS) * 1000 + 999);
    up.insert("Customers", json!({"ID": 99, "city": "Rome"}));
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (removed, changed) = delta_ids(&r.json());
    assert_eq!(
        removed,
        ["Customers(1)", "Customers(2)", "Customers(3)"],
        "the tombstones are in the payload"
    );
    assert_eq!(changed, [99]);

    clock.pin_ms((second + TTL_SECS + 1) * 1000);
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 410, "{}", r.text());

    // Once no valid token can need them, they go with the next commit.
    clock.pin_ms((second + TTL_SECS + 10) * 1000);
    up.insert("Customers", json!({"ID": 100, "city": "Rome"}));
    assert_eq!(client.get(&customers, &track).await.status, 200);
    let metrics = client
        .get(&format!("http://{}/metrics", gw.admin_addr().unwrap()), &[])
        .await
        .text();
    let purged: f64 = metrics
        .lines()
        .find(|l| l.starts_with("odg_tombstones_purged_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric missing: {metrics}"));
    assert_eq!(purged, 3.0, "{metrics}");
}

/// C29: a delta link handed out by a refresh that changed nothing — so nothing but the link's own
/// record was written — survives `kill -9` right after it was issued, and a restart with a token
/// lifetime so short that the sweep looks at the feed at once: the feed is kept and the link works
/// while it is valid. A feed nobody uses any more is still dropped once its links have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_link_issued_just_before_kill_9_keeps_its_feed_through_the_restart_sweep_c29() {
    let up = shop().await;
    let (_dir, path) = support::gateway::data_dir();
    let client = Client::default();
    // A lifetime long enough that no sweep records anything before the kill.
    let gw = GatewayProcess::spawn(&up.base_url(), &path, &["--token-ttl", "32s"]);
    let url = gw.url(&format!("{ROOT}/Customers"));
    let first = client
        .get(&url, &[("Prefer", "odata.track-changes")])
        .await
        .json();
    let link = first["@odata.deltaLink"].as_str().unwrap().to_owned();
    // Long enough that the feed's first commit is older than the restart's lifetime and margins.
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    let unchanged = client.get(&link, &[]).await;
    assert_eq!(unchanged.status, 200, "{}", unchanged.text());
    assert_eq!(unchanged.json()["value"], json!([]));
    let link = unchanged.json()["@odata.deltaLink"]
        .as_str()
        .unwrap()
        .to_owned();
    let issued = std::time::Instant::now();
    gw.kill9();

    let gw = GatewayProcess::spawn(&up.base_url(), &path, &["--token-ttl", "3s"]);
    let moved = {
        let mut u = url::Url::parse(&link).unwrap();
        u.set_port(Some(gw.addr.port())).unwrap();
        u.to_string()
    };
    // The sweep has run at start (and runs every 1.5 s); the link is at most 3 s old.
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.delete("Customers", json!(4));
    let r = client.get(&moved, &[]).await;
    assert!(
        issued.elapsed() < Duration::from_secs(3),
        "the machine is too slow for this test"
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (removed, _) = delta_ids(&r.json());
    assert_eq!(removed, ["Customers(4)"]);

    // Nobody uses the feed now: it is dropped once every link it handed out has expired.
    let dropped = gw.wait_for_stderr(Duration::from_secs(30), |l| {
        l.contains("dropped a feed unused for longer than the token lifetime")
    });
    assert!(dropped.is_some(), "{:#?}", gw.stderr_lines());
}

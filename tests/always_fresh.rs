//! Always fresh (DESIGN "Always fresh"): feeds with a `poll_interval` are refreshed in the
//! background, so that deltas are answered from the store; answers say how old their refresh is,
//! and a client may ask for a fresher one with `Cache-Control`. Schedule tests run on paused time.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use support::gateway::{Client, Gateway};
use support::shop::names_only;
use support::{FakeUpstream, Faults};

const ROOT: &str = "/odata/v4/shop";
const TRACK: [(&str, &str); 1] = [("Prefer", "odata.track-changes")];

/// Enumerations of Customers the upstream saw: first pages of a refresh (the authorization check's
/// `$top=0` read is not one).
fn enumerations(up: &FakeUpstream) -> Vec<support::RecordedRequest> {
    up.requests()
        .into_iter()
        .filter(|r| r.collection_set.as_deref() == Some("Customers"))
        .filter(|r| !r.query().contains("top=0") && !r.query().contains("top=1"))
        .collect()
}

async fn delta_link(client: &Client, gw: &Gateway, headers: &[(&str, &str)]) -> String {
    let mut all = TRACK.to_vec();
    all.extend_from_slice(headers);
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &all)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["@odata.deltaLink"].as_str().unwrap().to_owned()
}

fn names(page: &Value) -> Vec<String> {
    page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap_or("-").to_owned())
        .collect()
}

fn jwt(payload: &str) -> String {
    format!(
        "Bearer {}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode("sig")
    )
}

#[tokio::test(start_paused = true)]
async fn a_change_upstream_shows_in_a_delta_without_the_delta_enumerating() {
    let up = names_only(20).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("poll_interval = \"10s\"\n[identity]\nmode = \"shared\"\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    let link = delta_link(&client, &gw, &[]).await;
    assert_eq!(enumerations(&up).len(), 1);
    up.update("Customers", json!(3), json!({"name": "changed"}));
    tokio::time::sleep(Duration::from_secs(11)).await;
    let background = enumerations(&up).len();
    assert_eq!(background, 2, "one background refresh within the interval");
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names(&r.json()), vec!["changed"]);
    assert_eq!(
        enumerations(&up).len(),
        background,
        "the delta was answered from the store"
    );
    assert!(r.header("x-delta-refresh-age-ms").is_some());
}

#[tokio::test(start_paused = true)]
async fn several_pollers_cause_one_enumeration_per_interval() {
    let up = names_only(20).await;
    let gw = Gateway::start_with(&up.base_url(), Some("poll_interval = \"10s\"\n"), |_| {}).await;
    let client = Client::default();
    let mut links = Vec::new();
    for _ in 0..5 {
        links.push(delta_link(&client, &gw, &[]).await);
    }
    // The first read enumerated; the others reused its refresh (the poll interval).
    assert_eq!(enumerations(&up).len(), 1);
    let mut changes = 0;
    for second in 1..=60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if second % 7 == 0 {
            up.update(
                "Customers",
                json!(second % 20 + 1),
                json!({"name": format!("v{second}")}),
            );
        }
        for link in &mut links {
            let before = enumerations(&up).len();
            let r = client.get(link, &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(
                enumerations(&up).len(),
                before,
                "a poll at {second} s waited for an enumeration"
            );
            changes += names(&r.json()).len();
            *link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
        }
    }
    // Refreshes start every 9.75 to 10 s: six in a minute (seven with slow ones), none asked for
    // by the 300 delta requests.
    let n = enumerations(&up).len() - 1;
    assert!((6..=7).contains(&n), "{n} background enumerations in 60 s");
    assert!(changes >= 5 * 7, "every poller saw the changes ({changes})");
}

#[tokio::test(start_paused = true)]
async fn background_refreshes_start_once_per_interval_however_long_each_takes() {
    let up = names_only(5).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("poll_interval = \"10s\"\n[identity]\nmode = \"shared\"\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    let mut link = delta_link(&client, &gw, &[]).await;
    up.clear_requests();
    // From now on every enumeration takes 4 s, 40 % of the interval.
    for page in 0..20 {
        up.push_fault(support::Fault::Delay { page, ms: 4_000 });
    }
    for second in 1..=60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let asked = tokio::time::Instant::now();
        let r = client.get(&link, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "a poll at {second} s waited for a refresh"
        );
        link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    }
    // Started every 9.75 to 10 s from the last start: six in the minute. Timed from the last
    // one's end instead, they would be 13.75 to 14 s apart: four.
    let n = enumerations(&up).len();
    assert!((6..=7).contains(&n), "{n} background enumerations in 60 s");
}

#[tokio::test(start_paused = true)]
async fn idle_feeds_leave_the_schedule() {
    let up = names_only(5).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("poll_interval = \"10s\"\nfeed_idle_ttl = \"30s\"\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    delta_link(&client, &gw, &[]).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let n = enumerations(&up).len();
    // Refreshed while it was asked for within the last 30 s (three or four times), then not.
    assert!((3..=5).contains(&n), "{n} enumerations");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(enumerations(&up).len(), n);
}

#[tokio::test(start_paused = true)]
async fn poll_interval_is_per_route_and_per_set_and_off_by_default() {
    let up = names_only(5).await;
    let toml = "[[route]]\nupstream = \"UP\"\n[route.sets.Customers]\npoll_interval = \"0s\"\n"
        .replace("UP", &up.base_url());
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let client = Client::default();
    delta_link(&client, &gw, &[]).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(enumerations(&up).len(), 1, "off for the set");
    let toml = "poll_interval = \"0s\"\n[[route]]\nupstream = \"UP\"\npoll_interval = \"20s\"\n"
        .replace("UP", &up.base_url());
    let gw2 = Gateway::start_with("", Some(&toml), |_| {}).await;
    up.clear_requests();
    delta_link(&client, &gw2, &[]).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let n = enumerations(&up).len();
    assert!((4..=5).contains(&n), "the route's 20 s: {n}");
    drop(gw);
}

/// A per-identity feed is refreshed with the last credentials the upstream accepted for it; once
/// they are refused the schedule stops, and a client request with renewed credentials restarts it.
/// Answers from the store are still authorized with the request's own credentials.
#[tokio::test(start_paused = true)]
async fn a_per_identity_feed_refreshes_with_the_last_accepted_credentials_until_refused() {
    let up = names_only(5).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("poll_interval = \"10s\"\n[identity]\nauthorization_cache = \"0s\"\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    let first = jwt(r#"{"iss":"idp","sub":"alice","n":1}"#);
    let link = delta_link(&client, &gw, &[("Authorization", &first)]).await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    let background = enumerations(&up);
    assert_eq!(background.len(), 3, "two background refreshes");
    assert!(
        background
            .iter()
            .all(|r| r.header("authorization") == Some(first.as_str()))
    );
    up.revoke_credential(&first);
    tokio::time::sleep(Duration::from_secs(60)).await;
    // One refused background refresh, then none.
    assert_eq!(enumerations(&up).len(), 4);
    // The revoked credential cannot read from the store either.
    let r = client.get(&link, &[("Authorization", &first)]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let renewed = jwt(r#"{"iss":"idp","sub":"alice","n":2}"#);
    let r = client.get(&link, &[("Authorization", &renewed)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = enumerations(&up).len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = enumerations(&up);
    assert_eq!(after.len(), before + 2, "the schedule resumed");
    assert_eq!(
        after.last().unwrap().header("authorization"),
        Some(renewed.as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn shared_feeds_refresh_in_the_background_with_the_routes_own_headers() {
    let up = names_only(5).await;
    let toml = "poll_interval = \"10s\"\n[identity]\nmode = \"shared\"\n[[route]]\nupstream = \"UP\"\n[route.headers]\nauthorization = \"Basic Z2F0ZXdheTpzZWNyZXQ=\"\n"
        .replace("UP", &up.base_url());
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let client = Client::default();
    delta_link(&client, &gw, &[("Authorization", "Basic Y2xpZW50OjE=")]).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let seen = enumerations(&up);
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].header("authorization"),
        Some("Basic Z2F0ZXdheTpzZWNyZXQ=")
    );
}

/// `Cache-Control: max-age=N` / `no-cache` on a tracked request asks for a refresh younger than the
/// stored one; `X-Delta-Refresh-Age-Ms` says how old the refresh behind an answer is. Real time:
/// the age is wall-clock time.
#[tokio::test]
async fn cache_control_asks_for_a_fresher_answer_and_the_age_header_says_how_old_it_is() {
    let up = names_only(5).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("min_refresh_interval = \"1h\"\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    let link = delta_link(&client, &gw, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    up.update("Customers", json!(2), json!({"name": "changed"}));
    let age = |r: &support::gateway::Resp| -> u64 {
        r.header("x-delta-refresh-age-ms")
            .expect("tracked answers carry the refresh age")
            .parse()
            .unwrap()
    };
    // Reused within min_refresh_interval: old, and without the change.
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(age(&r) >= 1000, "{}", age(&r));
    assert!(names(&r.json()).is_empty());
    let r = client.get(&link, &[("Cache-Control", "max-age=60")]).await;
    assert!(names(&r.json()).is_empty());
    assert_eq!(
        enumerations(&up).len(),
        1,
        "max-age above the age: no refresh"
    );
    let r = client.get(&link, &[("Cache-Control", "max-age=1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names(&r.json()), vec!["changed"]);
    assert!(age(&r) < 1000, "{}", age(&r));
    assert_eq!(enumerations(&up).len(), 2);
    let r = client.get(&link, &[("Cache-Control", "no-cache")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(enumerations(&up).len(), 3, "no-cache always refreshes");
    // On an initial read too.
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[TRACK[0], ("Cache-Control", "no-cache")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(enumerations(&up).len(), 4);
}

/// Shutdown stops the schedule: the gateway stops within its grace period and refreshes nothing
/// afterwards.
#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_schedule() {
    let up = names_only(5).await;
    let gw = Gateway::start_with(&up.base_url(), Some("poll_interval = \"10s\"\n"), |_| {}).await;
    let client = Client::default();
    delta_link(&client, &gw, &[]).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(enumerations(&up).len(), 2);
    drop(client);
    tokio::time::timeout(Duration::from_secs(40), gw.stop())
        .await
        .expect("the gateway stops with feeds on the schedule");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        enumerations(&up).len(),
        2,
        "nothing refreshed after shutdown"
    );
}

/// A delta request that arrives while a background refresh runs is answered from the last
/// published version at once, instead of queueing behind the refresh (stale-while-revalidate,
/// RFC 5861): up to one more interval past `poll_interval`. A client that asks for a fresher
/// answer with `Cache-Control` still waits for it. Real time: the upstream holds the refresh's
/// first page for 6 s.
#[tokio::test]
async fn a_delta_during_a_slow_background_refresh_is_answered_from_the_last_version() {
    let up = names_only(20).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("poll_interval = \"2s\"\n[identity]\nmode = \"shared\"\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    let link = delta_link(&client, &gw, &[]).await;
    let read_at = std::time::Instant::now();
    up.update("Customers", json!(3), json!({"name": "changed"}));
    up.push_fault(support::Fault::Delay { page: 0, ms: 6_000 });
    // The background refresh is due 1.7–1.9 s after the first read; at 2.5 s it is held upstream.
    tokio::time::sleep(Duration::from_millis(2_500).saturating_sub(read_at.elapsed())).await;
    assert_eq!(up.pending_faults(), 0, "the background refresh has started");
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        names(&r.json()).is_empty(),
        "answered from the version before the change: {}",
        r.text()
    );
    let age: u64 = r.header("x-delta-refresh-age-ms").unwrap().parse().unwrap();
    assert!(
        age >= 2_000,
        "older than the interval while a refresh runs: {age} ms"
    );
    assert!(
        read_at.elapsed() < Duration::from_millis(5_500),
        "the request did not wait for the held refresh"
    );
    // The same request with `Cache-Control: max-age=1` waits for the refresh, and sees the change.
    let r = client.get(&link, &[("Cache-Control", "max-age=1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names(&r.json()), vec!["changed"]);
    assert!(read_at.elapsed() >= Duration::from_secs(6));
}

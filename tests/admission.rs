//! Admission: new feeds are capped in total and per identity scope, and refreshes across all
//! feeds are bounded with a bounded queue; what is refused gets an OData error with
//! `Retry-After`, and what exists keeps working.

mod support;

use std::time::Duration;

use support::gateway::{Client, Gateway, Resp};
use support::shop::{ROOT, shop};
use support::{Fault, Faults};

async fn tracked(client: &Client, gw: &Gateway, filter: &str, authorization: &str) -> Resp {
    let url = gw.url(&format!("{ROOT}/Customers?$filter=ID%20gt%20{filter}"));
    client
        .get(
            &url,
            &[
                ("Prefer", "odata.track-changes"),
                ("Authorization", authorization),
            ],
        )
        .await
}

fn assert_limited(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], code, "{}", r.text());
    assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
    assert_eq!(r.header("odata-version"), Some("4.0"));
}

/// Item: a caller past `max_feeds_per_scope` gets 429, anyone past `max_feeds` 503, both with
/// `Retry-After`; feeds that exist keep answering, their delta links too.
#[tokio::test]
async fn feeds_past_the_caps_are_refused_and_existing_ones_keep_working() {
    let up = shop(10).await;
    let toml = "[limits]\nmax_feeds = 3\nmax_feeds_per_scope = 2\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let alice = "Bearer alice";
    let first = tracked(&client, &gw, "1", alice).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(tracked(&client, &gw, "2", alice).await.status, 200);
    let r = tracked(&client, &gw, "3", alice).await;
    assert_limited(&r, 429, "TooManyFeedsForCaller");

    // Another caller still has room until the gateway is full.
    assert_eq!(tracked(&client, &gw, "3", "Bearer bob").await.status, 200);
    let r = tracked(&client, &gw, "4", "Bearer carol").await;
    assert_limited(&r, 503, "TooManyFeeds");

    // Existing feeds: the same tracked read again, and its delta link.
    assert_eq!(tracked(&client, &gw, "1", alice).await.status, 200);
    let link = first.json()["@odata.deltaLink"]
        .as_str()
        .unwrap()
        .to_owned();
    up.delete("Customers", serde_json::json!(5));
    let r = client.get(&link, &[("Authorization", alice)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 1);
}

/// Item: a refused creation does not count, and feeds stored before a restart do.
#[tokio::test]
async fn feed_caps_count_the_feeds_in_the_store_across_a_restart() {
    let up = shop(10).await;
    let toml = "[limits]\nmax_feeds_per_scope = 2\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let alice = "Bearer alice";
    assert_eq!(tracked(&client, &gw, "1", alice).await.status, 200);
    // A creation whose first load fails frees its place again.
    up.push_fault(Fault::Status {
        page: 0,
        status: 500,
        retry_after: None,
    });
    assert_eq!(tracked(&client, &gw, "2", alice).await.status, 502);
    assert_eq!(tracked(&client, &gw, "3", alice).await.status, 200);
    let dir = gw.stop().await;
    let gw = Gateway::start_in(dir, &up.base_url(), Some(toml), |_| {}).await;
    let r = tracked(&client, &gw, "4", alice).await;
    assert_limited(&r, 429, "TooManyFeedsForCaller");
    assert_eq!(tracked(&client, &gw, "3", alice).await.status, 200);
}

/// Item: with one refresh at a time and one waiting, a third feed's request gets 503 with
/// `Retry-After` while the upstream is slow; the two admitted ones are answered.
#[tokio::test]
async fn refreshes_past_the_running_and_waiting_bounds_get_503() {
    let up = shop(10).await;
    let toml = "[limits]\nmax_concurrent_refreshes = 1\nmax_refresh_waiters = 1\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    // Fetches $metadata, so that the requests below go straight to their refreshes.
    assert_eq!(tracked(&client, &gw, "0", "Bearer a").await.status, 200);
    for page in 0..2 {
        up.push_fault(Fault::Delay { page, ms: 3000 });
    }
    let running = {
        let (client, url) = (client.clone(), gw.url(""));
        tokio::spawn(async move {
            let gw_url = format!("{url}{ROOT}/Customers?$filter=ID%20gt%201");
            client
                .get(&gw_url, &[("Prefer", "odata.track-changes")])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let waiting = {
        let (client, url) = (client.clone(), gw.url(""));
        tokio::spawn(async move {
            let gw_url = format!("{url}{ROOT}/Customers?$filter=ID%20gt%202");
            client
                .get(&gw_url, &[("Prefer", "odata.track-changes")])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let url = gw.url(&format!("{ROOT}/Customers?$filter=ID%20gt%203"));
    let r = client.get(&url, &[("Prefer", "odata.track-changes")]).await;
    assert_limited(&r, 503, "RefreshesBusy");
    assert_eq!(running.await.unwrap().status, 200);
    assert_eq!(waiting.await.unwrap().status, 200);
    // Once the queue has drained, the third feed is served.
    let r = client.get(&url, &[("Prefer", "odata.track-changes")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

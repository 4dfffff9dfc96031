//! Token lifetime and retention (C25): delta links older than the TTL answer 410 Gone with a
//! `Location` that starts over, and tombstones older than the TTL are purged.

mod support;

use std::time::Duration;

use serde_json::json;
use support::gateway::{Client, Gateway};
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
    // Keep the feed in use (fresh tracked reads) while the tombstones age past the TTL.
    for _ in 0..5 {
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

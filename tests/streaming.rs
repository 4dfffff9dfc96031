//! The first tracked read of a feed streams: its first page is answered as soon as the gateway has
//! hashed and written enough of the upstream's rows, later pages follow the enumeration, and the
//! delta link comes on the last page once the load is published (C3, C12, C21).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use support::gateway::{Client, Gateway, Replica, Shape};
use support::shop::names_only;
use support::{FakeUpstream, Fault, Faults};

const ROOT: &str = "/odata/v4/shop";

/// `n` customers of ID and name in pages of 500.
async fn upstream(n: i64) -> FakeUpstream {
    let up = names_only(n).await;
    up.set_page_size(Some(500));
    up
}

#[tokio::test]
async fn the_first_page_of_a_first_read_comes_before_the_enumeration_ends_and_paging_is_exact() {
    let n = 10_000;
    let up = upstream(n).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    // The upstream is slow near the end of the collection; page 0 of the gateway is not.
    up.push_fault(Fault::Delay { page: 15, ms: 3000 });
    let started = Instant::now();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes,odata.maxpagesize=1000")],
        )
        .await;
    let first_page_after = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        first_page_after < Duration::from_millis(2500),
        "the first page waited for the whole enumeration: {first_page_after:?}"
    );
    assert!(
        r.header("preference-applied")
            .unwrap()
            .contains("track-changes")
    );
    let mut page = r.json();
    let mut ids = Vec::new();
    let delta = loop {
        for e in page["value"].as_array().unwrap() {
            ids.push(e["ID"].as_i64().unwrap());
        }
        if let Some(link) = page["@odata.deltaLink"].as_str() {
            assert!(page.get("@odata.nextLink").is_none());
            break link.to_owned();
        }
        let next = page["@odata.nextLink"]
            .as_str()
            .expect("a next or delta link");
        let r = client.get(next, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        page = r.json();
    };
    // Every entity exactly once (C12, C21), in the upstream's order.
    assert_eq!(ids, (1..=n).collect::<Vec<_>>());

    // The delta link names the published load: a change after it is all the next delta holds.
    up.update("Customers", json!(7), json!({"name": "changed"}));
    up.delete("Customers", json!(8));
    let r = client.get(&delta, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let value = r.json()["value"].as_array().unwrap().clone();
    assert_eq!(value.len(), 2, "{value:?}");
}

#[tokio::test]
async fn a_first_read_that_fails_after_its_first_page_fails_a_later_page_and_not_inside_a_200() {
    let n = 10_000;
    let up = upstream(n).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    up.push_fault(Fault::Status {
        page: 12,
        status: 500,
        retry_after: None,
    });
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes,odata.maxpagesize=1000")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut page = r.json();
    let mut seen = HashSet::new();
    let failure = loop {
        for e in page["value"].as_array().unwrap() {
            assert!(seen.insert(e["ID"].as_i64().unwrap()));
        }
        assert!(
            page.get("@odata.deltaLink").is_none(),
            "a failed load gave a delta link"
        );
        let next = page["@odata.nextLink"].as_str().expect("a next link");
        let r = client.get(next, &[]).await;
        if r.status != 200 {
            break r;
        }
        page = r.json();
    };
    // C26: the error is a whole OData error response of its own.
    assert_eq!(failure.status, 502, "{}", failure.text());
    assert!(failure.json()["error"]["code"].is_string());
    assert!(seen.len() < n as usize);

    // Reading again works, and deltas after it are exact (C28).
    let mut replica = Replica::new("Customers", &["ID"], Shape::V401);
    replica.page_size = Some(1000);
    replica
        .initial(&client, &gw.url(&format!("{ROOT}/Customers")))
        .await
        .unwrap();
    assert_eq!(replica.rows.len(), n as usize);
    up.update("Customers", json!(3), json!({"name": "changed"}));
    up.delete("Customers", json!(4));
    replica.sync(&client).await.unwrap();
    assert_eq!(
        replica.rows,
        replica.expected(&up.rows("Customers"), |_| true)
    );
}

//! The request id: every upstream request that a client's request causes carries that request's
//! `x-request-id` (the client's own, or the one the gateway generated and answers with), so that
//! the upstream's logs and the gateway's can be joined.

mod support;

use support::gateway::{Client, Gateway};
use support::shop::{ROOT, shop};
use support::{FakeUpstream, RecordedRequest};

/// Authorization checks on every per-identity request, so that next-link pages cause one.
const TOML: &str = "[identity]\nauthorization_cache = \"0s\"\n";

fn ids(up: &FakeUpstream) -> Vec<(String, Option<String>)> {
    up.requests()
        .iter()
        .map(|r: &RecordedRequest| {
            (
                r.path_and_query.clone(),
                r.header("x-request-id").map(str::to_owned),
            )
        })
        .collect()
}

fn assert_all_carry(up: &FakeUpstream, id: &str, at_least: usize) {
    let seen = ids(up);
    assert!(
        seen.len() >= at_least,
        "expected at least {at_least} upstream requests, got {seen:?}"
    );
    for (path, got) in &seen {
        assert_eq!(
            got.as_deref(),
            Some(id),
            "{path} carries the wrong request id"
        );
    }
}

#[tokio::test]
async fn every_upstream_request_of_a_tracked_read_carries_the_clients_request_id() {
    let up = shop(30).await;
    up.set_page_size(Some(10));
    let gw = Gateway::start_with(&up.base_url(), Some(TOML), |_| {}).await;
    let client = Client::default();
    let auth = ("Authorization", "Bearer alice");
    let headers = |id: &'static str| {
        [
            ("Prefer", "odata.track-changes,odata.maxpagesize=20"),
            auth,
            ("x-request-id", id),
        ]
    };

    // The first read: `$metadata` and three upstream pages.
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &headers("read-1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("read-1"));
    assert!(ids(&up).iter().any(|(p, _)| p.ends_with("$metadata")));
    assert_all_carry(&up, "read-1", 4);
    let next = r.json()["@odata.nextLink"].as_str().unwrap().to_owned();

    // A next-link page is answered from the store after an authorization check upstream.
    up.clear_requests();
    let r = client.get(&next, &headers("page-2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_all_carry(&up, "page-2", 1);
    let delta = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();

    // A delta after a delete: the enumeration and the removal check (C27).
    up.delete("Customers", serde_json::json!(7));
    up.clear_requests();
    let r = client.get(&delta, &headers("delta-3")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("deleted"), "{}", r.text());
    assert!(
        ids(&up).iter().any(|(p, _)| p.contains("filter")),
        "a removal check was made: {:?}",
        ids(&up)
    );
    assert_all_carry(&up, "delta-3", 4);

    // A pass-through request.
    up.clear_requests();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers(1)")),
            &[auth, ("x-request-id", "single-4")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_all_carry(&up, "single-4", 1);
}

#[tokio::test]
async fn a_request_without_an_id_gets_one_that_its_upstream_requests_carry() {
    let up = shop(25).await;
    up.set_page_size(Some(10));
    let gw = Gateway::start_with(&up.base_url(), Some(TOML), |_| {}).await;
    let r = Client::default()
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[
                ("Prefer", "odata.track-changes"),
                ("Authorization", "Bearer bob"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let generated = r.header("x-request-id").expect("a generated request id");
    assert!(!generated.is_empty());
    assert_all_carry(&up, generated, 4);
}

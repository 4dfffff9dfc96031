//! The misbehaving upstream the other tests rely on (`support::faults`), checked against the
//! sample service directly, without a gateway: each fault fires on the request it names and only
//! there, and each setting does what it says until turned off.

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::gateway::Client;
use support::shop::shop;
use support::{EntitySetDef, FakeUpstream, Fault, Faults, LinkStyle, PageHooks};

/// Customers 1..=5, with absolute next links so that pages can be followed as they come.
async fn five() -> FakeUpstream {
    let up = shop(5).await;
    up.set_link_style(LinkStyle::Absolute);
    up
}

/// IDs of a collection page, in order.
fn ids(page: &Value) -> Vec<Value> {
    page["value"]
        .as_array()
        .unwrap_or_else(|| panic!("no value array: {page}"))
        .iter()
        .map(|e| e["ID"].clone())
        .collect()
}

/// Every page of `url`, following next links (at most 20).
async fn walk(url: &str) -> Vec<Value> {
    let client = Client::default();
    let mut pages = Vec::new();
    let mut url = url.to_owned();
    for _ in 0..20 {
        let r = client.get(&url, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text());
        let page = r.json();
        let next = page["@odata.nextLink"].as_str().map(str::to_owned);
        pages.push(page);
        match next {
            Some(next) => url = next,
            None => return pages,
        }
    }
    panic!("more than 20 pages from {url}");
}

fn all_ids(pages: &[Value]) -> Vec<Value> {
    pages.iter().flat_map(ids).collect()
}

#[tokio::test]
async fn a_status_fault_fires_on_the_collection_request_it_names_then_the_service_recovers() {
    let up = five().await;
    let client = Client::default();
    up.push_fault(Fault::Status {
        page: 1,
        status: 503,
        retry_after: Some(7),
    });
    assert_eq!(client.get(&up.url("Customers"), &[]).await.status, 200);
    // Non-collection requests do not count.
    assert_eq!(client.get(&up.url("Customers(1)"), &[]).await.status, 200);
    let r = client.get(&up.url("Customers"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"]["code"], "503");
    assert_eq!(up.pending_faults(), 0);
    assert_eq!(client.get(&up.url("Customers"), &[]).await.status, 200);
}

#[tokio::test]
async fn malformed_and_reset_faults_break_one_answer_each() {
    let up = five().await;
    let client = Client::default();
    up.push_fault(Fault::Malformed { page: 0 });
    let r = client.get(&up.url("Customers"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    up.push_fault(Fault::ResetMidBody { page: 0 });
    let broken = client
        .try_send(Method::GET, &up.url("Customers"), &[], "")
        .await;
    assert!(
        broken
            .as_ref()
            .is_err_and(|e| e.contains("body breaks off")),
        "{broken:?}"
    );
    assert_eq!(client.get(&up.url("Customers"), &[]).await.status, 200);
}

#[tokio::test]
async fn a_delay_fault_holds_its_answer() {
    let up = five().await;
    up.push_fault(Fault::Delay { page: 0, ms: 200 });
    let started = Instant::now();
    let r = Client::default().get(&up.url("Customers"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_gzip_bomb_goes_only_to_a_request_that_accepts_gzip() {
    let up = five().await;
    let client = Client::default();
    up.push_fault(Fault::GzipBomb {
        page: 0,
        decoded_bytes: 1 << 20,
    });
    let plain = client.get(&up.url("Customers"), &[]).await;
    assert_eq!(ids(&plain.json()).len(), 5);
    up.push_fault(Fault::GzipBomb {
        page: 0,
        decoded_bytes: 1 << 20,
    });
    let r = client
        .get(&up.url("Customers"), &[("Accept-Encoding", "gzip")])
        .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.body.len() < 10_000, "{} bytes", r.body.len());
}

#[tokio::test]
async fn next_link_drop_key_and_duplicate_faults_change_one_page() {
    let up = five().await;
    up.set_page_size(Some(2));
    let client = Client::default();

    up.push_fault(Fault::NextLinkTo {
        page: 0,
        url: "http://other.invalid/steal?$skiptoken=2".to_string(),
    });
    let page = client.get(&up.url("Customers"), &[]).await.json();
    assert_eq!(
        page["@odata.nextLink"],
        "http://other.invalid/steal?$skiptoken=2"
    );

    up.push_fault(Fault::DropKey { page: 0 });
    let page = client.get(&up.url("Customers"), &[]).await.json();
    for entity in page["value"].as_array().unwrap() {
        assert!(entity.get("ID").is_none(), "{entity}");
        assert!(entity.get("name").is_some(), "{entity}");
    }

    up.push_fault(Fault::DuplicateAcrossPages { page: 1 });
    let pages = walk(&up.url("Customers")).await;
    assert_eq!(all_ids(&pages), [1, 2, 2, 3, 4, 5].map(Value::from));
}

#[tokio::test]
async fn reordered_properties_change_the_bytes_not_the_entities() {
    let up = five().await;
    let client = Client::default();
    let url = up.url("Customers?$filter=ID%20eq%201");
    let plain = client.get(&url, &[]).await;
    up.set_reorder_properties(true);
    let (c, d) = (client.get(&url, &[]).await, client.get(&url, &[]).await);
    assert_ne!(c.body, d.body, "property order must change between answers");
    assert_eq!(c.json(), plain.json());
    assert_eq!(d.json(), plain.json());
    let one = up.url("Customers(1)");
    let (e, f) = (client.get(&one, &[]).await, client.get(&one, &[]).await);
    assert_ne!(e.body, f.body, "entity answers too");
    assert_eq!(e.json(), f.json());
    // An indented answer stays indented.
    up.set_pretty(true);
    let indented = client.get(&url, &[]).await;
    assert!(indented.text().contains("\n  "), "{}", indented.text());
    assert_eq!(indented.json(), plain.json());
    up.set_pretty(false);
    up.set_reorder_properties(false);
    assert_eq!(client.get(&url, &[]).await.body, plain.body);
}

#[tokio::test]
async fn truncation_ends_the_collection_early_and_keeps_the_real_count() {
    let up = five().await;
    up.set_page_size(Some(2));
    up.set_truncate_after(Some(3));
    let pages = walk(&up.url("Customers?$count=true")).await;
    assert_eq!(all_ids(&pages), [1, 2, 3].map(Value::from));
    let counts: Vec<Value> = pages.iter().map(|p| p["@odata.count"].clone()).collect();
    assert_eq!(counts, [5, 5].map(Value::from));
    // A page that ends exactly at the cut has no next link either.
    up.set_truncate_after(Some(4));
    assert_eq!(
        all_ids(&walk(&up.url("Customers")).await),
        [1, 2, 3, 4].map(Value::from)
    );
    up.set_truncate_after(None);
    assert_eq!(all_ids(&walk(&up.url("Customers")).await).len(), 5);
}

#[tokio::test]
async fn a_next_link_cycle_points_back_and_ignoring_skip_starts_over() {
    let up = five().await;
    up.set_page_size(Some(1));
    let client = Client::default();
    up.set_next_link_cycle(Some((3, 1)));
    let page = client
        .get(&up.url("Customers?$skiptoken=2"), &[])
        .await
        .json();
    assert_eq!(ids(&page), [json!(3)]);
    let next = page["@odata.nextLink"].as_str().unwrap();
    assert!(next.ends_with("$skiptoken=1"), "{next}");
    up.set_next_link_cycle(None);

    up.set_page_size(Some(50));
    up.set_ignore_skip(true);
    let page = client.get(&up.url("Customers?$skip=3"), &[]).await.json();
    assert_eq!(ids(&page).len(), 5);
    up.set_ignore_skip(false);
    let page = client.get(&up.url("Customers?$skip=3"), &[]).await.json();
    assert_eq!(ids(&page), [4, 5].map(Value::from));
}

#[tokio::test]
async fn count_text_and_in_filter_status_replace_what_the_service_would_say() {
    let up = five().await;
    let client = Client::default();
    up.set_count_text(Some("18446744073709551615"));
    let r = client.get(&up.url("Customers?$count=true"), &[]).await;
    assert!(
        r.text().contains("\"@odata.count\":18446744073709551615"),
        "{}",
        r.text()
    );
    // A rewritten page keeps every other byte, indented or not.
    for (filter, count) in [("ID%20eq%202", "1"), ("ID%20eq%2099", "0")] {
        let url = up.url(&format!("Customers?$count=true&$filter={filter}"));
        up.set_count_text(None);
        let compact = client.get(&url, &[]).await.body;
        up.set_pretty(true);
        let indented = client.get(&url, &[]).await.body;
        up.set_count_text(Some(count));
        assert_eq!(client.get(&url, &[]).await.body, indented, "{filter}");
        up.set_pretty(false);
        assert_eq!(client.get(&url, &[]).await.body, compact, "{filter}");
    }
    up.set_count_text(None);
    assert_eq!(
        client
            .get(&up.url("Customers?$count=true"), &[])
            .await
            .json()["@odata.count"],
        5
    );

    up.set_in_filter_status(Some(500));
    let filter = "Customers?$filter=ID%20in%20(1,2)";
    let r = client.get(&up.url(filter), &[]).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.json()["error"]["message"].is_string());
    up.set_in_filter_status(None);
    assert_eq!(ids(&client.get(&up.url(filter), &[]).await.json()).len(), 2);
}

#[tokio::test]
async fn respelled_keys_are_the_same_values_written_another_way() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Things", "Thing")
            .key("K", "Edm.Guid")
            .property("n", "Edm.Int32"),
    );
    let key = "0d8f5b3c-7d0e-4a1b-9c2d-3e4f5a6b7c8d";
    up.insert("Things", json!({"K": key, "n": 0}));
    let client = Client::default();
    up.set_respell_keys(true);
    let page = client.get(&up.url("Things"), &[]).await.json();
    assert_eq!(page["value"][0]["K"], key.to_ascii_uppercase());
    let one = client
        .get(&up.url(&format!("Things({key})")), &[])
        .await
        .json();
    assert_eq!(one["K"], key.to_ascii_uppercase());
    up.set_respell_keys(false);
    let page = client.get(&up.url("Things"), &[]).await.json();
    assert_eq!(page["value"][0]["K"], key);
}

#[tokio::test]
async fn own_change_tracking_answers_track_changes_with_a_delta_link_of_its_own() {
    let up = five().await;
    let client = Client::default();
    up.set_own_change_tracking(true);
    let r = client
        .get(&up.url("Customers"), &[("Prefer", "odata.track-changes")])
        .await;
    assert_eq!(r.header("preference-applied"), Some("odata.track-changes"));
    let link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&up.url("Customers?$deltatoken=")),
        "{link}"
    );
    // The service ignores its own token: the whole collection again.
    assert_eq!(ids(&client.get(&link, &[]).await.json()).len(), 5);
    let untracked = client.get(&up.url("Customers"), &[]).await.json();
    assert!(untracked.get("@odata.deltaLink").is_none(), "{untracked}");
    up.set_unasked_delta_links(true);
    let unasked = client.get(&up.url("Customers"), &[]).await.json();
    assert!(unasked["@odata.deltaLink"].is_string(), "{unasked}");
}

#[tokio::test]
async fn a_revoked_credential_is_refused_before_hooks_and_faults_see_it() {
    let up = five().await;
    let client = Client::default();
    up.revoke_credential("Bearer old");
    up.push_fault(Fault::Status {
        page: 0,
        status: 500,
        retry_after: None,
    });
    up.set_hook(|page| assert_ne!(page.request.header("authorization"), Some("Bearer old")));
    let r = client
        .get(&up.url("Customers"), &[("Authorization", "Bearer old")])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(up.pending_faults(), 1, "not counted");
    let r = client
        .get(&up.url("Customers"), &[("Authorization", "Bearer new")])
        .await;
    assert_eq!(r.status, 500);
}

#[tokio::test]
async fn a_metadata_delay_holds_only_metadata() {
    let up = five().await;
    let client = Client::default();
    up.set_metadata_delay(Some(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(client.get(&up.url("Customers"), &[]).await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(client.get(&up.url("$metadata"), &[]).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

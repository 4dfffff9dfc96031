//! A misbehaving upstream (C27-C29): failed pages, timeouts, broken connections, malformed payloads,
//! links off the upstream, silent truncation, paging that shifts under concurrent deletes. Whatever
//! happens, nothing partial is committed, no token breaks, and no entity that exists is reported
//! removed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use odata_sample_service::{Layer, LayerFuture, Next, RecordedRequest, error_reply};
use serde_json::{Value, json};
use support::gateway::{BehindGateway, Client, Gateway, Replica, Shape, TRACK};
use support::{EntitySetDef, FakeUpstream, Fault, Faults, PageHooks};

const ROOT: &str = "/odata/v4/shop";

async fn shop(n: i64, page: usize) -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("city", "Edm.String"),
    );
    up.insert_many("Customers", (1..=n).map(customer));
    up.set_page_size(Some(page));
    up
}

fn customer(i: i64) -> Value {
    json!({"ID": i, "name": format!("C{i}"), "city": if i % 2 == 0 { "Berlin" } else { "Rome" }})
}

/// A tracked read of `Customers{query}` through all its pages: its delta link.
async fn delta_link(client: &Client, gw: &Gateway, query: &str) -> String {
    let url = gw.url(&format!("{ROOT}/Customers{query}"));
    client.read_tracked(&url).await.1
}

fn ids(page: &Value) -> Vec<String> {
    let mut out: Vec<String> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e.get("id") {
            Some(id) => format!("-{}", id.as_str().unwrap()),
            None => format!("+{}", e["ID"]),
        })
        .collect();
    out.sort();
    out
}

/// Every fault fails the refresh with 502/504 and an OData error; afterwards the same token still
/// gives exactly the changes (nothing was committed in between) (C26, C28).
#[tokio::test]
async fn a_failed_refresh_commits_nothing_and_keeps_every_token_valid() {
    let up = shop(40, 10).await;
    let toml = "[upstream]\ntimeout = \"1s\"\nmax_retries = 0\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let link = delta_link(&client, &gw, "").await;
    up.delete("Customers", json!(2));
    up.update("Customers", json!(3), json!({"name": "changed"}));
    let other = up.url("Customers").replace("127.0.0.1", "localhost");
    let faults = [
        (
            Fault::Status {
                page: 2,
                status: 500,
                retry_after: None,
            },
            502,
        ),
        (
            Fault::Status {
                page: 1,
                status: 404,
                retry_after: None,
            },
            502,
        ),
        (
            Fault::Status {
                page: 3,
                status: 403,
                retry_after: None,
            },
            502,
        ),
        (Fault::ResetMidBody { page: 2 }, 502),
        (Fault::Malformed { page: 1 }, 502),
        (Fault::DropKey { page: 2 }, 502),
        (
            Fault::NextLinkTo {
                page: 1,
                url: other,
            },
            502,
        ),
        (
            Fault::NextLinkTo {
                page: 1,
                url: "http://169.254.169.254/latest/meta-data".into(),
            },
            502,
        ),
        (Fault::Delay { page: 2, ms: 2500 }, 504),
    ];
    for (fault, status) in faults {
        up.clear_faults();
        up.push_fault(fault.clone());
        let r = client.get(&link, &[]).await;
        assert_eq!(r.status.as_u16(), status, "{fault:?}: {}", r.text());
        let e = r.json();
        assert!(
            e["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{fault:?}"
        );
        assert!(
            !r.text().contains("127.0.0.1"),
            "no upstream internals: {}",
            r.text()
        );
    }
    up.clear_faults();
    let page = client.get(&link, &[]).await.json();
    assert_eq!(ids(&page), vec!["+3", "-Customers(2)"], "{page}");
}

#[tokio::test]
async fn rate_limited_pages_are_retried_after_retry_after() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(30, 10).await).await;
    up.push_fault(Fault::Status {
        page: 1,
        status: 429,
        retry_after: Some(0),
    });
    up.push_fault(Fault::Status {
        page: 1,
        status: 503,
        retry_after: Some(1),
    });
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 30);
}

#[tokio::test]
async fn rate_limiting_beyond_the_retry_budget_fails_cleanly() {
    let up = shop(30, 10).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("[upstream]\nmax_retries = 1\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    up.push_fault(Fault::Status {
        page: 0,
        status: 503,
        retry_after: Some(0),
    });
    up.push_fault(Fault::Status {
        page: 1,
        status: 503,
        retry_after: Some(0),
    });
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
}

/// Offset paging (like SAP CAP's) shifts every later row when an earlier one is deleted during the
/// enumeration, so one row is never seen. It must not become a tombstone (C27).
#[tokio::test]
async fn rows_skipped_by_shifting_pages_are_not_reported_removed_c27() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(50, 10).await).await;
    let link = delta_link(&client, &gw, "").await;
    let armed = Arc::new(AtomicBool::new(true));
    let flag = armed.clone();
    // After the first page of the next enumeration is served, delete rows from it.
    up.set_hook(move |req| {
        if req.index == 1 && flag.swap(false, Ordering::SeqCst) {
            req.upstream.delete("Customers", json!(1));
            req.upstream.delete("Customers", json!(2));
        }
    });
    let page = client.get(&link, &[]).await.json();
    up.clear_hook();
    assert!(!armed.load(Ordering::SeqCst), "the hook ran");
    // Rows 1 and 2 were read before they went; rows 11 and 12 shifted onto the served page and
    // were never seen, but they exist: no tombstone at all.
    assert_eq!(
        ids(&page),
        Vec::<String>::new(),
        "no false tombstones: {page}"
    );
    let next = client
        .get(page["@odata.deltaLink"].as_str().unwrap(), &[])
        .await
        .json();
    assert_eq!(ids(&next), vec!["-Customers(1)", "-Customers(2)"], "{next}");
}

#[tokio::test]
async fn confirmation_falls_back_when_the_upstream_rejects_in_and_or_c27() {
    for (reject_in, reject_or) in [(true, false), (true, true)] {
        let BehindGateway { up, gw, client } = BehindGateway::over(shop(30, 10).await).await;
        let link = delta_link(&client, &gw, "?$filter=city%20eq%20'Berlin'").await;
        up.set_reject_in(reject_in);
        up.set_reject_or(reject_or);
        up.delete("Customers", json!(4));
        up.update("Customers", json!(6), json!({"city": "Oslo"}));
        let r = client.get(&link, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let value = page["value"].as_array().unwrap();
        assert_eq!(value.len(), 2, "{page}");
        let reason = |id: &str| {
            value
                .iter()
                .find(|e| e["id"] == id)
                .map(|e| e["reason"].clone())
        };
        assert_eq!(reason("Customers(4)"), Some(json!("deleted")));
        assert_eq!(reason("Customers(6)"), Some(json!("changed")));
    }
}

#[tokio::test]
async fn duplicate_keys_across_pages_count_once() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(30, 10).await).await;
    let link = delta_link(&client, &gw, "").await;
    up.push_fault(Fault::DuplicateAcrossPages { page: 1 });
    up.update("Customers", json!(10), json!({"name": "x"}));
    let page = client.get(&link, &[]).await.json();
    assert_eq!(ids(&page), vec!["+10"], "{page}");
}

#[tokio::test]
async fn silent_truncation_is_detected_and_read_past_with_skip() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(45, 100).await).await;
    up.set_truncate_after(Some(20));
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 45);
}

#[tokio::test]
async fn truncation_that_cannot_be_read_past_fails_the_refresh() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(45, 100).await).await;
    let link = delta_link(&client, &gw, "").await;
    up.insert_many("Customers", (46..=60).map(customer));
    up.set_truncate_after(Some(20));
    // The upstream truncates and then rejects the $skip query that would read past it.
    up.push_fault(Fault::Status {
        page: 1,
        status: 400,
        retry_after: None,
    });
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    // Nothing was committed: once the upstream behaves, the same link gives exactly the inserts.
    up.set_truncate_after(None);
    let page = client.get(&link, &[]).await.json();
    assert_eq!(page["value"].as_array().unwrap().len(), 15, "{page}");
}

/// Sixteen clients polling one feed at once cause one or two upstream enumerations and all get
/// the same delta.
#[tokio::test]
async fn concurrent_requests_share_one_refresh() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(200, 50).await).await;
    let link = delta_link(&client, &gw, "").await;
    up.update("Customers", json!(7), json!({"name": "seven"}));
    up.delete("Customers", json!(8));
    up.push_fault(Fault::Delay { page: 0, ms: 300 });
    up.clear_requests();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, link) = (client.clone(), link.clone());
        tasks.push(tokio::spawn(async move { client.get(&link, &[]).await }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        answers.push(ids(&r.json()));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0], vec!["+7", "-Customers(8)"]);
    let first_pages = up
        .requests()
        .iter()
        .filter(|r| {
            r.collection_set.as_deref() == Some("Customers")
                && !r.path_and_query.contains("skiptoken")
        })
        .count();
    assert!((1..=2).contains(&first_pages), "{first_pages} enumerations");
}

#[tokio::test]
async fn a_recent_refresh_is_reused_within_min_refresh_interval() {
    let up = shop(20, 50).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("min_refresh_interval = \"1h\"\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    let link = delta_link(&client, &gw, "").await;
    up.clear_requests();
    for _ in 0..5 {
        assert_eq!(client.get(&link, &[]).await.status, 200);
    }
    assert_eq!(up.collection_requests("Customers"), 0);
}

/// Feeds are scoped by the Authorization header: credentials are forwarded upstream, and a token
/// used with other credentials is refused exactly like a forged one.
#[tokio::test]
async fn tokens_and_feeds_are_scoped_by_credentials() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(10, 50).await).await;
    let alice = [
        ("Prefer", "odata.track-changes"),
        ("Authorization", "Basic YWxpY2U6MQ=="),
    ];
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &alice)
        .await;
    let link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    assert!(
        up.requests()
            .iter()
            .any(|r| r.header("authorization") == Some("Basic YWxpY2U6MQ=="))
    );
    let as_alice = client.get(&link, &alice[1..]).await;
    assert_eq!(as_alice.status, 200);
    let forged = client
        .get(&format!("{}x", &link[..link.len() - 1]), &alice[1..])
        .await;
    for other in [vec![("Authorization", "Basic Ym9iOjI=")], vec![]] {
        let r = client.get(&link, &other).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], forged.json()["error"]["code"]);
    }
}

#[tokio::test]
async fn the_shared_identity_mode_serves_one_feed_to_everyone() {
    let up = shop(10, 50).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("[identity]\nmode = \"shared\"\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes"), ("Authorization", "a")],
        )
        .await;
    let link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    assert_eq!(
        client.get(&link, &[("Authorization", "b")]).await.status,
        200
    );
}

#[tokio::test]
async fn limits_are_enforced_with_clear_errors_and_nothing_committed() {
    let up = shop(30, 10).await;
    let toml = "[limits]\nmax_page_bytes = 600\nmax_entities_per_feed = 1000\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );

    let toml = "[limits]\nmax_entities_per_feed = 25\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );

    let toml = "[limits]\nmax_header_bytes = 8192\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let big = "x".repeat(20_000);
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("X-Big", big.as_str())],
        )
        .await;
    assert_eq!(r.status, 431, "{}", r.text());
}

/// C27 + C28 together: replicas converge and never lose a row that exists, while the upstream
/// changes during every enumeration (deletes and inserts between pages).
#[tokio::test]
async fn replicas_converge_while_the_upstream_changes_mid_enumeration_c27_c28() {
    for shape in [Shape::V40, Shape::V401] {
        let BehindGateway { up, gw, client } = BehindGateway::over(shop(120, 15).await).await;
        let mut replica = Replica::new("Customers", &["ID"], shape);
        replica
            .initial(&client, &gw.url(&format!("{ROOT}/Customers")))
            .await
            .unwrap();
        let counter = Arc::new(std::sync::atomic::AtomicI64::new(1000));
        let c = counter.clone();
        up.set_hook(move |req| {
            if req.index % 3 == 1 {
                let rows = req.upstream.rows("Customers");
                if let Some(r) = rows.get(req.index % rows.len().max(1)) {
                    req.upstream.delete("Customers", r["ID"].clone());
                }
                let id = c.fetch_add(1, Ordering::SeqCst);
                req.upstream.insert("Customers", customer(id));
            }
        });
        for round in 0..6 {
            replica.sync(&client).await.unwrap();
            // Changes made during the enumeration may land in the next delta; what the replica
            // holds must never include a row the upstream never had, and after a quiet sync it
            // must be exact.
            let _ = round;
        }
        up.clear_hook();
        replica.sync(&client).await.unwrap();
        replica.sync(&client).await.unwrap();
        assert_eq!(
            replica.rows,
            replica.expected(&up.rows("Customers"), |_| true),
            "{shape:?}"
        );
    }
}

/// The upstream refusing the client's own query or credentials on the first page is passed on with
/// its status, so that the client can tell its mistake from an outage (C26).
#[tokio::test]
async fn an_upstream_refusal_of_the_clients_query_keeps_its_status() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(10, 50).await).await;
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers?$filter=nosuch%20eq%201")),
            &TRACK,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    // The upstream's own code (the fake answers like CAP: the status).
    assert_eq!(e["error"]["code"], "400");
    assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    up.push_fault(Fault::Status {
        page: 0,
        status: 401,
        retry_after: None,
    });
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // The same refusal on a later page is the upstream's inconsistency: 502.
    up.push_fault(Fault::Status {
        page: 1,
        status: 401,
        retry_after: None,
    });
    up.set_page_size(Some(3));
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers?$select=name")), &TRACK)
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
}

/// An upstream that cannot count or order refuses what the gateway adds to the query; the read is
/// tried without those before the refusal is passed on to the client.
#[tokio::test]
async fn an_upstream_refusing_count_or_orderby_is_read_without_them() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(12, 50).await).await;
    up.clear_requests();
    up.push_fault(Fault::Status {
        page: 0,
        status: 400,
        retry_after: None,
    });
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 12);
    let pages = customer_pages(&up);
    assert!(
        pages[0].contains("count") && pages[0].contains("orderby"),
        "{pages:?}"
    );
    assert!(
        !pages[1].contains("count") && !pages[1].contains("orderby"),
        "{pages:?}"
    );
}

/// A first tracked read of all `Customers`, and the upstream pages it asked for, in order.
async fn first_read_pages(
    up: &FakeUpstream,
    gw: &Gateway,
    client: &Client,
) -> (Vec<Value>, String, Vec<String>) {
    up.clear_requests();
    let (entities, link) = client
        .read_tracked(&gw.url(&format!("{ROOT}/Customers")))
        .await;
    (entities, link, customer_pages(up))
}

/// The upstream's pages of `Customers` as requested, in order.
fn customer_pages(up: &FakeUpstream) -> Vec<String> {
    up.requests()
        .iter()
        .filter(|r| r.collection_set.as_deref() == Some("Customers"))
        .map(|r| r.path_and_query.clone())
        .collect()
}

fn asks_count(page: &str) -> bool {
    page.contains("$count=true")
}

/// The upstream copies `$count=true` into its nextLinks, as SAP CAP does, and would count the whole
/// collection again for every page. The count is asked for on the first page of each refresh only,
/// and a truncation past the first page is still read past (C27).
#[tokio::test]
async fn the_upstream_counts_once_per_refresh_and_truncation_is_still_noticed() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(45, 10).await).await;
    let (entities, link, pages) = first_read_pages(&up, &gw, &client).await;
    assert_eq!(entities.len(), 45);
    assert_eq!(pages.len(), 5, "{pages:?}");
    assert!(asks_count(&pages[0]), "{pages:?}");
    assert!(pages[1..].iter().all(|p| !asks_count(p)), "{pages:?}");

    // The upstream now stops after 25 rows without a nextLink: the count of the first page shows
    // the shortfall, the rest is read with $skip, and nothing is reported removed.
    up.insert("Customers", customer(46));
    up.set_truncate_after(Some(25));
    up.clear_requests();
    let page = client.get(&link, &[]).await.json();
    assert_eq!(ids(&page), vec!["+46"], "{page}");
    let pages = customer_pages(&up);
    assert!(asks_count(&pages[0]), "{pages:?}");
    assert!(pages.iter().any(|p| p.contains("$skip=")), "{pages:?}");
    assert_eq!(
        pages.iter().filter(|p| asks_count(p)).count(),
        1,
        "{pages:?}"
    );
}

/// Refuses a page that continues a `Customers` read without `$count` (as an upstream that checks
/// its links might).
struct LinksAsWritten;

impl Layer for LinksAsWritten {
    fn answer<'a>(&'a self, request: &'a RecordedRequest, next: Next<'a>) -> LayerFuture<'a> {
        let page = &request.path_and_query;
        if request.collection_set.as_deref() == Some("Customers")
            && page.contains("$skiptoken=")
            && !asks_count(page)
        {
            let reply = error_reply(400, "this link was not issued", None);
            return Box::pin(async move { reply });
        }
        Box::pin(next.run(request))
    }
}

/// An upstream that refuses its nextLink without `$count` gets that link and every later one as it
/// wrote them, and the read completes.
#[tokio::test]
async fn an_upstream_refusing_its_next_link_without_count_gets_its_links_as_written() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(45, 10).await).await;
    up.set_layer(Arc::new(LinksAsWritten));
    let (entities, link, pages) = first_read_pages(&up, &gw, &client).await;
    assert_eq!(entities.len(), 45);
    assert_eq!(pages.len(), 6, "{pages:?}");
    assert!(!asks_count(&pages[1]), "{pages:?}");
    assert!(
        pages
            .iter()
            .enumerate()
            .all(|(i, p)| i == 1 || asks_count(p)),
        "{pages:?}"
    );
    let page = client.get(&link, &[]).await.json();
    assert_eq!(ids(&page), Vec::<String>::new(), "{page}");
}

/// Answers the page after the first with a body that is no collection but ends with a nextLink,
/// while armed.
struct BadPageGoodTail(AtomicBool);

impl Layer for BadPageGoodTail {
    fn answer<'a>(&'a self, request: &'a RecordedRequest, next: Next<'a>) -> LayerFuture<'a> {
        let second = request.collection_set.as_deref() == Some("Customers")
            && request.path_and_query.contains("$skiptoken=10");
        if second && self.0.load(Ordering::SeqCst) {
            let mut reply = http::Response::new(odata_sample_service::ReplyBody::full(
                r#"{"value":5,"@odata.nextLink":"Customers?$skiptoken=20"}"#,
            ));
            reply.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return Box::pin(async move { reply });
        }
        Box::pin(next.run(request))
    }
}

/// The next page is asked for as soon as its link can be read off the end of a body; when the
/// body then fails to parse, the refresh fails with nothing committed (C28), and the same link
/// later gives exactly the changes.
#[tokio::test]
async fn a_page_that_ends_with_a_next_link_but_does_not_parse_fails_the_refresh() {
    let BehindGateway { up, gw, client } = BehindGateway::over(shop(45, 10).await).await;
    let layer = Arc::new(BadPageGoodTail(AtomicBool::new(false)));
    up.set_layer(layer.clone());
    let link = delta_link(&client, &gw, "").await;
    up.update("Customers", json!(44), json!({"name": "changed"}));
    layer.0.store(true, Ordering::SeqCst);
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"]["code"].as_str().is_some(), "{}", r.text());
    layer.0.store(false, Ordering::SeqCst);
    let page = client.get(&link, &[]).await.json();
    assert_eq!(ids(&page), vec!["+44"], "{page}");
}

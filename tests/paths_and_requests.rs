//! The request edge: paths that climb out of a route (C37), options a link cannot honour, slow or
//! silent clients, URIs over the limit, and a slow upstream `$metadata`. Raw TCP clients write
//! what curl `--path-as-is` would send, byte for byte.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::gateway::{Client, Gateway, Resp};
use support::shop::{ROOT, shop};
use support::{EntitySetDef, FakeUpstream, Fault, Faults};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACK: [(&str, &str); 1] = [("Prefer", "odata.track-changes")];

/// Write `request` on a fresh connection and read until the server closes or `wait` passes.
/// Returns what came back and how long until the connection was closed (`None`: still open).
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        let left = wait.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// A GET written by hand, the path exactly as given, closing after the answer.
fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

/// The status and JSON body of a raw answer; asserts an OData error with `OData-Version`.
fn odata_error(answer: &str) -> (u16, Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete answer: {answer:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    assert!(
        head.to_ascii_lowercase().contains("\r\nodata-version: 4.0"),
        "no OData-Version: {head}"
    );
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(json["error"]["code"].is_string(), "{json}");
    assert!(json["error"]["message"].is_string(), "{json}");
    (status, json)
}

fn assert_odata_error(r: &Resp, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("odata-version"), Some("4.0"));
    let json = r.json();
    assert!(json["error"]["code"].is_string(), "{json}");
    json["error"]["message"].as_str().unwrap().to_owned()
}

// ------------------------------------------------------------------ path traversal (C37)

/// C37: `..` and `%2e%2e` that climb out of the route are refused before anything is forwarded,
/// whatever the method and whether or not the request is tracked.
#[tokio::test]
async fn dot_segments_that_leave_the_route_are_400_and_never_reach_the_upstream_c37() {
    let up = shop(3).await;
    let gw = Gateway::start(&up.base_url()).await;
    let escapes = [
        format!("{ROOT}/../../../_admin/stats"),
        format!("{ROOT}/%2e%2e/%2E%2E/%2e%2e/_admin/stats"),
        format!("{ROOT}/Customers/../../x"),
        format!("{ROOT}/.."),
        format!("{ROOT}/..%2F..%2F_admin/stats"),
    ];
    for path in &escapes {
        let (answer, _) = raw(gw.addr, &get(path, ""), Duration::from_secs(10)).await;
        assert_eq!(odata_error(&answer).0, 400, "{path}: {answer}");
        let tracked = get(path, "Prefer: odata.track-changes\r\n");
        let (answer, _) = raw(gw.addr, &tracked, Duration::from_secs(10)).await;
        assert_eq!(odata_error(&answer).0, 400, "{path} tracked: {answer}");
    }
    let body = r#"{"reset":true}"#;
    let post = format!(
        "POST {ROOT}/%2e%2e/%2e%2e/%2e%2e/_admin/reset HTTP/1.1\r\nHost: gw\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (answer, _) = raw(gw.addr, post.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(odata_error(&answer).0, 400, "{answer}");
    let seen: Vec<String> = up
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert!(seen.is_empty(), "forwarded upstream: {seen:?}");
}

/// C37: dot segments that stay inside the route are resolved before the request is forwarded;
/// an encoded slash inside a key literal reaches the upstream as it came.
#[tokio::test]
async fn dot_segments_inside_the_route_are_resolved_and_encoded_slashes_kept_c37() {
    let up = shop(3).await;
    let gw = Gateway::start(&up.base_url()).await;
    let (answer, _) = raw(
        gw.addr,
        &get(&format!("{ROOT}/Orders/%2e%2e/./Customers(1)"), ""),
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (answer, _) = raw(
        gw.addr,
        &get(&format!("{ROOT}/Customers('a%2Fb')"), ""),
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    let seen: Vec<String> = up
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        seen,
        [
            format!("{ROOT}/Customers(1)"),
            format!("{ROOT}/Customers('a%2Fb')")
        ]
    );
}

// ------------------------------------------------------------------ options on links

/// The delta link of a tracked read of `Customers` + `query`, after one page walk.
async fn delta_link(client: &Client, gw: &Gateway, query: &str) -> String {
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers{query}")), &TRACK)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["@odata.deltaLink"]
        .as_str()
        .expect("a delta link")
        .to_owned()
}

/// `$apply` and a foreign `$skiptoken` would change the answer, but a delta link's query is fixed:
/// refused like `$filter` is, on the delta, its `/$count`, `latest` and a next link.
#[tokio::test]
async fn apply_and_a_foreign_skiptoken_on_a_link_are_400() {
    let up = shop(5).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let link = delta_link(&client, &gw, "").await;
    let count = link.replace("/Customers?", "/Customers/$count?");
    for url in [
        format!("{link}&$apply=groupby((city))"),
        format!("{link}&$skiptoken=100"),
        format!("{link}&$compute=ID%20add%201%20as%20n"),
        format!("{count}&$apply=groupby((city))"),
        gw.url(&format!(
            "{ROOT}/Customers?$deltatoken=latest&$apply=groupby((city))"
        )),
    ] {
        let r = client.get(&url, &[]).await;
        let message = assert_odata_error(&r, 400);
        assert!(message.contains('$'), "{url}: {message}");
    }
    let page = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes, odata.maxpagesize=2")],
        )
        .await;
    let next = page.json()["@odata.nextLink"].as_str().unwrap().to_owned();
    let r = client
        .get(&format!("{next}&$apply=groupby((city))"), &[])
        .await;
    assert_odata_error(&r, 400);
    assert_eq!(client.get(&next, &[]).await.status, 200);
}

/// A custom option chooses what the upstream answers (`sap-client` picks the tenant), so one that
/// differs from the feed's is refused on its delta and next links; the feed's own is accepted.
#[tokio::test]
async fn custom_options_other_than_the_feeds_are_400_on_its_links_and_its_own_are_accepted() {
    let up = shop(5).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let link = delta_link(&client, &gw, "?sap-client=100").await;
    for other in [
        "sap-client=200",
        "sap-language=DE",
        "sap-client=100&sap-client=200",
    ] {
        let r = client.get(&format!("{link}&{other}"), &[]).await;
        let message = assert_odata_error(&r, 400);
        assert!(message.contains("sap-"), "{message}");
    }
    let r = client.get(&format!("{link}&sap-client=100"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(client.get(&link, &[]).await.status, 200);

    let page = client
        .get(
            &gw.url(&format!("{ROOT}/Customers?sap-client=100")),
            &[("Prefer", "odata.track-changes, odata.maxpagesize=2")],
        )
        .await;
    let next = page.json()["@odata.nextLink"].as_str().unwrap().to_owned();
    assert_odata_error(
        &client.get(&format!("{next}&sap-client=200"), &[]).await,
        400,
    );
    let r = client.get(&format!("{next}&sap-client=100"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A feed without custom options takes none on its links.
    let plain = delta_link(&client, &gw, "").await;
    assert_odata_error(
        &client.get(&format!("{plain}&sap-client=100"), &[]).await,
        400,
    );
}

// ------------------------------------------------------------------ slow and silent clients

const SHORT_TIMEOUTS: &str = "[limits]\nheader_read_timeout = \"300ms\"\n\
    body_read_timeout = \"300ms\"\ntracked_request_timeout = \"500ms\"\n";

/// A client that sends half a head, one that sends nothing, and one that stops inside the
/// HTTP/2 preface, and an idle kept-alive one, all lose their connection once the header timeout
/// has passed.
#[tokio::test]
async fn clients_that_stall_before_a_complete_head_or_stay_idle_are_disconnected_in_time() {
    let up = shop(1).await;
    let gw = Gateway::start_with(&up.base_url(), Some(SHORT_TIMEOUTS), |_| {}).await;
    let half = format!("GET {ROOT}/Customers HTTP/1.1\r\nHost: gw\r\nAccept: app");
    for partial in [half.as_bytes(), b"", b"PRI * HTTP/2.0\r\n"] {
        let (_, closed) = raw(gw.addr, partial, Duration::from_secs(5)).await;
        let closed = closed.unwrap_or_else(|| {
            panic!(
                "still open after 5 s: {:?}",
                String::from_utf8_lossy(partial)
            )
        });
        assert!(closed < Duration::from_secs(3), "{closed:?}");
    }
    // A kept-alive connection that stays idle after its answer is closed the same way.
    let request = format!("GET {ROOT}/Customers HTTP/1.1\r\nHost: gw\r\n\r\n");
    let (answer, closed) = raw(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed.is_some_and(|c| c < Duration::from_secs(3)),
        "{closed:?}"
    );
    // A client that sends its head in time is served as before.
    let r = Client::default()
        .get(&gw.url(&format!("{ROOT}/Customers")), &[])
        .await;
    assert_eq!(r.status, 200);
}

/// A request body that stops arriving is answered 408 with an OData error once the body timeout
/// has passed, instead of holding an upstream request open.
#[tokio::test]
async fn a_request_body_that_stalls_is_408_within_the_body_timeout() {
    let up = shop(1).await;
    let gw = Gateway::start_with(&up.base_url(), Some(SHORT_TIMEOUTS), |_| {}).await;
    let head = format!(
        "POST {ROOT}/Customers HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"ID\": 7,"
    );
    let started = Instant::now();
    let (answer, _) = raw(gw.addr, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let (status, json) = odata_error(&answer);
    assert_eq!(status, 408, "{json}");
    assert!(up.row("Customers", json!(7)).is_none());
}

/// A tracked request whose upstream stalls is answered 504 with an OData error at the deadline.
#[tokio::test]
async fn a_tracked_request_whose_upstream_stalls_is_504_at_the_deadline() {
    let up = shop(3).await;
    let gw = Gateway::start_with(&up.base_url(), Some(SHORT_TIMEOUTS), |_| {}).await;
    up.push_fault(Fault::Delay { page: 0, ms: 5_000 });
    let started = Instant::now();
    let r = Client::default()
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_odata_error(&r, 504);
}

// ------------------------------------------------------------------ URI length (C37)

/// C37: a URI over `limits.max_uri_bytes` (32 KiB by default) gets 414 as an OData error with
/// `OData-Version`, the way an oversized head gets 431, and is not forwarded.
#[tokio::test]
async fn a_uri_over_the_limit_is_414_with_an_odata_error_c37() {
    let up = shop(1).await;
    let gw = Gateway::start(&up.base_url()).await;
    let path = format!("{ROOT}/Customers?$filter={}", "a%20".repeat(10_000));
    for extra in ["", "Prefer: odata.track-changes\r\n"] {
        let (answer, _) = raw(gw.addr, &get(&path, extra), Duration::from_secs(10)).await;
        let (status, json) = odata_error(&answer);
        assert_eq!(status, 414, "{json}");
    }
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("[limits]\nmax_uri_bytes = 4096\n"),
        |_| {},
    )
    .await;
    let path = format!("{ROOT}/Customers?$filter={}", "a%20".repeat(1_100));
    let (answer, _) = raw(gw.addr, &get(&path, ""), Duration::from_secs(10)).await;
    assert_eq!(odata_error(&answer).0, 414);
    assert!(up.requests().is_empty());
}

/// C37: a request line over hyper's own limit (64 KiB), and a head beyond its buffer, are refused
/// before the gateway's handler runs; the answer is still an OData error, not a bare status.
#[tokio::test]
async fn heads_refused_before_routing_still_get_an_odata_error_c37() {
    let up = shop(1).await;
    let gw = Gateway::start(&up.base_url()).await;
    let path = format!("{ROOT}/Customers?$filter={}", "a".repeat(70_000));
    let (answer, _) = raw(gw.addr, &get(&path, ""), Duration::from_secs(10)).await;
    assert_eq!(odata_error(&answer).0, 414, "{answer}");
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("[limits]\nmax_header_bytes = 8192\n"),
        |_| {},
    )
    .await;
    let big = format!("X-Big: {}\r\n", "x".repeat(40_000));
    let (answer, _) = raw(
        gw.addr,
        &get(&format!("{ROOT}/Customers"), &big),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(odata_error(&answer).0, 431, "{answer}");
    assert!(up.requests().is_empty());
}

// ------------------------------------------------------------------ $metadata

/// A shop whose `$metadata` keys `Customers` and `Orders`.
async fn two_sets() -> FakeUpstream {
    let up = shop(3).await;
    up.define_set(
        EntitySetDef::new("Orders", "Order")
            .key("ID", "Edm.Int32")
            .property("total", "Edm.Int32"),
    );
    up.insert_many("Orders", (1..=3).map(|i| json!({"ID": i, "total": i * 10})));
    up
}

/// While a `$metadata` fetch is slow, tracked requests on sets the cached document already keys
/// go on; requests that need the document share one fetch.
#[tokio::test]
async fn a_slow_metadata_fetch_blocks_only_the_requests_that_need_it() {
    let up = two_sets().await;
    let toml = "[upstream]\nmetadata_recheck_interval = \"100ms\"\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.metadata_requests(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;

    up.set_metadata_delay(Some(Duration::from_millis(1_500)));
    // Sets the cached document does not know: past the recheck interval they refetch, together.
    let unknown = |set: &'static str| {
        let client = client.clone();
        let url = gw.url(&format!("{ROOT}/{set}"));
        tokio::spawn(async move { client.get(&url, &TRACK).await.status })
    };
    let first = unknown("Suppliers");
    let second = unknown("Shippers");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = client.get(&gw.url(&format!("{ROOT}/Orders")), &TRACK).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "waited {:?} for another set's $metadata",
        started.elapsed()
    );
    assert_eq!(first.await.unwrap(), 404);
    assert_eq!(second.await.unwrap(), 404);
    assert_eq!(up.metadata_requests(), 2, "one shared refetch");
}

//! HTTP and interop hygiene (C2, C30, C31, C36): the gateway never hands out a link it refuses,
//! varies on `Prefer`, answers `HEAD` and `OPTIONS` on its own links itself, counts a repeated
//! preference once, caps an oversized page size, and keeps the client's HTTP version.

mod support;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::gateway::{Client, Gateway, Resp};
use support::shop::{ROOT, shop};
use support::{FakeUpstream, Faults, LinkStyle};

const TRACK: [(&str, &str); 1] = [("Prefer", "odata.track-changes")];

/// The `Prefer` values of the upstream's requests whose path and query contain `needle`.
fn prefers_sent(up: &FakeUpstream, needle: &str) -> Vec<String> {
    up.requests()
        .iter()
        .filter(|r| r.path_and_query.contains(needle))
        .flat_map(|r| {
            r.headers
                .get_all("prefer")
                .iter()
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn first_delta_link(client: &Client, gw: &Gateway) -> String {
    let (_, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    link
}

/// C2, C36: a tracked-looking read the gateway answers untracked (here an ordered read larger
/// than the largest page) goes upstream without `track-changes`, the other preferences kept; so
/// an upstream that tracks changes itself (odatapy's server) answers without a delta link of its
/// own, and the client gets no link the gateway would refuse.
#[tokio::test]
async fn an_untracked_read_goes_upstream_without_track_changes_and_carries_no_delta_link() {
    let up = shop(10).await;
    up.set_own_change_tracking(true);
    up.set_link_style(LinkStyle::Absolute);
    let toml = "page_size = 5\nmax_page_size = 5\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers?$orderby=name")),
            &[(
                "Prefer",
                "return=minimal, odata.track-changes, odata.maxpagesize=50",
            )],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert!(body.get("@odata.deltaLink").is_none(), "{body}");
    assert!(
        !r.header("preference-applied")
            .unwrap_or("")
            .contains("track-changes"),
        "{:?}",
        r.header("preference-applied")
    );
    let sent = prefers_sent(&up, "orderby=name");
    assert!(!sent.is_empty());
    for prefer in &sent {
        assert!(!prefer.contains("track-changes"), "{prefer}");
        assert!(prefer.contains("return=minimal"), "{prefer}");
        assert!(prefer.contains("odata.maxpagesize=50"), "{prefer}");
    }

    // A single entity is not tracked either (C2): the preference stays here too.
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers(1)")), &TRACK)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(prefers_sent(&up, "Customers(1)").is_empty());
}

/// C36: an upstream delta link that a passed-through answer still carries (an upstream that
/// tracks every read) is left pointing at the upstream, where it works, instead of being rewritten
/// onto the gateway, which refuses every token but its own.
#[tokio::test]
async fn an_upstream_delta_link_in_a_passed_through_answer_is_not_turned_into_a_gateway_link() {
    let up = shop(3).await;
    up.set_own_change_tracking(true);
    up.set_unasked_delta_links(true);
    up.set_link_style(LinkStyle::Absolute);
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers?$select=name")), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let link = body["@odata.deltaLink"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&up.base_url()), "{link}");
    assert!(
        body["@odata.context"]
            .as_str()
            .unwrap()
            .starts_with(&gw.url(ROOT)),
        "{body}"
    );
    let followed = client.get(&link, &[]).await;
    assert_eq!(followed.status, 200, "{}", followed.text());
    // The gateway's own links are still the gateway's.
    let ours = first_delta_link(&client, &gw).await;
    assert!(ours.starts_with(&gw.url(ROOT)), "{ours}");
    assert_eq!(client.get(&ours, &[]).await.status, 200);
}

/// C30: tracked answers vary on `Prefer` as well as `OData-MaxVersion`, and so do reads passed
/// through, since the same URL with `track-changes` gets the gateway's answer.
#[tokio::test]
async fn tracked_and_passed_through_reads_vary_on_prefer() {
    let up = shop(3).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let vary = |r: &Resp| -> Vec<String> {
        r.headers
            .get_all("vary")
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .collect()
    };
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_eq!(r.status, 200);
    let v = vary(&r);
    assert!(
        v.contains(&"prefer".into()) && v.contains(&"odata-maxversion".into()),
        "{v:?}"
    );
    let link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    let r = client.get(&link, &[]).await;
    assert!(vary(&r).contains(&"prefer".into()), "{:?}", vary(&r));
    let r = client.get(&gw.url(&format!("{ROOT}/Customers")), &[]).await;
    assert_eq!(r.status, 200);
    assert!(vary(&r).contains(&"prefer".into()), "{:?}", vary(&r));
}

/// C31: `HEAD` on a delta link is answered by the gateway like `GET`, without a body, and never
/// reaches the upstream with the gateway's token.
#[tokio::test]
async fn head_on_a_delta_link_is_answered_by_the_gateway_like_get() {
    let up = shop(3).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let link = first_delta_link(&client, &gw).await;
    up.update(
        "Customers",
        2.into(),
        serde_json::json!({"name": "changed"}),
    );
    let get = client.get(&link, &[]).await;
    assert_eq!(get.status, 200, "{}", get.text());
    let head = client.send(Method::HEAD, &link, &[], Bytes::new()).await;
    assert_eq!(head.status, 200, "{}", head.text());
    assert!(head.body.is_empty());
    for name in ["content-type", "odata-version", "vary"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    let leaked: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.contains("deltatoken"))
        .collect();
    assert!(leaked.is_empty(), "{:?}", leaked[0].path_and_query);
}

/// C31: `OPTIONS` on a delta link or a next link of the gateway answers `Allow` from the gateway;
/// `HEAD` and `OPTIONS` on ordinary URLs still pass through.
#[tokio::test]
async fn options_on_a_gateway_link_answers_allow_and_ordinary_urls_pass_through() {
    let up = shop(5).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let link = first_delta_link(&client, &gw).await;
    let first = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes, odata.maxpagesize=2")],
        )
        .await;
    let next = first.json()["@odata.nextLink"].as_str().unwrap().to_owned();
    up.clear_requests();
    for url in [&link, &next] {
        let r = client.send(Method::OPTIONS, url, &[], Bytes::new()).await;
        assert!(r.status.is_success(), "{}: {}", r.status, r.text());
        let allow = r.header("allow").unwrap_or("");
        assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
        assert!(!allow.contains("POST"), "{allow}");
    }
    let head = client.send(Method::HEAD, &next, &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert!(
        up.requests()
            .iter()
            .all(|r| !r.path_and_query.contains("token"))
    );

    let plain = gw.url(&format!("{ROOT}/Customers"));
    client.send(Method::HEAD, &plain, &[], Bytes::new()).await;
    client
        .send(Method::OPTIONS, &plain, &[], Bytes::new())
        .await;
    let methods: Vec<Method> = up.requests().into_iter().map(|r| r.method).collect();
    assert!(methods.contains(&Method::HEAD), "{methods:?}");
    assert!(methods.contains(&Method::OPTIONS), "{methods:?}");
}

/// C30 (RFC 7240 §2): a preference given twice counts once, the first.
#[tokio::test]
async fn a_repeated_preference_counts_once_the_first() {
    let up = shop(10).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[
                ("Prefer", "odata.track-changes, odata.maxpagesize=2"),
                ("Prefer", "odata.maxpagesize=5"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 2);
    let applied = r.header("preference-applied").unwrap();
    assert!(applied.contains("odata.maxpagesize=2"), "{applied}");
}

/// C21: a `maxpagesize` too large for the integer type is capped at `max_page_size`, like any
/// other page size above it, rather than ignored.
#[tokio::test]
async fn an_oversized_maxpagesize_is_capped_at_max_page_size() {
    let up = shop(10).await;
    let toml = "page_size = 2\nmax_page_size = 4\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[(
                "Prefer",
                "odata.track-changes, odata.maxpagesize=99999999999999999999",
            )],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 4);
    assert!(
        r.header("preference-applied")
            .unwrap()
            .contains("odata.maxpagesize=4")
    );
}

/// An HTTP/1.0 upstream's answer goes to an HTTP/1.1 client as HTTP/1.1, and the client's
/// connection stays open for the next request.
#[tokio::test]
async fn an_http10_upstream_answer_is_relayed_as_http11_with_keep_alive() {
    let up = shop(3).await;
    up.set_http10(true);
    let gw = Gateway::start(&up.base_url()).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for path in ["Customers", "Customers(1)", "$metadata"] {
        sender.ready().await.expect("the connection stays open");
        let request = Request::builder()
            .uri(format!("{ROOT}/{path}"))
            .header("host", gw.addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.expect(path);
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.version(), Version::HTTP_11, "{path}");
        assert!(
            response
                .headers()
                .get("connection")
                .is_none_or(|v| v != "close"),
            "{path}"
        );
        response.into_body().collect().await.expect(path);
    }
}

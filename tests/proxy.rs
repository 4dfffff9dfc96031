//! Black-box tests of pass-through: everything the gateway does not track is forwarded to the
//! upstream — any method, path, query and header but hop-by-hop ones — and the answer comes back
//! as the upstream gave it, except that absolute links to the upstream (`@odata.context`,
//! `@odata.nextLink`, `Location`) are rewritten to the gateway (DESIGN "Links, paths and the
//! reverse-proxy chain"). Errors the gateway makes itself are OData error bodies (C26).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::gateway::{BehindGateway, Client, Gateway, Resp};
use support::shop::{ROOT, customer, shop};
use support::{EntitySetDef, FakeUpstream, Fault, Faults, LinkStyle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALL_STYLES: [LinkStyle; 3] = [
    LinkStyle::Relative,
    LinkStyle::Absolute,
    LinkStyle::RootRelative,
];

/// What a client of the gateway should see for an upstream answer: the same text with the
/// upstream's service root replaced by the gateway's.
fn on_gateway(up: &FakeUpstream, gw: &Gateway, text: &str) -> String {
    text.replace(&up.base_url(), &gw.url(ROOT))
}

/// The same request straight to the upstream and through the gateway.
async fn both(
    client: &Client,
    up: &FakeUpstream,
    gw: &Gateway,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (Resp, Resp) {
    let direct = client
        .get(&format!("{}{path_and_query}", up.base_url()), headers)
        .await;
    let via = client
        .get(&gw.url(&format!("{ROOT}{path_and_query}")), headers)
        .await;
    (direct, via)
}

/// An OData error body (C26): `{"error":{"code":"…","message":"…"}}`, both non-empty.
fn assert_odata_error(r: &Resp) -> Value {
    let body = r.json();
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !code.is_empty() && !message.is_empty(),
        "not an OData error: {}",
        r.text()
    );
    body
}

#[tokio::test]
async fn entity_property_count_and_service_document_reads_pass_through_with_links_rewritten() {
    for style in ALL_STYLES {
        let up = shop(10).await;
        up.set_link_style(style);
        let gw = Gateway::start(&up.base_url()).await;
        let client = Client::default();
        for path in [
            "",
            "/Customers(3)",
            "/Customers(3)?$select=name,city",
            "/Customers(3)/name",
            "/Customers(3)/name/$value",
            "/Customers/$count",
        ] {
            let (direct, via) = both(&client, &up, &gw, path, &[]).await;
            assert_eq!(via.status, 200, "{style:?} {path}: {}", via.text());
            assert_eq!(
                via.header("content-type"),
                direct.header("content-type"),
                "{style:?} {path}"
            );
            assert_eq!(
                via.text(),
                on_gateway(&up, &gw, &direct.text()),
                "{style:?} {path}"
            );
            assert!(
                !via.text().contains(&up.base_url()),
                "{style:?} {path}: an upstream link leaked: {}",
                via.text()
            );
        }
        if style == LinkStyle::Absolute {
            let entity = client
                .get(&gw.url(&format!("{ROOT}/Customers(3)")), &[])
                .await
                .json();
            assert_eq!(
                entity["@odata.context"],
                gw.url(&format!("{ROOT}/$metadata#Customers/$entity"))
            );
            assert_eq!(entity["name"], "Customer 3");
        }
    }
}

/// A small answer comes back with a `Content-Length` that matches its body, not chunked: as the
/// upstream sent it when it holds no upstream link, recomputed when one was rewritten.
#[tokio::test]
async fn small_pass_through_answers_keep_an_exact_content_length_with_links_rewritten_or_not() {
    for style in [LinkStyle::Relative, LinkStyle::Absolute] {
        let up = shop(10).await;
        up.set_link_style(style);
        let gw = Gateway::start(&up.base_url()).await;
        let client = Client::default();
        let (direct, via) = both(&client, &up, &gw, "/Customers(3)", &[]).await;
        assert_eq!(via.status, 200);
        assert_eq!(via.header("transfer-encoding"), None, "{style:?}");
        let length: usize = via
            .header("content-length")
            .unwrap_or_else(|| panic!("{style:?}: no Content-Length"))
            .parse()
            .unwrap();
        assert_eq!(length, via.body.len(), "{style:?}");
        assert_eq!(
            via.text(),
            on_gateway(&up, &gw, &direct.text()),
            "{style:?}"
        );
        if style == LinkStyle::Relative {
            assert_eq!(via.body, direct.body);
        } else {
            assert!(via.text().contains(&gw.url(ROOT)), "{}", via.text());
            assert_ne!(via.body, direct.body);
        }
    }
}

#[tokio::test]
async fn untracked_collection_follows_the_upstreams_next_links_through_the_gateway() {
    for style in ALL_STYLES {
        let up = shop(237).await;
        up.set_page_size(Some(10));
        up.set_link_style(style);
        let gw = Gateway::start(&up.base_url()).await;
        let client = Client::default();
        let mut url = url::Url::parse(&gw.url(&format!("{ROOT}/Customers"))).unwrap();
        let mut ids = Vec::new();
        let mut pages = 0;
        loop {
            let r = client.get(url.as_str(), &[]).await;
            assert_eq!(r.status, 200, "{style:?} {url}: {}", r.text());
            // Not tracked: no Preference-Applied, no delta link (C2).
            assert!(r.header("preference-applied").is_none());
            let page = r.json();
            assert!(page.get("@odata.deltaLink").is_none(), "{page}");
            pages += 1;
            ids.extend(
                page["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["ID"].as_i64().unwrap()),
            );
            let context = page["@odata.context"].as_str().unwrap();
            if style == LinkStyle::Absolute {
                assert_eq!(context, gw.url(&format!("{ROOT}/$metadata#Customers")));
            }
            let Some(next) = page["@odata.nextLink"].as_str() else {
                break;
            };
            if style == LinkStyle::Absolute {
                assert!(
                    next.starts_with(&gw.url(&format!("{ROOT}/Customers?"))),
                    "nextLink not rewritten to the gateway: {next}"
                );
            }
            // Relative links resolve against the page's URL, which is on the gateway.
            url = url.join(next).unwrap();
            assert_eq!(
                url.port(),
                Some(gw.addr.port()),
                "{style:?}: left the gateway"
            );
        }
        assert_eq!(ids, (1..=237).collect::<Vec<_>>(), "{style:?}");
        assert_eq!(pages, 24, "{style:?}");
        // Every page the client read came from the upstream, through the gateway.
        assert_eq!(up.collection_requests("Customers"), 24, "{style:?}");
    }
}

#[tokio::test]
async fn post_creates_upstream_answers_201_and_rewrites_location_to_the_gateway() {
    for style in [LinkStyle::Relative, LinkStyle::Absolute] {
        let up = shop(3).await;
        up.set_link_style(style);
        let gw = Gateway::start(&up.base_url()).await;
        let client = Client::default();
        // Large enough to stream in several chunks, well below the default body limit.
        let new = json!({"ID": 500, "name": "N".repeat(300_000), "city": "Oslo", "score": 1});
        let r = client
            .send_json(
                Method::POST,
                &gw.url(&format!("{ROOT}/Customers")),
                &[],
                &new,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{style:?}: {}", r.text());
        assert_eq!(
            r.header("location"),
            Some(gw.url(&format!("{ROOT}/Customers(500)")).as_str()),
            "{style:?}"
        );
        let mut body = r.json();
        let context = body.as_object_mut().unwrap().remove("@odata.context");
        assert_eq!(body, new, "{style:?}");
        if style == LinkStyle::Absolute {
            assert_eq!(
                context.unwrap(),
                gw.url(&format!("{ROOT}/$metadata#Customers/$entity"))
            );
        }
        assert_eq!(up.row("Customers", json!(500)).unwrap(), new);
        let post = up
            .requests()
            .into_iter()
            .find(|q| q.method == Method::POST)
            .unwrap();
        assert_eq!(post.path_and_query, format!("{ROOT}/Customers"));
        assert_eq!(post.header("content-type"), Some("application/json"));
        assert_eq!(post.body_json().unwrap(), new);
        // The Location works on the gateway.
        let location = r.header("location").unwrap();
        assert_eq!(client.get(location, &[]).await.json()["city"], "Oslo");
    }
}

#[tokio::test]
async fn post_with_return_minimal_answers_204_with_location_on_the_gateway() {
    let BehindGateway { up, gw, .. } = BehindGateway::shop(3).await;
    let r = Client::default()
        .send_json(
            Method::POST,
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "return=minimal")],
            &customer(77),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(up.row("Customers", json!(77)).unwrap(), customer(77));
    let on_gw = gw.url(&format!("{ROOT}/Customers(77)"));
    assert_eq!(r.header("location"), Some(on_gw.as_str()));
}

/// `OData-EntityId` carries the same absolute URL as `Location` (and as `@odata.id` in a body,
/// which is rewritten), so a client that reads the new entity from it must stay on the gateway.
#[tokio::test]
async fn odata_entityid_header_is_rewritten_to_the_gateway() {
    let BehindGateway { up: _up, gw, .. } = BehindGateway::shop(3).await;
    let r = Client::default()
        .send_json(
            Method::POST,
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "return=minimal")],
            &customer(77),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(
        r.header("odata-entityid"),
        Some(gw.url(&format!("{ROOT}/Customers(77)")).as_str()),
        "OData-EntityId still names the upstream"
    );
}

#[tokio::test]
async fn patch_put_and_delete_reach_the_upstream_with_their_statuses() {
    let up = shop(5).await;
    up.set_link_style(LinkStyle::Absolute);
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let entity = |i: i64| gw.url(&format!("{ROOT}/Customers({i})"));

    let r = client
        .send_json(Method::PATCH, &entity(2), &[], &json!({"name": "Patched"}))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(
        up.row("Customers", json!(2)).unwrap(),
        json!({"ID": 2, "name": "Patched", "city": "Rome", "score": 14})
    );

    let r = client
        .send_json(
            Method::PATCH,
            &entity(2),
            &[("Prefer", "return=representation")],
            &json!({"score": 99}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(body["score"], 99);
    assert_eq!(
        body["@odata.context"],
        gw.url(&format!("{ROOT}/$metadata#Customers/$entity"))
    );

    let r = client
        .send_json(Method::PUT, &entity(3), &[], &json!({"name": "Put"}))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(
        up.row("Customers", json!(3)).unwrap(),
        json!({"ID": 3, "name": "Put"}),
        "PUT replaces the whole entity"
    );

    let r = client.send(Method::DELETE, &entity(4), &[], "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(up.row("Customers", json!(4)).is_none());
    let again = client.send(Method::DELETE, &entity(4), &[], "").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_odata_error(&again);

    let methods: Vec<Method> = up.requests().into_iter().map(|q| q.method).collect();
    assert_eq!(
        methods,
        [
            Method::PATCH,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
            Method::DELETE
        ]
    );
}

#[tokio::test]
async fn if_match_reaches_the_upstream_and_its_412_comes_back() {
    let up = shop(2).await;
    up.set_etags(true);
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers(1)"));
    let etag = client
        .get(&url, &[])
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    assert_eq!(Some(etag.clone()), up.etag("Customers", json!(1)));
    let stale = client
        .send_json(
            Method::PATCH,
            &url,
            &[("If-Match", "W/\"0000000000000000\"")],
            &json!({"name": "Lost update"}),
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_odata_error(&stale);
    assert_eq!(up.row("Customers", json!(1)).unwrap()["name"], "Customer 1");
    let fresh = client
        .send_json(
            Method::PATCH,
            &url,
            &[("If-Match", &etag)],
            &json!({"name": "Kept"}),
        )
        .await;
    assert_eq!(fresh.status, StatusCode::NO_CONTENT, "{}", fresh.text());
    assert_eq!(up.row("Customers", json!(1)).unwrap()["name"], "Kept");
}

#[tokio::test]
async fn custom_request_headers_reach_the_upstream_and_its_headers_come_back() {
    let BehindGateway { up, gw, .. } = BehindGateway::shop(20).await;
    let r = Client::default()
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[
                ("Authorization", "Bearer secret-token"),
                ("X-Custom", "custom value"),
                ("X-Echo", "echo me"),
                ("Accept-Language", "de-CH"),
                ("Prefer", "odata.maxpagesize=5"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The fake echoes X-Echo, and honours the page size it was asked for.
    assert_eq!(r.header("x-echo"), Some("echo me"));
    assert_eq!(r.header("preference-applied"), Some("odata.maxpagesize=5"));
    assert_eq!(r.header("odata-version"), Some("4.0"));
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 5);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer secret-token"));
    assert_eq!(seen.header("x-custom"), Some("custom value"));
    assert_eq!(seen.header("accept-language"), Some("de-CH"));
    assert_eq!(seen.header("prefer"), Some("odata.maxpagesize=5"));
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let BehindGateway { up, gw, .. } = BehindGateway::shop(2).await;
    let headers = [
        ("Connection", "keep-alive, X-Hop-Secret"),
        ("X-Hop-Secret", "for the next hop only"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Authorization", "Basic cHJveHk6cHc="),
        ("Proxy-Connection", "keep-alive"),
        ("X-End-To-End", "kept"),
    ];
    let (direct, via) = both(&Client::default(), &up, &gw, "/Customers(1)", &headers).await;
    assert_eq!(via.status, 200, "{}", via.text());
    assert_eq!(via.body, direct.body);
    let [sent, seen] = <[_; 2]>::try_from(up.requests()).unwrap();
    // The client really sent them: they reach the upstream when it is asked directly.
    assert_eq!(sent.header("x-hop-secret"), Some("for the next hop only"));
    assert_eq!(sent.header("keep-alive"), Some("timeout=5"));
    for name in [
        "x-hop-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            seen.header(name).is_none(),
            "{name} was forwarded: {:?}",
            seen.headers
        );
    }
    assert!(
        !seen
            .header("connection")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("x-hop-secret"),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
}

#[tokio::test]
async fn query_strings_are_forwarded_verbatim() {
    let up = shop(30).await;
    up.define_set(
        EntitySetDef::new("Products", "Product")
            .key("Code", "Edm.String")
            .property("n", "Edm.Int32"),
    );
    up.insert("Products", json!({"Code": "a/b c", "n": 1}));
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    for path_and_query in [
        "/Customers?$filter=city%20eq%20'Paris'%20and%20score%20gt%2010&$select=ID,name&$orderby=ID%20desc&$top=3&$count=true",
        "/Customers?%24filter=ID%20le%202&sap-client=100&x=a%2Bb+c&flag",
        "/Customers?$filter=name%20eq%20'Customer%2012'",
        "/Products('a%2Fb%20c')",
        "/Products?$filter=Code%20eq%20'a%2Fb%20c'",
    ] {
        up.clear_requests();
        let (direct, via) = both(&client, &up, &gw, path_and_query, &[]).await;
        assert_eq!(via.status, 200, "{path_and_query}: {}", via.text());
        assert_eq!(via.body, direct.body, "{path_and_query}");
        let seen = up.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[1].path_and_query,
            format!("{ROOT}{path_and_query}"),
            "the gateway changed the request target"
        );
    }
    let first = client
        .get(
            &gw.url(&format!(
                "{ROOT}/Customers?$filter=city%20eq%20'Paris'&$orderby=ID%20desc&$top=2"
            )),
            &[],
        )
        .await
        .json();
    let ids: Vec<&Value> = first["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["ID"])
        .collect();
    assert_eq!(ids, [&json!(28), &json!(25)]);
}

#[tokio::test]
async fn upstream_errors_pass_through_with_status_headers_and_body() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(5).await;
    for (path, status) in [
        ("/Customers(999)", 404),
        ("/Nowhere", 404),
        ("/Customers?$filter=nonsense%20eq", 400),
        ("/Customers?$top=-1", 400),
    ] {
        let (direct, via) = both(&client, &up, &gw, path, &[]).await;
        assert_eq!(via.status.as_u16(), status, "{path}: {}", via.text());
        assert_eq!(via.body, direct.body, "{path}");
        assert_odata_error(&via);
    }
    up.push_fault(Fault::Status {
        page: 0,
        status: 503,
        retry_after: Some(7),
    });
    let r = client.get(&gw.url(&format!("{ROOT}/Customers")), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(
        assert_odata_error(&r)["error"]["message"],
        "injected fault: status 503"
    );
}

const SMALL_BODY_LIMIT: &str = "[limits]\nmax_request_body_bytes = 1024\n";

#[tokio::test]
async fn a_request_body_over_the_limit_is_413_with_an_odata_error_and_never_reaches_the_upstream_c26()
 {
    let BehindGateway { up, gw, client } =
        BehindGateway::over_with(shop(1).await, Some(SMALL_BODY_LIMIT), |_| {}).await;
    let url = gw.url(&format!("{ROOT}/Customers"));
    let big = json!({"ID": 9, "name": "x".repeat(2000)});
    let r = client.send_json(Method::POST, &url, &[], &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert_odata_error(&r);
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    assert!(up.row("Customers", json!(9)).is_none());

    // Just below the limit is fine.
    let small = json!({"ID": 10, "name": "x".repeat(900)});
    assert!(small.to_string().len() <= 1024);
    let r = client.send_json(Method::POST, &url, &[], &small).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// One HTTP/1.1 exchange over a fresh connection, written by hand (for bodies without a
/// Content-Length). Returns the response head and body as text.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the server closes; a reset after the answer still leaves the answer.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Without a Content-Length the limit can only be found while the body streams; the client
/// should still learn that its body was too large, not that the upstream is down.
#[tokio::test]
async fn a_chunked_request_body_over_the_limit_is_413_c26() {
    let up = shop(1).await;
    let gw = Gateway::start_with(&up.base_url(), Some(SMALL_BODY_LIMIT), |_| {}).await;
    let body = json!({"ID": 9, "name": "x".repeat(3000)}).to_string();
    let mut request = format!(
        "POST {ROOT}/Customers HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        gw.addr
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(700) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(gw.addr, &request).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "expected 413, got: {answer}"
    );
    assert!(answer.contains("\"error\""), "{answer}");
    assert!(up.row("Customers", json!(9)).is_none());
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_with_an_odata_error_c26() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&format!("http://127.0.0.1:{port}{ROOT}")).await;
    let client = Client::default();
    let url = |p: &str| gw.url(&format!("{ROOT}{p}"));
    let answers = [
        client.get(&url("/Customers(1)"), &[]).await,
        client.get(&url("/$metadata"), &[]).await,
        client
            .send_json(Method::POST, &url("/Customers"), &[], &customer(1))
            .await,
        client
            .get(&url("/Customers"), &[("Prefer", "odata.track-changes")])
            .await,
    ];
    for r in answers {
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
        assert!(
            r.header("content-type")
                .unwrap_or_default()
                .contains("json")
        );
        let body = assert_odata_error(&r);
        // No upstream internals (C26): neither its address nor the socket error.
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains(&port.to_string()), "{message}");
        assert!(!message.to_lowercase().contains("refused"), "{message}");
    }
}

#[tokio::test]
async fn a_path_outside_every_route_is_a_404_odata_error_c26() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(1).await;
    for path in [
        "/",
        "/odata/v4",
        "/other/Customers",
        "/odata/v4/shopping/Customers",
        "/metrics",
    ] {
        let r = client.get(&gw.url(path), &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text());
        assert_odata_error(&r);
    }
    let r = client
        .send_json(Method::POST, &gw.url("/other/Customers"), &[], &customer(2))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_odata_error(&r);
    assert!(up.requests().is_empty(), "{:?}", up.requests());
}

/// Read `Customers` page by page under a route `/crm` for an upstream at `/odata/v4/shop` writing
/// links in `style`, and create one entity: every link in the answers must name the prefix.
async fn read_and_create_under_a_route_prefix(style: LinkStyle) {
    let up = shop(25).await;
    up.set_page_size(Some(10));
    up.set_link_style(style);
    let toml = format!(
        "[[route]]\nprefix = \"/crm\"\nupstream = \"{}\"\n",
        up.base_url()
    );
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let client = Client::default();
    let mut url = url::Url::parse(&gw.url("/crm/Customers")).unwrap();
    let mut ids = Vec::new();
    loop {
        let r = client.get(url.as_str(), &[]).await;
        assert_eq!(r.status, 200, "{style:?} {url}: {}", r.text());
        let page = r.json();
        ids.extend(
            page["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["ID"].clone()),
        );
        let context = url.join(page["@odata.context"].as_str().unwrap()).unwrap();
        assert_eq!(
            context.as_str(),
            gw.url("/crm/$metadata#Customers"),
            "{style:?}: context URL"
        );
        let Some(next) = page["@odata.nextLink"].as_str() else {
            break;
        };
        url = url.join(next).unwrap();
        assert!(
            url.as_str().starts_with(&gw.url("/crm/Customers?")),
            "{style:?}: nextLink {next} leads to {url}"
        );
    }
    assert_eq!(ids.len(), 25, "{style:?}");
    let r = client
        .send_json(Method::POST, &gw.url("/crm/Customers"), &[], &customer(26))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location"),
        Some(gw.url("/crm/Customers(26)").as_str())
    );
}

#[tokio::test]
async fn absolute_and_relative_links_follow_a_route_prefix_that_differs_from_the_upstream_path() {
    read_and_create_under_a_route_prefix(LinkStyle::Absolute).await;
    read_and_create_under_a_route_prefix(LinkStyle::Relative).await;
}

/// `/odata/v4/shop/Customers?$skiptoken=10` from the upstream is a path on the gateway that no
/// route serves; it must become `/crm/Customers?$skiptoken=10`.
#[tokio::test]
async fn root_relative_links_follow_a_route_prefix_that_differs_from_the_upstream_path() {
    read_and_create_under_a_route_prefix(LinkStyle::RootRelative).await;
}

/// A few MB of collection, in one page or in many: every byte comes through as the upstream sent
/// it, except upstream links — including those inside entity data, which land on chunk boundaries
/// of the stream somewhere.
#[tokio::test]
async fn a_large_collection_streams_through_unchanged_apart_from_links() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Documents", "Document")
            .key("ID", "Edm.Int32")
            .property("title", "Edm.String")
            .property("source", "Edm.String"),
    );
    let base = up.base_url();
    up.insert_many(
        "Documents",
        (1..=12_000).map(|i| {
            json!({
                "ID": i,
                "title": format!("Document {i} {}", "·".repeat(i as usize % 97)),
                "source": format!("{base}/Documents({i})"),
            })
        }),
    );
    up.set_link_style(LinkStyle::Absolute);
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();

    for page_size in [None, Some(2500)] {
        up.set_page_size(page_size);
        let mut direct_url = format!("{base}/Documents");
        let mut via_url = gw.url(&format!("{ROOT}/Documents"));
        let mut total = 0;
        let mut pages = 0;
        loop {
            let direct = client.get(&direct_url, &[]).await;
            let via = client.get(&via_url, &[]).await;
            assert_eq!(via.status, 200);
            assert_eq!(via.text(), on_gateway(&up, &gw, &direct.text()));
            total += via.body.len();
            pages += 1;
            let (d, v) = (direct.json(), via.json());
            match (d["@odata.nextLink"].as_str(), v["@odata.nextLink"].as_str()) {
                (Some(d), Some(v)) => {
                    direct_url = d.to_owned();
                    via_url = v.to_owned();
                }
                (None, None) => break,
                other => panic!("next links differ: {other:?}"),
            }
        }
        assert!(total > 2_000_000, "only {total} bytes");
        assert_eq!(pages, if page_size.is_some() { 5 } else { 1 });
    }
}

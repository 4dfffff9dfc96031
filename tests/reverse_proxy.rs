//! Black-box tests of links behind a reverse proxy: `--public-url`, `Forwarded` and
//! `X-Forwarded-*` from trusted proxies only, hostile Host values, and a real nginx in front of the
//! gateway. Test names say the behaviour; comments cite CONFORMANCE.md rules.

mod support;

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use support::gateway::{Client, Gateway, GatewayProcess, Resp};
use support::nginx::{Nginx, nginx_binary};
use support::shop::names_only;
use support::{FakeUpstream, LinkStyle};

const ROOT: &str = "/odata/v4/shop";

/// An upstream with `n` customers that pages by 10 and writes absolute links, so that every link
/// of a passed-through answer must be rewritten.
async fn shop(n: i64) -> FakeUpstream {
    let up = names_only(n).await;
    up.set_page_size(Some(10));
    up.set_link_style(LinkStyle::Absolute);
    up
}

/// Every link a client could follow in a JSON answer: context, next and delta links in both
/// spellings, and the contexts of tombstones.
fn links(body: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let names = [
        "@odata.context",
        "@odata.nextLink",
        "@odata.deltaLink",
        "@context",
        "@nextLink",
        "@deltaLink",
    ];
    let mut collect = |v: &Value| {
        for n in names {
            if let Some(s) = v.get(n).and_then(Value::as_str) {
                found.push(s.to_owned());
            }
        }
    };
    collect(body);
    for item in body["value"].as_array().into_iter().flatten() {
        collect(item);
    }
    found
}

/// Assert that every link in `body` starts with `base`.
fn assert_links_under(body: &Value, base: &str) {
    let all = links(body);
    assert!(!all.is_empty(), "no links in {body}");
    for link in all {
        assert!(link.starts_with(base), "{link} is not under {base}");
    }
}

/// Follow a public link through the gateway's own address (what the outer proxy would do).
fn via(link: &str, public_base: &str, gateway_base: &str) -> String {
    let rest = link
        .strip_prefix(public_base)
        .unwrap_or_else(|| panic!("{link} is not under {public_base}"));
    format!("{gateway_base}{rest}")
}

fn track_paged() -> [(&'static str, &'static str); 1] {
    [("Prefer", "odata.track-changes, odata.maxpagesize=10")]
}

// ------------------------------------------------------------------ --public-url

#[tokio::test]
async fn a_public_url_puts_every_link_there_tracked_or_passed_through_c9_c22() {
    let up = shop(25).await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.public_url = Some("https://api.example.com/gw".into());
    })
    .await;
    let public = format!("https://api.example.com/gw{ROOT}");
    let local = gw.url(ROOT);
    let client = Client::default();

    // Tracked: context, next links and the delta link (C9, C22).
    let mut url = gw.url(&format!("{ROOT}/Customers"));
    let mut seen = 0;
    let delta_link = loop {
        let r = client.get(&url, &track_paged()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        assert_links_under(&page, &public);
        assert_eq!(
            page["@odata.context"],
            json!(format!("{public}/$metadata#Customers"))
        );
        seen += page["value"].as_array().unwrap().len();
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = via(next, &public, &local),
            None => break page["@odata.deltaLink"].as_str().unwrap().to_owned(),
        }
    };
    assert_eq!(seen, 25);
    assert!(
        delta_link.starts_with(&format!("{public}/Customers?$deltatoken=")),
        "{delta_link}"
    );
    up.delete("Customers", json!(3));
    up.update("Customers", json!(4), json!({"name": "renamed"}));
    let page = client
        .get(&via(&delta_link, &public, &local), &[])
        .await
        .json();
    assert_links_under(&page, &public);
    assert_eq!(
        page["@odata.context"],
        json!(format!("{public}/$metadata#Customers/$delta"))
    );
    assert_eq!(page["value"].as_array().unwrap().len(), 2, "{page}");

    // Passed through: the upstream's absolute links are rewritten onto the public URL.
    let mut url = gw.url(&format!("{ROOT}/Customers"));
    let mut pages = 0;
    loop {
        let r = client.get(&url, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(!r.text().contains(&up.base_url()), "{}", r.text());
        let page = r.json();
        assert_links_under(&page, &public);
        pages += 1;
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = via(next, &public, &local),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let one = client
        .get(&gw.url(&format!("{ROOT}/Customers(1)")), &[])
        .await
        .json();
    assert_eq!(
        one["@odata.context"],
        json!(format!("{public}/$metadata#Customers/$entity"))
    );
    let created = client
        .send(
            Method::POST,
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Content-Type", "application/json")],
            r#"{"ID":100,"name":"new"}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(
        created.header("location"),
        Some(format!("{public}/Customers(100)").as_str())
    );
}

#[tokio::test]
async fn root_relative_upstream_links_are_rewritten_onto_the_public_url() {
    let up = shop(25).await;
    up.set_link_style(LinkStyle::RootRelative);
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.public_url = Some("https://api.example.com/gw".into());
    })
    .await;
    let public = format!("https://api.example.com/gw{ROOT}");
    let request = format!("{public}/Customers");
    let page = Client::default()
        .get(&gw.url(&format!("{ROOT}/Customers")), &[])
        .await
        .json();
    // A client resolves each link against the URL it asked for; it must stay under the public URL.
    let base = url::Url::parse(&request).unwrap();
    for link in links(&page) {
        let resolved = base.join(&link).unwrap();
        assert!(
            resolved.as_str().starts_with(&format!("{public}/")),
            "{link} resolves to {resolved}, outside {public}"
        );
    }
}

#[tokio::test]
async fn an_expired_delta_link_sends_the_client_to_the_public_url_c25() {
    let up = shop(5).await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.public_url = Some("https://api.example.com/gw".into());
        f.token_ttl = Some("1s".into());
    })
    .await;
    let public = format!("https://api.example.com/gw{ROOT}");
    let client = Client::default();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers?$filter=ID%20gt%202")),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = client.get(&via(&link, &public, &gw.url(ROOT)), &[]).await;
    assert_eq!(r.status, 410, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "DeltaTokenExpired");
    let location = r.header("location").expect("Location").to_owned();
    assert!(
        location.starts_with(&format!("{public}/Customers")),
        "{location}"
    );
    assert!(!location.contains("deltatoken"), "{location}");
    // It is the defining query, and it works (through the outer proxy).
    let again = client
        .get(
            &via(&location, &public, &gw.url(ROOT)),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["value"].as_array().unwrap().len(), 3);
}

// ------------------------------------------------------------------ forwarding headers

/// The links of a tracked read and of a passed-through read, sent with `headers`.
async fn answers(gw: &Gateway, headers: &[(&str, &str)]) -> (Resp, Resp) {
    let client = Client::default();
    let mut tracked_headers = headers.to_vec();
    tracked_headers.push(("Prefer", "odata.track-changes, odata.maxpagesize=10"));
    let tracked = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &tracked_headers)
        .await;
    let passed = client
        .get(&gw.url(&format!("{ROOT}/Customers")), headers)
        .await;
    (tracked, passed)
}

async fn assert_answers_under(gw: &Gateway, headers: &[(&str, &str)], base: &str) {
    let (tracked, passed) = answers(gw, headers).await;
    for r in [tracked, passed] {
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_links_under(&body, base);
        assert!(body.get("@odata.nextLink").is_some(), "{body}");
    }
}

#[tokio::test]
async fn forwarding_headers_of_a_trusted_proxy_set_scheme_host_and_prefix_of_links() {
    let up = shop(15).await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    assert_answers_under(
        &gw,
        &[("Forwarded", "for=192.0.2.60;proto=https;host=pub.example")],
        &format!("https://pub.example{ROOT}/"),
    )
    .await;
    assert_answers_under(
        &gw,
        &[(
            "Forwarded",
            "for=192.0.2.60;proto=https;host=\"pub.example:8443\"",
        )],
        &format!("https://pub.example:8443{ROOT}/"),
    )
    .await;
    assert_answers_under(
        &gw,
        &[
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "pub.example:8443"),
            ("X-Forwarded-Prefix", "/gw"),
        ],
        &format!("https://pub.example:8443/gw{ROOT}/"),
    )
    .await;
    // Through a chain of proxies, the first value is the client-facing one.
    assert_answers_under(
        &gw,
        &[
            ("X-Forwarded-Proto", "https, http"),
            ("X-Forwarded-Host", "pub.example, inner.local:8080"),
        ],
        &format!("https://pub.example{ROOT}/"),
    )
    .await;
}

#[tokio::test]
async fn forwarding_headers_of_an_untrusted_peer_are_ignored_and_the_host_header_is_used() {
    let up = shop(15).await;
    let forwarded: &[(&str, &str)] = &[
        ("Host", "gw.internal:8080"),
        ("Forwarded", "proto=https;host=pub.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "pub.example"),
        ("X-Forwarded-Prefix", "/gw"),
    ];
    let expected = format!("http://gw.internal:8080{ROOT}/");
    // Without trusted proxies, and with trusted proxies that do not include the peer.
    let untrusted = Gateway::start(&up.base_url()).await;
    assert_answers_under(&untrusted, forwarded, &expected).await;
    let elsewhere = Gateway::start_with(&up.base_url(), None, |f| {
        f.trusted_proxies = vec!["10.0.0.0/8".into(), "192.168.0.0/16".into()];
    })
    .await;
    assert_answers_under(&elsewhere, forwarded, &expected).await;
}

/// Whether a link contains nothing of a hostile header value.
fn assert_clean(link: &str, what: &str) {
    for bad in ['"', ' ', '@', '<', '>', '\'', '\\'] {
        assert!(!link.contains(bad), "{what}: {bad:?} in {link}");
    }
    assert!(!link.contains("evil"), "{what}: {link}");
    let parsed = url::Url::parse(link).unwrap_or_else(|e| panic!("{what}: {link}: {e}"));
    assert!(parsed.username().is_empty(), "{what}: {link}");
}

#[tokio::test]
async fn hostile_host_and_forwarding_values_never_end_up_in_links() {
    let up = shop(15).await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    let cases: &[&[(&str, &str)]] = &[
        &[("Host", "evil.example\" onload=\"x")],
        &[("Host", "user@evil.example")],
        &[("Host", "evil.example/path")],
        &[("Host", "<evil.example>")],
        &[("X-Forwarded-Host", "evil example")],
        &[("X-Forwarded-Host", "\"evil.example\"")],
        &[("X-Forwarded-Host", "a@evil.example")],
        &[("X-Forwarded-Host", "evil.example\\x")],
        &[
            ("X-Forwarded-Proto", "javascript"),
            ("X-Forwarded-Host", "ok.example"),
        ],
        &[("X-Forwarded-Prefix", "/gw\" x=\"evil")],
        &[("X-Forwarded-Prefix", "/gw<evil>")],
        &[("Forwarded", "host=\"evil@x.example\";proto=https")],
        &[("Forwarded", "host=\"evil example\"")],
        &[("Forwarded", "proto=\"https\\\"evil\"")],
    ];
    for headers in cases {
        let what = format!("{headers:?}");
        let (tracked, passed) = answers(&gw, headers).await;
        for r in [tracked, passed] {
            // Refusing the request is fine too; what must never happen is a hostile link.
            if r.status == 400 {
                continue;
            }
            assert_eq!(r.status, 200, "{what}: {}", r.text());
            for link in links(&r.json()) {
                assert_clean(&link, &what);
            }
        }
    }
}

#[tokio::test]
async fn a_request_with_an_invalid_host_header_is_refused_rfc9112() {
    // RFC 9112 §3.2: a server MUST answer 400 to a request whose Host has an invalid value.
    let up = shop(5).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    for host in ["evil.example\" x", "user@evil.example", "a b"] {
        let r = client
            .get(
                &gw.url(&format!("{ROOT}/Customers")),
                &[("Host", host), ("Prefer", "odata.track-changes")],
            )
            .await;
        assert_eq!(r.status, 400, "Host {host:?}: {}", r.text());
    }
}

// ------------------------------------------------------------------ a real nginx

#[tokio::test]
#[ignore = "needs a real nginx; run by .ci/run, which installs it"]
async fn behind_nginx_every_link_points_at_nginx_and_following_them_through_nginx_works() {
    // Ignored in a plain `cargo test`; a run that asks for it needs nginx.
    let binary = nginx_binary().expect("nginx is not installed: this test needs a real nginx");
    let up = shop(25).await;
    let (_dir, data) = support::gateway::data_dir();
    let gw = GatewayProcess::spawn(&up.base_url(), &data, &["--trusted-proxy", "127.0.0.1"]);
    let nginx = Nginx::start(&binary, gw.addr.port());
    let public = format!("{}{ROOT}", nginx.public_base());
    let client = Client::default();

    // Tracked read, page by page through nginx: next links and the delta link on nginx (C9, C22).
    let mut url = format!("{public}/Customers");
    let mut ids = Vec::new();
    let delta_link = loop {
        let r = client.get(&url, &track_paged()).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let page = r.json();
        assert_links_under(&page, &public);
        ids.extend(
            page["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["ID"].clone()),
        );
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_owned(),
            None => break page["@odata.deltaLink"].as_str().unwrap().to_owned(),
        }
    };
    assert_eq!(ids.len(), 25);
    assert!(
        delta_link.starts_with(&format!("{public}/Customers?$deltatoken=")),
        "{delta_link}"
    );

    // The delta link, followed through nginx, has the changes and links on nginx.
    up.delete("Customers", json!(7));
    up.update("Customers", json!(8), json!({"name": "renamed"}));
    let r = client.get(&delta_link, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_links_under(&page, &public);
    let value = page["value"].as_array().unwrap();
    assert_eq!(value.len(), 2, "{page}");
    assert!(value.iter().any(|e| e["id"] == "Customers(7)"));
    assert!(value.iter().any(|e| e["ID"] == 8 && e["name"] == "renamed"));
    let next_delta = page["@odata.deltaLink"].as_str().unwrap();
    let r = client.get(next_delta, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"], json!([]));

    // Passed through: the upstream's absolute links are rewritten to nginx and work there.
    let mut url = format!("{public}/Customers");
    let mut pages = 0;
    loop {
        let r = client.get(&url, &[]).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        assert!(!r.text().contains(&up.base_url()), "{}", r.text());
        let page = r.json();
        assert_links_under(&page, &public);
        pages += 1;
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let created = client
        .send(
            Method::POST,
            &format!("{public}/Customers"),
            &[("Content-Type", "application/json")],
            r#"{"ID":100,"name":"new"}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("location").unwrap().to_owned();
    assert_eq!(location, format!("{public}/Customers(100)"));
    let r = client.get(&location, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "new");
}

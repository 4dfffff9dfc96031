//! Black-box tests of `$batch` (C34): tracked reads, delta links and next links inside a JSON or
//! multipart batch are answered by the gateway; the other parts go upstream as one batch, in
//! order, change sets and Content-IDs intact; links in every part point at the gateway.

mod support;

use http::Method;
use serde_json::{Value, json};
use support::gateway::{BehindGateway, Client, Gateway, Resp};
use support::shop::{ROOT, shop};
use support::{Faults, LinkStyle};

const TRACK: &str = "odata.track-changes";

async fn post_json(client: &Client, gw: &Gateway, body: &Value) -> Resp {
    client
        .send_json(Method::POST, &gw.url(&format!("{ROOT}/$batch")), &[], body)
        .await
}

async fn post_multipart(client: &Client, gw: &Gateway, body: String) -> Resp {
    client
        .send(
            Method::POST,
            &gw.url(&format!("{ROOT}/$batch")),
            &[("Content-Type", "multipart/mixed; boundary=batch_1")],
            body,
        )
        .await
}

fn get_part(id: &str, target: &str, prefer: Option<&str>) -> String {
    let prefer = prefer
        .map(|p| format!("Prefer: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "--batch_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: {id}\r\n\r\nGET {target} HTTP/1.1\r\nAccept: application/json\r\n{prefer}\r\n\r\n"
    )
}

/// The top-level parts of a multipart answer, without their delimiters.
fn parts_of(resp: &Resp) -> Vec<String> {
    let ct = resp.header("content-type").unwrap_or_default();
    let boundary = ct
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim_matches('"');
    let text = resp.text();
    let mut pieces: Vec<String> = text
        .split(&format!("--{boundary}"))
        .skip(1)
        .map(str::to_owned)
        .collect();
    assert_eq!(pieces.pop().as_deref().map(str::trim), Some("--"), "{text}");
    pieces
}

/// The JSON body of an `application/http` answer part.
fn json_of(part: &str) -> Value {
    let start = part.find('{').expect("a JSON body");
    let end = part.rfind('}').expect("a JSON body");
    serde_json::from_str(&part[start..=end]).expect("JSON")
}

/// No request the upstream received carried a gateway token (C10, C34).
fn no_gateway_token_reached(up: &support::FakeUpstream) {
    for r in up.requests() {
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !r.path_and_query.contains("deltatoken")
                && !body.contains("deltatoken")
                && !r.path_and_query.contains("skiptoken=odg.")
                && !body.contains("skiptoken=odg."),
            "a gateway token went upstream: {} {body}",
            r.path_and_query
        );
        assert!(
            !body.contains(TRACK),
            "a tracked part went upstream: {body}"
        );
    }
}

/// Three customers behind a gateway, the upstream writing absolute links, so that an upstream
/// address left in an answer shows.
async fn absolute_links_behind_gateway() -> BehindGateway {
    let up = shop(3).await;
    up.set_link_style(LinkStyle::Absolute);
    BehindGateway::over(up).await
}

#[tokio::test]
async fn json_batch_answers_a_tracked_get_itself_and_forwards_an_ordinary_get_c34() {
    let up = shop(5).await;
    up.set_link_style(LinkStyle::Absolute);
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let batch = json!({"requests": [
        {"id": "t", "method": "GET", "url": "Customers", "headers": {"prefer": TRACK}},
        {"id": "o", "method": "GET", "url": "Customers(3)"},
    ]});
    let resp = post_json(&client, &gw, &batch).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        !resp.text().contains(&up.base_url()),
        "upstream address leaked: {}",
        resp.text()
    );
    let body = resp.json();
    let responses = body["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0]["id"], "t");
    assert_eq!(responses[0]["status"], 200);
    assert_eq!(responses[0]["headers"]["preference-applied"], TRACK);
    assert_eq!(
        responses[0]["body"]["value"].as_array().map(Vec::len),
        Some(5)
    );
    let delta = responses[0]["body"]["@odata.deltaLink"]
        .as_str()
        .expect("a delta link (C3)")
        .to_owned();
    assert!(delta.starts_with(&gw.url(ROOT)), "{delta}");
    assert_eq!(responses[1]["id"], "o");
    assert_eq!(responses[1]["body"]["name"], "Customer 3");

    // The delta link inside a batch is answered by the gateway too (C11).
    up.delete("Customers", json!(2));
    let resp = post_json(
        &client,
        &gw,
        &json!({"requests": [{"id": "d", "method": "GET", "url": delta}]}),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = &resp.json()["responses"][0];
    assert_eq!(answer["id"], "d");
    assert_eq!(answer["body"]["value"][0]["id"], "Customers(2)", "{answer}");
    assert!(answer["body"]["@odata.deltaLink"].is_string());
    no_gateway_token_reached(&up);
}

#[tokio::test]
async fn multipart_batch_with_a_delta_link_and_a_change_set_keeps_order_and_content_ids_c34() {
    let BehindGateway { up, gw, client } = absolute_links_behind_gateway().await;
    let (_, delta) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &[("Prefer", TRACK)])
        .await;
    up.update("Customers", json!(1), json!({"name": "Renamed"}));
    let body = [
        get_part("1", &delta, None),
        "--batch_1\r\nContent-Type: multipart/mixed; boundary=cs_1\r\n\r\n--cs_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\nPOST Customers HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"ID\":42,\"name\":\"New\",\"city\":\"Oslo\",\"score\":1}\r\n--cs_1--\r\n\r\n".to_owned(),
        get_part("3", "Customers(3)", None),
        "--batch_1--\r\n".to_owned(),
    ]
    .concat();
    let resp = post_multipart(&client, &gw, body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("multipart/mixed")
    );
    assert!(
        !resp.text().contains(&up.base_url()),
        "upstream address leaked: {}",
        resp.text()
    );
    let parts = parts_of(&resp);
    assert_eq!(parts.len(), 3, "{}", resp.text());
    // Part 1: the delta, from the gateway.
    assert!(parts[0].contains("Content-ID: 1"), "{}", parts[0]);
    assert!(parts[0].contains("HTTP/1.1 200"), "{}", parts[0]);
    let d = json_of(&parts[0]);
    assert_eq!(d["value"][0]["name"], "Renamed", "{d}");
    assert!(d["@odata.context"].as_str().unwrap().ends_with("/$delta"));
    // Part 2: the change set, answered upstream, its Content-ID kept and Location on the gateway.
    assert!(
        parts[1].contains("Content-Type: multipart/mixed"),
        "{}",
        parts[1]
    );
    assert!(parts[1].contains("Content-ID: 2"), "{}", parts[1]);
    assert!(parts[1].contains("HTTP/1.1 201"), "{}", parts[1]);
    assert!(
        parts[1].contains(&gw.url(&format!("{ROOT}/Customers(42)"))),
        "{}",
        parts[1]
    );
    assert!(up.row("Customers", json!(42)).is_some());
    // Part 3: an ordinary read, after the change set.
    assert!(parts[2].contains("Content-ID: 3"), "{}", parts[2]);
    assert_eq!(json_of(&parts[2])["name"], "Customer 3");
    no_gateway_token_reached(&up);
}

#[tokio::test]
async fn a_passed_through_multipart_batch_has_links_rewritten_in_every_part_c34() {
    let BehindGateway { up, gw, client } = absolute_links_behind_gateway().await;
    let body = [
        get_part("a", "Customers(1)", None),
        get_part("b", "Customers?$top=1", None),
        "--batch_1--\r\n".to_owned(),
    ]
    .concat();
    let resp = post_multipart(&client, &gw, body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        !resp.text().contains(&up.base_url()),
        "upstream address leaked: {}",
        resp.text()
    );
    let parts = parts_of(&resp);
    assert_eq!(parts.len(), 2);
    for part in &parts {
        let context = json_of(part)["@odata.context"]
            .as_str()
            .unwrap_or_else(|| panic!("{part:?}"))
            .to_owned();
        assert!(context.starts_with(&gw.url(ROOT)), "{context}");
        // Each inner Content-Length matches the rewritten body.
        let length: usize = part
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("a length")
            .trim()
            .parse()
            .unwrap();
        let body = part
            .split("\r\n\r\n")
            .nth(2)
            .unwrap()
            .trim_end_matches("\r\n");
        assert_eq!(length, body.len(), "{part}");
    }
}

#[tokio::test]
async fn a_malformed_batch_is_400_with_an_odata_error_c26() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(1).await;
    let broken = [
        (
            "multipart/mixed; boundary=batch_1",
            "--batch_1\r\nContent-Type: application/http\r\n\r\nGET Customers HTTP/1.1\r\n",
        ),
        ("multipart/mixed; boundary=batch_1", "no delimiter at all"),
        ("application/json", "{\"requests\": [{\"id\": \"1\"}]}"),
        ("application/json", "not json"),
    ];
    for (content_type, body) in broken {
        let resp = client
            .send(
                Method::POST,
                &gw.url(&format!("{ROOT}/$batch")),
                &[("Content-Type", content_type)],
                body,
            )
            .await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.text());
        let error = resp.json();
        assert!(
            error["error"]["code"]
                .as_str()
                .is_some_and(|c| !c.is_empty()),
            "{error}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert!(up.requests().iter().all(|r| !r.path().ends_with("$batch")));
}

#[tokio::test]
async fn a_batch_over_the_part_limit_is_413_and_never_reaches_the_upstream() {
    let up = shop(1).await;
    let toml = format!(
        "[limits]\nmax_batch_parts = 2\n\n[[route]]\nupstream = \"{}\"\n",
        up.base_url()
    );
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let client = Client::default();
    let requests: Vec<Value> = (1..=3)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "Customers(1)"}))
        .collect();
    let resp = post_json(&client, &gw, &json!({ "requests": requests })).await;
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert!(resp.json()["error"]["code"].is_string());
    assert!(up.requests().iter().all(|r| !r.path().ends_with("$batch")));
}

#[tokio::test]
async fn a_tracked_read_inside_a_change_set_is_refused_c34() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(1).await;
    let batch = json!({"requests": [
        {"id": "1", "atomicityGroup": "g", "method": "GET", "url": "Customers", "headers": {"prefer": TRACK}},
        {"id": "2", "atomicityGroup": "g", "method": "PATCH", "url": "Customers(1)", "body": {"name": "x"}},
    ]});
    let resp = post_json(&client, &gw, &batch).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.json()["error"]["message"].is_string());
    assert_eq!(up.row("Customers", json!(1)).unwrap()["name"], "Customer 1");
}

#[tokio::test]
async fn a_next_link_inside_a_multipart_batch_is_served_by_the_gateway_c22_c34() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(5).await;
    let first = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes, odata.maxpagesize=2")],
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let next = first.json()["@odata.nextLink"]
        .as_str()
        .expect("a next link (C3)")
        .to_owned();
    let body = [get_part("n", &next, None), "--batch_1--\r\n".to_owned()].concat();
    let resp = post_multipart(&client, &gw, body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let parts = parts_of(&resp);
    assert_eq!(parts.len(), 1);
    assert!(parts[0].contains("Content-ID: n"), "{}", parts[0]);
    let page = json_of(&parts[0]);
    assert_eq!(page["value"].as_array().map(Vec::len), Some(2), "{page}");
    assert!(page["@odata.nextLink"].is_string(), "{page}");
    no_gateway_token_reached(&up);
    // Nothing was left to forward: no batch went upstream.
    assert!(up.requests().iter().all(|r| !r.path().ends_with("$batch")));
}

/// The `Prefer` values of the batches the upstream got and of the requests in them, not those of
/// the gateway's own enumerations.
fn prefers_seen(up: &support::FakeUpstream) -> Vec<(String, String)> {
    up.requests()
        .iter()
        .filter(|r| {
            ["$batch", "orderby=name", "Customers(3)"]
                .iter()
                .any(|p| r.path_and_query.contains(p))
        })
        .flat_map(|r| {
            r.headers
                .get_all("prefer")
                .iter()
                .map(|v| {
                    (
                        r.path_and_query.clone(),
                        v.to_str().unwrap_or("").to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// C2, C36 inside a batch: requests the gateway forwards are ones it does not track, so they go
/// upstream without the track-changes preference — in the part's headers or the batch's own — and
/// an upstream that tracks changes itself (odatapy's server) answers without delta links of its
/// own and without `Preference-Applied: odata.track-changes`. The other preferences stay.
#[tokio::test]
async fn forwarded_batch_parts_go_upstream_without_track_changes_c2_c36() {
    let up = shop(10).await;
    up.set_own_change_tracking(true);
    up.set_link_style(LinkStyle::Absolute);
    let toml = "page_size = 5\nmax_page_size = 5\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let prefer = format!("{TRACK}, odata.maxpagesize=50");
    // An ordered read larger than the largest page is read untracked (C2), and so is an entity.
    let untracked = ["Customers?$orderby=name", "Customers(3)"];
    let check = |answers: Vec<(Option<String>, Value)>, what: &str| {
        assert_eq!(answers.len(), 2, "{what}");
        for (applied, body) in answers {
            assert!(
                !applied.unwrap_or_default().contains("track-changes"),
                "{what}: C2"
            );
            assert!(body.get("@odata.deltaLink").is_none(), "{what}: C36 {body}");
        }
        let seen = prefers_seen(&up);
        assert!(
            !seen.is_empty(),
            "{what}: the other preferences are forwarded"
        );
        for (url, prefer) in seen {
            assert!(!prefer.contains("track-changes"), "{what}: {url} {prefer}");
            assert!(
                prefer.contains("odata.maxpagesize=50"),
                "{what}: {url} {prefer}"
            );
        }
        up.clear_requests();
    };

    // JSON, every part forwarded: the batch goes up as it came but for the preference.
    let batch = json!({"requests": [
        {"id": "a", "method": "GET", "url": untracked[0], "headers": {"Prefer": prefer}},
        {"id": "b", "method": "GET", "url": untracked[1], "headers": {"prefer": prefer}},
    ]});
    let resp = post_json(&client, &gw, &batch).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answers = resp.json()["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .map(|a| {
            let applied = a["headers"]["preference-applied"]
                .as_str()
                .map(str::to_owned);
            (applied, a["body"].clone())
        })
        .collect();
    check(answers, "JSON batch");

    // JSON, beside a tracked read the gateway answers itself.
    let batch = json!({"requests": [
        {"id": "t", "method": "GET", "url": "Customers", "headers": {"prefer": TRACK}},
        {"id": "a", "method": "GET", "url": untracked[0], "headers": {"Prefer": prefer}},
        {"id": "b", "method": "GET", "url": untracked[1], "headers": {"Prefer": prefer}},
    ]});
    let resp = post_json(&client, &gw, &batch).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let responses = resp.json()["responses"]
        .as_array()
        .expect("responses")
        .clone();
    assert!(
        responses[0]["body"]["@odata.nextLink"].is_string(),
        "{}",
        responses[0]
    );
    let answers = responses[1..]
        .iter()
        .map(|a| {
            let applied = a["headers"]["preference-applied"]
                .as_str()
                .map(str::to_owned);
            (applied, a["body"].clone())
        })
        .collect();
    check(answers, "mixed JSON batch");

    // Multipart, every part forwarded, and with the preference on the batch itself.
    let multipart_answers = |resp: &Resp| {
        parts_of(resp)
            .iter()
            .map(|p| {
                let applied = p
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("Preference-Applied:")
                            .or_else(|| l.strip_prefix("preference-applied:"))
                    })
                    .map(|v| v.trim().to_owned());
                (applied, json_of(p))
            })
            .collect::<Vec<_>>()
    };
    let body = format!(
        "{}{}--batch_1--\r\n",
        get_part("1", untracked[0], Some(&prefer)),
        get_part("2", untracked[1], Some(&prefer))
    );
    let resp = post_multipart(&client, &gw, body.clone()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    check(multipart_answers(&resp), "multipart batch");
    let resp = client
        .send(
            Method::POST,
            &gw.url(&format!("{ROOT}/$batch")),
            &[
                ("Content-Type", "multipart/mixed; boundary=batch_1"),
                ("Prefer", &prefer),
            ],
            body,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    check(
        multipart_answers(&resp),
        "multipart batch with its own Prefer",
    );
}

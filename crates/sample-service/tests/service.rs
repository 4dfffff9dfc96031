//! Exercises the sample service over real HTTP: paging, queries, writes, settings and the layer
//! in front of its answers, so the gateway's tests can rely on its behaviour.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use odata_sample_service::{
    CountMode, EntitySetDef, Layer, LayerFuture, LinkStyle, Next, RecordedRequest, ReplyBody,
    Server,
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fully read response.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let bytes = match body {
        Some(json) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    builder.body(Full::new(bytes)).expect("valid request")
}

async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
    let response = client()
        .request(request(method, url, headers, body))
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(url: &str) -> Reply {
    send(Method::GET, url, &[], None).await
}

fn enc(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// IDs of a collection page, in order.
fn ids(page: &Value) -> Vec<Value> {
    page["value"]
        .as_array()
        .expect("value array")
        .iter()
        .map(|e| e["ID"].clone())
        .collect()
}

/// Follows nextLinks (resolved against the URL that returned them) and
/// returns every page.
async fn walk(first: &str, headers: &[(&str, &str)]) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut url = url::Url::parse(first).expect("absolute first URL");
    for _ in 0..50 {
        let reply = send(Method::GET, url.as_str(), headers, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}: {}", url, reply.text());
        let page = reply.json();
        let next = page["@odata.nextLink"].as_str().map(str::to_string);
        pages.push(page);
        match next {
            Some(next) => url = url.join(&next).expect("resolvable nextLink"),
            None => return pages,
        }
    }
    panic!("more than 50 pages");
}

fn all_ids(pages: &[Value]) -> Vec<Value> {
    pages.iter().flat_map(ids).collect()
}

/// Customers 1..=5 with orders, the common fixture.
async fn shop() -> Server {
    let up = Server::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("city", "Edm.String")
            .property("revenue", "Edm.Decimal")
            .property("since", "Edm.Date")
            .nav("Orders", "Orders", "Customer_ID"),
    );
    up.define_set(
        EntitySetDef::new("Orders", "Order")
            .key("ID", "Edm.Int32")
            .property("Customer_ID", "Edm.Int32")
            .property("amount", "Edm.Decimal"),
    );
    // Inserted out of order: the fake keeps key order regardless.
    up.insert_many(
        "Customers",
        [
            json!({"ID": 3, "name": "O'Brien", "city": "Dublin", "revenue": 300, "since": "2019-03-03"}),
            json!({"ID": 1, "name": "Alice", "city": "Berlin", "revenue": 100.5, "since": "2020-01-15"}),
            json!({"ID": 2, "name": "Bob", "city": "Paris", "revenue": 20, "since": "2021-06-01"}),
            json!({"ID": 4, "name": "Dora", "city": "Berlin", "revenue": null, "since": "2022-02-02"}),
            json!({"ID": 5, "name": "Emil", "city": "Oslo", "revenue": 55.25, "since": "2023-12-31"}),
        ],
    );
    up.insert_many(
        "Orders",
        [
            json!({"ID": 10, "Customer_ID": 1, "amount": 5}),
            json!({"ID": 11, "Customer_ID": 1, "amount": 7.5}),
            json!({"ID": 12, "Customer_ID": 3, "amount": 1}),
        ],
    );
    up
}

#[tokio::test]
async fn paging_follows_relative_next_links() {
    let up = shop().await;
    up.set_page_size(Some(2));
    let first = get(&up.url("Customers")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.header("content-type"),
        Some("application/json;odata.metadata=minimal")
    );
    assert_eq!(first.header("odata-version"), Some("4.0"));
    let page = first.json();
    assert_eq!(page["@odata.context"], "$metadata#Customers");
    assert_eq!(page["@odata.nextLink"], "Customers?$skiptoken=2");
    let text = first.text();
    let order: Vec<usize> = ["@odata.context", "\"value\"", "@odata.nextLink"]
        .iter()
        .map(|k| text.find(k).expect("member present"))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "member order: {text}"
    );

    let pages = walk(&up.url("Customers"), &[]).await;
    assert_eq!(pages.len(), 3);
    assert_eq!(all_ids(&pages), [1, 2, 3, 4, 5].map(Value::from));
    assert_eq!(up.collection_requests("Customers"), 4);
}

#[tokio::test]
async fn absolute_and_root_relative_links() {
    let up = shop().await;
    up.set_page_size(Some(2));
    up.set_link_style(LinkStyle::Absolute);
    let page = get(&up.url("Customers")).await.json();
    assert_eq!(
        page["@odata.nextLink"],
        format!("{}/Customers?$skiptoken=2", up.base_url())
    );
    assert_eq!(
        page["@odata.context"],
        format!("{}/$metadata#Customers", up.base_url())
    );
    assert_eq!(all_ids(&walk(&up.url("Customers"), &[]).await).len(), 5);

    up.set_link_style(LinkStyle::RootRelative);
    let page = get(&up.url("Customers")).await.json();
    assert_eq!(
        page["@odata.nextLink"],
        "/odata/v4/shop/Customers?$skiptoken=2"
    );
    assert_eq!(page["@odata.context"], "/odata/v4/shop/$metadata#Customers");
    assert_eq!(all_ids(&walk(&up.url("Customers"), &[]).await).len(), 5);
}

#[tokio::test]
async fn next_link_keeps_other_options() {
    let up = shop().await;
    up.set_page_size(Some(2));
    let url = up.url(&format!(
        "Customers?$filter={}&$select=name,city&$orderby={}&$count=true&sap-client=100",
        enc("city eq 'Berlin' or ID gt 2"),
        enc("name desc")
    ));
    let pages = walk(&url, &[]).await;
    let first_next = pages[0]["@odata.nextLink"].as_str().expect("nextLink");
    // The options stay as the client encoded them; only the skiptoken is new.
    assert_eq!(
        first_next,
        format!(
            "Customers?$filter={}&$select=name,city&$orderby={}&$count=true&sap-client=100\
             &$skiptoken=2",
            enc("city eq 'Berlin' or ID gt 2"),
            enc("name desc")
        )
    );
    let names: Vec<&str> = pages
        .iter()
        .flat_map(|p| p["value"].as_array().expect("value").iter())
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["O'Brien", "Emil", "Dora", "Alice"]);
    for page in &pages {
        assert_eq!(page["@odata.count"], 4);
        assert_eq!(page["@odata.context"], "$metadata#Customers(name,city)");
        for entity in page["value"].as_array().expect("value") {
            let keys: Vec<&String> = entity.as_object().expect("object").keys().collect();
            assert_eq!(keys, ["city", "name"], "exactly the selected properties");
        }
    }
}

#[tokio::test]
async fn max_page_size_preference() {
    let up = shop().await;
    up.set_page_size(None);
    let prefer = [("prefer", "odata.maxpagesize=3")];
    let reply = send(Method::GET, &up.url("Customers"), &prefer, None).await;
    assert_eq!(ids(&reply.json()).len(), 3);
    assert_eq!(
        reply.header("preference-applied"),
        Some("odata.maxpagesize=3")
    );
    assert_eq!(all_ids(&walk(&up.url("Customers"), &prefer).await).len(), 5);

    up.set_page_size(Some(2));
    let reply = send(Method::GET, &up.url("Customers"), &prefer, None).await;
    assert_eq!(ids(&reply.json()).len(), 2);
    assert_eq!(reply.header("preference-applied"), None);

    let small = [("prefer", "odata.track-changes, odata.maxpagesize=1")];
    let reply = send(Method::GET, &up.url("Customers"), &small, None).await;
    assert_eq!(ids(&reply.json()).len(), 1);
    assert_eq!(
        reply.header("preference-applied"),
        Some("odata.maxpagesize=1")
    );
}

/// Logs every page it sees and deletes row 1 before the second page is answered.
struct DeleteOnSecondPage {
    seen: Mutex<Vec<String>>,
}

impl Layer for DeleteOnSecondPage {
    fn answer<'a>(&'a self, request: &'a RecordedRequest, next: Next<'a>) -> LayerFuture<'a> {
        if let Some(set) = &request.collection_set {
            let mut seen = self.seen.lock().expect("layer log");
            if seen.len() == 1 {
                next.service().delete("Customers", json!(1));
            }
            seen.push(set.clone());
        }
        Box::pin(next.run(request))
    }
}

#[tokio::test]
async fn a_layer_sees_each_page_first_and_deleting_during_enumeration_shifts_offsets() {
    let up = shop().await;
    up.set_page_size(Some(2));
    let layer = Arc::new(DeleteOnSecondPage {
        seen: Mutex::new(Vec::new()),
    });
    up.set_layer(layer.clone());
    let pages = walk(&up.url("Customers"), &[]).await;
    // Offset paging: removing row 1 after page 0 moves row 3 onto page 0's
    // range, so the client never sees it.
    assert_eq!(all_ids(&pages), [1, 2, 4, 5].map(Value::from));
    assert_eq!(
        *layer.seen.lock().expect("layer log"),
        ["Customers", "Customers"]
    );
    up.clear_layer();
    walk(&up.url("Customers"), &[]).await;
    assert_eq!(layer.seen.lock().expect("layer log").len(), 2, "cleared");
}

/// Answers the second request itself, after a wait, with a 503; passes every other one on.
#[derive(Default)]
struct FailSecond {
    seen: Mutex<Vec<String>>,
}

impl Layer for FailSecond {
    fn answer<'a>(&'a self, request: &'a RecordedRequest, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let second = {
                let mut seen = self.seen.lock().expect("layer log");
                seen.push(request.path_and_query.clone());
                seen.len() == 2
            };
            if !second {
                return next.run(request).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut reply = http::Response::new(ReplyBody::full("{}"));
            *reply.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            reply
        })
    }
}

#[tokio::test]
async fn a_layer_can_answer_instead_of_the_service_after_a_wait() {
    let up = shop().await;
    let layer = Arc::new(FailSecond::default());
    up.set_layer(layer.clone());
    assert_eq!(get(&up.url("Customers")).await.status, StatusCode::OK);
    let started = Instant::now();
    let reply = get(&up.url("Customers(1)")).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), "{}");
    // The layer's answer still gets the headers of every answer, and the request was recorded.
    assert_eq!(reply.header("odata-version"), Some("4.0"));
    assert_eq!(up.requests().len(), 2);
    assert_eq!(get(&up.url("Customers(1)")).await.status, StatusCode::OK);
    assert_eq!(layer.seen.lock().expect("layer log").len(), 3);
}

/// Asks the service for one entity less than requested, marks its answer with a header, and
/// breaks off the body of a request that asks for it.
struct Rewrite;

impl Layer for Rewrite {
    fn answer<'a>(&'a self, request: &'a RecordedRequest, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let mut asked = request.clone();
            asked.path_and_query = request.path_and_query.replace("$top=3", "$top=2");
            let mut reply = next.run(&asked).await;
            reply
                .headers_mut()
                .insert("x-layer", http::HeaderValue::from_static("seen"));
            if request.header("x-break").is_some() {
                let bytes = reply.body().bytes();
                *reply.body_mut() = ReplyBody::broken(bytes);
            }
            reply
        })
    }
}

#[tokio::test]
async fn a_layer_can_ask_the_service_another_request_and_rewrite_or_break_its_answer() {
    let up = shop().await;
    up.set_layer(Arc::new(Rewrite));
    let reply = get(&up.url("Customers?$top=3")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(ids(&reply.json()), [1, 2].map(Value::from));
    assert_eq!(reply.header("x-layer"), Some("seen"));
    // The request log keeps what the client sent.
    assert_eq!(up.requests()[0].query_param("$top").as_deref(), Some("3"));

    let response = client()
        .request(request(
            Method::GET,
            &up.url("Customers"),
            &[("x-break", "1")],
            None,
        ))
        .await
        .expect("headers arrive before the break");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.into_body().collect().await.is_err(),
        "the body must break off"
    );
}

#[tokio::test]
async fn a_layer_sees_each_part_of_a_batch_as_a_request() {
    let up = shop().await;
    let layer = Arc::new(FailSecond::default());
    up.set_layer(layer.clone());
    let batch = json!({"requests": [
        {"id": "1", "method": "GET", "url": "Customers(1)"},
        {"id": "2", "method": "GET", "url": "Customers(2)"},
    ]});
    let reply = send(Method::POST, &up.url("$batch"), &[], Some(&batch)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let statuses: Vec<Value> = reply.json()["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    // The batch itself is the first request the layer sees; its first part, the second.
    assert_eq!(statuses, [503, 200].map(Value::from));
    let seen = layer.seen.lock().expect("layer log").clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].ends_with("/$batch"), "{seen:?}");
}

#[tokio::test]
async fn layer_or_set_keeps_a_layer_of_the_type_asked_for_and_replaces_another() {
    let up = shop().await;
    let first = up.layer_or_set(FailSecond::default);
    let again = up.layer_or_set(FailSecond::default);
    assert!(Arc::ptr_eq(&first, &again));
    up.set_layer(Arc::new(Rewrite));
    let other = up.layer_or_set(FailSecond::default);
    assert!(!Arc::ptr_eq(&first, &other));
    assert_eq!(get(&up.url("Customers")).await.status, StatusCode::OK);
    assert_eq!(other.seen.lock().expect("layer log").len(), 1);
}

async fn filter_ids(up: &Server, set: &str, filter: &str) -> (StatusCode, Vec<Value>) {
    let reply = get(&up.url(&format!("{set}?$filter={}", enc(filter)))).await;
    if reply.status != StatusCode::OK {
        return (reply.status, Vec::new());
    }
    (reply.status, ids(&reply.json()))
}

#[tokio::test]
async fn filter_evaluation() {
    let up = shop().await;
    let cases: &[(&str, &[i64])] = &[
        ("name eq 'O''Brien'", &[3]),
        ("ID in (1,3,5)", &[1, 3, 5]),
        ("contains(name,'o')", &[2, 4]),
        (
            "startswith(tolower(name),'d') or endswith(name,'il')",
            &[4, 5],
        ),
        ("not (ID gt 2) and city ne 'Paris'", &[1]),
        ("revenue ge 55.25", &[1, 3, 5]),
        ("revenue eq null", &[4]),
        ("revenue ne null and revenue lt 100", &[2, 5]),
        ("since lt 2021-01-01", &[1, 3]),
        ("(city eq 'Berlin' or city eq 'Oslo') and ID le 4", &[1, 4]),
        ("ID ge 2 and ID lt 4", &[2, 3]),
        ("length(city) eq 4", &[5]),
        ("length(city) eq 5", &[2]),
        ("indexof(name,'li') eq 1", &[1]),
    ];
    for (filter, want) in cases {
        let (status, got) = filter_ids(&up, "Customers", filter).await;
        assert_eq!(status, StatusCode::OK, "{filter}");
        let want: Vec<Value> = want.iter().map(|i| Value::from(*i)).collect();
        assert_eq!(got, want, "{filter}");
    }
}

#[tokio::test]
async fn filter_on_guid_timestamp_and_int64_strings() {
    let up = Server::start().await;
    up.define_set(
        EntitySetDef::new("Things", "Thing")
            .key("ID", "Edm.Guid")
            .property("at", "Edm.DateTimeOffset")
            .property("flag", "Edm.Boolean")
            .property("big", "Edm.Int64"),
    );
    let a = "6F9619FF-8B86-D011-B42D-00C04FC964FF";
    let b = "00000000-0000-0000-0000-000000000001";
    up.insert(
        "Things",
        json!({"ID": a, "at": "2024-01-01T09:30:00Z", "flag": true, "big": "9007199254740993"}),
    );
    up.insert(
        "Things",
        json!({"ID": b, "at": "2024-01-01T08:59:59.5Z", "flag": false, "big": "5"}),
    );
    let cases: &[(&str, &[&str])] = &[
        ("at gt 2024-01-01T10:00:00+01:00", &[a]),
        ("at le 2024-01-01T09:00:00Z", &[b]),
        ("big gt 100", &[a]),
        ("flag eq true", &[a]),
        ("flag", &[a]),
        ("ID eq 6f9619ff-8b86-d011-b42d-00c04fc964ff", &[a]),
        ("ID ne 6f9619ff-8b86-d011-b42d-00c04fc964ff", &[b]),
    ];
    for (filter, want) in cases {
        let (status, got) = filter_ids(&up, "Things", filter).await;
        assert_eq!(status, StatusCode::OK, "{filter}");
        let want: Vec<Value> = want.iter().map(|s| Value::from(*s)).collect();
        assert_eq!(got, want, "{filter}");
    }
    // Key order is GUID order, not insertion order.
    let page = get(&up.url("Things")).await.json();
    assert_eq!(ids(&page), [b, a].map(Value::from));
}

#[tokio::test]
async fn filter_errors_and_rejection_knobs() {
    let up = shop().await;
    for bad in [
        "name eq",
        "ID add 1 eq 2",
        "nope eq 1",
        "Orders/any(o:o/amount gt 1)",
        "name eq 'unterminated",
        "substringof('a',name)",
        // Nesting and chains past the parser's bounds.
        &format!("{}ID eq 1{}", "(".repeat(40), ")".repeat(40)),
        &format!("{}ID eq 1", "not ".repeat(40)),
        &vec!["ID eq 1"; 2000].join(" or "),
    ] {
        let reply = get(&up.url(&format!("Customers?$filter={}", enc(bad)))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        let error = reply.json();
        assert_eq!(error["error"]["code"], "400", "{bad}");
        assert!(error["error"]["message"].is_string(), "{bad}");
    }
    let nested = format!("{}ID eq 1{}", "(".repeat(20), ")".repeat(20));
    assert_eq!(
        filter_ids(&up, "Customers", &nested).await.0,
        StatusCode::OK
    );
    // A raw '+' is a literal plus, as with CAP, so this is not "ID eq 1".
    let reply = get(&up.url("Customers?$filter=ID+eq+1")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    up.set_reject_in(true);
    assert_eq!(
        filter_ids(&up, "Customers", "ID in (1,2)").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        filter_ids(&up, "Customers", "ID eq 1 or ID eq 2")
            .await
            .1
            .len(),
        2
    );
    up.set_reject_in(false);
    up.set_reject_or(true);
    assert_eq!(
        filter_ids(&up, "Customers", "ID eq 1 or ID eq 2").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(filter_ids(&up, "Customers", "ID in (1,2)").await.1.len(), 2);

    let reply = get(&up.url(&format!("Customers?$apply={}", enc("groupby((city))")))).await;
    assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
    let reply = get(&up.url("Customers?$levels=2")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn expand_with_nested_options() {
    let up = shop().await;
    let url = up.url(&format!(
        "Customers?$filter={}&$expand={}",
        enc("ID le 2"),
        enc("Orders($select=amount;$orderby=amount desc)")
    ));
    let page = get(&url).await.json();
    let orders = &page["value"][0]["Orders"];
    assert_eq!(orders, &json!([{"amount": 7.5}, {"amount": 5}]));
    assert_eq!(page["value"][1]["Orders"], json!([]));

    let url = up.url(&format!(
        "Customers(1)?$expand={}",
        enc("Orders($count=true;$top=1)")
    ));
    let page = get(&url).await.json();
    assert_eq!(page["Orders@odata.count"], 2);
    assert_eq!(page["Orders"].as_array().map(Vec::len), Some(1));

    let page = get(&up.url("Customers(3)?$expand=Orders")).await.json();
    assert_eq!(
        page["Orders"],
        json!([{"ID": 12, "Customer_ID": 3, "amount": 1}])
    );

    assert_eq!(
        get(&up.url("Customers?$expand=Nope")).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn orderby_top_skip_count_search() {
    let up = shop().await;
    let page = get(&up.url(&format!("Customers?$orderby={}", enc("city,name desc"))))
        .await
        .json();
    assert_eq!(ids(&page), [4, 1, 3, 5, 2].map(Value::from));

    let page = get(&up.url("Customers?$top=2&$skip=1&$count=true"))
        .await
        .json();
    assert_eq!(ids(&page), [2, 3].map(Value::from));
    assert_eq!(page["@odata.count"], 5);

    let page = get(&up.url("Customers?$search=BER")).await.json();
    assert_eq!(ids(&page), [1, 4].map(Value::from));

    let reply = get(&up.url(&format!(
        "Customers/$count?$filter={}",
        enc("city eq 'Berlin'")
    )))
    .await;
    assert_eq!(reply.text(), "2");
    assert_eq!(reply.header("content-type"), Some("text/plain"));

    let reply = get(&up.url("Customers?$deltatoken=whatever")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(ids(&reply.json()).len(), 5);
}

#[tokio::test]
async fn stable_and_pretty_output() {
    let up = shop().await;
    let url = up.url("Customers?$filter=ID%20eq%201");
    let (a, b) = (get(&url).await, get(&url).await);
    assert_eq!(a.body, b.body, "the same answer, byte for byte");

    up.set_pretty(true);
    let pretty = get(&url).await;
    assert!(pretty.text().contains('\n'));
    assert_eq!(pretty.json(), a.json());
}

#[tokio::test]
async fn by_key_reads() {
    let up = shop().await;
    up.define_set(EntitySetDef::new("Tags", "Tag").key("code", "Edm.String"));
    up.insert_many("Tags", [json!({"code": "A'1"}), json!({"code": "a b/c"})]);
    up.define_set(
        EntitySetDef::new("Lines", "Line")
            .key("ID", "Edm.Int32")
            .key("Line", "Edm.Int32")
            .property("text", "Edm.String"),
    );
    up.insert_many(
        "Lines",
        [
            json!({"ID": 1, "Line": 1, "text": "first"}),
            json!({"ID": 1, "Line": 2, "text": "second"}),
        ],
    );
    up.define_set(EntitySetDef::new("Things", "Thing").key("ID", "Edm.Guid"));
    up.insert(
        "Things",
        json!({"ID": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}),
    );

    let reply = get(&up.url("Customers(3)")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let entity = reply.json();
    assert_eq!(entity["@odata.context"], "$metadata#Customers/$entity");
    assert_eq!(entity["name"], "O'Brien");

    let missing = get(&up.url("Customers(99)")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "404");

    assert_eq!(get(&up.url("Tags('A''1')")).await.json()["code"], "A'1");
    assert_eq!(
        get(&up.url("Tags('a%20b%2Fc')")).await.json()["code"],
        "a b/c"
    );
    assert_eq!(
        get(&up.url("Lines(ID=1,Line=2)")).await.json()["text"],
        "second"
    );
    assert_eq!(
        get(&up.url("Lines(Line=1,ID=1)")).await.json()["text"],
        "first"
    );
    assert_eq!(
        get(&up.url("Lines(ID=1)")).await.status,
        StatusCode::BAD_REQUEST
    );
    let thing = get(&up.url("Things(6F9619FF-8B86-D011-B42D-00C04FC964FF)")).await;
    assert_eq!(thing.status, StatusCode::OK);

    let prop = get(&up.url("Customers(1)/name")).await.json();
    assert_eq!(prop["value"], "Alice");
    assert_eq!(
        get(&up.url("Customers(1)/name/$value")).await.text(),
        "Alice"
    );
    assert_eq!(get(&up.url("Customers/$count")).await.text(), "5");
    let selected = get(&up.url("Customers(1)?$select=city")).await.json();
    assert_eq!(
        selected,
        json!({"@odata.context": "$metadata#Customers(city)/$entity", "city": "Berlin"})
    );
}

#[tokio::test]
async fn post_patch_put_delete() {
    let up = shop().await;
    let created = send(
        Method::POST,
        &up.url("Customers"),
        &[],
        Some(&json!({"ID": 6, "name": "Finn", "city": "Rome"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        created.header("location"),
        Some(up.url("Customers(6)").as_str())
    );
    assert_eq!(created.json()["name"], "Finn");
    assert_eq!(
        created.json()["@odata.context"],
        "$metadata#Customers/$entity"
    );
    assert_eq!(up.rows("Customers").len(), 6);
    let recorded = up.requests().pop().expect("recorded POST");
    assert_eq!(recorded.method, Method::POST);
    assert_eq!(
        recorded.body_json(),
        Some(json!({"ID": 6, "name": "Finn", "city": "Rome"}))
    );

    let again = send(
        Method::POST,
        &up.url("Customers"),
        &[],
        Some(&json!({"ID": 6})),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let keyless = send(
        Method::POST,
        &up.url("Customers"),
        &[],
        Some(&json!({"name": "x"})),
    )
    .await;
    assert_eq!(keyless.status, StatusCode::BAD_REQUEST);

    let patched = send(
        Method::PATCH,
        &up.url("Customers(6)"),
        &[],
        Some(&json!({"city": "Milan"})),
    )
    .await;
    assert_eq!(patched.status, StatusCode::NO_CONTENT);
    let row = up.row("Customers", json!(6)).expect("row 6");
    assert_eq!(
        (row["name"].as_str(), row["city"].as_str()),
        (Some("Finn"), Some("Milan"))
    );

    let prefer = [("prefer", "return=representation")];
    let shown = send(
        Method::PATCH,
        &up.url("Customers(6)"),
        &prefer,
        Some(&json!({"revenue": 1})),
    )
    .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json()["revenue"], 1);

    let put = send(
        Method::PUT,
        &up.url("Customers(6)"),
        &[],
        Some(&json!({"name": "F"})),
    )
    .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&up.url("Customers(6)")).await.json()["city"],
        Value::Null
    );

    assert_eq!(
        send(Method::DELETE, &up.url("Customers(6)"), &[], None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(Method::DELETE, &up.url("Customers(6)"), &[], None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let gone = send(
        Method::PATCH,
        &up.url("Customers(6)"),
        &[],
        Some(&json!({"city": "x"})),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    up.define_set(EntitySetDef::new("Tags", "Tag").key("code", "Edm.String"));
    let tag = send(
        Method::POST,
        &up.url("Tags"),
        &[],
        Some(&json!({"code": "x y'z"})),
    )
    .await;
    assert_eq!(
        tag.header("location"),
        Some(up.url("Tags('x%20y''z')").as_str())
    );
    assert_eq!(
        get(&up.url("Tags('x%20y''z')")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn etags_and_if_match() {
    let up = shop().await;
    up.set_etags(true);
    let page = get(&up.url("Customers")).await.json();
    let tag = page["value"][0]["@odata.etag"]
        .as_str()
        .expect("etag")
        .to_string();
    assert!(tag.starts_with("W/\""));
    assert_eq!(Some(tag.clone()), up.etag("Customers", json!(1)));
    let reply = get(&up.url("Customers(1)")).await;
    assert_eq!(reply.header("etag"), Some(tag.as_str()));

    let stale = [("if-match", "W/\"0\"")];
    let refused = send(
        Method::PATCH,
        &up.url("Customers(1)"),
        &stale,
        Some(&json!({"city": "x"})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    let fresh = [("if-match", tag.as_str())];
    let accepted = send(
        Method::PATCH,
        &up.url("Customers(1)"),
        &fresh,
        Some(&json!({"city": "x"})),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::NO_CONTENT);
    assert_ne!(up.etag("Customers", json!(1)), Some(tag));
}

#[tokio::test]
async fn metadata_and_service_document() {
    let up = shop().await;
    let reply = get(&up.url("$metadata")).await;
    assert_eq!(reply.header("content-type"), Some("application/xml"));
    let xml = reply.text();
    let doc = roxmltree::Document::parse(&xml).expect("well-formed CSDL");
    let schema = doc
        .descendants()
        .find(|n| n.has_tag_name("Schema"))
        .expect("Schema element");
    assert_eq!(schema.attribute("Namespace"), Some("ShopService"));
    for needle in [
        "<EntityType Name=\"Customer\">",
        "<PropertyRef Name=\"ID\"/>",
        "<Property Name=\"since\" Type=\"Edm.Date\"/>",
        "<NavigationProperty Name=\"Orders\" Type=\"Collection(ShopService.Order)\"/>",
        "<EntitySet Name=\"Customers\" EntityType=\"ShopService.Customer\">",
        "<NavigationPropertyBinding Path=\"Orders\" Target=\"Orders\"/>",
    ] {
        assert!(xml.contains(needle), "missing {needle} in {xml}");
    }

    up.set_metadata("<edmx:Edmx/>".to_string());
    assert_eq!(get(&up.url("$metadata")).await.text(), "<edmx:Edmx/>");
    up.reset_metadata();
    assert!(
        get(&up.url("$metadata"))
            .await
            .text()
            .contains("ShopService")
    );

    let doc = get(&format!("{}/", up.base_url())).await.json();
    assert_eq!(doc["@odata.context"], "$metadata");
    let names: Vec<&str> = doc["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["Customers", "Orders"]);
}

#[tokio::test]
async fn headers_echoed_and_requests_recorded() {
    let up = shop().await;
    let url = up.url("Customers?$filter=ID%20eq%201");
    let reply = send(
        Method::GET,
        &url,
        &[("x-echo", "abc"), ("authorization", "Bearer t")],
        None,
    )
    .await;
    assert_eq!(reply.header("x-echo"), Some("abc"));
    assert_eq!(reply.header("odata-version"), Some("4.0"));

    let recorded = up.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].path_and_query,
        "/odata/v4/shop/Customers?$filter=ID%20eq%201"
    );
    assert_eq!(
        recorded[0].query_param("$filter").as_deref(),
        Some("ID eq 1")
    );
    assert_eq!(recorded[0].header("authorization"), Some("Bearer t"));
    assert_eq!(recorded[0].collection_set.as_deref(), Some("Customers"));

    up.set_odata_version(None);
    assert_eq!(get(&url).await.header("odata-version"), None);
    assert_eq!(up.collection_requests("Customers"), 2);
    up.clear_requests();
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn count_modes() {
    let up = shop().await;
    up.set_page_size(Some(2));
    let url = up.url("Customers?$count=true");
    let counts = |pages: &[Value]| -> Vec<Value> {
        pages.iter().map(|p| p["@odata.count"].clone()).collect()
    };
    assert_eq!(counts(&walk(&url, &[]).await), [5, 5, 5].map(Value::from));
    up.set_count_mode(CountMode::FirstPageOnly);
    assert_eq!(
        counts(&walk(&url, &[]).await),
        [json!(5), Value::Null, Value::Null]
    );
    up.set_count_mode(CountMode::Never);
    assert_eq!(
        counts(&walk(&url, &[]).await),
        [Value::Null, Value::Null, Value::Null]
    );
}

#[tokio::test]
async fn service_root_at_slash() {
    let up = Server::start_at("/").await;
    up.define_set(EntitySetDef::new("Items", "Item").key("ID", "Edm.Int64"));
    up.insert_many("Items", (1..=3).map(|i| json!({"ID": i})));
    up.set_page_size(Some(2));
    up.set_link_style(LinkStyle::RootRelative);
    assert_eq!(up.base_url(), format!("http://{}", up.addr()));
    let page = get(&up.url("Items")).await.json();
    assert_eq!(page["@odata.nextLink"], "/Items?$skiptoken=2");
    assert_eq!(all_ids(&walk(&up.url("Items"), &[]).await).len(), 3);
    let doc = get(&format!("{}/", up.base_url())).await;
    assert_eq!(doc.json()["value"][0]["name"], "Items");
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let up = shop().await;
    for url in [
        up.url("Nope"),
        format!("http://{}/elsewhere", up.addr()),
        format!("http://{}/odata/v4/shopX/Customers", up.addr()),
        up.url("Customers(1)/Orders/extra/deep"),
    ] {
        let reply = get(&url).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{url}");
        assert_eq!(reply.json()["error"]["code"], "404", "{url}");
    }
    assert_eq!(up.collection_requests("Nope"), 0);
}

#[tokio::test]
async fn drop_stops_the_server() {
    let up = Server::start().await;
    let addr = up.addr();
    drop(up);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Serves the demo's catalog on a fresh port; returns its root URL (with a trailing slash), the
/// shutdown token and the server task.
async fn catalog(
    options: odata_sample_service::catalog::Options,
) -> (
    String,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    use odata_sample_service::catalog;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!(
        "http://{}{}/",
        listener.local_addr().unwrap(),
        catalog::ROOT
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(catalog::serve(listener, options, shutdown.clone()));
    (root, shutdown, task)
}

#[tokio::test]
async fn the_catalog_pages_filters_counts_and_stops_when_cancelled() {
    let (root, shutdown, task) = catalog(odata_sample_service::catalog::Options {
        products: 230,
        page_size: 100,
        change_interval: Duration::from_secs(3600),
        seed: 9,
        report: None,
    })
    .await;

    // Page through everything, following the relative next links.
    let mut next = Some(format!("{root}Products?$count=true"));
    let (mut seen, mut pages) = (Vec::new(), 0);
    while let Some(url) = next.take() {
        let r = send(
            Method::GET,
            &url,
            &[("Prefer", "odata.maxpagesize=60")],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let page = r.json();
        assert_eq!(page["@odata.count"], 230);
        assert!(page["value"][0]["price"].is_string(), "{page}");
        seen.extend(ids(&page));
        pages += 1;
        next = page["@odata.nextLink"]
            .as_str()
            .map(|link| format!("{root}{link}"));
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, (1..=230).map(Value::from).collect::<Vec<_>>());

    let r = get(&format!("{root}Products/$count")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "230"));
    let r = get(&format!(
        "{root}Products?$filter={}&$select=ID",
        enc("ID in (3,1,2,999)")
    ))
    .await;
    assert_eq!(r.json()["value"], json!([{"ID": 1}, {"ID": 2}, {"ID": 3}]));
    let r = get(&format!("{root}Products?$filter={}", enc("ID le"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"]["message"].is_string());
    let xml = get(&format!("{root}$metadata")).await.text();
    for expected in [
        r#"<Schema Namespace="CatalogService""#,
        r#"<EntitySet Name="Products" EntityType="CatalogService.Product""#,
        r#"<Property Name="price" Type="Edm.Decimal""#,
    ] {
        assert!(xml.contains(expected), "{expected} missing from\n{xml}");
    }

    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(
        matches!(result, Ok(Ok(Ok(())))),
        "the catalog did not stop cleanly"
    );
}

#[tokio::test]
async fn the_catalog_changes_by_itself_while_served() {
    let (root, shutdown, _task) = catalog(odata_sample_service::catalog::Options {
        products: 20,
        page_size: 100,
        change_interval: Duration::from_millis(20),
        seed: 3,
        report: None,
    })
    .await;
    let first = get(&format!("{root}Products")).await.json();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if get(&format!("{root}Products")).await.json()["value"] != first["value"] {
            break;
        }
        assert!(Instant::now() < deadline, "the catalog never changed");
    }
    shutdown.cancel();
}

//! Formats of tracked answers (C32, C15, C26): JSON only, with 406 for anything else;
//! `IEEE754Compatible=true` honoured as part of the feed; context URLs that list expanded
//! navigation properties; the upstream's own status and error code for a refused read.

mod support;

use serde_json::json;
use support::gateway::{Client, Gateway};
use support::{EntitySetDef, FakeUpstream};

const ROOT: &str = "/odata/v4/shop";
const TRACK: (&str, &str) = ("Prefer", "odata.track-changes");

/// The entity with `ID` 1 of a page (the gateway orders pages by key hash, not by key).
fn first(page: &serde_json::Value) -> serde_json::Value {
    page["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ID"] == 1)
        .cloned()
        .unwrap_or_else(|| panic!("no ID 1 in {page}"))
}

async fn shop() -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("city", "Edm.String")
            .property("big", "Edm.Int64")
            .property("price", "Edm.Decimal")
            .nav("orders", "Orders", "Customer_ID"),
    );
    up.define_set(
        EntitySetDef::new("Orders", "Order")
            .key("ID", "Edm.Int32")
            .property("Customer_ID", "Edm.Int32")
            .property("amount", "Edm.Int32"),
    );
    up.insert_many(
        "Customers",
        (1..=3).map(|i| {
            json!({"ID": i, "city": "Rome", "big": 9_007_199_254_740_993_i64 + i, "price": 1.5})
        }),
    );
    up.insert_many(
        "Orders",
        (1..=3).map(|i| json!({"ID": i, "Customer_ID": i, "amount": 10 * i})),
    );
    up
}

/// C32: a tracked read or delta asking for XML, Atom, CSV or an unknown format gets 406 with an
/// OData error; every spelling of JSON is served. An untracked request still passes through.
#[tokio::test]
async fn tracked_requests_for_anything_but_json_get_406() {
    let up = shop().await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers"));
    for accept in [
        "application/xml",
        "application/atom+xml",
        "text/csv",
        "nonsense",
        "application/json;q=0",
    ] {
        let r = client.get(&url, &[TRACK, ("Accept", accept)]).await;
        assert_eq!(r.status, 406, "{accept}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "NotAcceptable", "{accept}");
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(r.header("odata-version"), Some("4.0"));
    }
    for format in ["xml", "atom", "csv", "application/xml", "whatever"] {
        let r = client
            .get(&format!("{url}?$format={format}"), &[TRACK])
            .await;
        assert_eq!(r.status, 406, "{format}: {}", r.text());
    }
    for accept in [
        "application/json;odata.metadata=minimal;charset=utf-8",
        "*/*",
        "application/*",
        "application/xml, application/json;q=0.5",
    ] {
        let r = client.get(&url, &[TRACK, ("Accept", accept)]).await;
        assert_eq!(r.status, 200, "{accept}: {}", r.text());
    }
    let r = client
        .get(
            &format!("{url}?$format=json"),
            &[TRACK, ("Accept", "application/xml")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let link = r.json()["@odata.deltaLink"].as_str().unwrap().to_owned();
    let r = client.get(&link, &[("Accept", "application/xml")]).await;
    assert_eq!(r.status, 406, "{}", r.text());
    // `/$count` on a delta link answers text/plain.
    let count = link.replace("/Customers?", "/Customers/$count?");
    let r = client.get(&count, &[("Accept", "text/plain")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Not tracked (C2): answered normally, whatever it accepts.
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers(1)")),
            &[TRACK, ("Accept", "application/xml")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// C32: `IEEE754Compatible=true` is asked of the upstream and defines a feed of its own, whose
/// 64-bit integers and decimals are strings, initial and delta alike; without it they are numbers.
#[tokio::test]
async fn ieee754_compatible_is_honoured_and_defines_its_own_feed() {
    let up = shop().await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers"));
    let ieee = ("Accept", "application/json;IEEE754Compatible=true");
    let strings = client.get(&url, &[TRACK, ieee]).await;
    assert_eq!(strings.status, 200, "{}", strings.text());
    assert!(
        strings
            .header("content-type")
            .unwrap()
            .contains("IEEE754Compatible=true")
    );
    let page = strings.json();
    assert_eq!(first(&page)["big"], json!("9007199254740994"));
    assert_eq!(first(&page)["price"], json!("1.5"));
    let upstream_accepts: Vec<String> = up
        .requests()
        .iter()
        .filter(|r| r.collection_set.as_deref() == Some("Customers"))
        .map(|r| r.headers["accept"].to_str().unwrap().to_owned())
        .collect();
    assert!(
        upstream_accepts
            .iter()
            .all(|a| a.contains("IEEE754Compatible=true")),
        "{upstream_accepts:?}"
    );
    let ieee_link = page["@odata.deltaLink"].as_str().unwrap().to_owned();

    let numbers = client.get(&url, &[TRACK]).await;
    let page = numbers.json();
    assert_eq!(first(&page)["big"], json!(9_007_199_254_740_994_i64));
    let plain_link = page["@odata.deltaLink"].as_str().unwrap().to_owned();
    assert_ne!(ieee_link, plain_link);

    // The same through `$format`, and on the delta whatever the link's request accepts.
    let by_format = client
        .get(
            &format!("{url}?$format=application/json;IEEE754Compatible=true"),
            &[TRACK],
        )
        .await;
    assert_eq!(first(&by_format.json())["big"], json!("9007199254740994"));
    up.update("Customers", 2.into(), json!({"big": 5}));
    let delta = client.get(&ieee_link, &[]).await;
    assert_eq!(delta.status, 200, "{}", delta.text());
    assert_eq!(
        delta.json()["value"][0]["big"],
        json!("5"),
        "{}",
        delta.text()
    );
    let delta = client.get(&plain_link, &[]).await;
    assert_eq!(
        delta.json()["value"][0]["big"],
        json!(5),
        "{}",
        delta.text()
    );
}

/// J §10, C15: the context URL lists expanded navigation properties with their nested select
/// lists, and the select list decoded.
#[tokio::test]
async fn context_urls_list_expanded_navigation_properties() {
    let up = shop().await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let context = |query: &str, version: &str| {
        let url = gw.url(&format!("{ROOT}/Customers?{query}"));
        let client = client.clone();
        let version = version.to_owned();
        async move {
            let r = client
                .get(&url, &[TRACK, ("OData-MaxVersion", &version)])
                .await;
            assert_eq!(r.status, 200, "{url}: {}", r.text());
            let page = r.json();
            let name = if version == "4.01" {
                "@context"
            } else {
                "@odata.context"
            };
            let full = page[name].as_str().unwrap().to_owned();
            full.split_once('#').unwrap().1.to_owned()
        }
    };
    assert_eq!(
        context("$select=city&$expand=orders($select=amount)", "4.0").await,
        "Customers(city,orders(amount))"
    );
    assert_eq!(
        context("$select=city&$expand=orders", "4.01").await,
        "Customers(city,orders())"
    );
    assert_eq!(
        context("$select=city%2CID", "4.0").await,
        "Customers(ID,city)"
    );
}

/// C26: the upstream refusing the client's own query keeps its status and its error code.
#[tokio::test]
async fn an_upstream_refusal_keeps_its_status_and_error_code() {
    let up = shop().await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers?$filter=nosuch%20eq%201")),
            &[TRACK],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let error = r.json();
    // The fake answers the way CAP does: the status as the code.
    assert_eq!(error["error"]["code"], "400", "{error}");
    assert!(!error["error"]["message"].as_str().unwrap().is_empty());
}

//! Black-box tests of the tracked read and deltas: the real gateway on 127.0.0.1:0 in front of the
//! fake upstream. Test names say the behaviour; comments cite CONFORMANCE.md rules.

mod support;

use serde_json::json;
use support::gateway::{BehindGateway, Client, Gateway, Replica, Shape, TRACK};
use support::shop::{Churn, ROOT, customer, shop};
use support::{EntitySetDef, FakeUpstream, Faults, LinkStyle};

#[tokio::test]
async fn tracked_read_returns_everything_and_an_absolute_delta_link_c1_c3_c4_c9() {
    let BehindGateway {
        up: _up,
        gw,
        client,
    } = BehindGateway::shop(120).await;
    for spelling in ["odata.track-changes", "track-changes"] {
        let r = client
            .get(
                &gw.url(&format!("{ROOT}/Customers")),
                &[("Prefer", spelling)],
            )
            .await;
        assert_eq!(r.status, 200);
        // C3: Preference-Applied echoes the spelling the client used.
        assert_eq!(r.header("preference-applied"), Some(spelling));
        assert_eq!(r.header("odata-version"), Some("4.0"));
        assert!(r.header("vary").unwrap().contains("OData-MaxVersion"));
        let page = r.json();
        // C4: a normal result, no /$delta, no tombstones; context URL first.
        let context = page["@odata.context"].as_str().unwrap();
        assert_eq!(context, gw.url(&format!("{ROOT}/$metadata#Customers")));
        assert!(r.text().starts_with("{\"@odata.context\""));
        assert_eq!(page["value"].as_array().unwrap().len(), 120);
        // C9: absolute, on the gateway, URL-safe token.
        let link = page["@odata.deltaLink"].as_str().unwrap();
        let prefix = gw.url(&format!("{ROOT}/Customers?$deltatoken="));
        assert!(link.starts_with(&prefix), "{link}");
        let token = &link[prefix.len()..];
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
        assert!(page.get("@odata.nextLink").is_none());
    }
}

#[tokio::test]
async fn enumeration_follows_every_upstream_page_with_relative_or_absolute_links() {
    for style in [
        LinkStyle::Relative,
        LinkStyle::Absolute,
        LinkStyle::RootRelative,
    ] {
        let up = shop(237).await;
        up.set_page_size(Some(10));
        up.set_link_style(style);
        let gw = Gateway::start(&up.base_url()).await;
        let (entities, _) = Client::default()
            .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
            .await;
        let mut ids: Vec<i64> = entities.iter().map(|e| e["ID"].as_i64().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, (1..=237).collect::<Vec<_>>(), "{style:?}");
        assert!(up.collection_requests("Customers") >= 24);
    }
}

#[tokio::test]
async fn delta_reports_inserts_updates_and_deletes_in_the_4_0_shape_c11_c15_c16() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(30).await;
    let (_, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;

    up.insert("Customers", customer(31));
    up.update("Customers", json!(5), json!({"name": "Renamed"}));
    up.delete("Customers", json!(7));

    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("odata-version"), Some("4.0"));
    let page = r.json();
    assert_eq!(
        page["@odata.context"],
        gw.url(&format!("{ROOT}/$metadata#Customers/$delta"))
    );
    let value = page["value"].as_array().unwrap();
    assert_eq!(value.len(), 3, "{page}");
    let by_id = |id: i64| value.iter().find(|e| e["ID"] == id).cloned();
    assert_eq!(by_id(31).unwrap(), customer(31));
    assert_eq!(by_id(5).unwrap()["name"], "Renamed");
    let tomb = value.iter().find(|e| e.get("id").is_some()).unwrap();
    assert_eq!(
        tomb,
        &json!({
            "@odata.context": gw.url(&format!("{ROOT}/$metadata#Customers/$deletedEntity")),
            "id": "Customers(7)",
            "reason": "deleted"
        })
    );
    assert!(
        page["@odata.deltaLink"]
            .as_str()
            .unwrap()
            .contains("$deltatoken=")
    );
}

#[tokio::test]
async fn delta_in_the_4_01_shape_when_asked_c14_c17() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(10).await;
    let (_, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    up.delete("Customers", json!(3));
    up.update("Customers", json!(4), json!({"score": 99}));

    let r = client.get(&link, &[("OData-MaxVersion", "4.01")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("odata-version"), Some("4.01"));
    let text = r.text();
    assert!(text.starts_with("{\"@context\":"), "{text}");
    assert!(
        text.contains(r#"{"@removed":{"reason":"deleted"},"@id":"Customers(3)","ID":3}"#),
        "{text}"
    );
    let page = r.json();
    assert!(page.get("@deltaLink").is_some() && page.get("@odata.deltaLink").is_none());
    assert!(
        page["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["ID"] == 4 && e["score"] == 99)
    );
}

#[tokio::test]
async fn a_delta_without_changes_is_empty_and_links_on_c11() {
    let BehindGateway {
        up: _up,
        gw,
        client,
    } = BehindGateway::shop(10).await;
    let (_, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    let r = client.get(&link, &[]).await;
    let page = r.json();
    assert_eq!(page["value"], json!([]));
    let next = page["@odata.deltaLink"].as_str().unwrap();
    // The new link works too and is still empty.
    let again = client.get(next, &[]).await.json();
    assert_eq!(again["value"], json!([]));
}

#[tokio::test]
async fn reordered_and_reformatted_upstream_payloads_are_not_changes() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(40).await;
    let (_, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    up.set_reorder_properties(true);
    up.set_pretty(true);
    let page = client.get(&link, &[]).await.json();
    assert_eq!(page["value"], json!([]), "{page}");
}

#[tokio::test]
async fn bad_tokens_are_400_with_an_odata_error_c10_c26() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(5).await;
    let (_, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    let token = link.split("$deltatoken=").nth(1).unwrap().to_owned();
    let mut flipped = token.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let cases = [
        token[..token.len() - 3].to_owned(),
        flipped,
        "garbage".to_owned(),
        "".to_owned(),
        "%00%FF".to_owned(),
        "A".repeat(5000),
    ];
    for bad in cases {
        let r = client
            .get(&gw.url(&format!("{ROOT}/Customers?$deltatoken={bad}")), &[])
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        let e = r.json();
        assert!(!e["error"]["code"].as_str().unwrap().is_empty());
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
    // A valid token on another entity set is refused like a forged one.
    up.define_set(EntitySetDef::new("Orders", "Order").key("ID", "Edm.Int32"));
    let r = client
        .get(&gw.url(&format!("{ROOT}/Orders?$deltatoken={token}")), &[])
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn paging_with_maxpagesize_never_loses_or_repeats_c21_c22() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(53).await;
    let headers = [("Prefer", "odata.track-changes, odata.maxpagesize=10")];
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &headers)
        .await;
    let applied = r.header("preference-applied").unwrap();
    assert!(
        applied.contains("odata.track-changes") && applied.contains("odata.maxpagesize=10"),
        "{applied}"
    );
    // C22: next links need no Prefer header.
    let (entities, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &headers[..])
        .await;
    let mut ids: Vec<i64> = entities.iter().map(|e| e["ID"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (1..=53).collect::<Vec<_>>());

    for i in 1..=25 {
        up.update("Customers", json!(i), json!({"score": 1000 + i}));
    }
    let (changes, _) = client
        .read_all(&link, &[("Prefer", "odata.maxpagesize=7")])
        .await;
    let mut ids: Vec<i64> = changes.iter().map(|e| e["ID"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (1..=25).collect::<Vec<_>>(), "C12: each entity once");
}

#[tokio::test]
async fn count_on_a_delta_link_counts_without_advancing_c23() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(20).await;
    let (_, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    up.delete("Customers", json!(1));
    up.update("Customers", json!(2), json!({"city": "Oslo"}));
    let count_url = link.replace("/Customers?", "/Customers/$count?");
    let r = client.get(&count_url, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(r.text(), "2");
    assert_eq!(client.get(&count_url, &[]).await.text(), "2");
    let page = client.get(&format!("{link}&$count=true"), &[]).await.json();
    assert_eq!(page["@odata.count"], json!(2), "C24: a JSON number");
    assert_eq!(page["value"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn latest_token_gives_an_empty_delta_from_now_c13() {
    let BehindGateway { up, gw, client } = BehindGateway::shop(20).await;
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers?$deltatoken=latest")),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(page["value"], json!([]));
    let link = page["@odata.deltaLink"].as_str().unwrap();
    assert!(!link.contains("latest"), "{link}");
    up.delete("Customers", json!(9));
    let page = client.get(link, &[]).await.json();
    assert_eq!(page["value"].as_array().unwrap().len(), 1, "{page}");
}

#[tokio::test]
async fn track_changes_on_what_cannot_be_tracked_passes_through_c2() {
    let BehindGateway {
        up: _up,
        gw,
        client,
    } = BehindGateway::shop(5).await;
    for path in [
        "/Customers(1)",
        "/Customers(1)/name",
        "/Customers/$count",
        "/Customers?$apply=groupby((city))",
    ] {
        let r = client.get(&gw.url(&format!("{ROOT}{path}")), &TRACK).await;
        assert!(r.header("preference-applied").is_none(), "{path}");
        assert!(!r.text().contains("deltaLink"), "{path}");
        assert_ne!(r.status.as_u16(), 500, "{path}");
    }
    assert_eq!(
        client
            .get(&gw.url(&format!("{ROOT}/Customers(1)")), &TRACK)
            .await
            .json()["ID"],
        1
    );
}

#[tokio::test]
async fn string_and_guid_keys_give_entity_ids_per_edm_type() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Products", "Product")
            .key("Code", "Edm.String")
            .property("n", "Edm.Int32"),
    );
    up.define_set(
        EntitySetDef::new("Orders", "Order")
            .key("ID", "Edm.Guid")
            .property("n", "Edm.Int32"),
    );
    up.insert("Products", json!({"Code": "A'1", "n": 1}));
    up.insert(
        "Orders",
        json!({"ID": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "n": 1}),
    );
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let (_, p) = client
        .read_all(&gw.url(&format!("{ROOT}/Products")), &TRACK)
        .await;
    let (_, o) = client
        .read_all(&gw.url(&format!("{ROOT}/Orders")), &TRACK)
        .await;
    up.delete("Products", json!("A'1"));
    up.delete("Orders", json!("6f9619ff-8b86-d011-b42d-00c04fc964ff"));
    assert_eq!(
        client.get(&p, &[]).await.json()["value"][0]["id"],
        "Products('A''1')"
    );
    assert_eq!(
        client.get(&o, &[]).await.json()["value"][0]["id"],
        "Orders(6f9619ff-8b86-d011-b42d-00c04fc964ff)"
    );
}

/// The issue's definition of done, in process: a replica applying every delta holds exactly the
/// upstream's collection after each round of random changes, in both payload versions (C28).
#[tokio::test]
async fn a_replica_converges_over_random_rounds_in_both_versions_c28() {
    for shape in [Shape::V40, Shape::V401] {
        let up = shop(200).await;
        up.set_page_size(Some(17));
        let gw = Gateway::start(&up.base_url()).await;
        let client = Client::default();
        let mut replica = Replica::new("Customers", &["ID"], shape);
        replica.page_size = Some(23);
        replica
            .initial(&client, &gw.url(&format!("{ROOT}/Customers")))
            .await
            .unwrap();
        let mut churn = Churn::new(0x9e3779b97f4a7c15, 201);
        for round in 0..8 {
            churn.round(&up, 30);
            replica.sync(&client).await.unwrap();
            let expected = replica.expected(&up.rows("Customers"), |_| true);
            assert_eq!(replica.rows, expected, "{shape:?} round {round}");
        }
    }
}

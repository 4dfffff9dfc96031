//! Query-scoped feeds: `$select`, `$filter`, `$expand`, `$top`/`$skip`/`$count`, and paging while
//! the feed changes underneath. The real gateway in front of the fake upstream.

mod support;

use serde_json::{Value, json};
use support::gateway::{Client, Gateway, Replica, Shape};
use support::{EntitySetDef, FakeUpstream};

const ROOT: &str = "/odata/v4/shop";

async fn shop(n: i64) -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("city", "Edm.String")
            .property("score", "Edm.Int32")
            .nav("Orders", "Orders", "Customer_ID"),
    );
    up.define_set(
        EntitySetDef::new("Orders", "Order")
            .key("ID", "Edm.Int32")
            .property("Customer_ID", "Edm.Int32")
            .property("amount", "Edm.Int32"),
    );
    up.insert_many("Customers", (1..=n).map(customer));
    up.insert_many(
        "Orders",
        (1..=n).map(|i| json!({"ID": i, "Customer_ID": (i % 5) + 1, "amount": i})),
    );
    up
}

fn customer(i: i64) -> Value {
    let city = ["Berlin", "Paris", "Rome"][(i % 3) as usize];
    json!({"ID": i, "name": format!("Customer {i}"), "city": city, "score": i * 7 % 100})
}

/// All entities of a response and the delta link of its last page.
async fn read_all(client: &Client, url: &str, headers: &[(&str, &str)]) -> (Vec<Value>, String) {
    let mut out = Vec::new();
    let mut url = url.to_owned();
    loop {
        let r = client.get(&url, headers).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let page = r.json();
        out.extend(page["value"].as_array().unwrap().iter().cloned());
        match page["@odata.nextLink"].as_str() {
            Some(n) => url = n.to_owned(),
            None => return (out, page["@odata.deltaLink"].as_str().unwrap().to_owned()),
        }
    }
}

const TRACK: [(&str, &str); 1] = [("Prefer", "odata.track-changes")];

#[tokio::test]
async fn select_counts_only_selected_properties_and_keeps_keys_c6_c15_c19() {
    let up = shop(20).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers?$select=name,city"));
    let r = client.get(&url, &TRACK).await;
    let page = r.json();
    assert_eq!(
        page["@odata.context"],
        gw.url(&format!("{ROOT}/$metadata#Customers(city,name)"))
    );
    let first = &page["value"][0];
    assert!(
        first.get("ID").is_some(),
        "C19: the key is always there: {first}"
    );
    assert!(first.get("score").is_none());
    let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();

    up.update("Customers", json!(1), json!({"score": 555}));
    up.update("Customers", json!(2), json!({"city": "Oslo"}));
    let delta = client.get(&link, &[]).await.json();
    assert_eq!(
        delta["@odata.context"],
        gw.url(&format!("{ROOT}/$metadata#Customers(city,name)/$delta"))
    );
    let value = delta["value"].as_array().unwrap();
    assert_eq!(
        value.len(),
        1,
        "C6: only the change of a selected property counts: {delta}"
    );
    assert_eq!(
        value[0],
        json!({"ID": 2, "city": "Oslo", "name": "Customer 2"})
    );
}

#[tokio::test]
async fn filter_defines_the_set_with_added_changed_and_deleted_c5_c18() {
    let up = shop(30).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let (entities, link) = read_all(
        &client,
        &gw.url(&format!("{ROOT}/Customers?$filter=city%20eq%20'Berlin'")),
        &TRACK,
    )
    .await;
    assert!(entities.iter().all(|e| e["city"] == "Berlin"));
    assert_eq!(entities.len(), 10);

    up.update("Customers", json!(1), json!({"city": "Berlin"})); // starts matching: added
    up.update("Customers", json!(3), json!({"city": "Oslo"})); // stops matching: changed
    up.delete("Customers", json!(6)); // gone: deleted

    let delta = client.get(&link, &[]).await.json();
    let value = delta["value"].as_array().unwrap();
    assert_eq!(value.len(), 3, "{delta}");
    assert!(value.iter().any(|e| e["ID"] == 1 && e["city"] == "Berlin"));
    let reason = |id: &str| {
        value
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["reason"].clone())
    };
    assert_eq!(reason("Customers(3)"), Some(json!("changed")));
    assert_eq!(reason("Customers(6)"), Some(json!("deleted")));
}

#[tokio::test]
async fn expanded_changes_report_the_parent_c7() {
    let up = shop(10).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let (entities, link) = read_all(
        &client,
        &gw.url(&format!("{ROOT}/Customers?$expand=Orders")),
        &TRACK,
    )
    .await;
    assert!(
        entities
            .iter()
            .any(|e| e["Orders"].as_array().is_some_and(|o| !o.is_empty()))
    );
    // Order 4 belongs to customer 5.
    up.update("Orders", json!(4), json!({"amount": 4000}));
    let delta = client.get(&link, &[]).await.json();
    let value = delta["value"].as_array().unwrap();
    assert_eq!(value.len(), 1, "{delta}");
    assert_eq!(value[0]["ID"], 5);
    assert!(
        value[0]["Orders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["amount"] == 4000)
    );
}

#[tokio::test]
async fn top_skip_and_count_apply_to_the_initial_response_only_c8() {
    let up = shop(40).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers?$top=7&$skip=3&$count=true"));
    let headers = [("Prefer", "odata.track-changes, odata.maxpagesize=3")];
    let r = client.get(&url, &headers).await;
    assert_eq!(
        r.json()["@odata.count"],
        json!(40),
        "C24-like: count of the whole set, a number"
    );
    let (entities, link) = read_all(&client, &url, &headers).await;
    assert_eq!(entities.len(), 7);
    assert!(
        !link.contains("$top") && !link.contains("$skip") && !link.contains("$count"),
        "{link}"
    );
    // The delta link tracks the whole set.
    up.update("Customers", json!(40), json!({"score": 1}));
    up.update("Customers", json!(1), json!({"score": 1}));
    let delta = client.get(&link, &[]).await.json();
    assert_eq!(delta["value"].as_array().unwrap().len(), 2, "{delta}");
    assert!(delta.get("@odata.count").is_none());
}

#[tokio::test]
async fn equivalent_queries_share_one_feed() {
    let up = shop(10).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let feed_of = |link: &str| {
        use base64::Engine;
        let token = link.split("$deltatoken=").nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .unwrap();
        bytes[2..18].to_vec()
    };
    let a = read_all(
        &client,
        &gw.url(&format!(
            "{ROOT}/Customers?$select=name,city&$filter=score%20gt%2010"
        )),
        &TRACK,
    )
    .await
    .1;
    let b = read_all(
        &client,
        &gw.url(&format!(
            "{ROOT}/Customers?$filter=score+%20gt%20+10&$select=city,%20name"
        )),
        &TRACK,
    )
    .await
    .1;
    let c = read_all(
        &client,
        &gw.url(&format!(
            "{ROOT}/Customers?$filter=score%20gt%2011&$select=city,name"
        )),
        &TRACK,
    )
    .await
    .1;
    assert_eq!(feed_of(&a), feed_of(&b));
    assert_ne!(feed_of(&a), feed_of(&c));
}

#[tokio::test]
async fn a_refresh_between_two_pages_loses_and_repeats_nothing_c12() {
    let up = shop(60).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let mut replica = Replica::new("Customers", &["ID"], Shape::V40);
    let url = gw.url(&format!("{ROOT}/Customers"));
    let headers = [("Prefer", "odata.track-changes, odata.maxpagesize=10")];
    let first = client.get(&url, &headers).await.json();
    for e in first["value"].as_array().unwrap() {
        replica.rows.insert(replica.entity_id(e), e.clone());
    }
    // Another client's request refreshes the feed between our pages.
    up.delete("Customers", json!(30));
    up.insert("Customers", customer(61));
    up.update("Customers", json!(31), json!({"score": 999}));
    read_all(&client, &url, &TRACK).await;
    let mut next = first["@odata.nextLink"].as_str().unwrap().to_owned();
    let delta_link = loop {
        let page = client.get(&next, &[]).await.json();
        for e in page["value"].as_array().unwrap() {
            replica.rows.insert(replica.entity_id(e), e.clone());
        }
        match page["@odata.nextLink"].as_str() {
            Some(n) => next = n.to_owned(),
            None => break page["@odata.deltaLink"].as_str().unwrap().to_owned(),
        }
    };
    replica.delta_link = Some(delta_link);
    replica.sync(&client).await.unwrap();
    assert_eq!(
        replica.rows,
        replica.expected(&up.rows("Customers"), |_| true)
    );
}

#[tokio::test]
async fn etags_pass_through_and_metadata_none_on_a_delta_gets_minimal_c19_c20() {
    let up = shop(5).await;
    up.set_etags(true);
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let (entities, link) = read_all(&client, &gw.url(&format!("{ROOT}/Customers")), &TRACK).await;
    assert!(
        entities.iter().all(|e| e["@odata.etag"].is_string()),
        "{entities:?}"
    );
    up.update("Customers", json!(2), json!({"score": 3}));
    let r = client
        .get(&link, &[("Accept", "application/json;odata.metadata=none")])
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .contains("odata.metadata=minimal")
    );
    let delta = r.json();
    assert!(
        delta["@odata.context"].is_string(),
        "C20: minimal metadata keeps the context"
    );
    assert_eq!(
        delta["value"][0]["@odata.etag"],
        json!(up.etag("Customers", json!(2)).unwrap())
    );
    // 4.01 writes it unprefixed.
    let r = client
        .get(&link, &[("OData-MaxVersion", "4.01")])
        .await
        .json();
    assert!(r["value"][0]["@etag"].is_string(), "{r}");
}

#[tokio::test]
async fn a_delta_link_cannot_be_edited_with_query_options() {
    let up = shop(5).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let (_, link) = read_all(&client, &gw.url(&format!("{ROOT}/Customers")), &TRACK).await;
    for extra in ["$filter=ID%20eq%201", "$select=name", "$top=1"] {
        let r = client.get(&format!("{link}&{extra}"), &[]).await;
        assert_eq!(r.status, 400, "{extra}");
        assert!(r.json()["error"]["message"].is_string());
    }
}

/// Issue 3's definition of done: replicas of a `$select`-ed, a `$filter`-ed and an `$expand`-ed
/// feed converge with the upstream's truth for that query over random rounds, paging with a small
/// maxpagesize (C28).
#[tokio::test]
async fn replicas_of_select_filter_and_expand_feeds_converge_c28() {
    for (query, truth_query, shape) in [
        ("$select=city,score", "$select=ID,city,score", Shape::V40),
        (
            "$filter=score%20lt%2050",
            "$filter=score%20lt%2050",
            Shape::V401,
        ),
        (
            "$filter=city%20eq%20'Rome'%20or%20score%20gt%2090&$select=name,city,score",
            "$filter=city%20eq%20'Rome'%20or%20score%20gt%2090&$select=ID,name,city,score",
            Shape::V40,
        ),
        ("$expand=Orders", "$expand=Orders", Shape::V401),
    ] {
        let up = shop(80).await;
        up.set_page_size(Some(9));
        let gw = Gateway::start(&up.base_url()).await;
        let client = Client::default();
        let mut replica = Replica::new("Customers", &["ID"], shape);
        replica.page_size = Some(7);
        replica
            .initial(&client, &gw.url(&format!("{ROOT}/Customers?{query}")))
            .await
            .unwrap();
        let mut rng = 0x2545f4914f6cdd1du64;
        let mut next_id = 81;
        for round in 0..6 {
            for _ in 0..20 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let rows = up.rows("Customers");
                let pick = |r: u64| rows[(r as usize / 5) % rows.len()]["ID"].clone();
                match rng % 5 {
                    0 => {
                        up.insert("Customers", customer(next_id));
                        next_id += 1;
                    }
                    1 if !rows.is_empty() => {
                        up.update("Customers", pick(rng), json!({"score": (rng % 100) as i64}));
                    }
                    2 if !rows.is_empty() => {
                        let city = ["Rome", "Oslo"][(rng % 2) as usize];
                        up.update("Customers", pick(rng), json!({ "city": city }));
                    }
                    3 if !rows.is_empty() => {
                        up.delete("Customers", pick(rng));
                    }
                    _ => {
                        let orders = up.rows("Orders");
                        if !orders.is_empty() {
                            let o = &orders[(rng as usize / 5) % orders.len()];
                            up.update(
                                "Orders",
                                o["ID"].clone(),
                                json!({"amount": (rng % 500) as i64}),
                            );
                        }
                    }
                }
            }
            replica.sync(&client).await.unwrap();
            // The truth for the query, read straight from the upstream through the same query.
            let truth = client
                .get(&format!("{}/Customers?{truth_query}", up.base_url()), &[])
                .await;
            let mut expected = Vec::new();
            let mut page = truth.json();
            loop {
                expected.extend(page["value"].as_array().unwrap().iter().cloned());
                match page["@odata.nextLink"].as_str() {
                    Some(n) => page = client.get(&up.url(n), &[]).await.json(),
                    None => break,
                }
            }
            let expected_ids: std::collections::BTreeSet<String> =
                expected.iter().map(|e| replica.entity_id(e)).collect();
            let replica_ids: std::collections::BTreeSet<String> =
                replica.rows.keys().cloned().collect();
            assert_eq!(replica_ids, expected_ids, "{query} round {round}");
            for e in &expected {
                let mine = &replica.rows[&replica.entity_id(e)];
                for (k, v) in e.as_object().unwrap() {
                    if !k.starts_with('@') {
                        assert_eq!(&mine[k], v, "{query} round {round}: {k} of {e}");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn orderby_with_top_and_skip_gives_the_rows_the_upstream_gives() {
    let up = shop(60).await;
    up.set_page_size(Some(7));
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    for query in [
        "$orderby=score%20desc,ID&$top=5&$skip=2",
        "$orderby=city,name%20desc&$top=9",
        "$orderby=name&$select=name",
    ] {
        let r = client
            .get(&gw.url(&format!("{ROOT}/Customers?{query}")), &TRACK)
            .await;
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        assert_eq!(r.header("preference-applied"), Some("odata.track-changes"));
        let page = r.json();
        assert!(page["@odata.deltaLink"].is_string(), "{query}");
        let mine: Vec<Value> = page["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ID"].clone())
            .collect();
        let mut theirs = Vec::new();
        let (mut url, q) = (
            up.url("Customers"),
            query.replace("$select=name", "$select=ID,name"),
        );
        url = format!("{url}?{q}");
        loop {
            let p = client.get(&url, &[]).await.json();
            theirs.extend(
                p["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["ID"].clone()),
            );
            match p["@odata.nextLink"].as_str() {
                Some(n) => url = up.url(n),
                None => break,
            }
        }
        assert_eq!(mine, theirs, "{query}");
    }
}

#[tokio::test]
async fn an_ordered_read_larger_than_the_largest_page_is_answered_untracked_c2() {
    let up = shop(30).await;
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("page_size = 5\nmax_page_size = 5\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers?$orderby=name")), &TRACK)
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("preference-applied").is_none());
    assert!(r.json().get("@odata.deltaLink").is_none());
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers?$orderby=name&$top=5")),
            &TRACK,
        )
        .await;
    assert!(r.json()["@odata.deltaLink"].is_string());
    // An expression the gateway does not order by: the upstream's own answer, whatever it is.
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers?$orderby=tolower(name)")),
            &TRACK,
        )
        .await;
    let direct = client
        .get(
            &format!("{}/Customers?$orderby=tolower(name)", up.base_url()),
            &[],
        )
        .await;
    assert_eq!(r.status, direct.status);
    assert!(r.header("preference-applied").is_none());
    assert!(!r.text().contains("deltaLink"));
}

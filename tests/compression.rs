//! gzip between the gateway and both sides: refreshes ask the upstream for gzip and inflate it
//! under the page limit, tracked responses go out gzip-compressed to clients that accept it, and
//! pass-through answers stay as the upstream sent them.

mod support;

use std::io::Read;

use serde_json::{Value, json};
use support::gateway::{Client, Gateway, Resp};
use support::shop::{ROOT, shop};
use support::{Fault, Faults};

const TRACK: [(&str, &str); 1] = [("Prefer", "odata.track-changes")];
const TRACK_GZIP: [(&str, &str); 2] = [
    ("Prefer", "odata.track-changes"),
    ("Accept-Encoding", "gzip"),
];

fn sorted_by_id(mut entries: Vec<Value>) -> Vec<Value> {
    entries.sort_by_key(|e| e["ID"].as_i64().unwrap_or(i64::MAX));
    entries
}

fn gunzip(r: &Resp) -> Value {
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut text)
        .expect("a gzip body");
    serde_json::from_slice(&text).expect("gzip of JSON")
}

/// What a delta says, in an order that does not depend on the store.
fn delta_entries(page: &Value) -> Vec<String> {
    let mut out: Vec<String> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_refresh_from_a_gzip_upstream_equals_one_from_a_plain_upstream() {
    let up = shop(120).await;
    let client = Client::default();
    let url = |gw: &Gateway| gw.url(&format!("{ROOT}/Customers"));

    up.set_gzip(true);
    let zipped = Gateway::start(&up.base_url()).await;
    let (from_gzip, zipped_delta) = client.read_all(&url(&zipped), &TRACK).await;
    // Every enumeration request asked for gzip and got it.
    let pages = up.collection_requests("Customers");
    assert!(pages >= 3, "{pages}");
    assert_eq!(up.gzip_requests(), up.requests().len());

    up.set_gzip(false);
    up.clear_requests();
    let plain = Gateway::start(&up.base_url()).await;
    let (from_plain, plain_delta) = client.read_all(&url(&plain), &TRACK).await;
    assert_eq!(from_gzip.len(), 120);
    assert_eq!(sorted_by_id(from_gzip), sorted_by_id(from_plain));

    // Changes and a removal (confirmed upstream by key) read the same way too.
    for id in [3, 50, 99] {
        up.update(
            "Customers",
            json!(id),
            json!({"name": format!("changed {id}")}),
        );
    }
    up.delete("Customers", json!(7));
    up.set_gzip(true);
    let (zipped_changes, _) = client.read_all(&zipped_delta, &[]).await;
    up.set_gzip(false);
    let (plain_changes, _) = client.read_all(&plain_delta, &[]).await;
    assert_eq!(zipped_changes.len(), 4);
    // Tombstones name their gateway in the context URL; the rest is the same byte for byte.
    let text = |v: Vec<Value>, gw: &Gateway| {
        let mut t: Vec<String> = v
            .iter()
            .map(|e| e.to_string().replace(&gw.url(""), "GATEWAY"))
            .collect();
        t.sort();
        t
    };
    assert_eq!(text(zipped_changes, &zipped), text(plain_changes, &plain));
}

#[tokio::test]
async fn a_gzip_body_that_inflates_beyond_the_page_limit_fails_the_refresh_and_commits_nothing() {
    let up = shop(120).await;
    up.set_gzip(true);
    // Pages of 50 customers are a few KiB; the bomb is about a KiB that inflates to 1 MiB.
    let toml = "[limits]\nmax_page_bytes = 65536\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers"));
    up.push_fault(Fault::GzipBomb {
        page: 1,
        decoded_bytes: 1 << 20,
    });
    let r = client.get(&url, &TRACK).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("limit of 65536 bytes"), "{message}");
    assert_eq!(up.pending_faults(), 0);

    // The failed refresh left nothing: the next read is whole, and its delta link, followed
    // with nothing changed, holds nothing (C29).
    let (entries, delta) = client.read_all(&url, &TRACK).await;
    assert_eq!(entries.len(), 120);
    let (changes, _) = client.read_all(&delta, &[]).await;
    assert!(changes.is_empty(), "{changes:?}");
}

#[tokio::test]
async fn clients_that_accept_gzip_get_gzip_tracked_pages_that_decode_to_the_same_json() {
    let up = shop(120).await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| f.page_size = Some(50)).await;
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers"));

    let zipped = client.get(&url, &TRACK_GZIP).await;
    let plain = client.get(&url, &TRACK).await;
    for r in [&zipped, &plain] {
        assert_eq!(r.status, 200);
        let vary = r.header("vary").unwrap();
        assert!(
            vary.contains("Accept-Encoding") && vary.contains("OData-MaxVersion"),
            "{vary}"
        );
    }
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(plain.header("content-encoding"), None);
    let first = gunzip(&zipped);
    assert_eq!(first["value"], plain.json()["value"]);
    assert_eq!(first["value"].as_array().unwrap().len(), 50);

    // A next-link page from the store: the same page either way.
    let next = first["@odata.nextLink"].as_str().unwrap().to_owned();
    let next_zipped = client.get(&next, &[("Accept-Encoding", "gzip")]).await;
    let next_plain = client.get(&next, &[]).await;
    assert_eq!(next_zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(next_plain.header("content-encoding"), None);
    // The pages differ only in their links' tokens, which carry the time they were issued.
    let (mut a, mut b) = (gunzip(&next_zipped), next_plain.json());
    for page in [&mut a, &mut b] {
        let link = page.as_object_mut().unwrap().remove("@odata.nextLink");
        assert!(link.is_some_and(|l| l.as_str().is_some()), "{page}");
    }
    assert_eq!(a, b);

    // A delta.
    let (_, delta) = client.read_all(&url, &TRACK).await;
    for id in 1..=30 {
        up.update("Customers", json!(id), json!({"city": "Lisbon"}));
    }
    let delta_zipped = client.get(&delta, &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(delta_zipped.status, 200);
    assert_eq!(delta_zipped.header("content-encoding"), Some("gzip"));
    let changes = gunzip(&delta_zipped);
    assert_eq!(changes["value"].as_array().unwrap().len(), 30);
    let delta_plain = client.get(&delta, &[("Accept-Encoding", "identity")]).await;
    assert_eq!(delta_plain.header("content-encoding"), None);
    assert_eq!(delta_entries(&changes), delta_entries(&delta_plain.json()));

    // A pass-through is relayed as the upstream sent it: the gateway asks for identity so that
    // it can rewrite links, whatever the client accepts.
    up.set_gzip(true);
    up.clear_requests();
    let entity = client
        .get(
            &gw.url(&format!("{ROOT}/Customers(1)")),
            &[("Accept-Encoding", "gzip")],
        )
        .await;
    assert_eq!(entity.status, 200);
    assert_eq!(entity.header("content-encoding"), None);
    assert_eq!(entity.json()["ID"], 1);
    assert_eq!(up.gzip_requests(), 0);
}

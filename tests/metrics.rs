//! `/metrics` on the admin listener: what a tracked read, a delta and refused links leave there.

mod support;

use serde_json::json;
use support::gateway::{Client, Gateway};
use support::shop::{ROOT, shop};

/// The value of one sample (`name` or `name{labels}` exactly), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} is missing from:\n{text}"))
}

async fn scrape(client: &Client, gw: &Gateway) -> String {
    let admin = gw.admin_addr().expect("admin listener");
    let r = client.get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    r.text()
}

#[tokio::test]
async fn metrics_count_refreshes_entities_upstream_answers_feeds_and_refused_links() {
    let up = shop(30).await;
    up.set_page_size(Some(10));
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = Client::default();
    let track = [("Prefer", "odata.track-changes")];
    let (_, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &track)
        .await;
    let text = scrape(&client, &gw).await;
    let set = "{route=\"/odata/v4/shop\",set=\"Customers\"}";
    assert_eq!(
        value(&text, &format!("odg_refresh_seconds_count{set}")),
        1.0
    );
    assert_eq!(value(&text, "odg_entities_enumerated_total"), 30.0);
    assert_eq!(value(&text, "odg_entities_changed_total"), 30.0);
    assert_eq!(value(&text, "odg_entities_removed_total"), 0.0);
    // `$metadata` and three pages.
    assert!(value(&text, "odg_upstream_requests_total{class=\"2xx\"}") >= 4.0);
    assert_eq!(value(&text, "odg_feeds_active"), 1.0);
    assert_eq!(value(&text, "odg_feeds_stored"), 1.0);
    assert!(value(&text, "odg_store_bytes") > 0.0);
    assert!(value(&text, "odg_index_memory_bytes") >= 30.0 * 32.0);
    assert_eq!(value(&text, "odg_refresh_queue_depth"), 0.0);

    // One update and one delete: a delta enumerates 29 and commits one of each.
    up.update("Customers", json!(3), json!({"name": "renamed"}));
    up.delete("Customers", json!(4));
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An upstream 404 passed through.
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers(999)")), &[])
        .await;
    assert_eq!(r.status, 404);
    let text = scrape(&client, &gw).await;
    assert_eq!(
        value(&text, &format!("odg_refresh_seconds_count{set}")),
        2.0
    );
    assert_eq!(value(&text, "odg_entities_enumerated_total"), 59.0);
    assert_eq!(value(&text, "odg_entities_changed_total"), 31.0);
    assert_eq!(value(&text, "odg_entities_removed_total"), 1.0);
    assert_eq!(
        value(&text, "odg_upstream_requests_total{class=\"4xx\"}"),
        1.0
    );

    // Refused links (C10 answers them alike; the metrics tell why).
    let base = gw.url(&format!("{ROOT}/Customers?$deltatoken="));
    let token = link.strip_prefix(&base).expect("a delta link of ours");
    let mut forged = token.as_bytes().to_vec();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(
        client.get(&format!("{base}{forged}"), &[]).await.status,
        400
    );
    assert_eq!(client.get(&format!("{base}abc"), &[]).await.status, 400);
    assert_eq!(client.get(&format!("{base}abd"), &[]).await.status, 400);
    let now = gw.shared.clock.now_ms();
    gw.shared.clock.pin_ms(now + 31 * 86_400 * 1000);
    assert_eq!(client.get(&link, &[]).await.status, 410);
    let text = scrape(&client, &gw).await;
    let rejected = |reason: &str| {
        value(
            &text,
            &format!("odg_token_rejections_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(rejected("forged"), 1.0);
    assert_eq!(rejected("malformed"), 2.0);
    assert_eq!(rejected("expired"), 1.0);
}

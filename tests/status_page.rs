//! The status page on the admin listener (`GET /`): one row per feed with its set, query, a short
//! scope hash (never the credential), entities, version, last refresh and a chart of recent
//! durations; values escaped. Checked as HTML text, and as a browser shows it (headless Chromium).

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::gateway::{Client, Gateway};
use support::shop::{ROOT, shop};

const SECRET: &str = "Bearer s3cr3t-alice-token";

/// A gateway with two feeds of Customers: everything (read twice, with a change between) and one
/// whose filter holds markup.
async fn gateway_with_feeds() -> (support::FakeUpstream, Gateway, String) {
    let up = shop(20).await;
    let gw = Gateway::start_with(&up.base_url(), None, |f| {
        f.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = Client::default();
    let headers = [("Prefer", "odata.track-changes"), ("Authorization", SECRET)];
    let (_, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &headers)
        .await;
    up.delete("Customers", json!(5));
    let r = client.get(&link, &[("Authorization", SECRET)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = client
        .get(
            &gw.url(&format!(
                "{ROOT}/Customers?$filter=name%20eq%20%27%3Cb%3Ebold%3C%2Fb%3E%27"
            )),
            &headers,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = format!("http://{}/", gw.admin_addr().expect("admin listener"));
    (up, gw, url)
}

#[tokio::test]
async fn status_page_lists_each_feed_with_its_refreshes_and_escapes_values() {
    let (_up, _gw, url) = gateway_with_feeds().await;
    let r = Client::default().get(&url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.header("content-security-policy").is_some());
    let html = r.text();
    assert!(html.contains("<p id=\"summary\">2 feeds"), "{html}");
    let rows: Vec<&str> = html
        .split("<tr class=\"feed\">")
        .skip(1)
        .map(|r| r.split("</tr>").next().unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{html}");
    let all = rows
        .iter()
        .find(|r| r.contains("<code>(all)</code>"))
        .expect("the unfiltered feed");
    assert!(all.contains("<td class=\"set\">Customers</td>"), "{all}");
    assert!(all.contains("<td class=\"n entities\">19</td>"), "{all}");
    assert!(all.contains("<td class=\"n version\">2</td>"), "{all}");
    assert!(all.contains("<td class=\"outcome\">ok</td>"), "{all}");
    // 20 new entities, then one removal.
    assert!(all.contains("<td class=\"n changes\">21</td>"), "{all}");
    assert!(all.contains(" UTC</td>"), "{all}");
    assert_eq!(all.matches("<rect").count(), 2, "two refreshes: {all}");
    let filtered = rows
        .iter()
        .find(|r| r.contains("$filter"))
        .expect("the filtered feed");
    assert!(
        filtered.contains("$filter=name eq &#39;&lt;b&gt;bold&lt;/b&gt;&#39;"),
        "{filtered}"
    );
    assert!(!html.contains("<b>"), "markup from a query is escaped");
    // The scope is a short hash, the same for both feeds of one caller; no credential shows.
    let scope = |row: &str| {
        row.split("<td class=\"scope\"><code>")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap()
            .to_owned()
    };
    assert_eq!(scope(all).len(), 12);
    assert_eq!(scope(all), scope(filtered));
    assert!(!html.contains("s3cr3t") && !html.contains("Bearer"));
}

#[tokio::test]
async fn status_page_shows_feeds_found_in_the_store_after_a_restart() {
    let (up, gw, _) = gateway_with_feeds().await;
    let dir = gw.stop().await;
    let gw = Gateway::start_in(dir, &up.base_url(), None, |f| {
        f.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let url = format!("http://{}/", gw.admin_addr().unwrap());
    let html = Client::default().get(&url, &[]).await.text();
    assert!(html.contains("<p id=\"summary\">2 feeds"), "{html}");
    assert!(html.contains("not refreshed since start"), "{html}");
    assert!(html.contains("<td class=\"n entities\">19</td>"), "{html}");
}

/// What Chromium renders: `--dump-dom` prints the DOM after loading, as a user's browser has it.
#[tokio::test]
#[ignore = "needs chromium; run by .ci/run"]
async fn status_page_shows_feed_rows_in_headless_chromium() {
    let (_up, _gw, url) = gateway_with_feeds().await;
    let profile = tempfile::tempdir().unwrap();
    let run = {
        let url = url.clone();
        let profile = profile.path().to_owned();
        tokio::task::spawn_blocking(move || {
            Command::new("chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-dev-shm-usage",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("--dump-dom")
                .arg(&url)
                .output()
        })
    };
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("chromium finishes within 2 minutes")
        .unwrap()
        .unwrap_or_else(|e| panic!("chromium cannot be started ({e}); install Debian's chromium"));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<title>odata-delta-gateway status</title>"),
        "{dom}"
    );
    // Rows the browser built from the table, with their cells.
    let rows: Vec<&str> = dom.split("<tr class=\"feed\">").skip(1).collect();
    assert_eq!(rows.len(), 2, "{dom}");
    assert!(rows.iter().all(|r| r.contains(">Customers</td>")), "{dom}");
    // The markup in the query is text in the DOM, not an element.
    assert!(!dom.contains("<b>bold</b>"), "{dom}");
    assert!(dom.contains("&lt;b&gt;bold&lt;/b&gt;"), "{dom}");
    assert_eq!(dom.matches("<svg").count(), 2, "{dom}");
}

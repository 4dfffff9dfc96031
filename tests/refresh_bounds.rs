//! Every refresh ends, and ends for the right reason: nextLink cycles, endless paging, slow
//! upstreams and oversized feeds stop it with a clear 502/504 and nothing committed (C26, C28); an
//! upstream's `@odata.count` cannot overflow anything; removal checks fall back through every form
//! before they fail (C27); upstreams that cap every answer are read on to the end; and a healthy
//! upstream under churn never fails a refresh nor yields a false tombstone (C27).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::gateway::{Client, Gateway, Replica, Shape};
use support::{EntitySetDef, FakeUpstream, Fault, Faults};

const ROOT: &str = "/odata/v4/shop";
const TRACK: [(&str, &str); 1] = [("Prefer", "odata.track-changes")];

async fn shop(n: i64, page: usize) -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("city", "Edm.String"),
    );
    up.insert_many("Customers", (1..=n).map(customer));
    up.set_page_size(Some(page));
    up
}

fn customer(i: i64) -> Value {
    json!({"ID": i, "name": format!("C{i}"), "city": if i % 2 == 0 { "Berlin" } else { "Rome" }})
}

/// Every entity of a tracked read of `query` (following next links) and its delta link.
async fn read_all(client: &Client, gw: &Gateway, query: &str) -> (Vec<Value>, String) {
    let mut page = client
        .get(&gw.url(&format!("{ROOT}/Customers{query}")), &TRACK)
        .await;
    let mut entities = Vec::new();
    loop {
        assert_eq!(page.status, 200, "{}", page.text());
        let body = page.json();
        entities.extend(body["value"].as_array().unwrap().iter().cloned());
        if let Some(d) = body["@odata.deltaLink"].as_str() {
            return (entities, d.to_owned());
        }
        page = client
            .get(body["@odata.nextLink"].as_str().unwrap(), &[])
            .await;
    }
}

/// `+ID` for an entity, `-Customers(ID)` for a tombstone, sorted.
fn ids(page: &Value) -> Vec<String> {
    let mut out: Vec<String> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e.get("id") {
            Some(id) => format!("-{}", id.as_str().unwrap()),
            None => format!("+{}", e["ID"]),
        })
        .collect();
    out.sort();
    out
}

/// A GET that must be answered within `secs` seconds.
async fn get_within(client: &Client, url: &str, secs: u64) -> support::gateway::Resp {
    tokio::time::timeout(Duration::from_secs(secs), client.get(url, &[]))
        .await
        .unwrap_or_else(|_| panic!("no answer within {secs}s: {url}"))
}

/// An OData error with a code and a message that gives nothing of the upstream away (C26).
fn assert_odata_error(r: &support::gateway::Resp, status: u16) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    let e = r.json();
    assert!(e["error"]["code"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(!r.text().contains("127.0.0.1"), "{}", r.text());
}

/// A delta link, with a delete and an update waiting behind it, for tests that fail a refresh and
/// then check that the link still gives exactly those changes (nothing was committed, C28).
async fn link_with_changes(client: &Client, gw: &Gateway, up: &FakeUpstream) -> String {
    let (_, link) = read_all(client, gw, "").await;
    up.delete("Customers", json!(2));
    up.update("Customers", json!(3), json!({"name": "changed"}));
    link
}

const CHANGES: [&str; 2] = ["+3", "-Customers(2)"];

#[tokio::test]
async fn a_next_link_cycle_fails_the_refresh_promptly_with_502_and_commits_nothing() {
    let up = shop(40, 10).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let link = link_with_changes(&client, &gw, &up).await;
    // The page ending at row 30 links back to the one starting at row 10: 10, 20, 10, 20, …
    up.set_next_link_cycle(Some((30, 10)));
    up.clear_requests();
    let r = get_within(&client, &link, 20).await;
    assert_odata_error(&r, 502);
    let seen = up.collection_requests("Customers");
    assert!(seen <= 5, "the fake saw {seen} page requests");
    up.set_next_link_cycle(None);
    let page = get_within(&client, &link, 20).await.json();
    assert_eq!(ids(&page), CHANGES, "{page}");
}

#[tokio::test]
async fn paging_beyond_max_pages_per_refresh_fails_with_502_and_commits_nothing() {
    let up = shop(40, 20).await;
    let toml = "[limits]\nmax_pages_per_refresh = 6\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let link = link_with_changes(&client, &gw, &up).await;
    up.set_page_size(Some(4));
    up.clear_requests();
    let r = get_within(&client, &link, 20).await;
    assert_odata_error(&r, 502);
    assert!(r.text().contains("limit"), "{}", r.text());
    let seen = up.collection_requests("Customers");
    assert!(seen <= 6, "the fake saw {seen} page requests");
    up.set_page_size(Some(20));
    let page = get_within(&client, &link, 20).await.json();
    assert_eq!(ids(&page), CHANGES, "{page}");
}

#[tokio::test]
async fn a_refresh_past_refresh_timeout_fails_with_504_and_commits_nothing() {
    let up = shop(40, 10).await;
    let toml = "[limits]\nrefresh_timeout = \"1s\"\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let link = link_with_changes(&client, &gw, &up).await;
    // Each page is well within the upstream timeout; together they are not within the deadline.
    for page in 1..=3 {
        up.push_fault(Fault::Delay { page, ms: 600 });
    }
    let started = Instant::now();
    let r = get_within(&client, &link, 20).await;
    assert_odata_error(&r, 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    up.clear_faults();
    let page = get_within(&client, &link, 20).await.json();
    assert_eq!(ids(&page), CHANGES, "{page}");
}

#[tokio::test]
async fn max_entities_per_feed_stops_the_enumeration_as_soon_as_it_is_exceeded() {
    let up = shop(200, 10).await;
    let toml = "[limits]\nmax_entities_per_feed = 25\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    up.clear_requests();
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_odata_error(&r, 502);
    assert!(r.text().contains("limit"), "{}", r.text());
    // 25 / 10 → the third page crosses the limit; pages fetched ahead while it was hashed are few.
    let seen = up.collection_requests("Customers");
    assert!(seen <= 6, "the fake saw {seen} of 20 pages");
}

/// Whatever number the upstream writes as `@odata.count`, nothing overflows: integers beyond
/// `u64` saturate, and a count that is not a non-negative integer makes the page unreadable (502).
#[tokio::test]
async fn hostile_upstream_counts_never_overflow_and_get_a_clear_answer() {
    let up = shop(30, 10).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let link = link_with_changes(&client, &gw, &up).await;
    for (count, status) in [
        ("18446744073709551615", 200),
        ("\"18446744073709551615\"", 200),
        ("\"99999999999999999999999999999\"", 200),
        ("9223372036854775808", 200),
        ("1e30", 502),
        ("-1", 502),
        ("-9223372036854775808", 502),
        ("2.5", 502),
        ("\"x\"", 502),
    ] {
        up.set_count_text(Some(count));
        if status == 200 {
            let (entities, _) = read_all(&client, &gw, "").await;
            assert_eq!(entities.len(), 29, "{count}");
        } else {
            let url = gw.url(&format!("{ROOT}/Customers"));
            let r = tokio::time::timeout(Duration::from_secs(20), client.get(&url, &TRACK))
                .await
                .expect("an answer in time");
            assert_odata_error(&r, status);
        }
    }
    up.set_count_text(Some("18446744073709551615"));
    let page = get_within(&client, &link, 20).await.json();
    assert_eq!(ids(&page), CHANGES, "{page}");
}

/// JayStack's odata-v4-server answers `$filter=ID in (…)` with 500. Removal checks fall back to
/// `or` and keep using it, so deltas keep working and report their tombstones (C27).
#[tokio::test]
async fn removal_checks_fall_back_when_the_upstream_answers_500_to_in_c27() {
    for query in ["", "?$filter=city%20eq%20'Berlin'"] {
        let up = shop(30, 10).await;
        let gw = Gateway::start(&up.base_url()).await;
        let client = Client::default();
        let (_, link) = read_all(&client, &gw, query).await;
        up.set_in_filter_status(Some(500));
        up.delete("Customers", json!(4));
        let r = get_within(&client, &link, 20).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        let page = r.json();
        assert_eq!(ids(&page), ["-Customers(4)"], "{query}: {page}");
        let reasons: Vec<&Value> = page["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["reason"])
            .collect();
        assert_eq!(reasons, [&json!("deleted")], "{page}");

        // The form that worked is remembered: the next removal check does not try `in` again.
        up.clear_requests();
        up.delete("Customers", json!(8));
        let next = page["@odata.deltaLink"].as_str().unwrap();
        let r = get_within(&client, next, 20).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        assert_eq!(ids(&r.json()), ["-Customers(8)"], "{query}");
        let tried_in = up.requests().iter().any(|r| {
            percent_encoding::percent_decode_str(&r.path_and_query)
                .decode_utf8_lossy()
                .contains(" in (")
        });
        assert!(!tried_in, "{query}: `in` was tried again");
    }
}

/// 401 and 403 from a removal check are the credentials' fault: passed on as they came, not a
/// reason to try another form.
#[tokio::test]
async fn a_removal_check_refused_with_401_is_passed_on() {
    let up = shop(30, 10).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let link = link_with_changes(&client, &gw, &up).await;
    // Three pages of enumeration, then the removal check of row 2.
    up.push_fault(Fault::Status {
        page: 3,
        status: 401,
        retry_after: None,
    });
    let r = get_within(&client, &link, 20).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(up.pending_faults(), 0);
    let page = get_within(&client, &link, 20).await.json();
    assert_eq!(ids(&page), CHANGES, "{page}");
}

/// An upstream that silently caps every answer at 50 rows of 495 (no nextLink) is read on with
/// `$skip` until the count is reached, not given up after a few rounds. A real silent truncation
/// still fails: once the upstream also ignores `$skip`, it keeps counting rows that exist and that
/// it never delivers.
#[tokio::test]
async fn an_upstream_capping_every_answer_is_read_on_to_its_count_unless_it_ignores_skip() {
    let up = shop(495, 50).await;
    up.set_truncate_after(Some(50));
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let (entities, link) = read_all(&client, &gw, "").await;
    let got: BTreeSet<i64> = entities.iter().map(|e| e["ID"].as_i64().unwrap()).collect();
    assert_eq!(got, (1..=495).collect::<BTreeSet<i64>>());
    up.delete("Customers", json!(300));
    up.update("Customers", json!(480), json!({"name": "late"}));
    let page = get_within(&client, &link, 20).await.json();
    assert_eq!(ids(&page), ["+480", "-Customers(300)"], "{page}");

    let next = page["@odata.deltaLink"].as_str().unwrap().to_owned();
    up.update("Customers", json!(7), json!({"name": "early"}));
    up.set_ignore_skip(true);
    up.clear_requests();
    let r = get_within(&client, &next, 20).await;
    assert_odata_error(&r, 502);
    let seen = up.collection_requests("Customers");
    assert!(seen <= 4, "the fake saw {seen} page requests");
    up.set_ignore_skip(false);
    let page = get_within(&client, &next, 20).await.json();
    assert_eq!(ids(&page), ["+7"], "{page}");
}

/// The read-on stays within the refresh's page cap.
#[tokio::test]
async fn reading_on_past_a_cap_stops_at_max_pages_per_refresh() {
    let up = shop(495, 50).await;
    up.set_truncate_after(Some(50));
    let toml = "[limits]\nmax_pages_per_refresh = 4\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    up.clear_requests();
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers")), &TRACK)
        .await;
    assert_odata_error(&r, 502);
    assert!(r.text().contains("upstream pages"), "{}", r.text());
    assert!(up.collection_requests("Customers") <= 4);
}

/// Rows inserted among those already read make offset paging deliver fewer rows than the count
/// taken at the end; that is churn, not truncation. With the upstream changing every 20 ms and 20
/// readers, every request succeeds; no tombstone names a row that still exists and matches the
/// filter (C27); after the churn stops, every replica holds exactly what the upstream holds (C28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_upstream_under_churn_never_fails_a_refresh_nor_yields_a_false_tombstone_c27() {
    const ROWS: i64 = 240;
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("city", "Edm.String"),
    );
    // Rows 1000, 2000, …; rows inserted later fall between them, among rows already read. An id
    // is never used twice, and a row's city never changes, so a tombstone is false exactly when
    // its row is still there and in Berlin.
    up.insert_many("Customers", (1..=ROWS).map(|i| customer(i * 1000 + i % 2)));
    up.set_page_size(Some(10));
    let gw = Gateway::start(&up.base_url()).await;
    let filter = "?$filter=city%20eq%20'Berlin'";
    let url = gw.url(&format!("{ROOT}/Customers{filter}"));

    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (up, stop) = (up.handle(), stop.clone());
        let next = AtomicI64::new(0);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..2 {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    // Between existing rows, spread over the whole key range; even: in Berlin.
                    let slot = (n * 97) % ROWS + 1;
                    let id = slot * 1000 + 2 * (n / ROWS) + 2;
                    up.insert("Customers", customer(id));
                }
                let rows = up.rows("Customers");
                let n = next.load(Ordering::SeqCst) as usize;
                for step in [31, 53] {
                    if let Some(row) = rows.get((n * step) % rows.len().max(1)) {
                        up.delete("Customers", row["ID"].clone());
                    }
                }
                if let Some(row) = rows.get((n * 17) % rows.len().max(1)) {
                    up.update(
                        "Customers",
                        row["ID"].clone(),
                        json!({"name": format!("n{n}")}),
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let readers: Vec<_> = (0..20)
        .map(|_| {
            let (url, up) = (url.clone(), up.handle());
            tokio::spawn(async move {
                let client = Client::default();
                let mut replica = Replica::new("Customers", &["ID"], Shape::V40);
                replica.initial(&client, &url).await.map_err(|r| r.text())?;
                for _ in 0..12 {
                    replica.sync(&client).await.map_err(|r| r.text())?;
                    for (id, reason) in &replica.last_removed {
                        let key: i64 = id
                            .trim_start_matches("Customers(")
                            .trim_end_matches(')')
                            .parse()
                            .map_err(|_| format!("tombstone id {id}"))?;
                        if key % 2 == 0 && up.row("Customers", json!(key)).is_some() {
                            return Err(format!("false tombstone {id} ({reason})"));
                        }
                    }
                }
                Ok::<_, String>(replica)
            })
        })
        .collect();
    let mut replicas = Vec::new();
    let all = async {
        for reader in readers {
            replicas.push(reader.await.expect("reader task"));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("the readers finish in time");
    stop.store(true, Ordering::SeqCst);
    churn.await.expect("churn task");

    let client = Client::default();
    let berlin = |r: &Value| r["city"] == "Berlin";
    for replica in replicas {
        let mut replica = replica.unwrap_or_else(|e| panic!("under churn: {e}"));
        replica.sync(&client).await.expect("quiet sync");
        replica.sync(&client).await.expect("quiet sync");
        assert_eq!(
            replica.rows,
            replica.expected(&up.rows("Customers"), berlin)
        );
    }
}

/// Upstream pages (up to `max_page_bytes`) are parsed and their entities compacted on the blocking
/// pool: while a refresh reads 24 MiB of pages, the thread that serves requests keeps running. The
/// gateway runs on a runtime of one thread, the fake upstream on a runtime of its own, and a ticker
/// on the gateway's thread measures the longest stall (about 1.1 s when pages were parsed and
/// compacted there, about 0.1 s now).
#[test]
fn large_pages_are_parsed_off_the_threads_that_serve_requests() {
    let upstream_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let up = upstream_runtime.block_on(shop(0, 1000));
    let filler = "x".repeat(16 << 10);
    up.insert_many(
        "Customers",
        (1..=1500).map(|i| json!({"ID": i, "name": filler, "city": "Rome"})),
    );
    let gateway_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stall, took) = gateway_runtime.block_on(async {
        let gw = Gateway::start(&up.base_url()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut longest = Duration::ZERO;
                let mut last = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                }
                longest
            })
        };
        let client = Client::default();
        let started = Instant::now();
        let prefer = [("Prefer", "odata.track-changes, odata.maxpagesize=1")];
        let r = client
            .get(&gw.url(&format!("{ROOT}/Customers")), &prefer)
            .await;
        let took = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        assert_eq!(r.status, 200, "{}", r.text());
        (ticker.await.unwrap(), took)
    });
    assert!(
        stall < Duration::from_millis(400),
        "the request threads stalled for {stall:?} of a {took:?} refresh"
    );
}

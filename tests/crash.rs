//! Crash safety (C29): SIGKILL the real gateway process at random instants while it refreshes a
//! large feed — during enumeration, diffing, or the commit of thousands of changed rows — restart it
//! on the same data dir, and check that every token it ever issued still works and that a replica
//! applying the deltas converges (C28).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::gateway::{Client, GatewayProcess, Replica, Shape};
use support::{EntitySetDef, FakeUpstream, Fault, Faults};

const ROOT: &str = "/odata/v4/shop";

fn customer(i: i64, round: i64) -> Value {
    json!({"ID": i, "name": format!("Customer {i}"), "note": format!("round {round} {}", "x".repeat(40)), "score": (i * 31 + round) % 1000})
}

/// Point a link issued by one process at another (the port changes on restart).
fn repoint(link: &str, addr: std::net::SocketAddr) -> String {
    let rest = link.splitn(4, '/').nth(3).unwrap_or("");
    format!("http://{addr}/{rest}")
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test]
async fn sigkill_at_random_points_during_refreshes_loses_no_token_and_no_change_c29() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("note", "Edm.String")
            .property("score", "Edm.Int32"),
    );
    let n = 8_000;
    up.insert_many("Customers", (1..=n).map(|i| customer(i, 0)));
    up.set_page_size(Some(1000));
    let dir = tempfile::tempdir().unwrap();
    // After a restart the first refresh sees every change; reusing it keeps the checks below fast.
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "min_refresh_interval = \"1h\"\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let store = dir.path().join("store");
    let client = Client::default();
    let mut gw = GatewayProcess::spawn(&up.base_url(), &store, &args);
    let mut replicas = [
        Replica::new("Customers", &["ID"], Shape::V40),
        Replica::new("Customers", &["ID"], Shape::V401),
    ];
    for r in replicas.iter_mut() {
        r.page_size = Some(5000);
        r.initial(&client, &gw.url(&format!("{ROOT}/Customers")))
            .await
            .unwrap();
    }
    let mut issued: Vec<String> = replicas
        .iter()
        .map(|r| r.delta_link.clone().unwrap())
        .collect();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut next_id = n + 1;
    for round in 1..=6i64 {
        // A large change: thousands of updates, some deletes and inserts.
        let rows = up.rows("Customers");
        for (i, row) in rows.iter().enumerate() {
            if rng.next().is_multiple_of(4) {
                let id = row["ID"].as_i64().unwrap();
                if i.is_multiple_of(97) {
                    up.delete("Customers", json!(id));
                } else {
                    up.update("Customers", json!(id), customer(id, round));
                }
            }
        }
        for _ in 0..50 {
            up.insert("Customers", customer(next_id, round));
            next_id += 1;
        }
        // Someone asks for a delta; the process dies at a random instant of that refresh.
        let link = repoint(&issued[issued.len() - 1], gw.addr);
        let bg_client = client.clone();
        let request = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), bg_client.get(&link, &[])).await;
        });
        tokio::time::sleep(Duration::from_millis(rng.next() % 1500)).await;
        gw.kill9();
        request.abort();
        gw = GatewayProcess::spawn(&up.base_url(), &store, &args);

        // Every token issued so far still works.
        for link in &issued {
            let count = repoint(link, gw.addr).replace("/Customers?", "/Customers/$count?");
            let r = client.get(&count, &[]).await;
            assert_eq!(r.status, 200, "round {round}: {link}: {}", r.text());
        }
        for r in replicas.iter_mut() {
            r.delta_link = Some(repoint(r.delta_link.as_ref().unwrap(), gw.addr));
            r.sync(&client).await.unwrap();
            assert_eq!(
                r.rows,
                r.expected(&up.rows("Customers"), |_| true),
                "round {round} {:?}",
                r.shape
            );
            issued.push(r.delta_link.clone().unwrap());
        }
    }
}

/// SIGKILL while a feed's first tracked read is being streamed: the pages already served named a
/// version that was never published, so after the restart their next link answers an error rather
/// than pages of another load, nothing of the cut-short load is served, and a new read is exact
/// (C29, C12).
#[tokio::test]
async fn sigkill_during_a_streamed_first_read_leaves_nothing_that_is_served_c29() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("note", "Edm.String")
            .property("score", "Edm.Int32"),
    );
    let n = 20_000;
    up.insert_many("Customers", (1..=n).map(|i| customer(i, 0)));
    up.set_page_size(Some(1000));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let client = Client::default();
    let mut rng = Rng(0x0dd_ba11_5eed_0001);
    let mut gw = GatewayProcess::spawn(&up.base_url(), &store, &[]);
    for round in 0..3 {
        // Each round's first read defines a new feed, so each is a first load that streams; the
        // upstream slows down late in the enumeration, so the kill comes before the load ends.
        up.push_fault(Fault::Delay { page: 10, ms: 3000 });
        let url = gw.url(&format!("{ROOT}/Customers?$filter=score%20ge%20{round}"));
        let r = client
            .get(
                &url,
                &[("Prefer", "odata.track-changes,odata.maxpagesize=500")],
            )
            .await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        let page = r.json();
        assert!(
            page.get("@odata.deltaLink").is_none(),
            "round {round}: not streamed"
        );
        let next = page["@odata.nextLink"].as_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_millis(rng.next() % 300)).await;
        gw.kill9();
        gw = GatewayProcess::spawn(&up.base_url(), &store, &[]);
        up.clear_faults();

        let r = client.get(&repoint(&next, gw.addr), &[]).await;
        assert_ne!(
            r.status,
            200,
            "round {round}: a cut-short load was served on: {}",
            r.text()
        );
        assert!(r.json()["error"]["code"].is_string(), "round {round}");

        let mut replica = Replica::new("Customers", &["ID"], Shape::V401);
        replica.page_size = Some(5000);
        let url = gw.url(&format!("{ROOT}/Customers?$filter=score%20ge%20{round}"));
        replica.initial(&client, &url).await.unwrap();
        let expected = |row: &Value| row["score"].as_i64().unwrap() >= round;
        assert_eq!(
            replica.rows,
            replica.expected(&up.rows("Customers"), expected)
        );
        up.update("Customers", json!(5), customer(5, round + 1));
        up.delete("Customers", json!(10 + round));
        replica.sync(&client).await.unwrap();
        assert_eq!(
            replica.rows,
            replica.expected(&up.rows("Customers"), expected),
            "round {round}"
        );
    }
}

/// SIGKILL at random instants of a refresh in which every row of a 25k-entity feed changed, so
/// that its rows go to the store in more than one bounded batch (of 20k) before the publish: every token still
/// works after the restart, and deltas converge (C29, C28).
#[tokio::test]
async fn sigkill_during_a_bounded_commit_of_every_row_loses_no_token_c29() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("note", "Edm.String")
            .property("score", "Edm.Int32"),
    );
    let n = 25_000;
    up.insert_many("Customers", (1..=n).map(|i| customer(i, 0)));
    up.set_page_size(Some(5000));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "min_refresh_interval = \"1h\"\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let store = dir.path().join("store");
    let client = Client::default();
    let mut gw = GatewayProcess::spawn(&up.base_url(), &store, &args);
    let mut replica = Replica::new("Customers", &["ID"], Shape::V40);
    replica.page_size = Some(10_000);
    replica
        .initial(&client, &gw.url(&format!("{ROOT}/Customers")))
        .await
        .unwrap();
    let mut issued = vec![replica.delta_link.clone().unwrap()];
    let mut rng = Rng(0xb0_0d1e_5eed_0002);
    for round in 1..=3i64 {
        up.clear("Customers");
        up.insert_many("Customers", (1..=n).map(|i| customer(i, round)));
        let link = repoint(issued.last().unwrap(), gw.addr);
        let bg_client = client.clone();
        let request = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(60), bg_client.get(&link, &[])).await;
        });
        tokio::time::sleep(Duration::from_millis(200 + rng.next() % 2000)).await;
        gw.kill9();
        request.abort();
        gw = GatewayProcess::spawn(&up.base_url(), &store, &args);
        for link in &issued {
            let count = repoint(link, gw.addr).replace("/Customers?", "/Customers/$count?");
            let r = client.get(&count, &[]).await;
            assert_eq!(r.status, 200, "round {round}: {link}: {}", r.text());
        }
        replica.delta_link = Some(repoint(replica.delta_link.as_ref().unwrap(), gw.addr));
        replica.sync(&client).await.unwrap();
        assert_eq!(
            replica.rows,
            replica.expected(&up.rows("Customers"), |_| true),
            "round {round}"
        );
        issued.push(replica.delta_link.clone().unwrap());
    }
}

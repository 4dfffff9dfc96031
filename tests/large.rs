//! A first load larger than what the gateway holds in memory at once: new rows are written to the
//! store in batches while the enumeration runs. The result must be the same as for a small one,
//! also when the load fails half-way and is tried again.

mod support;

use serde_json::json;
use support::gateway::{Client, Gateway, Replica, Shape};
use support::shop::names_only;
use support::{EntitySetDef, FakeUpstream, Fault, Faults};

const ROOT: &str = "/odata/v4/shop";

/// Follow a first tracked read's next links until a page is refused. A first read streams, so a
/// load that fails half-way answers its first pages and then an error for the next one (C26).
async fn read_until_failure(client: &Client, url: &str) -> support::gateway::Resp {
    let mut r = client.get(url, &[("Prefer", "odata.track-changes")]).await;
    while r.status == 200 {
        let page = r.json();
        let Some(next) = page["@odata.nextLink"].as_str() else {
            break;
        };
        r = client.get(next, &[]).await;
    }
    r
}

#[tokio::test]
async fn a_first_load_written_in_batches_gives_exact_reads_and_deltas_even_after_a_failure() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String"),
    );
    let n = 45_000;
    up.insert_many(
        "Customers",
        (1..=n).map(|i| json!({"ID": i, "name": format!("C{i}")})),
    );
    up.set_page_size(Some(5000));
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();

    // The first attempt fails after more than one batch was written.
    up.push_fault(Fault::Status {
        page: 6,
        status: 500,
        retry_after: None,
    });
    let r = read_until_failure(&client, &gw.url(&format!("{ROOT}/Customers"))).await;
    assert_eq!(r.status, 502, "{}", r.text());

    // Duplicates across pages in the retried load: the last state wins.
    up.push_fault(Fault::DuplicateAcrossPages { page: 5 });
    for (round, shape) in [Shape::V40, Shape::V401].into_iter().enumerate() {
        let round = round as i64;
        let mut replica = Replica::new("Customers", &["ID"], shape);
        replica.page_size = Some(10_000);
        replica
            .initial(&client, &gw.url(&format!("{ROOT}/Customers")))
            .await
            .unwrap();
        assert_eq!(replica.rows.len(), up.rows("Customers").len());
        for i in (1..=n).step_by(1000) {
            up.update(
                "Customers",
                json!(i),
                json!({"name": format!("changed {i}")}),
            );
        }
        up.delete("Customers", json!(n - 1 - round));
        up.insert("Customers", json!({"ID": n + 1 + round, "name": "new"}));
        replica.sync(&client).await.unwrap();
        assert_eq!(
            replica.rows,
            replica.expected(&up.rows("Customers"), |_| true),
            "{shape:?}"
        );
    }
}

/// A first load that fails half-way, never tried again, leaves nothing in the store once the
/// gateway starts again: before, its staged rows stayed, with no feed to own them, and the next load
/// of the feed took them for data (C29).
#[tokio::test]
async fn a_failed_first_load_leaves_nothing_behind() {
    let up = names_only(45_000).await;
    up.set_page_size(Some(5000));
    // One scope for everyone: no upstream authorization check per streamed page, which would
    // count as a collection request and could take the fault meant for the enumeration, leaving
    // the load to succeed behind the client's back.
    let gw = Gateway::start_with(
        &up.base_url(),
        Some("[identity]\nmode = \"shared\"\n"),
        |_| {},
    )
    .await;
    let client = Client::default();
    // Pages 0..=5 are read and more than one batch of rows is written before page 6 fails.
    up.push_fault(Fault::Status {
        page: 6,
        status: 500,
        retry_after: None,
    });
    let r = read_until_failure(&client, &gw.url(&format!("{ROOT}/Customers"))).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let dir = gw.stop().await;
    let store = odata_delta_gateway::store::Store::open(dir.path()).unwrap();
    let sizes = store.sizes().unwrap();
    assert_eq!(sizes.entity_states, 0, "{sizes:?}");
    assert_eq!(sizes.changes, 0, "{sizes:?}");
}

/// A refresh that changes every row writes them in batches beside the published ones; when it
/// fails half-way, the pages of an answer being read still show the published version, the old
/// delta link still answers, and the next refresh publishes exactly the changes (C28, C29).
#[tokio::test]
async fn a_bulk_update_that_fails_half_way_publishes_nothing_and_the_retry_is_exact() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String"),
    );
    let n = 45_000;
    up.insert_many(
        "Customers",
        (1..=n).map(|i| json!({"ID": i, "name": format!("C{i}")})),
    );
    up.set_page_size(Some(5000));
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let mut replica = Replica::new("Customers", &["ID"], Shape::V401);
    replica.page_size = Some(10_000);
    replica
        .initial(&client, &gw.url(&format!("{ROOT}/Customers")))
        .await
        .unwrap();
    let baseline = replica.delta_link.clone().unwrap();

    // A second tracked read, of which only the first page is read before the bulk update.
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes,odata.maxpagesize=10000")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut next = r.json()["@odata.nextLink"].as_str().unwrap().to_owned();

    // Every row changes (cleared and inserted again with the same keys: quicker than 45k updates).
    up.clear("Customers");
    up.insert_many(
        "Customers",
        (1..=n).map(|i| json!({"ID": i, "name": format!("bulk {i}")})),
    );
    up.push_fault(Fault::Status {
        page: 6,
        status: 500,
        retry_after: None,
    });
    let r = client.get(&baseline, &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());

    // The rest of the second read: the published version only, nothing of the failed refresh.
    let mut seen = 10_000;
    loop {
        let r = client.get(&next, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        for e in page["value"].as_array().unwrap() {
            assert!(
                e["name"].as_str().unwrap().starts_with('C'),
                "an unpublished row was served: {e}"
            );
            seen += 1;
        }
        match page["@odata.nextLink"].as_str() {
            Some(link) => next = link.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, n as usize);

    // The retry: every row once, with its new state.
    let count = baseline.replace("/Customers?", "/Customers/$count?");
    let r = client.get(&count, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), n.to_string());
    replica.sync(&client).await.unwrap();
    assert_eq!(
        replica.rows,
        replica.expected(&up.rows("Customers"), |_| true)
    );
}

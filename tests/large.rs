//! A first load larger than what the gateway holds in memory at once: new rows are written to the
//! store in batches while the enumeration runs. The result must be the same as for a small one,
//! also when the load fails half-way and is tried again.

mod support;

use serde_json::json;
use support::gateway::{Client, Gateway, Replica, Shape};
use support::{EntitySetDef, FakeUpstream, Fault};

const ROOT: &str = "/odata/v4/shop";

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
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
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

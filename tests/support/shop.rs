//! The sample service most black-box tests run against: the fake upstream at `/odata/v4/shop`
//! with a `Customers` set keyed by an `Edm.Int32` `ID`.

use serde_json::{Value, json};

use super::model::EntitySetDef;
use super::upstream::FakeUpstream;

/// The service root path, the same on the upstream and on the gateway (default route).
pub const ROOT: &str = "/odata/v4/shop";

/// A fake upstream holding customers 1..=`customers`.
pub async fn shop(customers: i64) -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("city", "Edm.String")
            .property("score", "Edm.Int32"),
    );
    up.insert_many("Customers", (1..=customers).map(customer));
    up
}

/// Customer `i` as first inserted.
pub fn customer(i: i64) -> Value {
    let city = ["Berlin", "Paris", "Rome"][(i % 3) as usize];
    json!({"ID": i, "name": format!("Customer {i}"), "city": city, "score": i * 7 % 100})
}

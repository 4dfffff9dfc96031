//! The service most black-box tests run against: the sample service at `/odata/v4/shop`
//! with a `Customers` set keyed by an `Edm.Int32` `ID`.

use serde_json::{Value, json};

use super::EntitySetDef;
use super::{FakeUpstream, Upstream};

/// The service root path, the same on the upstream and on the gateway (default route).
pub const ROOT: &str = "/odata/v4/shop";

/// The sample service holding customers 1..=`customers`.
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

/// The sample service at [`ROOT`] with a `Customers` set of `ID` and `name` only (`C1`, `C2`,
/// ...), for the tests that watch what the gateway sends out rather than the data.
pub async fn names_only(customers: i64) -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String"),
    );
    up.insert_many(
        "Customers",
        (1..=customers).map(|i| json!({"ID": i, "name": format!("C{i}")})),
    );
    up
}

/// [`shop`] with a server-driven page size of `page_size`.
pub async fn shop_paged(customers: i64, page_size: usize) -> FakeUpstream {
    let up = shop(customers).await;
    up.set_page_size(Some(page_size));
    up
}

/// Customer `i` as first inserted.
pub fn customer(i: i64) -> Value {
    let city = ["Berlin", "Paris", "Rome"][(i % 3) as usize];
    json!({"ID": i, "name": format!("Customer {i}"), "city": city, "score": i * 7 % 100})
}

/// A patch of customer `i`'s score that tells round `round` apart (round 0 is the score
/// [`customer`] inserts).
pub fn rescored(i: i64, round: i64) -> Value {
    json!({"score": i * 7 % 100 + 1000 * round})
}

/// Random inserts, updates and deletes of customers, reproducible from a seed (xorshift).
pub struct Churn {
    rng: u64,
    next_id: i64,
}

impl Churn {
    /// A churn whose inserts start at `next_id` (one past the highest existing ID).
    pub fn new(seed: u64, next_id: i64) -> Self {
        Churn {
            rng: seed.max(1),
            next_id,
        }
    }

    /// Apply `changes` random changes to `Customers`, about a third of each kind.
    pub fn round(&mut self, up: &Upstream, changes: usize) {
        for _ in 0..changes {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let rng = self.rng;
            let rows = up.rows("Customers");
            match rng % 3 {
                0 => {
                    up.insert("Customers", customer(self.next_id));
                    self.next_id += 1;
                }
                1 if !rows.is_empty() => {
                    let row = &rows[(rng as usize / 3) % rows.len()];
                    up.update(
                        "Customers",
                        row["ID"].clone(),
                        json!({"score": (rng % 1000) as i64, "city": "X"}),
                    );
                }
                _ if !rows.is_empty() => {
                    let row = &rows[(rng as usize / 3) % rows.len()];
                    up.delete("Customers", row["ID"].clone());
                }
                _ => {}
            }
        }
    }
}

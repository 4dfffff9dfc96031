//! The demo's product catalog: a `Products` entity set shaped like a SAP CAP service's
//! (`CatalogService` at [`ROOT`], decimals as JSON strings, timestamps with milliseconds),
//! generated from a seed, and the random inserts, updates and deletes that keep it changing so a
//! change tracker in front of it has something to report.

use std::fmt;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{EntitySetDef, Service};

/// Path of the catalog's service root.
pub const ROOT: &str = "/odata/v4/catalog";
/// The catalog's only entity set.
pub const ENTITY_SET: &str = "Products";
/// The schema namespace of `$metadata`.
const NAMESPACE: &str = "CatalogService";
/// The highest price, in cents, `Edm.Decimal` with precision 9 and scale 2 holds.
const MAX_CENTS: i64 = 999_999_999;
const MILLIS_PER_DAY: i64 = 86_400_000;
/// 2024-01-01T00:00:00Z: generated rows claim to have been modified during
/// 2024, so the initial data does not depend on the wall clock.
const GENERATED_SINCE: i64 = 1_704_067_200_000;
/// Price endings that make generated prices look hand-picked.
const CENT_ENDINGS: &[i64] = &[0, 49, 50, 95, 99];

/// Options of [`serve`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of products generated at start (IDs `1..=products`).
    pub products: usize,
    /// Server-driven page size; a client's `Prefer: odata.maxpagesize` can only lower it.
    /// Values below 1 count as 1.
    pub page_size: usize,
    /// Pause between rounds of random inserts, updates and deletes; zero keeps the data static.
    pub change_interval: Duration,
    /// Seed of the generated data and of the random changes.
    pub seed: u64,
    /// Told of every round of changes, e.g. to log it.
    pub report: Option<fn(&ChangeSummary)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            products: 300,
            page_size: 100,
            change_interval: Duration::from_secs(3),
            seed: 2024,
            report: None,
        }
    }
}

/// The `Products` entity set.
pub fn definition() -> EntitySetDef {
    EntitySetDef::new(ENTITY_SET, "Product")
        .key("ID", "Edm.Int32")
        .property("name", "Edm.String")
        .property("category", "Edm.String")
        .property("price", "Edm.Decimal")
        .property("stock", "Edm.Int32")
        .property("discontinued", "Edm.Boolean")
        .property("modifiedAt", "Edm.DateTimeOffset")
}

/// Defines `Products` on `service` with `products` generated rows (IDs `1..=products`, the same
/// rows for the same seed), and returns the generator of later changes.
pub fn populate(service: &Service, products: usize, seed: u64) -> Changes {
    service.set_namespace(NAMESPACE);
    service.define_set(definition());
    let mut changes = Changes {
        rng: SplitMix64::new(seed),
    };
    let count = i64::try_from(products)
        .unwrap_or(i64::MAX)
        .min(i64::from(i32::MAX));
    for id in 1..=count {
        let offset = changes.rng.between(0, 365 * MILLIS_PER_DAY - 1);
        let product = changes.random_product(id, GENERATED_SINCE + offset);
        service.insert(ENTITY_SET, product);
    }
    changes
}

/// Serves the catalog on `listener` at [`ROOT`] until `shutdown` is cancelled, changing it every
/// `options.change_interval`.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let origin = format!("http://{}", listener.local_addr()?);
    let service = Service::new(&origin, ROOT);
    service.set_page_size(Some(options.page_size.max(1)));
    let changes = populate(&service, options.products, options.seed);
    let changing = tokio::spawn(changes.run(
        service.clone(),
        options.change_interval,
        options.report,
        shutdown.clone(),
    ));
    let served = crate::serve(listener, service, shutdown).await;
    let _ = changing.await;
    served
}

/// Random changes of the catalog, reproducible from the seed of [`populate`].
#[derive(Debug)]
pub struct Changes {
    rng: SplitMix64,
}

/// What one round of changes did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeSummary {
    /// Products inserted.
    pub inserted: usize,
    /// Products updated.
    pub updated: usize,
    /// Products deleted.
    pub deleted: usize,
    /// Products left afterwards.
    pub total: usize,
}

impl fmt::Display for ChangeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{} ~{} -{} products (now {})",
            self.inserted, self.updated, self.deleted, self.total
        )
    }
}

impl Changes {
    /// One round: one to three updates (prices and stock, what a shop changes most), a delete
    /// more often than not, and up to two inserts above the highest ID; `now` (Unix
    /// milliseconds) becomes the `modifiedAt` of every row it touches.
    pub fn round(&mut self, service: &Service, now: i64) -> ChangeSummary {
        let mut summary = ChangeSummary::default();
        let mut ids: Vec<i64> = service
            .rows(ENTITY_SET)
            .iter()
            .filter_map(|row| row["ID"].as_i64())
            .collect();
        for _ in 0..self.rng.between(1, 3) {
            if let Some(id) = self.pick(&ids) {
                let row = service.row(ENTITY_SET, json!(id)).unwrap_or(Value::Null);
                let patch = self.random_update(&row, now);
                if service.update(ENTITY_SET, json!(id), patch) {
                    summary.updated += 1;
                }
            }
        }
        // Keep at least one row so the catalog never goes blank.
        if ids.len() > 1
            && self.rng.chance(60)
            && let Some(id) = self.pick(&ids)
            && service.delete(ENTITY_SET, json!(id))
        {
            ids.retain(|i| *i != id);
            summary.deleted += 1;
        }
        for _ in 0..self.rng.between(0, 2) {
            let id = ids.iter().max().map_or(1, |max| max + 1);
            if id <= i64::from(i32::MAX) {
                let product = self.random_product(id, now);
                service.insert(ENTITY_SET, product);
                ids.push(id);
                summary.inserted += 1;
            }
        }
        summary.total = ids.len();
        summary
    }

    /// Applies a round every `interval` until `shutdown`, telling `report` of each; a zero
    /// interval changes nothing.
    pub async fn run(
        mut self,
        service: Service,
        interval: Duration,
        report: Option<fn(&ChangeSummary)>,
        shutdown: CancellationToken,
    ) {
        if interval.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let summary = self.round(&service, now_millis());
            if let Some(report) = report {
                report(&summary);
            }
        }
    }

    fn pick(&mut self, ids: &[i64]) -> Option<i64> {
        let index = usize::try_from(self.rng.below(ids.len() as u64)).ok()?;
        ids.get(index).copied()
    }

    fn random_product(&mut self, id: i64, modified_at: i64) -> Value {
        let fallback = &CATEGORIES[0];
        let category = self.rng.pick(CATEGORIES).unwrap_or(fallback);
        let adjective = self.rng.pick(ADJECTIVES).copied().unwrap_or("Classic");
        let noun = self.rng.pick(category.nouns).copied().unwrap_or("Item");
        let (low, high) = category.price_range;
        let cents = self.rng.pick(CENT_ENDINGS).copied().unwrap_or(0);
        let price = (self.rng.between(low, high) * 100 + cents).min(MAX_CENTS);
        json!({
            "ID": id,
            "name": format!("{adjective} {noun}"),
            "category": category.name,
            "price": format_cents(price),
            "stock": self.rng.between(0, 500),
            "discontinued": self.rng.chance(8),
            "modifiedAt": format_timestamp(modified_at),
        })
    }

    /// A patch moving the price by up to 15%, the stock by a delivery or sales, and now and then
    /// retiring the product.
    fn random_update(&mut self, row: &Value, now: i64) -> Value {
        let percent = self.rng.between(-15, 15);
        let stock_delta = self.rng.between(-40, 60);
        let retire = self.rng.chance(5);
        let mut patch = json!({ "modifiedAt": format_timestamp(now) });
        if let Some(price) = row["price"].as_str().and_then(parse_cents) {
            patch["price"] = json!(format_cents(
                (price + price * percent / 100).clamp(1, MAX_CENTS)
            ));
        }
        if let Some(stock) = row["stock"].as_i64() {
            patch["stock"] = json!(
                stock
                    .saturating_add(stock_delta)
                    .clamp(0, i64::from(i32::MAX))
            );
        }
        if retire {
            patch["discontinued"] = json!(true);
        }
        patch
    }
}

/// `1234` → `"12.34"`.
fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// `"12.34"` → `1234`; what [`format_cents`] writes, nothing else.
fn parse_cents(text: &str) -> Option<i64> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.')?;
    if fraction.len() != 2 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let cents = whole.parse::<i64>().ok()?.checked_mul(100)? + fraction.parse::<i64>().ok()?;
    Some(if negative { -cents } else { cents })
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Unix milliseconds as `2024-05-01T12:00:00.000Z`.
fn format_timestamp(millis: i64) -> String {
    let days = millis.div_euclid(MILLIS_PER_DAY);
    let of_day = millis.rem_euclid(MILLIS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (of_day / 3_600_000, of_day / 60_000 % 60);
    let (second, milli) = (of_day / 1000 % 60, of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

// Calendar arithmetic on the proleptic Gregorian calendar, counting in
// 400-year eras (146 097 days each) whose years start on March 1st so the
// leap day falls at the end of a year.

const DAYS_PER_ERA: i64 = 146_097;
/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT: i64 = 719_468;

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + EPOCH_SHIFT;
    let era = shifted.div_euclid(DAYS_PER_ERA);
    let day_of_era = shifted.rem_euclid(DAYS_PER_ERA);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = (month_from_march + 2) % 12 + 1;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// SplitMix64: tiny, fast and good enough to make plausible demo data.
#[derive(Clone, Debug)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 when `bound` is 0). The modulo bias is
    /// irrelevant for demo data.
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: i64, high: i64) -> i64 {
        let span = high.abs_diff(low).saturating_add(1);
        low.saturating_add_unsigned(self.below(span))
    }

    /// True with the given probability in percent.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        let index = usize::try_from(self.below(items.len() as u64)).ok()?;
        items.get(index)
    }
}

/// A category with the nouns its products are named after and a price
/// range in whole currency units.
struct Category {
    name: &'static str,
    nouns: &'static [&'static str],
    price_range: (i64, i64),
}

const CATEGORIES: &[Category] = &[
    Category {
        name: "Electronics",
        nouns: &[
            "Headphones",
            "Bluetooth Speaker",
            "USB-C Hub",
            "Webcam",
            "Power Bank",
            "E-Reader",
        ],
        price_range: (15, 399),
    },
    Category {
        name: "Kitchen",
        nouns: &[
            "Chef's Knife",
            "Cast Iron Skillet",
            "French Press",
            "Cutting Board",
            "Tea Kettle",
        ],
        price_range: (8, 249),
    },
    Category {
        name: "Garden",
        nouns: &[
            "Pruning Shears",
            "Watering Can",
            "Raised Bed",
            "Hose Reel",
            "Seed Starter Kit",
        ],
        price_range: (5, 189),
    },
    Category {
        name: "Office",
        nouns: &[
            "Desk Lamp",
            "Notebook",
            "Fountain Pen",
            "Monitor Stand",
            "Desk Organizer",
        ],
        price_range: (3, 149),
    },
    Category {
        name: "Outdoor",
        nouns: &[
            "Tent",
            "Sleeping Bag",
            "Hiking Backpack",
            "Camping Stove",
            "Headlamp",
        ],
        price_range: (12, 459),
    },
    Category {
        name: "Sports",
        nouns: &[
            "Yoga Mat",
            "Dumbbell Set",
            "Tennis Racket",
            "Water Bottle",
            "Jump Rope",
        ],
        price_range: (6, 219),
    },
    Category {
        name: "Toys",
        nouns: &[
            "Building Blocks",
            "Jigsaw Puzzle",
            "Plush Bear",
            "Kite",
            "Wooden Train",
        ],
        price_range: (4, 89),
    },
    Category {
        name: "Books",
        nouns: &[
            "Cookbook",
            "Field Guide",
            "World Atlas",
            "Mystery Novel",
            "Poetry Collection",
        ],
        price_range: (7, 59),
    },
];

const ADJECTIVES: &[&str] = &[
    "Classic",
    "Compact",
    "Deluxe",
    "Essential",
    "Everyday",
    "Heritage",
    "Nordic",
    "Premium",
    "Rustic",
    "Travel",
    "Urban",
    "Vintage",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_and_timestamps_are_written_as_the_wire_format_wants() {
        assert_eq!(format_cents(1990), "19.90");
        assert_eq!(format_cents(-5), "-0.05");
        assert_eq!(parse_cents("19.90"), Some(1990));
        assert_eq!(parse_cents("19.9"), None);
        assert_eq!(
            format_timestamp(GENERATED_SINCE),
            "2024-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_timestamp(951_782_400_123),
            "2000-02-29T00:00:00.123Z"
        );
    }

    #[test]
    fn generation_is_deterministic() {
        let (a, b) = (
            Service::new("http://a", ROOT),
            Service::new("http://b", ROOT),
        );
        populate(&a, 50, 7);
        populate(&b, 50, 7);
        assert_eq!(a.rows(ENTITY_SET), b.rows(ENTITY_SET));
        let rows = a.rows(ENTITY_SET);
        let ids: Vec<i64> = rows.iter().filter_map(|r| r["ID"].as_i64()).collect();
        assert_eq!(ids, (1..=50).collect::<Vec<_>>());
        assert!(
            rows.iter()
                .all(|r| r["price"].as_str().and_then(parse_cents).is_some())
        );
    }

    #[test]
    fn random_changes_match_their_summary() {
        let service = Service::new("http://a", ROOT);
        let mut changes = populate(&service, 20, 1);
        let mut expected = 20;
        for round in 0..50 {
            let now = GENERATED_SINCE + 400 * MILLIS_PER_DAY + round;
            let summary = changes.round(&service, now);
            expected = expected + summary.inserted - summary.deleted;
            assert_eq!(summary.total, expected);
            let rows = service.rows(ENTITY_SET);
            assert_eq!(rows.len(), expected);
            assert!(summary.updated >= 1);
            let stamp = format_timestamp(now);
            let touched = rows
                .iter()
                .filter(|r| r["modifiedAt"] == stamp.as_str())
                .count();
            assert!(touched >= summary.inserted);
        }
        // New rows always get IDs above the old maximum.
        let rows = service.rows(ENTITY_SET);
        assert!(rows.iter().any(|r| r["ID"].as_i64() > Some(20)));
    }
}

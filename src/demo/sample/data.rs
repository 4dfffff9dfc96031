//! The sample catalog: the `Product` schema, deterministic row generation,
//! the random changes that keep the data moving, and the value conversions
//! (decimals, timestamps) the OData wire format needs.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value as Json};

/// Properties of `CatalogService.Product`, in declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prop {
    Id,
    Name,
    Category,
    Price,
    Stock,
    Discontinued,
    ModifiedAt,
}

/// The EDM primitive types the sample schema uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EdmType {
    Int32,
    String,
    Decimal,
    Boolean,
    DateTimeOffset,
}

impl Prop {
    /// All properties in declaration order (also the JSON member order).
    pub(crate) const ALL: [Prop; 7] = [
        Prop::Id,
        Prop::Name,
        Prop::Category,
        Prop::Price,
        Prop::Stock,
        Prop::Discontinued,
        Prop::ModifiedAt,
    ];

    /// The property name as it appears in URLs, JSON and `$metadata`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Prop::Id => "ID",
            Prop::Name => "name",
            Prop::Category => "category",
            Prop::Price => "price",
            Prop::Stock => "stock",
            Prop::Discontinued => "discontinued",
            Prop::ModifiedAt => "modifiedAt",
        }
    }

    /// Looks a property up by its (case-sensitive) name.
    pub(crate) fn from_name(name: &str) -> Option<Prop> {
        Prop::ALL.into_iter().find(|prop| prop.name() == name)
    }

    /// The declared EDM type.
    pub(crate) fn edm_type(self) -> EdmType {
        match self {
            Prop::Id | Prop::Stock => EdmType::Int32,
            Prop::Name | Prop::Category => EdmType::String,
            Prop::Price => EdmType::Decimal,
            Prop::Discontinued => EdmType::Boolean,
            Prop::ModifiedAt => EdmType::DateTimeOffset,
        }
    }

    /// Whether the property may be null (mirrored in `$metadata`).
    pub(crate) fn nullable(self) -> bool {
        !matches!(self, Prop::Id | Prop::Discontinued | Prop::ModifiedAt)
    }
}

impl EdmType {
    /// The qualified type name used in CSDL.
    pub(crate) fn qualified_name(self) -> &'static str {
        match self {
            EdmType::Int32 => "Edm.Int32",
            EdmType::String => "Edm.String",
            EdmType::Decimal => "Edm.Decimal",
            EdmType::Boolean => "Edm.Boolean",
            EdmType::DateTimeOffset => "Edm.DateTimeOffset",
        }
    }
}

/// A property or literal value as `$filter` and `$orderby` see it.
///
/// Int32 and Decimal share `Number` so `price gt 10` and `stock gt 2.5`
/// compare naturally; f64 represents every Int32 and every cent amount the
/// schema allows exactly enough for ordering.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Number(f64),
    Str(String),
    Bool(bool),
    /// Unix time in milliseconds.
    DateTime(i64),
}

impl Value {
    /// Orders two non-null values of the same kind; `None` otherwise.
    pub(crate) fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::DateTime(a), Value::DateTime(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// Total order for sorting: null sorts before everything, as OData says.
    pub(crate) fn sort_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Less,
            (_, Value::Null) => Ordering::Greater,
            _ => self.compare(other).unwrap_or(Ordering::Equal),
        }
    }
}

/// One row of the `Products` entity set.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Product {
    pub(crate) id: i32,
    pub(crate) name: Option<String>,
    pub(crate) category: Option<String>,
    /// Price in cents, so the Decimal(9,2) round-trips without float noise.
    pub(crate) price_cents: Option<i64>,
    pub(crate) stock: Option<i32>,
    pub(crate) discontinued: bool,
    /// Unix time in milliseconds of the last write.
    pub(crate) modified_at: i64,
}

impl Product {
    /// A product with only its key set, as a base for POSTed bodies.
    pub(crate) fn empty(id: i32, now: i64) -> Product {
        Product {
            id,
            name: None,
            category: None,
            price_cents: None,
            stock: None,
            discontinued: false,
            modified_at: now,
        }
    }

    /// The value `$filter` and `$orderby` compare.
    pub(crate) fn value(&self, prop: Prop) -> Value {
        match prop {
            Prop::Id => Value::Number(f64::from(self.id)),
            Prop::Name => self.name.clone().map_or(Value::Null, Value::Str),
            Prop::Category => self.category.clone().map_or(Value::Null, Value::Str),
            // Cents fit in 2^53, so the division is the closest double to the decimal.
            Prop::Price => self
                .price_cents
                .map_or(Value::Null, |cents| Value::Number(cents as f64 / 100.0)),
            Prop::Stock => self
                .stock
                .map_or(Value::Null, |stock| Value::Number(f64::from(stock))),
            Prop::Discontinued => Value::Bool(self.discontinued),
            Prop::ModifiedAt => Value::DateTime(self.modified_at),
        }
    }

    /// The value as serialized in OData JSON (decimals as strings, like CAP).
    pub(crate) fn json(&self, prop: Prop) -> Json {
        match prop {
            Prop::Id => Json::from(self.id),
            Prop::Name => self.name.clone().map_or(Json::Null, Json::String),
            Prop::Category => self.category.clone().map_or(Json::Null, Json::String),
            Prop::Price => self
                .price_cents
                .map_or(Json::Null, |cents| Json::String(format_cents(cents))),
            Prop::Stock => self.stock.map_or(Json::Null, Json::from),
            Prop::Discontinued => Json::Bool(self.discontinued),
            Prop::ModifiedAt => Json::String(format_timestamp(self.modified_at)),
        }
    }

    /// Applies the members of a POST or PATCH body.
    ///
    /// `ID` is left to the caller (it decides about keys) and `modifiedAt`
    /// is server-managed, so both are skipped; OData control information
    /// (`@odata.type` and friends) is ignored. The write time is stamped.
    pub(crate) fn apply_json(&mut self, body: &Map<String, Json>, now: i64) -> Result<(), String> {
        for (key, value) in body {
            if key.starts_with('@') || key.contains("@odata.") {
                continue;
            }
            let prop = Prop::from_name(key).ok_or_else(|| format!("unknown property '{key}'"))?;
            self.set(prop, value)?;
        }
        self.modified_at = now;
        Ok(())
    }

    fn set(&mut self, prop: Prop, value: &Json) -> Result<(), String> {
        let invalid = || format!("invalid value for property '{}': {value}", prop.name());
        match prop {
            Prop::Id | Prop::ModifiedAt => {}
            Prop::Name => self.name = optional_string(value).ok_or_else(invalid)?,
            Prop::Category => self.category = optional_string(value).ok_or_else(invalid)?,
            Prop::Price => self.price_cents = optional_cents(value).ok_or_else(invalid)?,
            Prop::Stock => self.stock = optional_int32(value).ok_or_else(invalid)?,
            Prop::Discontinued => self.discontinued = value.as_bool().ok_or_else(invalid)?,
        }
        Ok(())
    }
}

// The `optional_*` helpers return `None` for a wrong type and `Some(None)`
// for an explicit JSON null.

fn optional_string(value: &Json) -> Option<Option<String>> {
    match value {
        Json::Null => Some(None),
        Json::String(text) => Some(Some(text.clone())),
        _ => None,
    }
}

fn optional_cents(value: &Json) -> Option<Option<i64>> {
    match value {
        Json::Null => Some(None),
        Json::String(text) => parse_cents(text).map(Some),
        Json::Number(number) => parse_cents(&number.to_string()).map(Some),
        _ => None,
    }
}

fn optional_int32(value: &Json) -> Option<Option<i32>> {
    match value {
        Json::Null => Some(None),
        _ => value
            .as_i64()
            .and_then(|number| i32::try_from(number).ok())
            .map(Some),
    }
}

/// Reads an `ID` member: `Ok(None)` when absent or null, an error when it
/// is not an Int32.
pub(crate) fn json_key(body: &Map<String, Json>) -> Result<Option<i32>, String> {
    match body.get(Prop::Id.name()) {
        None | Some(Json::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .and_then(|number| i32::try_from(number).ok())
            .map(Some)
            .ok_or_else(|| format!("invalid value for key property 'ID': {value}")),
    }
}

/// Decimal(9,2) has at most 7 integer digits; larger amounts are rejected
/// instead of silently overflowing what `$metadata` promises.
const MAX_CENTS: i64 = 999_999_999;

/// Formats cents as a two-decimal string: `1250` → `"12.50"`.
pub(crate) fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// Parses a decimal with at most two fraction digits into cents.
pub(crate) fn parse_cents(text: &str) -> Option<i64> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if fraction.len() > 2 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if unsigned.ends_with('.') {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    // "12.5" means 50 cents, not 5.
    let fraction: i64 = format!("{fraction:0<2}").parse().ok()?;
    let cents = whole.checked_mul(100)?.checked_add(fraction)?;
    if cents > MAX_CENTS {
        return None;
    }
    Some(if negative { -cents } else { cents })
}

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

const MILLIS_PER_DAY: i64 = 86_400_000;

/// Formats Unix milliseconds as an `Edm.DateTimeOffset` in UTC with
/// millisecond precision: `2024-03-01T09:30:00.000Z`.
pub(crate) fn format_timestamp(millis: i64) -> String {
    let days = millis.div_euclid(MILLIS_PER_DAY);
    let of_day = millis.rem_euclid(MILLIS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (of_day / 3_600_000, of_day / 60_000 % 60);
    let (second, milli) = (of_day / 1000 % 60, of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Parses `YYYY-MM-DD` (midnight UTC) or
/// `YYYY-MM-DDThh:mm[:ss[.fff…]]` followed by `Z` or `±hh:mm` into Unix
/// milliseconds. Digits beyond milliseconds are ignored.
pub(crate) fn parse_timestamp(text: &str) -> Option<i64> {
    let (date, rest) = (text.get(..10)?, text.get(10..)?);
    let days = parse_date(date)?;
    if rest.is_empty() {
        return days.checked_mul(MILLIS_PER_DAY);
    }
    let rest = rest.strip_prefix('T')?;
    let zone_at = rest.find(['Z', '+', '-'])?;
    let (time, zone) = rest.split_at(zone_at);
    let local = days
        .checked_mul(MILLIS_PER_DAY)?
        .checked_add(parse_time_of_day(time)?)?;
    local.checked_sub(parse_zone_offset(zone)?)
}

fn parse_date(date: &str) -> Option<i64> {
    let mut parts = date.split('-');
    let year = digits(parts.next()?, 4)?;
    let month = digits(parts.next()?, 2)?;
    let day = digits(parts.next()?, 2)?;
    let valid = parts.next().is_none()
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month);
    valid.then(|| days_from_civil(year, month, day))
}

/// Parses `hh:mm[:ss[.fff…]]` into milliseconds since midnight.
fn parse_time_of_day(time: &str) -> Option<i64> {
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = clock.split(':');
    let hour = digits(parts.next()?, 2)?;
    let minute = digits(parts.next()?, 2)?;
    let second = parts.next().map_or(Some(0), |s| digits(s, 2))?;
    if parts.next().is_some() || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    if time.contains('.') && (fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let milli = format!("{:0<3}", &fraction[..fraction.len().min(3)])
        .parse::<i64>()
        .ok()?;
    Some(((hour * 60 + minute) * 60 + second) * 1000 + milli)
}

/// Parses `Z` or `±hh:mm` into an offset in milliseconds east of UTC.
fn parse_zone_offset(zone: &str) -> Option<i64> {
    if zone == "Z" {
        return Some(0);
    }
    let (sign, offset) = match zone.split_at_checked(1)? {
        ("+", offset) => (1, offset),
        ("-", offset) => (-1, offset),
        _ => return None,
    };
    let (hours, minutes) = offset.split_once(':')?;
    let (hours, minutes) = (digits(hours, 2)?, digits(minutes, 2)?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 60 + minutes) * 60_000)
}

/// Parses exactly `len` ASCII digits.
fn digits(text: &str, len: usize) -> Option<i64> {
    let valid = text.len() == len && text.bytes().all(|b| b.is_ascii_digit());
    if valid { text.parse().ok() } else { None }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Calendar arithmetic on the proleptic Gregorian calendar, counting in
// 400-year eras (146 097 days each) whose years start on March 1st so the
// leap day falls at the end of a year.

const DAYS_PER_ERA: i64 = 146_097;
/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT: i64 = 719_468;

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - EPOCH_SHIFT
}

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
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 when `bound` is 0). The modulo bias is
    /// irrelevant for demo data.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    /// A number in `low..=high`.
    pub(crate) fn between(&mut self, low: i64, high: i64) -> i64 {
        let span = high.abs_diff(low).saturating_add(1);
        low.saturating_add_unsigned(self.below(span))
    }

    /// True with the given probability in percent.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
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

/// Price endings that make generated prices look hand-picked.
const CENT_ENDINGS: &[i64] = &[0, 49, 50, 95, 99];

/// 2024-01-01T00:00:00Z: generated rows claim to have been modified during
/// 2024, so the initial data does not depend on the wall clock.
const GENERATED_SINCE: i64 = 1_704_067_200_000;

/// The mutable state behind the sample service.
#[derive(Debug)]
pub(crate) struct Catalog {
    pub(crate) products: BTreeMap<i32, Product>,
    rng: SplitMix64,
}

impl Catalog {
    /// Generates `count` products with IDs `1..=count`; the same seed
    /// always yields the same rows.
    pub(crate) fn generate(count: usize, seed: u64) -> Catalog {
        let mut catalog = Catalog {
            products: BTreeMap::new(),
            rng: SplitMix64::new(seed),
        };
        let count = i32::try_from(count).unwrap_or(i32::MAX);
        for id in 1..=count {
            let offset = catalog.rng.between(0, 365 * MILLIS_PER_DAY - 1);
            let product = catalog.random_product(id, GENERATED_SINCE + offset);
            catalog.products.insert(id, product);
        }
        catalog
    }

    /// The ID a new product gets: one above the current maximum.
    pub(crate) fn next_id(&self) -> Option<i32> {
        match self.products.last_key_value() {
            Some((max, _)) => max.checked_add(1),
            None => Some(1),
        }
    }

    /// Inserts, updates and deletes a few random products, stamping `now`
    /// on every written row.
    pub(crate) fn random_changes(&mut self, now: i64) -> ChangeSummary {
        let mut summary = ChangeSummary::default();
        for _ in 0..self.rng.between(1, 3) {
            if let Some(id) = self.random_id() {
                self.random_update(id, now);
                summary.updated += 1;
            }
        }
        // Keep at least one row so the demo never goes blank.
        if self.products.len() > 1
            && self.rng.chance(60)
            && let Some(id) = self.random_id()
        {
            self.products.remove(&id);
            summary.deleted += 1;
        }
        for _ in 0..self.rng.between(0, 2) {
            if let Some(id) = self.next_id() {
                let product = self.random_product(id, now);
                self.products.insert(id, product);
                summary.inserted += 1;
            }
        }
        summary.total = self.products.len();
        summary
    }

    fn random_id(&mut self) -> Option<i32> {
        let index = usize::try_from(self.rng.below(self.products.len() as u64)).ok()?;
        self.products.keys().nth(index).copied()
    }

    fn random_product(&mut self, id: i32, modified_at: i64) -> Product {
        let fallback = &CATEGORIES[0];
        let category = self.rng.pick(CATEGORIES).unwrap_or(fallback);
        let adjective = self.rng.pick(ADJECTIVES).copied().unwrap_or("Classic");
        let noun = self.rng.pick(category.nouns).copied().unwrap_or("Item");
        let (low, high) = category.price_range;
        let cents = self.rng.pick(CENT_ENDINGS).copied().unwrap_or(0);
        let price = (self.rng.between(low, high) * 100 + cents).min(MAX_CENTS);
        Product {
            id,
            name: Some(format!("{adjective} {noun}")),
            category: Some(category.name.to_owned()),
            price_cents: Some(price),
            stock: Some(i32::try_from(self.rng.between(0, 500)).unwrap_or(0)),
            discontinued: self.rng.chance(8),
            modified_at,
        }
    }

    /// Changes what a shop changes most: prices and stock levels.
    fn random_update(&mut self, id: i32, now: i64) {
        let percent = self.rng.between(-15, 15);
        let stock_delta = self.rng.between(-40, 60);
        let retire = self.rng.chance(5);
        let Some(product) = self.products.get_mut(&id) else {
            return;
        };
        if let Some(price) = product.price_cents.as_mut() {
            *price = (*price + *price * percent / 100).clamp(1, MAX_CENTS);
        }
        if let Some(stock) = product.stock.as_mut() {
            let updated = i64::from(*stock).saturating_add(stock_delta).max(0);
            *stock = i32::try_from(updated).unwrap_or(i32::MAX);
        }
        product.discontinued |= retire;
        product.modified_at = now;
    }
}

/// What one round of background changes did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChangeSummary {
    pub(crate) inserted: usize,
    pub(crate) updated: usize,
    pub(crate) deleted: usize,
    /// Products left afterwards.
    pub(crate) total: usize,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cents_round_trip() {
        assert_eq!(format_cents(1250), "12.50");
        assert_eq!(format_cents(5), "0.05");
        assert_eq!(format_cents(-199), "-1.99");
        assert_eq!(parse_cents("12.5"), Some(1250));
        assert_eq!(parse_cents("12.05"), Some(1205));
        assert_eq!(parse_cents("12"), Some(1200));
        assert_eq!(parse_cents("-0.99"), Some(-99));
        for bad in [
            "",
            ".5",
            "12.",
            "12.345",
            "1e3",
            "abc",
            "--1",
            "10000000.00",
        ] {
            assert_eq!(parse_cents(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(GENERATED_SINCE),
            "2024-01-01T00:00:00.000Z"
        );
        let leap_day = parse_timestamp("2024-02-29T23:59:58.125Z");
        assert_eq!(
            leap_day.map(format_timestamp).as_deref(),
            Some("2024-02-29T23:59:58.125Z")
        );
        for millis in [-1, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_timestamp(&format_timestamp(millis)), Some(millis));
        }
    }

    #[test]
    fn timestamps_accept_offsets_and_dates() {
        assert_eq!(parse_timestamp("2024-01-01"), Some(GENERATED_SINCE));
        assert_eq!(parse_timestamp("2024-01-01T00:00Z"), Some(GENERATED_SINCE));
        assert_eq!(
            parse_timestamp("2024-01-01T01:30:00+01:30"),
            Some(GENERATED_SINCE)
        );
        assert_eq!(
            parse_timestamp("2023-12-31T23:00:00.0000000-01:00"),
            Some(GENERATED_SINCE)
        );
        for bad in [
            "2024-02-30",
            "2024-13-01",
            "2024-01-01T24:00Z",
            "2024-01-01T10:00",
            "24-1-1",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn generation_is_deterministic() {
        let first = Catalog::generate(50, 7);
        let again = Catalog::generate(50, 7);
        let other = Catalog::generate(50, 8);
        assert_eq!(first.products, again.products);
        assert_ne!(first.products, other.products);
        assert_eq!(first.products.len(), 50);
        assert_eq!(first.next_id(), Some(51));
        assert!(
            first
                .products
                .values()
                .all(|p| p.price_cents.is_some_and(|c| c > 0))
        );
    }

    #[test]
    fn random_changes_match_their_summary() {
        let mut catalog = Catalog::generate(20, 1);
        let mut expected = catalog.products.len();
        for round in 0..50 {
            let now = GENERATED_SINCE + 400 * MILLIS_PER_DAY + round;
            let summary = catalog.random_changes(now);
            expected = expected + summary.inserted - summary.deleted;
            assert_eq!(summary.total, expected);
            assert_eq!(catalog.products.len(), expected);
            assert!(summary.updated >= 1);
            let touched = catalog
                .products
                .values()
                .filter(|p| p.modified_at == now)
                .count();
            assert!(touched >= summary.inserted);
        }
        // New rows always get IDs above the old maximum.
        assert!(catalog.products.keys().any(|id| *id > 20));
    }

    #[test]
    fn json_bodies_are_validated() {
        let mut product = Product::empty(1, 0);
        let body = json!({"name": "Desk Lamp", "price": "19.90", "stock": 3, "@odata.type": "#x"});
        let map = body.as_object().cloned().unwrap_or_default();
        assert_eq!(product.apply_json(&map, 42), Ok(()));
        assert_eq!(product.price_cents, Some(1990));
        assert_eq!(product.modified_at, 42);
        assert_eq!(product.json(Prop::Price), json!("19.90"));

        for bad in [
            json!({"stock": "many"}),
            json!({"color": "red"}),
            json!({"price": 1.234}),
        ] {
            let map = bad.as_object().cloned().unwrap_or_default();
            assert!(product.apply_json(&map, 43).is_err(), "{bad}");
        }
        let key = json!({"ID": 1e12});
        assert!(json_key(key.as_object().unwrap_or(&Map::new())).is_err());
    }
}

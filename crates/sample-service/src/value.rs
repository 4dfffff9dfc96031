//! Typed comparison of JSON property values.
//!
//! JSON alone loses the Edm type: an `Edm.Int64` or `Edm.Decimal` may arrive as
//! a string (IEEE754Compatible), GUIDs compare case-insensitively and two
//! timestamps with different offsets can denote the same instant. Ordering,
//! filtering and key lookups in the service go through these helpers so that they
//! behave like a real OData server rather than like plain JSON equality.

use serde_json::Value;
use std::cmp::Ordering;

/// A scalar as the filter evaluator and key matcher see it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    /// JSON `null` or a missing property.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integral number.
    Int(i64),
    /// A non-integral number (decimals are approximated; the service needs no more).
    Dec(f64),
    /// A string.
    Str(String),
    /// A GUID literal, kept in lower case.
    Guid(String),
    /// An `Edm.Date`, as days since 1970-01-01.
    Date(i64),
    /// An `Edm.DateTimeOffset`, as nanoseconds since the Unix epoch in UTC.
    DateTime(i128),
    /// Arrays and objects: never equal to anything in a comparison.
    Other,
}

const NANOS_PER_DAY: i128 = 86_400_000_000_000;

impl Val {
    /// Converts a JSON value without type information.
    pub(crate) fn from_json(value: &Value) -> Val {
        match value {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => n
                .as_i64()
                .map(Val::Int)
                .or_else(|| n.as_f64().map(Val::Dec))
                .unwrap_or(Val::Other),
            Value::String(s) => Val::Str(s.clone()),
            Value::Array(_) | Value::Object(_) => Val::Other,
        }
    }

    /// Converts a JSON value using the declared Edm type, so that strings that
    /// encode numbers, GUIDs or timestamps compare by meaning.
    pub(crate) fn typed(edm_type: Option<&str>, value: &Value) -> Val {
        let plain = Val::from_json(value);
        let Val::Str(text) = &plain else {
            return plain;
        };
        let converted = match edm_type {
            Some(
                "Edm.Int64" | "Edm.Int32" | "Edm.Int16" | "Edm.Byte" | "Edm.SByte" | "Edm.Decimal"
                | "Edm.Double" | "Edm.Single",
            ) => parse_number(text),
            Some("Edm.DateTimeOffset") => parse_datetime(text).map(Val::DateTime),
            Some("Edm.Date") => parse_date(text).map(Val::Date),
            Some("Edm.Guid") => Some(Val::Guid(text.to_ascii_lowercase())),
            _ => None,
        };
        converted.unwrap_or(plain)
    }

    /// Rank used to order values of different kinds deterministically; nulls
    /// sort first, as OData prescribes for `$orderby`.
    fn rank(&self) -> u8 {
        match self {
            Val::Null => 0,
            Val::Bool(_) => 1,
            Val::Int(_) | Val::Dec(_) => 2,
            Val::Date(_) | Val::DateTime(_) => 3,
            Val::Guid(_) | Val::Str(_) => 4,
            Val::Other => 5,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Dec(d) => Some(*d),
            _ => None,
        }
    }
}

/// Parses a numeric string the way an IEEE754Compatible payload carries it.
fn parse_number(text: &str) -> Option<Val> {
    text.parse::<i64>()
        .map(Val::Int)
        .ok()
        .or_else(|| text.parse::<f64>().ok().map(Val::Dec))
}

/// Reinterprets a string in the kind of `like`, for comparisons such as a
/// string-typed timestamp property against a DateTimeOffset literal.
fn coerce(text: &str, like: &Val) -> Option<Val> {
    match like {
        Val::Int(_) | Val::Dec(_) => parse_number(text),
        Val::Date(_) | Val::DateTime(_) => parse_datetime(text)
            .map(Val::DateTime)
            .or_else(|| parse_date(text).map(Val::Date)),
        _ => None,
    }
}

/// Compares two values; `None` when they are not comparable (a null against a
/// non-null, or unrelated kinds), which makes every comparison but `ne` false.
pub(crate) fn compare_vals(a: &Val, b: &Val) -> Option<Ordering> {
    use Val::*;
    match (a, b) {
        (Null, Null) => Some(Ordering::Equal),
        (Null, _) | (_, Null) => None,
        (Bool(x), Bool(y)) => Some(x.cmp(y)),
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (Int(_) | Dec(_), Int(_) | Dec(_)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Str(x), Str(y)) => Some(x.cmp(y)),
        (Guid(x), Guid(y)) | (Guid(x), Str(y)) | (Str(x), Guid(y)) => {
            Some(x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase()))
        }
        (Date(x), Date(y)) => Some(x.cmp(y)),
        (DateTime(x), DateTime(y)) => Some(x.cmp(y)),
        (Date(d), DateTime(t)) => Some((i128::from(*d) * NANOS_PER_DAY).cmp(t)),
        (DateTime(t), Date(d)) => Some(t.cmp(&(i128::from(*d) * NANOS_PER_DAY))),
        (Str(s), Int(_) | Dec(_) | Date(_) | DateTime(_)) => compare_vals(&coerce(s, b)?, b),
        (Int(_) | Dec(_) | Date(_) | DateTime(_), Str(s)) => compare_vals(a, &coerce(s, a)?),
        _ => None,
    }
}

/// Total order over JSON values of one declared type, used for key order and
/// `$orderby`. Incomparable values fall back to a kind rank and then their
/// JSON text, so sorting never panics and stays deterministic.
pub(crate) fn compare_typed(edm_type: Option<&str>, a: &Value, b: &Value) -> Ordering {
    let (x, y) = (Val::typed(edm_type, a), Val::typed(edm_type, b));
    compare_vals(&x, &y).unwrap_or_else(|| {
        x.rank()
            .cmp(&y.rank())
            .then_with(|| a.to_string().cmp(&b.to_string()))
    })
}

/// Equality under [`compare_typed`].
pub(crate) fn json_eq(edm_type: Option<&str>, a: &Value, b: &Value) -> bool {
    compare_typed(edm_type, a, b) == Ordering::Equal
}

/// Whether `text` has the 8-4-4-4-12 hexadecimal shape of a GUID.
pub(crate) fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == lengths.len()
        && groups
            .iter()
            .zip(lengths)
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Parses exactly `len` ASCII digits.
fn digits(text: &str, len: usize) -> Option<u32> {
    if text.len() == len && text.chars().all(|c| c.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days
/// inverse popularised by Howard Hinnant; no calendar crate is available).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let year_of_era = y - era * 400;
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses `YYYY-MM-DD` into days since the epoch.
pub(crate) fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let year = digits(parts.next()?, 4)?;
    let month = digits(parts.next()?, 2)?;
    let day = digits(parts.next()?, 2)?;
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(i64::from(year), month, day))
}

/// Parses an ISO 8601 timestamp with `Z` or `±HH:MM` offset (seconds and
/// fractions optional) into nanoseconds since the epoch, UTC.
pub(crate) fn parse_datetime(text: &str) -> Option<i128> {
    let days = parse_date(text.get(..10)?)?;
    let rest = text.get(10..)?;
    let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix('t'))?;
    let (time, offset_minutes) = split_zone(rest)?;
    let nanos = parse_time(time)?;
    Some(
        i128::from(days) * NANOS_PER_DAY + i128::from(nanos)
            - i128::from(offset_minutes) * 60_000_000_000,
    )
}

/// Splits `HH:MM[:SS[.f]]` from its zone designator; the zone is mandatory
/// for DateTimeOffset.
fn split_zone(text: &str) -> Option<(&str, i64)> {
    if let Some(time) = text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
        return Some((time, 0));
    }
    let at = text.rfind(['+', '-'])?;
    let (time, zone) = text.split_at(at);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let (hours, minutes) = zone.get(1..)?.split_once(':')?;
    let minutes = i64::from(digits(hours, 2)?) * 60 + i64::from(digits(minutes, 2)?);
    Some((time, sign * minutes))
}

/// Parses a time of day into nanoseconds.
fn parse_time(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, ':');
    let hours = i64::from(digits(parts.next()?, 2)?);
    let minutes = i64::from(digits(parts.next()?, 2)?);
    let (seconds, nanos) = match parts.next() {
        None => (0, 0),
        Some(sec) => {
            let (whole, fraction) = sec.split_once('.').unwrap_or((sec, ""));
            if fraction.len() > 9 || !fraction.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let padded = format!("{fraction:0<9}");
            (i64::from(digits(whole, 2)?), padded.parse::<i64>().ok()?)
        }
    };
    if hours > 23 || minutes > 59 || seconds > 60 {
        return None;
    }
    Some(((hours * 60 + minutes) * 60 + seconds) * 1_000_000_000 + nanos)
}

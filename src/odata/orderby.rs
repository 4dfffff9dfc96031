//! `$orderby` on a tracked read: the gateway orders the stored entities itself, so that a client's
//! `$orderby` with `$top`/`$skip` gets the same rows the upstream would give. Values are compared the
//! way OData orders them: null first, numbers numerically (also when a service writes decimals as
//! strings, like SAP CAP), strings by code point, false before true.

use std::cmp::Ordering;

use super::json::{Member, object_members};
use super::query::split_top_level;

/// One `$orderby` item: a property path and a direction.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Item {
    path: Vec<String>,
    descending: bool,
}

/// A parsed `$orderby`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderBy {
    items: Vec<Item>,
}

/// The raw JSON values of one entity's `$orderby` properties (`None` where absent).
pub type SortKey = Vec<Option<Vec<u8>>>;

impl OrderBy {
    /// Parse `name desc, Address/City`. Only property paths are supported; expressions such as
    /// functions or arithmetic are an error (the caller passes such requests through).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut items = Vec::new();
        for part in split_top_level(text, ',') {
            let mut words = part.split_whitespace();
            let Some(path) = words.next() else {
                return Err("an empty $orderby item".into());
            };
            let descending = match words.next().map(str::to_ascii_lowercase).as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => return Err(format!("unknown $orderby direction '{other}'")),
            };
            if words.next().is_some() {
                return Err(format!("'{part}' is not a property path with a direction"));
            }
            let segments: Vec<String> = path.split('/').map(str::to_owned).collect();
            let valid =
                |s: &String| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_');
            if !segments.iter().all(valid) {
                return Err(format!("'{path}' is not a property path"));
            }
            items.push(Item {
                path: segments,
                descending,
            });
        }
        if items.is_empty() {
            return Err("$orderby is empty".into());
        }
        Ok(OrderBy { items })
    }

    /// The sort key of one entity (compact JSON body).
    pub fn key_of(&self, body: &[u8]) -> SortKey {
        let mut members = Vec::new();
        self.items
            .iter()
            .map(|item| value_at(body, &item.path, &mut members))
            .collect()
    }

    /// Compare two sort keys in this order.
    pub fn compare(&self, a: &SortKey, b: &SortKey) -> Ordering {
        for (item, (x, y)) in self.items.iter().zip(a.iter().zip(b)) {
            let o = compare_values(x.as_deref(), y.as_deref());
            let o = if item.descending { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}

fn value_at(text: &[u8], path: &[String], members: &mut Vec<Member>) -> Option<Vec<u8>> {
    let (first, rest) = path.split_first()?;
    object_members(text, members).ok()?;
    let value = members
        .iter()
        .find(|m| m.name(text) == first.as_bytes())?
        .value(text);
    if rest.is_empty() {
        Some(value.to_vec())
    } else {
        let value = value.to_vec();
        value_at(&value, rest, members)
    }
}

/// OData order of two raw JSON scalars; absent and null sort first.
fn compare_values(a: Option<&[u8]>, b: Option<&[u8]>) -> Ordering {
    let rank = |v: Option<&[u8]>| match v {
        None | Some(b"null") => 0,
        _ => 1,
    };
    match (rank(a), rank(b)) {
        (0, 0) => return Ordering::Equal,
        (x, y) if x != y => return x.cmp(&y),
        _ => {}
    }
    let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
    let number = |v: &[u8]| -> Option<f64> {
        let text = std::str::from_utf8(v).ok()?;
        let text = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        let looks_numeric = !text.is_empty()
            && text
                .bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
            && text.bytes().any(|c| c.is_ascii_digit());
        looks_numeric.then(|| text.parse().ok()).flatten()
    };
    let quoted = |v: &[u8]| v.first() == Some(&b'"');
    if !quoted(a) || !quoted(b) {
        if let (Some(x), Some(y)) = (number(a), number(b)) {
            return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
        }
    } else if let (Some(x), Some(y)) = (number(a), number(b)) {
        // Decimals written as strings: order them as numbers.
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    }
    if quoted(a) && quoted(b) {
        let decode = |v: &[u8]| serde_json::from_slice::<String>(v).unwrap_or_default();
        return decode(a).cmp(&decode(b));
    }
    a.cmp(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(order: &str, rows: &[&str]) -> Vec<String> {
        let o = OrderBy::parse(order).unwrap();
        let mut keyed: Vec<(SortKey, &str)> =
            rows.iter().map(|r| (o.key_of(r.as_bytes()), *r)).collect();
        keyed.sort_by(|a, b| o.compare(&a.0, &b.0));
        keyed.into_iter().map(|(_, r)| r.to_owned()).collect()
    }

    #[test]
    fn orders_like_odata() {
        let rows = [
            r#"{"n":"b","v":10}"#,
            r#"{"n":"a","v":9}"#,
            r#"{"n":null,"v":"100.5"}"#,
            r#"{"v":"37.50"}"#,
        ];
        assert_eq!(
            sorted("n", &rows),
            [
                r#"{"n":null,"v":"100.5"}"#,
                r#"{"v":"37.50"}"#,
                r#"{"n":"a","v":9}"#,
                r#"{"n":"b","v":10}"#
            ]
        );
        assert_eq!(
            sorted("v desc", &rows),
            [
                r#"{"n":null,"v":"100.5"}"#,
                r#"{"v":"37.50"}"#,
                r#"{"n":"b","v":10}"#,
                r#"{"n":"a","v":9}"#
            ]
        );
    }

    #[test]
    fn several_items_and_paths() {
        let rows = [
            r#"{"a":{"c":"x"},"b":2}"#,
            r#"{"a":{"c":"x"},"b":1}"#,
            r#"{"a":{"c":"w"},"b":3}"#,
        ];
        assert_eq!(
            sorted("a/c desc, b asc", &rows),
            [
                r#"{"a":{"c":"x"},"b":1}"#,
                r#"{"a":{"c":"x"},"b":2}"#,
                r#"{"a":{"c":"w"},"b":3}"#
            ]
        );
    }

    #[test]
    fn expressions_are_not_supported() {
        for bad in ["", "tolower(name)", "a sideways", "a desc b", "a/"] {
            assert!(OrderBy::parse(bad).is_err(), "{bad}");
        }
    }
}

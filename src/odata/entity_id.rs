//! Keys and entity-ids: which properties form an entity's key, and how their values are written as
//! key literals — `Customers(42)`, `Products('A''1')`, `Orders(ID=1,Line=2)`, GUIDs and dates unquoted
//! (U "Key-as-Segment"/"Canonical URL", ABNF primitive literals).
//!
//! A key's identity is not its spelling: an upstream may write one GUID in upper case in one answer
//! and lower case in the next, or one decimal as `1.50`, `1.5` or `15e-1`. [`key_identity`] gives
//! each value one spelling, and that is what entities are told apart by; payloads keep the literal
//! as the upstream wrote it.

use std::borrow::Cow;

use super::json::Member;

/// The Edm primitive type of a key property, as far as writing its literal is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// Edm.Byte, SByte, Int16, Int32, Int64: digits.
    Integer,
    /// Edm.Decimal, Double, Single: a number, which some services send as a JSON string.
    Decimal,
    /// Edm.String: single-quoted, quotes doubled.
    String,
    /// Edm.Guid: unquoted.
    Guid,
    /// Edm.Date, DateTimeOffset, TimeOfDay: unquoted.
    Temporal,
    /// Edm.Duration: `duration'P1D'`.
    Duration,
    /// Edm.Boolean: `true`/`false`.
    Boolean,
    /// Edm.Binary: `binary'…'`.
    Binary,
    /// An enumeration type: `Namespace.Type'Member'`.
    Enum,
    /// Unknown (a configured key without `$metadata`): numbers and booleans as they are, strings
    /// quoted.
    Inferred,
}

impl KeyType {
    /// The key type for an Edm primitive type name; `None` for types that cannot be keys.
    pub fn from_edm(name: &str) -> Option<Self> {
        Some(match name {
            "Edm.Byte" | "Edm.SByte" | "Edm.Int16" | "Edm.Int32" | "Edm.Int64" => KeyType::Integer,
            "Edm.Decimal" | "Edm.Double" | "Edm.Single" => KeyType::Decimal,
            "Edm.String" => KeyType::String,
            "Edm.Guid" => KeyType::Guid,
            "Edm.Date" | "Edm.DateTimeOffset" | "Edm.TimeOfDay" => KeyType::Temporal,
            "Edm.Duration" => KeyType::Duration,
            "Edm.Boolean" => KeyType::Boolean,
            "Edm.Binary" => KeyType::Binary,
            _ => return None,
        })
    }
}

/// One property of an entity set's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyProperty {
    /// Property name as it appears in payloads.
    pub name: String,
    /// How its literal is written.
    pub ty: KeyType,
    /// For enumeration keys, the qualified enum type name used in the literal.
    pub enum_type: Option<String>,
}

/// Why a key could not be read from an entity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key property is not in the payload.
    #[error("the entity has no key property '{0}'")]
    Missing(String),
    /// The key property is null or of a JSON type its Edm type does not allow.
    #[error("the key property '{name}' holds {found}, which is not a valid {expected} key")]
    Invalid {
        /// Property.
        name: String,
        /// What the payload held (truncated).
        found: String,
        /// The key type.
        expected: &'static str,
    },
}

/// The key of one entity, read from its raw JSON members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityKey {
    /// The key predicate inside the parentheses of the entity-id: `42`, `'A''1'`, `ID=1,Line=2`.
    /// Unique per entity of a set, so it is also what identifies the entity in the store.
    pub predicate: String,
    /// The key members as compact JSON, `"ID":42,"Line":2`, for 4.01 tombstones (C17).
    pub members: Vec<u8>,
}

/// Key values of an entity not spelled the way [`normalized_literal`] spells them, by their byte
/// range in the entity, each with its JSON value in that spelling (a string stays a string, a
/// number a number). Empty, and nothing allocated, in the usual case.
pub type Respelled = Vec<((usize, usize), Vec<u8>)>;

impl EntityKey {
    /// Read the key of an entity from its top-level members (found by the scan that hashes it: the
    /// entity is not parsed again). Key values are written straight into the predicate.
    pub fn read(text: &[u8], members: &[Member], key: &[KeyProperty]) -> Result<Self, KeyError> {
        Self::read_spelled(text, members, key).map(|(key, _)| key)
    }

    /// Read the key of an entity, and which of its values are spelled otherwise than their
    /// identity: the content hash is taken with those in their normalized spelling, so that a key
    /// spelled another way is no change either.
    pub fn read_spelled(
        text: &[u8],
        members: &[Member],
        key: &[KeyProperty],
    ) -> Result<(Self, Respelled), KeyError> {
        let mut predicate = String::new();
        let mut json = Vec::new();
        let mut respelled = Vec::new();
        for (i, prop) in key.iter().enumerate() {
            let member = members
                .iter()
                .find(|m| m.name(text) == prop.name.as_bytes())
                .ok_or_else(|| KeyError::Missing(prop.name.clone()))?;
            let raw = member.value(text);
            if i > 0 {
                predicate.push(',');
                json.push(b',');
            }
            if key.len() > 1 {
                predicate.push_str(&prop.name);
                predicate.push('=');
            }
            let start = predicate.len();
            write_literal(prop, raw, &mut predicate)?;
            if let Cow::Owned(spelled) = normalized_literal(&predicate[start..]) {
                let quoted = raw.first() == Some(&b'"');
                let mut value = Vec::with_capacity(spelled.len() + 2);
                value.extend_from_slice(if quoted { b"\"" } else { b"" });
                value.extend_from_slice(spelled.as_bytes());
                value.extend_from_slice(if quoted { b"\"" } else { b"" });
                respelled.push((member.value, value));
            }
            json.push(b'"');
            json.extend_from_slice(prop.name.as_bytes());
            json.extend_from_slice(b"\":");
            super::json::write_compact(raw, &mut json);
        }
        Ok((
            EntityKey {
                predicate,
                members: json,
            },
            respelled,
        ))
    }

    /// The entity-id relative to the service root: `Customers(42)` (C16).
    pub fn entity_id(&self, entity_set: &str) -> String {
        format!("{entity_set}({})", self.predicate)
    }
}

/// The string a raw JSON string value denotes, borrowed when it has no escapes (the common case);
/// `None` when `raw` is not a JSON string.
fn json_string(raw: &[u8]) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.iter().any(|&b| b == b'\\' || b == b'"' || b < 0x20) {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
}

/// A string key literal: single-quoted, quotes doubled.
fn push_quoted(out: &mut String, prefix: &str, s: &str) {
    out.push_str(prefix);
    out.push('\'');
    for (i, part) in s.split('\'').enumerate() {
        if i > 0 {
            out.push_str("''");
        }
        out.push_str(part);
    }
    out.push('\'');
}

/// Append the literal of one key value, given its raw JSON, to `out`.
fn write_literal(prop: &KeyProperty, raw: &[u8], out: &mut String) -> Result<(), KeyError> {
    let invalid = |expected: &'static str| KeyError::Invalid {
        name: prop.name.clone(),
        found: String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned(),
        expected,
    };
    let as_string = || json_string(raw);
    // A number as it is, or (as some services send numbers) the contents of a string.
    let number_text = || {
        if raw.first() == Some(&b'"') {
            as_string().unwrap_or_else(|| String::from_utf8_lossy(raw))
        } else {
            String::from_utf8_lossy(raw)
        }
    };
    let is_number = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
            && s.bytes().any(|b| b.is_ascii_digit())
    };
    match prop.ty {
        KeyType::Integer => {
            // Int64 may come as a string with IEEE754Compatible=true.
            let s = number_text();
            let digits = s.strip_prefix('-').unwrap_or(&s);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                out.push_str(&s);
                Ok(())
            } else {
                Err(invalid("integer"))
            }
        }
        KeyType::Decimal => {
            let s = number_text();
            if is_number(&s) || matches!(&*s, "INF" | "-INF" | "NaN") {
                out.push_str(&s);
                Ok(())
            } else {
                Err(invalid("decimal"))
            }
        }
        KeyType::String => {
            let s = as_string().ok_or_else(|| invalid("string"))?;
            push_quoted(out, "", &s);
            Ok(())
        }
        KeyType::Guid => {
            let s = as_string()
                .filter(|s| s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
                .ok_or_else(|| invalid("GUID"))?;
            out.push_str(&s);
            Ok(())
        }
        KeyType::Temporal => {
            let s = as_string()
                .filter(|s| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b":-+.".contains(&b))
                })
                .ok_or_else(|| invalid("date/time"))?;
            out.push_str(&s);
            Ok(())
        }
        KeyType::Duration => {
            let s = as_string().ok_or_else(|| invalid("duration"))?;
            out.push_str("duration'");
            out.push_str(&s);
            out.push('\'');
            Ok(())
        }
        KeyType::Boolean => match raw {
            b"true" | b"false" => {
                out.push_str(&String::from_utf8_lossy(raw));
                Ok(())
            }
            _ => Err(invalid("boolean")),
        },
        KeyType::Binary => {
            let s = as_string().ok_or_else(|| invalid("binary"))?;
            out.push_str("binary'");
            out.push_str(&s);
            out.push('\'');
            Ok(())
        }
        KeyType::Inferred => match raw.first() {
            Some(b'"') => {
                let s = as_string().ok_or_else(|| invalid("string"))?;
                push_quoted(out, "", &s);
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => {
                out.push_str(&String::from_utf8_lossy(raw));
                Ok(())
            }
            _ if raw == b"true" || raw == b"false" => {
                out.push_str(&String::from_utf8_lossy(raw));
                Ok(())
            }
            _ => Err(invalid("scalar")),
        },
        KeyType::Enum => {
            let s = as_string().ok_or_else(|| invalid("enumeration"))?;
            push_quoted(out, prop.enum_type.as_deref().unwrap_or(""), &s);
            Ok(())
        }
    }
}

/// The identity of a key predicate (`42`, `ID=1,Line=2`, as [`EntityKey::read`] writes them): the
/// predicate with each key literal in one spelling per value, so that two spellings of one key
/// value give one identity and two values never do. Numbers (integers, decimals, doubles, written
/// bare or from JSON strings) become their shortest exact decimal form (`1.50`, `+1.5`, `15e-1` →
/// `1.5`; `1e2`, `100.0`, `0100` → `100`; `-0` → `0`); GUIDs become lower case. Other literals —
/// strings, which are case-sensitive, dates and times, durations, binaries, enumerations,
/// booleans — are taken as they are.
///
/// It reads the literals alone, without the key's types, so that a store can be re-keyed from the
/// predicates it holds: the literal forms of the Edm types do not overlap (strings and their kin
/// are quoted, numbers are digits, GUIDs are hex in 8-4-4-4-12 groups, dates hold `-` between digits).
pub fn key_identity(predicate: &str) -> Cow<'_, str> {
    // A composite predicate starts with a property name and `=`; a single literal holds `=` only
    // inside quotes (`'a=b'`, `binary'AA=='`).
    let composite = predicate
        .bytes()
        .find(|b| matches!(b, b'=' | b'\''))
        .is_some_and(|b| b == b'=');
    if !composite {
        return normalized_literal(predicate);
    }
    let mut changed = false;
    let parts: Vec<Cow<'_, str>> = super::query::split_top_level(predicate, ',')
        .into_iter()
        .map(|part| match part.split_once('=') {
            Some((name, literal)) => match normalized_literal(literal) {
                Cow::Owned(literal) => {
                    changed = true;
                    Cow::Owned(format!("{name}={literal}"))
                }
                Cow::Borrowed(_) => Cow::Borrowed(part),
            },
            None => Cow::Borrowed(part),
        })
        .collect();
    if changed {
        Cow::Owned(parts.join(","))
    } else {
        Cow::Borrowed(predicate)
    }
}

/// One key literal in the spelling its value is known by (see [`key_identity`]).
pub fn normalized_literal(literal: &str) -> Cow<'_, str> {
    if is_guid(literal) {
        if literal.bytes().any(|b| b.is_ascii_uppercase()) {
            return Cow::Owned(literal.to_ascii_lowercase());
        }
        return Cow::Borrowed(literal);
    }
    if is_canonical_number(literal) {
        return Cow::Borrowed(literal);
    }
    match canonical_number(literal) {
        Some(n) if n != literal => Cow::Owned(n),
        _ => Cow::Borrowed(literal),
    }
}

/// Whether a literal is a number already in the form `canonical_number` gives, checked without
/// allocating: integers and plain decimals as well-behaved upstreams write them. `false` only
/// means "compute it".
fn is_canonical_number(s: &str) -> bool {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (unsigned, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (int.len() > 1 && int.starts_with('0')) {
        return false;
    }
    match frac {
        None => {
            // `-0` is `0`; long runs of trailing zeros are written with an exponent.
            (unsigned != "0" || s.len() == 1)
                && int.bytes().rev().take_while(|b| *b == b'0').count() <= MAX_PADDING
        }
        Some(frac) => {
            digits(frac)
                && !frac.ends_with('0')
                && (int != "0" || frac.bytes().take_while(|b| *b == b'0').count() <= MAX_PADDING)
        }
    }
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Padding zeros written out before a number is written with an exponent instead.
const MAX_PADDING: usize = 40;

/// The shortest exact decimal form of a number literal (`[+-]digits[.digits][e[+-]digits]`, or
/// `.5`-style): no sign on zero, no leading or trailing zeros, no exponent unless the plain form
/// would need more than `MAX_PADDING` zeros (then `d.ddde±n`, so that a hostile `1e999999999` stays
/// short). `None` for anything else (`INF`, `NaN`, dates, malformed numbers).
fn canonical_number(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut i = 0;
    let negative = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let int = &b[int_start..i];
    let mut frac: &[u8] = &[];
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        frac = &b[start..i];
    }
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut exponent: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_negative = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            // Far beyond any real number; refused rather than overflowed.
            exponent = exponent.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
            if exponent > 1_000_000_000 {
                return None;
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    if i != b.len() {
        return None;
    }
    // value = digits × 10^exp10, with digits free of leading and trailing zeros.
    let mut digits: Vec<u8> = int.iter().chain(frac).copied().collect();
    let mut exp10 = exponent - frac.len() as i64;
    let leading = digits.iter().take_while(|d| **d == b'0').count();
    digits.drain(..leading);
    if digits.is_empty() {
        return Some("0".to_owned());
    }
    while digits.last() == Some(&b'0') {
        digits.pop();
        exp10 += 1;
    }
    let n = digits.len() as i64;
    let digits = String::from_utf8(digits).ok()?;
    let mut out = String::with_capacity(digits.len() + MAX_PADDING + 8);
    if negative {
        out.push('-');
    }
    let padding = MAX_PADDING as i64;
    if (0..=padding).contains(&exp10) {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', exp10 as usize));
    } else if exp10 < 0 && -exp10 < n {
        let point = (n + exp10) as usize;
        out.push_str(&digits[..point]);
        out.push('.');
        out.push_str(&digits[point..]);
    } else if exp10 < 0 && -exp10 - n <= padding {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exp10 - n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push_str(&(exp10 + n - 1).to_string());
    }
    Some(out)
}

/// A `$filter` expression matching exactly the given key predicates: `ID in (1,2)` for single keys,
/// `(A eq 1 and B eq 2) or (…)` for composite ones; `use_in=false` writes `or`-chains for single keys
/// too, for upstreams that reject `in`.
pub fn key_filter(key: &[KeyProperty], predicates: &[&str], use_in: bool) -> String {
    if key.len() == 1 {
        let name = &key[0].name;
        if use_in {
            return format!("{name} in ({})", predicates.join(","));
        }
        return predicates
            .iter()
            .map(|p| format!("{name} eq {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
    }
    predicates
        .iter()
        .map(|p| {
            let clauses: Vec<String> = split_composite(p)
                .into_iter()
                .map(|(n, v)| format!("{n} eq {v}"))
                .collect();
            format!("({})", clauses.join(" and "))
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Split `ID=1,Line='a,b'` into its name/literal pairs (commas inside string literals kept).
fn split_composite(predicate: &str) -> Vec<(&str, &str)> {
    super::query::split_top_level(predicate, ',')
        .into_iter()
        .filter_map(|part| part.split_once('='))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::odata::json::object_members;

    fn key(props: &[(&str, KeyType)]) -> Vec<KeyProperty> {
        props
            .iter()
            .map(|(n, t)| KeyProperty {
                name: (*n).into(),
                ty: *t,
                enum_type: None,
            })
            .collect()
    }

    fn read(text: &str, k: &[KeyProperty]) -> Result<EntityKey, KeyError> {
        let mut m = Vec::new();
        object_members(text.as_bytes(), &mut m).unwrap();
        EntityKey::read(text.as_bytes(), &m, k)
    }

    #[test]
    fn entity_ids_are_formatted_per_edm_type_c16() {
        let id = |t: &str, k: &[KeyProperty]| read(t, k).unwrap().entity_id("S");
        assert_eq!(
            id(r#"{"ID":42,"n":1}"#, &key(&[("ID", KeyType::Integer)])),
            "S(42)"
        );
        assert_eq!(
            id(
                r#"{"ID":"9007199254740993"}"#,
                &key(&[("ID", KeyType::Integer)])
            ),
            "S(9007199254740993)"
        );
        assert_eq!(
            id(r#"{"ID":"A'1"}"#, &key(&[("ID", KeyType::String)])),
            "S('A''1')"
        );
        assert_eq!(
            id(
                r#"{"ID":"6f9619ff-8b86-d011-b42d-00c04fc964ff"}"#,
                &key(&[("ID", KeyType::Guid)])
            ),
            "S(6f9619ff-8b86-d011-b42d-00c04fc964ff)"
        );
        assert_eq!(
            id(r#"{"D":"2024-01-31"}"#, &key(&[("D", KeyType::Temporal)])),
            "S(2024-01-31)"
        );
        assert_eq!(
            id(r#"{"P":"37.50"}"#, &key(&[("P", KeyType::Decimal)])),
            "S(37.50)"
        );
        assert_eq!(
            id(r#"{"B":true}"#, &key(&[("B", KeyType::Boolean)])),
            "S(true)"
        );
        let composite = key(&[("ID", KeyType::Integer), ("Line", KeyType::Integer)]);
        assert_eq!(id(r#"{"Line":2,"ID":1}"#, &composite), "S(ID=1,Line=2)");
    }

    #[test]
    fn key_members_are_kept_for_4_01_tombstones_c17() {
        let k = read(
            r#"{"Line": 2, "ID": "x"}"#,
            &key(&[("ID", KeyType::String), ("Line", KeyType::Integer)]),
        )
        .unwrap();
        assert_eq!(k.members, br#""ID":"x","Line":2"#);
    }

    #[test]
    fn missing_or_invalid_keys_are_errors() {
        let k = key(&[("ID", KeyType::Integer)]);
        assert!(matches!(read(r#"{"x":1}"#, &k), Err(KeyError::Missing(_))));
        assert!(matches!(
            read(r#"{"ID":null}"#, &k),
            Err(KeyError::Invalid { .. })
        ));
        assert!(matches!(
            read(r#"{"ID":"abc"}"#, &k),
            Err(KeyError::Invalid { .. })
        ));
        assert!(read(r#"{"ID":"x"}"#, &key(&[("ID", KeyType::Guid)])).is_err());
    }

    #[test]
    fn spellings_of_one_key_value_have_one_identity() {
        for (spellings, identity) in [
            (
                &["1.5", "1.50", "+1.5", "15e-1", "0.15E1", "01.500"][..],
                "1.5",
            ),
            (&["100", "1e2", "100.0", "0100", "1E+2", "100.00"], "100"),
            (&["0", "-0", "0.000", "0e5", "-0.0"], "0"),
            (&["-12.25", "-1225e-2"], "-12.25"),
            (&["0.0015", "1.5e-3", ".0015"], "0.0015"),
            (
                &["1e45", "1000000000000000000000000000000000000000000000"],
                "1e45",
            ),
            (&["1.25e-300", "125e-302"], "1.25e-300"),
            (
                &[
                    "6F9619FF-8B86-D011-B42D-00C04FC964FF",
                    "6f9619ff-8b86-d011-b42d-00c04fc964ff",
                    "6f9619FF-8b86-D011-b42d-00c04fc964ff",
                ],
                "6f9619ff-8b86-d011-b42d-00c04fc964ff",
            ),
            (
                &[
                    "ID=6F9619FF-8B86-D011-B42D-00C04FC964FF,Line=2.0",
                    "ID=6f9619ff-8b86-d011-b42d-00c04fc964ff,Line=2",
                ],
                "ID=6f9619ff-8b86-d011-b42d-00c04fc964ff,Line=2",
            ),
        ] {
            for s in spellings {
                assert_eq!(key_identity(s), identity, "{s}");
            }
        }
    }

    #[test]
    fn strings_dates_and_other_literals_keep_their_spelling() {
        for literal in [
            "'ABC'",
            "'1.50'",
            "'6F9619FF-8B86-D011-B42D-00C04FC964FF'",
            "'a=b,c'",
            "Name='X=1',Code='2.0'",
            "2024-01-31",
            "2024-01-31T10:20:30.000Z",
            "10:20:30",
            "duration'PT1H'",
            "binary'AAE='",
            "NS.Color'Red'",
            "true",
            "INF",
            "-INF",
            "NaN",
            "1e",
            "1-2",
            "1e99999999999999999999",
        ] {
            assert_eq!(key_identity(literal), literal);
        }
    }

    #[test]
    fn a_respelled_key_is_marked_for_the_content_hash() {
        let text = r#"{"ID":"6F9619FF-8B86-D011-B42D-00C04FC964FF","P":1.50}"#;
        let mut m = Vec::new();
        object_members(text.as_bytes(), &mut m).unwrap();
        let (k, respelled) = EntityKey::read_spelled(
            text.as_bytes(),
            &m,
            &key(&[("ID", KeyType::Guid), ("P", KeyType::Decimal)]),
        )
        .unwrap();
        let spelled: Vec<&[u8]> = respelled.iter().map(|(_, v)| v.as_slice()).collect();
        assert_eq!(
            spelled,
            [&br#""6f9619ff-8b86-d011-b42d-00c04fc964ff""#[..], b"1.5"]
        );
        assert_eq!(
            k.predicate, "ID=6F9619FF-8B86-D011-B42D-00C04FC964FF,P=1.50",
            "C16: the entity-id keeps the upstream's literal"
        );
        let text = br#"{"ID":42}"#;
        object_members(text, &mut m).unwrap();
        let (_, respelled) =
            EntityKey::read_spelled(text, &m, &key(&[("ID", KeyType::Integer)])).unwrap();
        assert!(respelled.is_empty());
    }

    /// A decimal value as (negative, digits, exponent) and a spelling of it chosen by `style`.
    fn spell(negative: bool, digits: u64, exp: i32, style: u8, pad: usize) -> String {
        let sign = if negative { "-" } else { ["", "+"][pad % 2] };
        let zeros = "0".repeat(pad % 4);
        match style % 3 {
            // Scientific, with padding zeros in the mantissa.
            0 => format!("{sign}{zeros}{digits}{zeros}e{}", exp - (pad % 4) as i32),
            // Plain, with the point moved into place.
            _ => {
                let d = digits.to_string();
                let e = exp as i64;
                let plain = if e >= 0 {
                    format!("{d}{}", "0".repeat(e as usize))
                } else if (-e as usize) < d.len() {
                    let at = d.len() - (-e as usize);
                    format!("{}.{}", &d[..at], &d[at..])
                } else {
                    format!("0.{}{d}", "0".repeat(-e as usize - d.len()))
                };
                let trailing = if plain.contains('.') {
                    zeros.clone()
                } else {
                    String::new()
                };
                format!("{sign}{zeros}{plain}{trailing}")
            }
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// Normalizing twice changes nothing.
        #[test]
        fn normalizing_is_idempotent(s in "[-+]?[0-9]{0,6}(\\.[0-9]{0,6})?([eE][-+]?[0-9]{1,3})?|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|'.{0,8}'|.{0,12}") {
            let once = key_identity(&s).into_owned();
            prop_assert_eq!(key_identity(&once), once.as_str());
        }

        /// Every spelling of one number gives one identity and one key hash; different numbers
        /// never share one.
        #[test]
        fn equal_numbers_have_equal_hashes_and_only_they(
            negative in any::<bool>(),
            digits in 1u64..1_000_000,
            exp in -50i32..50,
            styles in (any::<u8>(), any::<u8>(), 0usize..8, 0usize..8),
            other in (1u64..1_000_000, -50i32..50),
        ) {
            let a = spell(negative, digits, exp, styles.0, styles.2);
            let b = spell(negative, digits, exp, styles.1, styles.3);
            prop_assert_eq!(key_identity(&a), key_identity(&b), "{} {}", a, b);
            prop_assert_eq!(crate::track::hash::KeyHash::of(&a), crate::track::hash::KeyHash::of(&b));
            // A different value: compared as exact rationals digits × 10^exp.
            let (d2, e2) = other;
            let same_value = {
                let (mut x, mut ex) = (digits, exp);
                while x % 10 == 0 { x /= 10; ex += 1; }
                let (mut y, mut ey) = (d2, e2);
                while y % 10 == 0 { y /= 10; ey += 1; }
                (x, ex) == (y, ey)
            };
            let c = spell(negative, d2, e2, styles.0, styles.2);
            prop_assert_eq!(key_identity(&a) == key_identity(&c), same_value, "{} {}", a, c);
        }

        /// GUIDs are one key in any case.
        #[test]
        fn guids_in_any_case_have_one_hash(g in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", mask in any::<u64>()) {
            let mixed: String = g.chars().enumerate().map(|(i, c)| if mask >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c }).collect();
            prop_assert_eq!(crate::track::hash::KeyHash::of(&mixed), crate::track::hash::KeyHash::of(&g));
            prop_assert_eq!(key_identity(&mixed), g.as_str());
        }
    }

    #[test]
    fn key_filters_use_in_or_or_chains() {
        let single = key(&[("ID", KeyType::Integer)]);
        assert_eq!(key_filter(&single, &["1", "2"], true), "ID in (1,2)");
        assert_eq!(
            key_filter(&single, &["1", "2"], false),
            "ID eq 1 or ID eq 2"
        );
        let composite = key(&[("A", KeyType::String), ("B", KeyType::Integer)]);
        assert_eq!(
            key_filter(&composite, &["A='x,y',B=2"], true),
            "(A eq 'x,y' and B eq 2)"
        );
    }
}

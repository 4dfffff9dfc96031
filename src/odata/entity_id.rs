//! Keys and entity-ids: which properties form an entity's key, and how their values are written as
//! key literals — `Customers(42)`, `Products('A''1')`, `Orders(ID=1,Line=2)`, GUIDs and dates unquoted
//! (U "Key-as-Segment"/"Canonical URL", ABNF primitive literals).

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

impl EntityKey {
    /// Read the key of an entity from its top-level members (found by the scan that hashes it: the
    /// entity is not parsed again). Key values are written straight into the predicate.
    pub fn read(text: &[u8], members: &[Member], key: &[KeyProperty]) -> Result<Self, KeyError> {
        let mut predicate = String::new();
        let mut json = Vec::new();
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
            write_literal(prop, raw, &mut predicate)?;
            json.push(b'"');
            json.extend_from_slice(prop.name.as_bytes());
            json.extend_from_slice(b"\":");
            super::json::write_compact(raw, &mut json);
        }
        Ok(EntityKey {
            predicate,
            members: json,
        })
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

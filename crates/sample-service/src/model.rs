//! Entity-set definitions and the row store of the sample service.

use super::filter::{parse_literal, split_top_level};
use super::value::{Val, compare_typed, compare_vals, json_eq};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// Characters escaped in a key predicate placed in a URL path (Location
/// headers); quotes, parentheses, commas and `=` stay readable as OData
/// servers emit them.
const KEY_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A declared structural property: name and Edm type name (`Edm.Int32`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropDef {
    /// Property name as it appears in JSON and URLs.
    pub name: String,
    /// Qualified Edm type, e.g. `Edm.String`.
    pub edm_type: String,
}

/// A collection-valued navigation property: the related rows are those of
/// `target_set` whose `foreign_key` equals the parent's (single) key value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NavDef {
    /// Navigation property name, used in `$expand`.
    pub name: String,
    /// Name of the entity set holding the related rows.
    pub target_set: String,
    /// Property of the target rows that holds the parent key.
    pub foreign_key: String,
}

/// Description of one entity set, built fluently:
/// `EntitySetDef::new("Customers", "Customer").key("ID", "Edm.Int32")`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntitySetDef {
    /// Entity set name (the URL segment).
    pub name: String,
    /// Entity type name, without namespace.
    pub entity_type: String,
    /// Key properties, in key order.
    pub keys: Vec<PropDef>,
    /// Non-key structural properties, in declaration (and output) order.
    pub properties: Vec<PropDef>,
    /// Collection-valued navigation properties.
    pub navs: Vec<NavDef>,
}

impl EntitySetDef {
    /// Starts a definition with no properties.
    pub fn new(name: &str, entity_type: &str) -> Self {
        EntitySetDef {
            name: name.to_string(),
            entity_type: entity_type.to_string(),
            keys: Vec::new(),
            properties: Vec::new(),
            navs: Vec::new(),
        }
    }

    /// Adds a key property; call several times for a composite key.
    pub fn key(mut self, name: &str, edm_type: &str) -> Self {
        self.keys.push(PropDef {
            name: name.to_string(),
            edm_type: edm_type.to_string(),
        });
        self
    }

    /// Adds a non-key property.
    pub fn property(mut self, name: &str, edm_type: &str) -> Self {
        self.properties.push(PropDef {
            name: name.to_string(),
            edm_type: edm_type.to_string(),
        });
        self
    }

    /// Adds a collection-valued navigation to `target_set`, joined on
    /// `target.foreign_key == self.key`.
    pub fn nav(mut self, name: &str, target_set: &str, foreign_key: &str) -> Self {
        self.navs.push(NavDef {
            name: name.to_string(),
            target_set: target_set.to_string(),
            foreign_key: foreign_key.to_string(),
        });
        self
    }

    /// Keys then other properties, in output order.
    pub fn declared(&self) -> impl Iterator<Item = &PropDef> {
        self.keys.iter().chain(self.properties.iter())
    }

    /// Edm type of a declared key or property.
    pub fn edm_type(&self, name: &str) -> Option<&str> {
        self.declared()
            .find(|p| p.name == name)
            .map(|p| p.edm_type.as_str())
    }

    /// Whether `name` is part of the key.
    pub fn is_key(&self, name: &str) -> bool {
        self.keys.iter().any(|k| k.name == name)
    }

    /// The navigation property called `name`.
    pub fn nav_def(&self, name: &str) -> Option<&NavDef> {
        self.navs.iter().find(|n| n.name == name)
    }
}

/// Why a row could not be stored.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// The row is not a JSON object.
    NotAnObject,
    /// A key property is absent or null.
    MissingKey(String),
    /// A row with the same key exists.
    Duplicate,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotAnObject => write!(f, "entity must be a JSON object"),
            StoreError::MissingKey(k) => write!(f, "key property '{k}' is missing"),
            StoreError::Duplicate => write!(f, "entity already exists"),
        }
    }
}

/// Rows of one entity set, kept sorted by key so that unordered reads and
/// offset paging see the stable order a database would give.
#[derive(Debug)]
pub(crate) struct SetStore {
    /// The set's definition.
    pub def: EntitySetDef,
    /// Rows in key order.
    pub rows: Vec<Map<String, Value>>,
}

impl SetStore {
    /// An empty set.
    pub(crate) fn new(def: EntitySetDef) -> Self {
        SetStore {
            def,
            rows: Vec::new(),
        }
    }

    /// Key values of a row, in key order.
    pub(crate) fn key_of(&self, row: &Map<String, Value>) -> Result<Vec<Value>, StoreError> {
        self.def
            .keys
            .iter()
            .map(|k| match row.get(&k.name) {
                None | Some(Value::Null) => Err(StoreError::MissingKey(k.name.clone())),
                Some(v) => Ok(v.clone()),
            })
            .collect()
    }

    fn compare_keys(&self, a: &[Value], b: &[Value]) -> Ordering {
        self.def
            .keys
            .iter()
            .zip(a.iter().zip(b))
            .map(|(k, (x, y))| compare_typed(Some(&k.edm_type), x, y))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// Binary search by key: `Ok(index)` when present, `Err(insert_at)` if not.
    fn locate(&self, key: &[Value]) -> Result<usize, usize> {
        self.rows.binary_search_by(|row| match self.key_of(row) {
            Ok(k) => self.compare_keys(&k, key),
            Err(_) => Ordering::Less,
        })
    }

    /// Inserts a new row at its key position.
    pub(crate) fn insert(&mut self, row: Value) -> Result<usize, StoreError> {
        let Value::Object(row) = row else {
            return Err(StoreError::NotAnObject);
        };
        let key = self.key_of(&row)?;
        match self.locate(&key) {
            Ok(_) => Err(StoreError::Duplicate),
            Err(at) => {
                self.rows.insert(at, row);
                Ok(at)
            }
        }
    }

    /// Finds a row from a test-supplied key: a scalar for a single key or an
    /// object `{"ID": 1, "Line": 2}` for any key.
    pub(crate) fn find_json(&self, key: &Value) -> Option<usize> {
        let values: Vec<Value> = match key {
            Value::Object(map) => self
                .def
                .keys
                .iter()
                .map(|k| map.get(&k.name).cloned())
                .collect::<Option<_>>()?,
            scalar if self.def.keys.len() == 1 => vec![scalar.clone()],
            _ => return None,
        };
        self.rows.iter().position(|row| {
            self.def.keys.iter().zip(&values).all(|(k, want)| {
                row.get(&k.name)
                    .is_some_and(|have| json_eq(Some(&k.edm_type), have, want))
            })
        })
    }

    /// Finds a row from key literals parsed out of a URL, in key order.
    pub(crate) fn find_vals(&self, key: &[Val]) -> Option<usize> {
        self.rows.iter().position(|row| {
            self.def.keys.iter().zip(key).all(|(k, want)| {
                let have = row.get(&k.name).unwrap_or(&Value::Null);
                compare_vals(&Val::typed(Some(&k.edm_type), have), want) == Some(Ordering::Equal)
            })
        })
    }

    /// Merges `patch` into the row at `index`; keys and annotations are kept
    /// out because a PATCH never re-keys an entity.
    pub(crate) fn merge(&mut self, index: usize, patch: &Map<String, Value>) {
        let def = &self.def;
        if let Some(row) = self.rows.get_mut(index) {
            for (name, value) in patch {
                if !def.is_key(name) && !name.starts_with('@') {
                    row.insert(name.clone(), value.clone());
                }
            }
        }
    }

    /// Replaces all non-key properties of the row at `index` (PUT semantics).
    pub(crate) fn replace(&mut self, index: usize, body: &Map<String, Value>) {
        let def = &self.def;
        if let Some(row) = self.rows.get_mut(index) {
            row.retain(|name, _| def.is_key(name));
            for (name, value) in body {
                if !def.is_key(name) && !name.starts_with('@') {
                    row.insert(name.clone(), value.clone());
                }
            }
        }
    }
}

/// Finds a set by name.
pub(crate) fn find_set<'a>(sets: &'a [SetStore], name: &str) -> Option<&'a SetStore> {
    sets.iter().find(|s| s.def.name == name)
}

/// Mutable variant of [`find_set`].
pub(crate) fn find_set_mut<'a>(sets: &'a mut [SetStore], name: &str) -> Option<&'a mut SetStore> {
    sets.iter_mut().find(|s| s.def.name == name)
}

/// Formats a literal as it appears in a key predicate.
fn key_literal(edm_type: &str, value: &Value) -> String {
    match value {
        Value::String(s) if matches!(edm_type, "Edm.String" | "") => {
            format!("'{}'", s.replace('\'', "''"))
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The key predicate of a row, e.g. `(42)`, `('A''1')` or `(ID=1,Line=2)`,
/// percent-encoded for use in a URL path.
pub(crate) fn key_predicate(def: &EntitySetDef, row: &Map<String, Value>) -> String {
    let literal = |k: &PropDef| key_literal(&k.edm_type, row.get(&k.name).unwrap_or(&Value::Null));
    let inner = match def.keys.as_slice() {
        [only] => literal(only),
        keys => keys
            .iter()
            .map(|k| format!("{}={}", k.name, literal(k)))
            .collect::<Vec<_>>()
            .join(","),
    };
    format!("({})", utf8_percent_encode(&inner, KEY_SEGMENT))
}

/// Parses the inside of a key predicate (already percent-decoded) into
/// literals in key order; accepts the positional form only for single keys.
pub(crate) fn parse_key_predicate(def: &EntitySetDef, text: &str) -> Result<Vec<Val>, String> {
    let parts = split_top_level(text, ',');
    if let ([only], [_]) = (parts.as_slice(), def.keys.as_slice())
        && named(only).is_none()
    {
        return Ok(vec![parse_literal(only.trim())?]);
    }
    let mut found: Vec<Option<Val>> = vec![None; def.keys.len()];
    for part in &parts {
        let (name, literal) =
            named(part).ok_or_else(|| format!("invalid key predicate '({text})'"))?;
        let slot = def
            .keys
            .iter()
            .position(|k| k.name == name.trim())
            .ok_or_else(|| format!("'{}' is not a key property", name.trim()))?;
        found[slot] = Some(parse_literal(literal.trim())?);
    }
    found
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .filter(|_| parts.len() == def.keys.len())
        .ok_or_else(|| format!("key predicate '({text})' does not name every key property"))
}

/// `name=literal` when the text before the first `=` is an identifier; a
/// positional string literal such as `'a=b'` is therefore not mistaken.
fn named(part: &str) -> Option<(&str, &str)> {
    part.split_once('=').filter(|(name, _)| {
        let name = name.trim();
        !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Weak ETag derived from the row's content, so any change yields a new tag.
pub(crate) fn etag(row: &Map<String, Value>) -> String {
    let mut hasher = DefaultHasher::new();
    Value::Object(row.clone()).to_string().hash(&mut hasher);
    format!("W/\"{:016x}\"", hasher.finish())
}

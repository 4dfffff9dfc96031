//! JSON output with explicit member order.
//!
//! `serde_json::Map` is sorted alphabetically in this build, but OData
//! responses need `@odata.context` first, `@odata.nextLink` last and properties in declaration
//! order; so responses are assembled as [`Node`] trees and written out by hand.

use super::model::{EntitySetDef, SetStore, etag, find_set};
use super::query::{Expand, select_rows};
use super::value::json_eq;
use serde_json::{Map, Value};

/// A JSON value whose object members keep the order they were pushed in.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    /// An object with ordered members.
    Object(Vec<(String, Node)>),
    /// An array.
    Array(Vec<Node>),
    /// Any leaf (or a pre-built value written as-is).
    Value(Value),
}

impl Node {
    /// Shorthand for a string leaf.
    pub(crate) fn string(s: impl Into<String>) -> Node {
        Node::Value(Value::String(s.into()))
    }

    /// Serialises compactly, or indented when `pretty` (to check that the
    /// gateway does not depend on byte-level formatting).
    pub(crate) fn to_json(&self, pretty: bool) -> String {
        let mut out = String::new();
        self.write(&mut out, pretty, 0);
        out
    }

    fn write(&self, out: &mut String, pretty: bool, depth: usize) {
        let newline = |out: &mut String, depth: usize| {
            if pretty {
                out.push('\n');
                out.push_str(&"  ".repeat(depth));
            }
        };
        match self {
            Node::Value(v) => out.push_str(&v.to_string()),
            Node::Array(items) if items.is_empty() => out.push_str("[]"),
            Node::Object(members) if members.is_empty() => out.push_str("{}"),
            Node::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    item.write(out, pretty, depth + 1);
                }
                newline(out, depth);
                out.push(']');
            }
            Node::Object(members) => {
                out.push('{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    out.push_str(&Value::from(name.as_str()).to_string());
                    out.push_str(if pretty { ": " } else { ":" });
                    value.write(out, pretty, depth + 1);
                }
                newline(out, depth);
                out.push('}');
            }
        }
    }
}

/// Knob values that shape entities, gathered so the shaping functions do not
/// need the whole state.
#[derive(Clone, Copy)]
pub(crate) struct Shaper<'a> {
    /// All sets, for `$expand`.
    pub sets: &'a [SetStore],
    /// Emit `@odata.etag`.
    pub etags: bool,
    /// The request accepts `IEEE754Compatible=true`: `Edm.Int64` and `Edm.Decimal` values are
    /// written as strings, as OData JSON says.
    pub ieee754: bool,
}

/// Whether a request's `Accept` asks for `IEEE754Compatible=true`.
pub(crate) fn ieee754_requested(headers: &http::HeaderMap) -> bool {
    headers
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.to_ascii_lowercase()
                .replace(' ', "")
                .contains("ieee754compatible=true")
        })
}

impl Shaper<'_> {
    /// Members of one entity: optional `@odata.etag`, then properties
    /// (restricted by `select`), then expanded navigations.
    pub(crate) fn entity(
        &self,
        def: &EntitySetDef,
        row: &Map<String, Value>,
        select: Option<&[String]>,
        expand: &[Expand],
    ) -> Vec<(String, Node)> {
        let wanted = |name: &str| select.is_none_or(|s| s.iter().any(|x| x == name || x == "*"));
        let mut members: Vec<(String, Node)> = property_order(def, row)
            .into_iter()
            .filter(|name| wanted(name))
            .map(|name| {
                let mut value = row.get(&name).cloned().unwrap_or(Value::Null);
                if self.ieee754
                    && matches!(def.edm_type(&name), Some("Edm.Int64" | "Edm.Decimal"))
                    && let Value::Number(n) = &value
                {
                    value = Value::String(n.to_string());
                }
                (name, Node::Value(value))
            })
            .collect();
        for item in expand {
            let (children, total) = self.expanded(def, row, item);
            if item.options.count {
                let name = format!("{}@odata.count", item.nav.name);
                members.push((name, Node::Value(Value::from(total))));
            }
            members.push((item.nav.name.clone(), children));
        }
        if self.etags {
            members.insert(0, ("@odata.etag".to_string(), Node::string(etag(row))));
        }
        members
    }

    /// The related rows of one expanded navigation, with nested options,
    /// and their count before `$skip`/`$top`.
    fn expanded(
        &self,
        def: &EntitySetDef,
        row: &Map<String, Value>,
        item: &Expand,
    ) -> (Node, usize) {
        let Some(target) = find_set(self.sets, &item.nav.target_set) else {
            return (Node::Array(Vec::new()), 0);
        };
        let parent_key = def
            .keys
            .first()
            .and_then(|k| row.get(&k.name))
            .unwrap_or(&Value::Null);
        let fk_type = target.def.edm_type(&item.nav.foreign_key);
        let related = target.rows.iter().filter(|r| {
            r.get(&item.nav.foreign_key)
                .is_some_and(|v| !v.is_null() && json_eq(fk_type, v, parent_key))
        });
        let (rows, total) = select_rows(related, &target.def, &item.options);
        let children = rows
            .into_iter()
            .map(|r| {
                Node::Object(self.entity(
                    &target.def,
                    r,
                    item.options.select.as_deref(),
                    &item.options.expand,
                ))
            })
            .collect();
        (Node::Array(children), total)
    }
}

/// Declared properties first (keys, then the rest), then any extra
/// properties a test stored that the definition does not mention.
fn property_order(def: &EntitySetDef, row: &Map<String, Value>) -> Vec<String> {
    let mut names: Vec<String> = def.declared().map(|p| p.name.clone()).collect();
    for name in row.keys() {
        if !names.contains(name) && def.nav_def(name).is_none() {
            names.push(name.clone());
        }
    }
    names
}

//! A JSON object as its members in the order they were sent, each value kept as its exact text,
//! so that a fault can change one member of a page without reformatting (or rounding) the rest.
//! `serde_json::Map` is sorted in this build, and a page's members must stay in order.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// An object's members, in order.
pub struct Members(pub Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Members, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Members;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

impl Members {
    /// The members of `text`, if it is a JSON object.
    pub fn parse(text: &str) -> Option<Members> {
        serde_json::from_str(text).ok()
    }

    /// The value of member `name`, as sent.
    pub fn get(&self, name: &str) -> Option<&RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| &**v)
    }

    /// Replaces member `name` where it stands, or appends it.
    pub fn set(&mut self, name: &str, value: Box<RawValue>) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    /// Removes member `name`, if present.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    /// The object written compactly, its values as they were.
    pub fn to_raw(&self) -> Box<RawValue> {
        let members: Vec<String> = self
            .0
            .iter()
            .map(|(name, value)| format!("{}:{}", string(name).get(), value.get()))
            .collect();
        raw(format!("{{{}}}", members.join(",")))
    }
}

/// The items of `value`, if it is a JSON array.
pub fn items(value: &RawValue) -> Option<Vec<Box<RawValue>>> {
    serde_json::from_str(value.get()).ok()
}

/// An array of `items`, written as they are.
pub fn array(items: &[Box<RawValue>]) -> Box<RawValue> {
    let items: Vec<&str> = items.iter().map(|item| item.get()).collect();
    raw(format!("[{}]", items.join(",")))
}

/// A JSON string.
pub fn string(text: &str) -> Box<RawValue> {
    raw(serde_json::Value::from(text).to_string())
}

/// Text this module built from valid JSON parts.
fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).expect("JSON assembled from valid parts")
}

/// Compact JSON `text` indented the way the sample service indents its pretty answers: two
/// spaces a level, `": "` after a name, empty objects and arrays kept on one line.
pub fn pretty(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                if chars.peek() == Some(&close) {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

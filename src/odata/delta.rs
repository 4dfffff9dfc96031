//! Writing tracked responses: the initial result and delta pages, in the 4.0 or 4.01 shape (J §15,
//! C15-C17), with `@odata.nextLink` on every page but the last and `@odata.deltaLink` on the last (C3).
//! Pages are built whole in memory before a status line is written (C26).

use super::ODataVersion;
use super::json::{is_control_information, write_renamed};

/// Why an entity left the tracked set (C18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// It no longer exists upstream.
    Deleted,
    /// It exists but no longer matches the feed's filter.
    Changed,
}

impl Reason {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Deleted => "deleted",
            Reason::Changed => "changed",
        }
    }
}

/// One entry of a response page.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    /// An entity (initial response) or an added/changed one (delta), as stored compact JSON.
    Entity(&'a [u8]),
    /// A tombstone.
    Removed {
        /// Entity-id relative to the service root, e.g. `Customers(42)`.
        entity_id: &'a str,
        /// Key members as compact JSON, `"ID":42`.
        key_members: &'a [u8],
        /// Why.
        reason: Reason,
    },
}

/// Whether a page is followed by another or ends the response.
#[derive(Clone, Debug)]
pub enum PageEnd {
    /// Another page follows at this gateway URL.
    Next(String),
    /// This is the last page; the link to the changes after it.
    Delta(String),
}

/// Everything about a response that is not its entries.
#[derive(Clone, Debug)]
pub struct PageContext<'a> {
    /// The shape to write.
    pub version: ODataVersion,
    /// Public service root, no trailing slash: `http://gw/odata/v4/shop`.
    pub service_root: &'a str,
    /// Entity set name.
    pub entity_set: &'a str,
    /// The select list for the context URL (C15, J §10), e.g. `city,name,orders(amount)`.
    pub select: Option<String>,
    /// A delta response (context ends in `/$delta`) rather than an initial one (C4).
    pub delta: bool,
    /// `@odata.count`, when asked for (C24).
    pub count: Option<u64>,
}

impl PageContext<'_> {
    /// The context URL (C15): `…/$metadata#Customers(name,city)/$delta`.
    pub fn context_url(&self) -> String {
        let mut url = format!("{}/$metadata#{}", self.service_root, self.entity_set);
        if let Some(select) = &self.select {
            url.push('(');
            url.push_str(select);
            url.push(')');
        }
        if self.delta {
            url.push_str("/$delta");
        }
        url
    }
}

/// Write one response page.
pub fn write_page(ctx: &PageContext, entries: &[Entry], end: &PageEnd) -> Vec<u8> {
    let v = ctx.version;
    let mut out = Vec::with_capacity(256 + entries.len() * 256);
    out.push(b'{');
    json_member(&mut out, &v.control("context"), &ctx.context_url());
    if let Some(count) = ctx.count {
        out.push(b',');
        string(&mut out, &v.control("count"));
        out.push(b':');
        out.extend_from_slice(count.to_string().as_bytes());
    }
    out.extend_from_slice(b",\"value\":[");
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match *entry {
            Entry::Entity(body) => write_entity(&mut out, body, v),
            Entry::Removed {
                entity_id,
                key_members,
                reason,
            } => write_removed(&mut out, ctx, entity_id, key_members, reason),
        }
    }
    out.extend_from_slice(b"],");
    match end {
        PageEnd::Next(link) => json_member(&mut out, &v.control("nextLink"), link),
        PageEnd::Delta(link) => json_member(&mut out, &v.control("deltaLink"), link),
    }
    out.push(b'}');
    out
}

/// An entity with its control information in the response's version, at every depth (expanded
/// entities too): `@odata.etag` ↔ `@etag` and the like renamed; links that point at the upstream
/// (`@odata.id`, `@odata.editLink`, nested next links, …) and nested contexts dropped, since the
/// entity-id follows from the key and the context URL.
/// Bodies come from the store, which keeps them compact (`json::write_compact`): one without an
/// `@` anywhere holds no control information, and the rewrite would give its bytes back unchanged.
fn write_entity(out: &mut Vec<u8>, body: &[u8], v: ODataVersion) {
    if memchr::memchr(b'@', body).is_none() {
        out.extend_from_slice(body);
        return;
    }
    let start = out.len();
    let name = |name: &[u8], out: &mut Vec<u8>| match control_name(name, v) {
        Some(n) => {
            out.extend_from_slice(&n);
            true
        }
        None => false,
    };
    if write_renamed(body, &name, MAX_REWRITE_DEPTH, out).is_err() {
        // Stored bodies were validated when they were read; if one is not an object after all,
        // it is still valid JSON and is better passed on than dropped.
        out.truncate(start);
        out.extend_from_slice(body);
    }
}

/// Nesting below which values are copied as they are (the scanner refuses deeper input anyway).
const MAX_REWRITE_DEPTH: usize = 64;

/// The name a member is written under in version `v`, or `None` to drop it. Content members keep
/// their names; control information keeps only what describes the content itself.
fn control_name(name: &[u8], v: ODataVersion) -> Option<std::borrow::Cow<'_, [u8]>> {
    if !is_control_information(name) {
        return Some(std::borrow::Cow::Borrowed(name));
    }
    let at = name.iter().position(|b| *b == b'@').unwrap_or(0);
    let (prefix, term) = name.split_at(at + 1);
    let term = term.strip_prefix(b"odata.").unwrap_or(term);
    let on_property = at > 0;
    let keep = matches!(term, b"etag" | b"type" | b"mediaContentType" | b"mediaEtag")
        || (on_property && term == b"count");
    if !keep {
        return None;
    }
    let mut n = prefix.to_vec();
    if v == ODataVersion::V40 {
        n.extend_from_slice(b"odata.");
    }
    n.extend_from_slice(term);
    Some(std::borrow::Cow::Owned(n))
}

fn write_removed(
    out: &mut Vec<u8>,
    ctx: &PageContext,
    entity_id: &str,
    key_members: &[u8],
    reason: Reason,
) {
    match ctx.version {
        ODataVersion::V40 => {
            out.push(b'{');
            let context = format!(
                "{}/$metadata#{}/$deletedEntity",
                ctx.service_root, ctx.entity_set
            );
            json_member(out, "@odata.context", &context);
            out.push(b',');
            json_member(out, "id", entity_id);
            out.push(b',');
            json_member(out, "reason", reason.as_str());
            out.push(b'}');
        }
        ODataVersion::V401 => {
            out.extend_from_slice(b"{\"@removed\":{\"reason\":\"");
            out.extend_from_slice(reason.as_str().as_bytes());
            out.extend_from_slice(b"\"},");
            json_member(out, "@id", entity_id);
            if !key_members.is_empty() {
                out.push(b',');
                out.extend_from_slice(key_members);
            }
            out.push(b'}');
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_member(out: &mut Vec<u8>, name: &str, value: &str) {
    string(out, name);
    out.push(b':');
    string(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The entity writer before the one-pass rewrite, to show the bytes did not change.
    mod reference {
        use super::super::*;
        use crate::odata::json::{Member, array_elements, object_members};

        pub(super) fn write_entity(out: &mut Vec<u8>, body: &[u8], v: ODataVersion) {
            let mut members = Vec::new();
            if object_members(body, &mut members).is_err() {
                out.extend_from_slice(body);
                return;
            }
            write_members(out, body, &members, v, 0);
        }

        fn write_members(
            out: &mut Vec<u8>,
            text: &[u8],
            members: &[Member],
            v: ODataVersion,
            depth: usize,
        ) {
            out.push(b'{');
            let mut first = true;
            for m in members {
                let Some(name) = control_name(m.name(text), v) else {
                    continue;
                };
                if !first {
                    out.push(b',');
                }
                first = false;
                out.push(b'"');
                out.extend_from_slice(&name);
                out.extend_from_slice(b"\":");
                write_value(out, m.value(text), v, depth + 1);
            }
            out.push(b'}');
        }

        fn write_value(out: &mut Vec<u8>, value: &[u8], v: ODataVersion, depth: usize) {
            if depth > MAX_REWRITE_DEPTH {
                out.extend_from_slice(value);
                return;
            }
            match value.first() {
                Some(b'{') => {
                    let mut members = Vec::new();
                    match object_members(value, &mut members) {
                        Ok(()) => write_members(out, value, &members, v, depth),
                        Err(_) => out.extend_from_slice(value),
                    }
                }
                Some(b'[') => {
                    let mut elements = Vec::new();
                    if array_elements(value, &mut elements).is_err() {
                        out.extend_from_slice(value);
                        return;
                    }
                    out.push(b'[');
                    for (i, (start, end)) in elements.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_value(out, &value[start..end], v, depth + 1);
                    }
                    out.push(b']');
                }
                _ => out.extend_from_slice(value),
            }
        }
    }

    #[test]
    fn entities_are_written_as_before_the_one_pass_writer() {
        let deep = format!("{}1{}", r#"{"a":"#.repeat(70), "}".repeat(70));
        for body in [
            r##"{"@odata.etag":"W/\"1\"","ID":1,"n":"x","o":{"@odata.id":"u","k":[1,{"@odata.type":"#T","z":"\u00e9"}]},"e":[],"f":{}}"##,
            r#" { "ID" : 2 , "Orders@odata.nextLink" : "x", "Orders" : [ { "@odata.id" : "o", "v" : [ 1 , 2 ] } ] } "#,
            r##"{"@odata.context":"$metadata#C","@id":"a","@etag":"b","Name@odata.type":"#String"}"##,
            deep.as_str(),
            "[1,2]",
            r#"{"broken":"#,
        ] {
            for v in [ODataVersion::V40, ODataVersion::V401] {
                let (mut new, mut old) = (Vec::new(), Vec::new());
                write_entity(&mut new, body.as_bytes(), v);
                reference::write_entity(&mut old, body.as_bytes(), v);
                assert_eq!(
                    String::from_utf8_lossy(&new),
                    String::from_utf8_lossy(&old),
                    "{body}"
                );
            }
        }
    }

    /// A JSON value with nested objects and arrays and no `@`, for the property test.
    fn plain_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = "[a-zA-Z0-9 \"\\\\é\n]{0,8}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            text.prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                proptest::collection::btree_map(text, inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// A compact body without an `@` is written as it is, which is what the rewrite gives too.
        #[test]
        fn a_compact_body_without_control_information_is_written_as_stored(
            value in plain_value()
        ) {
            let body = serde_json::to_vec(&serde_json::json!({ "ID": 1, "v": value })).unwrap();
            for v in [ODataVersion::V40, ODataVersion::V401] {
                let (mut new, mut old) = (Vec::new(), Vec::new());
                write_entity(&mut new, &body, v);
                reference::write_entity(&mut old, &body, v);
                proptest::prop_assert_eq!(&new, &old);
                proptest::prop_assert_eq!(&new, &body);
            }
        }
    }

    fn ctx(version: ODataVersion, delta: bool) -> PageContext<'static> {
        PageContext {
            version,
            service_root: "http://gw/svc",
            entity_set: "Customers",
            select: None,
            delta,
            count: None,
        }
    }

    fn page(c: &PageContext, entries: &[Entry], end: PageEnd) -> Value {
        serde_json::from_slice(&write_page(c, entries, &end)).unwrap()
    }

    #[test]
    fn delta_page_in_4_0_shape_c15_c16() {
        let entries = [
            Entry::Entity(
                br#"{"@odata.etag":"W/\"1\"","@odata.id":"http://up/x","ID":1,"name":"a"}"#,
            ),
            Entry::Removed {
                entity_id: "Customers(42)",
                key_members: br#""ID":42"#,
                reason: Reason::Deleted,
            },
        ];
        let p = page(
            &ctx(ODataVersion::V40, true),
            &entries,
            PageEnd::Delta("http://gw/svc/Customers?$deltatoken=t".into()),
        );
        assert_eq!(
            p,
            json!({
                "@odata.context": "http://gw/svc/$metadata#Customers/$delta",
                "value": [
                    {"@odata.etag": "W/\"1\"", "ID": 1, "name": "a"},
                    {"@odata.context": "http://gw/svc/$metadata#Customers/$deletedEntity", "id": "Customers(42)", "reason": "deleted"}
                ],
                "@odata.deltaLink": "http://gw/svc/Customers?$deltatoken=t"
            })
        );
    }

    #[test]
    fn delta_page_in_4_01_shape_c17() {
        let entries = [
            Entry::Entity(br#"{"@odata.etag":"W/\"1\"","ID":1}"#),
            Entry::Removed {
                entity_id: "Customers(42)",
                key_members: br#""ID":42"#,
                reason: Reason::Changed,
            },
        ];
        let bytes = write_page(
            &ctx(ODataVersion::V401, true),
            &entries,
            &PageEnd::Next("n".into()),
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with(r#"{"@context":"#), "{text}");
        assert!(
            text.contains(r#"{"@removed":{"reason":"changed"},"@id":"Customers(42)","ID":42}"#),
            "{text}"
        );
        assert!(text.contains(r#"{"@etag":"W/\"1\"","ID":1}"#), "{text}");
        assert!(text.ends_with(r#""@nextLink":"n"}"#), "{text}");
    }

    #[test]
    fn expanded_entities_get_the_response_versions_control_information() {
        let entries = [Entry::Entity(
            br#"{"ID":1,"Orders":[{"@odata.etag":"e","@odata.id":"http://up/O(1)","ID":7}],"Orders@odata.count":1,"Orders@odata.nextLink":"http://up/x"}"#,
        )];
        let c = ctx(ODataVersion::V401, true);
        let text =
            String::from_utf8(write_page(&c, &entries, &PageEnd::Delta("d".into()))).unwrap();
        assert!(
            text.contains(r#"{"ID":1,"Orders":[{"@etag":"e","ID":7}],"Orders@count":1}"#),
            "{text}"
        );
    }

    #[test]
    fn initial_page_has_no_delta_in_its_context_and_carries_the_select_list_c4_c15() {
        let mut c = ctx(ODataVersion::V40, false);
        c.select = Some("city,name".into());
        c.count = Some(7);
        let p = page(&c, &[], PageEnd::Delta("d".into()));
        assert_eq!(
            p["@odata.context"],
            "http://gw/svc/$metadata#Customers(city,name)"
        );
        assert_eq!(p["@odata.count"], 7);
        assert!(p.get("@odata.nextLink").is_none());
    }
}

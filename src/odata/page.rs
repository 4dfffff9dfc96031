//! One page of an upstream collection response, parsed without building values: the entities stay
//! borrowed raw JSON (serde_json `RawValue`), only the paging controls are read.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A parsed upstream page, borrowing from the response body.
#[derive(Debug)]
pub struct Page<'a> {
    /// The entities, raw.
    pub entities: Vec<&'a RawValue>,
    /// `@odata.nextLink` (or 4.01 `@nextLink`), as written by the upstream.
    pub next_link: Option<String>,
    /// `@odata.count`, when the upstream sent it (as a number or, like some servers, a string). A
    /// count beyond `u64` is read as `u64::MAX`: it is only ever compared with what was delivered.
    pub count: Option<u64>,
}

/// Why an upstream page could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Not JSON, or JSON of another shape.
    #[error("the upstream page is not an OData collection: {0}")]
    Malformed(String),
    /// An entity in `value` is not a JSON object.
    #[error("entity {0} of the upstream page is not a JSON object")]
    NotAnObject(usize),
    /// `@odata.count` is not a non-negative integer, as a number or a numeric string.
    #[error("the upstream page has an unreadable @odata.count")]
    BadCount,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "@odata.nextLink", alias = "@nextLink", default)]
    next_link: Option<String>,
    #[serde(rename = "@odata.count", alias = "@count", default, borrow)]
    count: Option<&'a RawValue>,
}

impl<'a> Page<'a> {
    /// Parse a page body.
    pub fn parse(body: &'a [u8]) -> Result<Self, PageError> {
        let wire: Wire<'a> =
            serde_json::from_slice(body).map_err(|e| PageError::Malformed(e.to_string()))?;
        if let Some(i) = wire.value.iter().position(|v| !v.get().starts_with('{')) {
            return Err(PageError::NotAnObject(i));
        }
        let count = match wire.count {
            None => None,
            Some(raw) => Some(parse_count(raw.get()).ok_or(PageError::BadCount)?),
        };
        Ok(Page {
            entities: wire.value,
            next_link: wire.next_link,
            count,
        })
    }
}

/// The nextLink of a page that ends with it, read from the last bytes without parsing the page:
/// `…,"@odata.nextLink":"LINK"}` (or `@nextLink`), where LINK holds no escape, as most servers
/// write it. Lets the next page be asked for while this one is parsed; the parse has the last word
/// (a page whose parsed link differs, or that has none, drops what was asked on this guess).
pub fn tail_next_link(body: &[u8]) -> Option<&str> {
    const TAIL: usize = 8 * 1024;
    let tail = &body[body.len().saturating_sub(TAIL)..];
    let rest = tail.trim_ascii_end().strip_suffix(b"}")?;
    let rest = rest.trim_ascii_end().strip_suffix(b"\"")?;
    let open = rest.iter().rposition(|&b| b == b'"')?;
    let link = &rest[open + 1..];
    if link.is_empty() || link.iter().any(|&b| b == b'\\' || b < 0x20) {
        return None;
    }
    let before = rest[..open].trim_ascii_end().strip_suffix(b":")?;
    let before = before.trim_ascii_end();
    let before = before
        .strip_suffix(b"\"@odata.nextLink\"")
        .or_else(|| before.strip_suffix(b"\"@nextLink\""))?;
    before.trim_ascii_end().strip_suffix(b",")?;
    std::str::from_utf8(link).ok()
}

/// A count as JSON text: digits, bare or quoted; more digits than `u64` holds saturate.
fn parse_count(raw: &str) -> Option<u64> {
    let text = raw
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(raw);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_link_at_the_end_of_a_page_is_read_from_its_tail() {
        let page = |s: &str| tail_next_link(s.as_bytes()).map(str::to_owned);
        let cap = r#"{"@odata.context":"$metadata#C","value":[{"ID":1}],"@odata.nextLink":"C?$skiptoken=1000"}"#;
        assert_eq!(page(cap).as_deref(), Some("C?$skiptoken=1000"));
        assert_eq!(
            page("{\"value\":[] ,\n \"@nextLink\" : \"http://u/C?p=2\" }\n").as_deref(),
            Some("http://u/C?p=2")
        );
        for other in [
            // Escaped, first, nested, last page, another member, not JSON at all.
            r#"{"value":[],"@odata.nextLink":"C?$filter=a%20eq%20\"x\""}"#,
            r#"{"@odata.nextLink":"C?p=2","value":[]}"#,
            r#"{"value":[{"x":{"a":1,"@odata.nextLink":"C?evil"}}]}"#,
            r#"{"value":[],"x":{"@odata.nextLink":"C?evil"}}"#,
            r#"{"value":[{"ID":1}]}"#,
            r#"{"value":[],"@odata.deltaLink":"C?d=1"}"#,
            r#"{"value":[],"@odata.nextLink":""}"#,
            r#""@odata.nextLink":"C"}"#,
            "",
        ] {
            assert_eq!(page(other), None, "{other}");
        }
    }

    #[test]
    fn a_page_yields_raw_entities_and_paging_controls() {
        let body = br#"{"@odata.context":"$metadata#C","@odata.count":"3","value":[{"ID":1},
            { "ID" : 2 }],"@odata.nextLink":"C?$skiptoken=2"}"#;
        let p = Page::parse(body).unwrap();
        assert_eq!(p.entities.len(), 2);
        assert_eq!(p.entities[1].get(), r#"{ "ID" : 2 }"#);
        assert_eq!(p.next_link.as_deref(), Some("C?$skiptoken=2"));
        assert_eq!(p.count, Some(3));
        for (text, count) in [
            ("18446744073709551615", u64::MAX),
            ("18446744073709551616", u64::MAX),
            ("\"99999999999999999999999999\"", u64::MAX),
        ] {
            let body = format!(r#"{{"value":[],"@odata.count":{text}}}"#);
            assert_eq!(Page::parse(body.as_bytes()).unwrap().count, Some(count));
        }
        let p = Page::parse(br#"{"value":[],"@nextLink":"x","@count":0}"#).unwrap();
        assert_eq!((p.next_link.as_deref(), p.count), (Some("x"), Some(0)));
    }

    #[test]
    fn malformed_pages_are_errors() {
        for bad in [
            &br#"{"value":[1]}"#[..],
            br#"{"value":{}}"#,
            br#"{"error":{"code":"1","message":"x"}}"#,
            br#"{"value":[{"a":1}"#,
            br#"{"value":[],"@odata.count":"x"}"#,
            br#"{"value":[],"@odata.count":-1}"#,
            br#"{"value":[],"@odata.count":2.5}"#,
            br#"{"value":[],"@odata.count":1e3}"#,
            br#"{"value":[],"@odata.count":"\"7"}"#,
            br#"{"value":[],"value":[]}"#,
            b"",
        ] {
            assert!(
                Page::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

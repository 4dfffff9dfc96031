//! Query strings: parse the system query options of a request, and normalize the ones that define a
//! tracked feed (`$filter`, `$select`, `$expand`, `$search` and custom options) so that equivalent
//! queries — other option order, encoding or whitespace — map to the same feed.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Characters escaped when we write a query value: everything that would end or confuse a query
/// parameter, and spaces as `%20` — SAP CAP rejects `+` for a space.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^')
    .add(b'[')
    .add(b']')
    .add(b'=');

/// Percent-encode one query value (or name) the way the gateway writes them.
pub fn encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// Characters escaped in a key predicate placed in a path segment.
const PATH_SEGMENT: &AsciiSet = &QUERY_VALUE.add(b'/').add(b'?');

/// Percent-encode text placed into a URL path segment, e.g. a key predicate.
pub fn encode_path(value: &str) -> String {
    utf8_percent_encode(value, PATH_SEGMENT).to_string()
}

/// A query string that cannot be read; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A system query option appears twice (U: "MUST NOT be specified more than once").
    #[error("the system query option {0} is given more than once")]
    Duplicate(String),
    /// A numeric option holds something else.
    #[error("the system query option {name} must be a non-negative integer, not '{value}'")]
    NotANumber {
        /// The option, e.g. `$top`.
        name: &'static str,
        /// What the request held.
        value: String,
    },
    /// `$count` other than true/false.
    #[error("$count must be true or false, not '{0}'")]
    BadCount(String),
    /// Not valid UTF-8 after percent-decoding.
    #[error("the query string is not valid UTF-8 after percent-decoding")]
    NotUtf8,
}

/// The parsed query of one request. Values are percent-decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ODataQuery {
    /// `$filter`.
    pub filter: Option<String>,
    /// `$select`.
    pub select: Option<String>,
    /// `$expand`.
    pub expand: Option<String>,
    /// `$search`.
    pub search: Option<String>,
    /// `$orderby`: accepted on tracked reads, but the feed is always enumerated by key.
    pub orderby: Option<String>,
    /// `$top`: applies to an initial response only (C8).
    pub top: Option<u64>,
    /// `$skip`: applies to an initial response only (C8).
    pub skip: Option<u64>,
    /// `$count=true`.
    pub count: bool,
    /// `$deltatoken`: ours, always.
    pub deltatoken: Option<String>,
    /// `$skiptoken`: ours when it carries our prefix, the upstream's otherwise.
    pub skiptoken: Option<String>,
    /// `$format`: JSON is all we write.
    pub format: Option<String>,
    /// System options that make a request untrackable (`$apply`, `$compute`, …) (C2).
    pub untrackable: Vec<String>,
    /// Custom (non-`$`) query options such as `sap-client=100`: part of the feed, forwarded upstream.
    pub custom: Vec<(String, String)>,
}

impl ODataQuery {
    /// Parse a raw query string (without `?`). `+` is read as a space, as form encoders write it.
    pub fn parse(raw: Option<&str>) -> Result<Self, QueryError> {
        let mut q = ODataQuery::default();
        let Some(raw) = raw else { return Ok(q) };
        let mut seen: Vec<String> = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name)?;
            let value = decode(value)?;
            if !name.starts_with('$') {
                q.custom.push((name, value));
                continue;
            }
            let lower = name.to_ascii_lowercase();
            if seen.contains(&lower) {
                return Err(QueryError::Duplicate(lower));
            }
            seen.push(lower.clone());
            match lower.as_str() {
                "$filter" => q.filter = Some(value),
                "$select" => q.select = Some(value),
                "$expand" => q.expand = Some(value),
                "$search" => q.search = Some(value),
                "$orderby" => q.orderby = Some(value),
                "$top" => q.top = Some(number("$top", &value)?),
                "$skip" => q.skip = Some(number("$skip", &value)?),
                "$count" => {
                    q.count = match value.trim().to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(QueryError::BadCount(value)),
                    }
                }
                "$deltatoken" => q.deltatoken = Some(value),
                "$skiptoken" => q.skiptoken = Some(value),
                "$format" => q.format = Some(value),
                _ => q.untrackable.push(lower),
            }
        }
        Ok(q)
    }

    /// The normalized defining query of a feed (C8): `$expand`, `$filter`, `$search`, `$select` and
    /// custom options, in a fixed order, values normalized and encoded. Equal for equivalent queries.
    pub fn defining(&self) -> DefiningQuery {
        let mut parts = Vec::new();
        if let Some(e) = self
            .expand
            .as_deref()
            .map(normalize_list)
            .filter(|e| !e.is_empty())
        {
            parts.push(("$expand".to_owned(), e));
        }
        if let Some(f) = self
            .filter
            .as_deref()
            .map(collapse_whitespace)
            .filter(|f| !f.is_empty())
        {
            parts.push(("$filter".to_owned(), f));
        }
        if let Some(s) = self
            .search
            .as_deref()
            .map(collapse_whitespace)
            .filter(|s| !s.is_empty())
        {
            parts.push(("$search".to_owned(), s));
        }
        if let Some(s) = self
            .select
            .as_deref()
            .map(normalize_list)
            .filter(|s| !s.is_empty())
        {
            parts.push(("$select".to_owned(), s));
        }
        let mut custom = self.custom.clone();
        custom.sort();
        custom.dedup();
        parts.extend(custom);
        DefiningQuery {
            parts,
            ieee754: false,
        }
    }
}

/// The normalized query that, with the entity set, route and identity scope, defines a feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefiningQuery {
    parts: Vec<(String, String)>,
    /// Read with `IEEE754Compatible=true`: it changes the bytes of the entities, so it is part of
    /// the definition (C32). Stored and linked as `$format=` [`IEEE754_FORMAT`], never sent
    /// upstream in the query (the upstream is asked through `Accept`).
    ieee754: bool,
}

/// How a feed read with `IEEE754Compatible=true` spells it in its stored query and its links.
pub const IEEE754_FORMAT: &str = "application/json;IEEE754Compatible=true";

impl DefiningQuery {
    /// Rebuild from the encoded form stored with a feed.
    pub fn from_encoded(encoded: &str) -> Result<Self, QueryError> {
        let mut parts = Vec::new();
        let mut ieee754 = false;
        for pair in encoded.split('&').filter(|p| !p.is_empty()) {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (n, v) = (decode(n)?, decode(v)?);
            if n == "$format" && v == IEEE754_FORMAT {
                ieee754 = true;
            } else {
                parts.push((n, v));
            }
        }
        Ok(DefiningQuery { parts, ieee754 })
    }

    /// This definition, read with `IEEE754Compatible=true` or not.
    pub fn with_ieee754(mut self, on: bool) -> Self {
        self.ieee754 = on;
        self
    }

    /// Whether the feed is read with `IEEE754Compatible=true`.
    pub fn ieee754(&self) -> bool {
        self.ieee754
    }

    /// The query string, encoded; empty when the feed is the whole entity set. A feed without
    /// `IEEE754Compatible` encodes as it always did, so stored feeds keep their ids.
    pub fn encoded(&self) -> String {
        let format = self
            .ieee754
            .then(|| ("$format".to_owned(), IEEE754_FORMAT.to_owned()));
        self.parts
            .iter()
            .chain(format.as_ref())
            .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The value of one option, e.g. `$filter`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.parts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The selected property names (top level), if the feed has a `$select` other than `*`.
    pub fn selected(&self) -> Option<Vec<&str>> {
        let select = self.get("$select")?;
        let items: Vec<&str> = split_top_level(select, ',')
            .into_iter()
            .map(str::trim)
            .collect();
        if items.contains(&"*") {
            return None;
        }
        Some(items)
    }

    /// The select list of the context URL (J §10, C15): the selected properties, then each
    /// expanded navigation property with its own nested select list in parentheses —
    /// `city,orders(amount)`. A navigation property expanded without nested `$select`/`$expand`
    /// gets empty parentheses in 4.01 (`orders()`); 4.0 allows leaving it out, which 4.0 readers
    /// expect. `None` when there is nothing to list.
    pub fn context_projection(&self, version: crate::odata::ODataVersion) -> Option<String> {
        let select = self.selected().map(|items| items.join(","));
        projection(
            select.as_deref(),
            self.get("$expand"),
            version == crate::odata::ODataVersion::V401,
        )
    }

    /// All parts, in order.
    pub fn parts(&self) -> &[(String, String)] {
        &self.parts
    }

    /// The query sent upstream to enumerate the feed: the defining query with the key properties added
    /// to `$select` (C19), plus `$orderby` on the key so that upstream paging is as stable as it can be.
    pub fn enumeration(&self, key_properties: &[&str]) -> Vec<(String, String)> {
        let mut parts = self.parts.clone();
        if let Some(selected) = self.selected() {
            let mut items: Vec<String> = selected.iter().map(|s| s.to_string()).collect();
            for k in key_properties {
                if !items.iter().any(|i| i == k) {
                    items.push((*k).to_owned());
                }
            }
            items.sort();
            if let Some(slot) = parts.iter_mut().find(|(n, _)| n == "$select") {
                slot.1 = items.join(",");
            }
        }
        parts.push(("$orderby".to_owned(), key_properties.join(",")));
        parts
    }
}

/// The projection of one level: `select` items, then expanded items with their nested lists.
fn projection(select: Option<&str>, expand: Option<&str>, empty_parens: bool) -> Option<String> {
    let mut items: Vec<String> = select
        .map(|s| {
            split_top_level(s, ',')
                .into_iter()
                .map(|i| i.trim().to_owned())
                .filter(|i| !i.is_empty())
                .collect()
        })
        .unwrap_or_default();
    for item in expand.map(|e| split_top_level(e, ',')).unwrap_or_default() {
        let item = item.trim();
        let (name, options) = match item.find('(') {
            Some(open) if item.ends_with(')') => {
                (item[..open].trim(), &item[open + 1..item.len() - 1])
            }
            _ => (item, ""),
        };
        // `*` and `$ref` expansions add no named property.
        if name.is_empty() || name == "*" || name.ends_with("/$ref") {
            continue;
        }
        let option = |wanted: &str| {
            split_top_level(options, ';').into_iter().find_map(|o| {
                let (n, v) = o.split_once('=')?;
                n.trim().eq_ignore_ascii_case(wanted).then(|| v.trim())
            })
        };
        let nested_select = option("$select").filter(|s| !s.split(',').any(|i| i.trim() == "*"));
        let nested = projection(nested_select, option("$expand"), empty_parens);
        let entry = match nested {
            Some(list) => format!("{name}({list})"),
            None if empty_parens => format!("{name}()"),
            None => continue,
        };
        items.retain(|i| i != name);
        items.push(entry);
    }
    (!items.is_empty()).then(|| items.join(","))
}

/// Join (name, value) pairs into an encoded query string.
pub fn encode_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn number(name: &'static str, value: &str) -> Result<u64, QueryError> {
    value.trim().parse().map_err(|_| QueryError::NotANumber {
        name,
        value: value.to_owned(),
    })
}

fn decode(raw: &str) -> Result<String, QueryError> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| QueryError::NotUtf8)
}

/// Collapse runs of whitespace outside single-quoted string literals to one space and trim.
/// OData string literals escape a quote by doubling it, which toggling on every quote handles.
pub fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_string = false;
    let mut pending_space = false;
    for c in s.trim().chars() {
        if in_string {
            out.push(c);
            if c == '\'' {
                in_string = false;
            }
            continue;
        }
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space {
            // No space is needed next to a bracket or a comma; dropping it makes `f( a )` equal `f(a)`.
            let prev = out.chars().last();
            if !matches!(prev, Some('(' | ',')) && !matches!(c, ')' | ',') {
                out.push(' ');
            }
            pending_space = false;
        }
        if c == '\'' {
            in_string = true;
        }
        out.push(c);
    }
    out
}

/// Normalize a comma-separated list (`$select`, `$expand`): items trimmed, whitespace collapsed,
/// sorted and deduplicated — order carries no meaning in either option.
fn normalize_list(s: &str) -> String {
    // Items of an unbalanced list (a stray quote or bracket) cannot be told apart reliably;
    // reordering them could pair quotes differently, so such a list is only tidied.
    if !balanced(s) {
        return collapse_whitespace(s);
    }
    let mut items: Vec<String> = split_top_level(s, ',')
        .into_iter()
        .map(collapse_whitespace)
        .filter(|i| !i.is_empty())
        .collect();
    items.sort();
    items.dedup();
    items.join(",")
}

/// Whether quotes pair up and parentheses close, outside string literals.
fn balanced(s: &str) -> bool {
    let (mut depth, mut in_string) = (0i32, false);
    for c in s.chars() {
        match c {
            '\'' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0 && !in_string
}

/// Split on `sep` outside parentheses and string literals.
pub fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut in_string, mut start) = (0i32, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => depth -= 1,
            c if c == sep && !in_string && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defining(raw: &str) -> String {
        ODataQuery::parse(Some(raw)).unwrap().defining().encoded()
    }

    #[test]
    fn equivalent_queries_define_the_same_feed() {
        let a = defining("$select=name,city&$filter=city%20eq%20'Berlin'");
        let b = defining("$filter=city  eq   'Berlin'&$select=city, name");
        let c = defining("%24filter=city+eq+'Berlin'&$SELECT=city,name,name");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, "$filter=city%20eq%20'Berlin'&$select=city,name");
    }

    #[test]
    fn whitespace_inside_string_literals_is_kept() {
        assert_ne!(
            defining("$filter=name eq 'a  b'"),
            defining("$filter=name eq 'a b'")
        );
        assert_eq!(
            collapse_whitespace("name eq 'O''Brien  x'  and  a eq 1"),
            "name eq 'O''Brien  x' and a eq 1"
        );
        assert_eq!(
            collapse_whitespace("contains( name , 'x' )"),
            "contains(name,'x')"
        );
    }

    #[test]
    fn paging_and_count_options_are_not_part_of_the_feed_c8() {
        let q =
            ODataQuery::parse(Some("$top=5&$skip=2&$count=true&$orderby=name&$select=a")).unwrap();
        assert_eq!((q.top, q.skip, q.count), (Some(5), Some(2), true));
        assert_eq!(q.defining().encoded(), "$select=a");
    }

    #[test]
    fn ieee754_is_part_of_the_definition_but_not_of_the_upstream_query_c32() {
        let plain = ODataQuery::parse(Some("$select=a")).unwrap().defining();
        let ieee = plain.clone().with_ieee754(true);
        assert_ne!(plain.encoded(), ieee.encoded());
        assert_eq!(plain.encoded(), "$select=a");
        assert_eq!(ieee.parts(), plain.parts());
        let back = DefiningQuery::from_encoded(&ieee.encoded()).unwrap();
        assert_eq!(back, ieee);
        assert!(back.ieee754());
    }

    #[test]
    fn context_urls_list_expanded_navigation_properties_j10() {
        use crate::odata::ODataVersion::{V40, V401};
        let projection = |raw: &str, v| {
            ODataQuery::parse(Some(raw))
                .unwrap()
                .defining()
                .context_projection(v)
        };
        assert_eq!(
            projection("$select=city&$expand=orders($select=amount)", V40).as_deref(),
            Some("city,orders(amount)")
        );
        assert_eq!(
            projection("$select=city&$expand=orders", V401).as_deref(),
            Some("city,orders()")
        );
        assert_eq!(
            projection("$select=city&$expand=orders", V40).as_deref(),
            Some("city")
        );
        assert_eq!(projection("$expand=orders", V40), None);
        assert_eq!(
            projection(
                "$expand=orders($filter=amount gt 1;$select=amount;$expand=items($select=sku))",
                V40
            )
            .as_deref(),
            Some("orders(amount,items(sku))")
        );
        assert_eq!(
            projection("$select=city%2Cname", V40).as_deref(),
            Some("city,name")
        );
        assert_eq!(projection("$select=*", V401), None);
    }

    #[test]
    fn duplicate_and_malformed_options_are_errors() {
        assert!(matches!(
            ODataQuery::parse(Some("$top=1&$TOP=2")),
            Err(QueryError::Duplicate(_))
        ));
        assert!(ODataQuery::parse(Some("$top=x")).is_err());
        assert!(ODataQuery::parse(Some("$count=maybe")).is_err());
        assert!(ODataQuery::parse(Some("$filter=%FF")).is_err());
    }

    #[test]
    fn apply_makes_a_query_untrackable_c2() {
        let q = ODataQuery::parse(Some("$apply=groupby((city))")).unwrap();
        assert_eq!(q.untrackable, vec!["$apply".to_owned()]);
    }

    #[test]
    fn enumeration_adds_keys_to_select_and_orders_by_key() {
        let q = ODataQuery::parse(Some("$select=name")).unwrap().defining();
        let e = encode_pairs(&q.enumeration(&["ID"]));
        assert_eq!(e, "$select=ID,name&$orderby=ID");
        let q = ODataQuery::parse(Some("$select=*")).unwrap().defining();
        assert_eq!(
            encode_pairs(&q.enumeration(&["A", "B"])),
            "$select=*&$orderby=A,B"
        );
    }

    #[test]
    fn encoded_form_round_trips() {
        let q = ODataQuery::parse(Some("$filter=a%20eq%20'x%26y%2Bz'&sap-client=100"))
            .unwrap()
            .defining();
        let back = DefiningQuery::from_encoded(&q.encoded()).unwrap();
        assert_eq!(q, back);
        assert!(q.encoded().contains("%26"));
        assert!(q.encoded().contains("%2B") || q.encoded().contains("%20"));
    }
}

//! System query options of collection requests (`$select`, `$filter`,
//! `$orderby`, `$top`, `$skip`, `$count`, `$skiptoken`), server-driven
//! paging and the `@odata.nextLink` that continues a page.

use std::collections::HashSet;

use percent_encoding::percent_decode_str;

use super::data::{Product, Prop};
use super::filter::Filter;

/// Sort direction of one `$orderby` item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Asc,
    Desc,
}

/// The parsed query options of a request.
#[derive(Debug, Default)]
pub(crate) struct QueryOptions {
    /// `None` means all properties.
    pub(crate) select: Option<Vec<Prop>>,
    pub(crate) filter: Option<Filter>,
    pub(crate) orderby: Vec<(Prop, Direction)>,
    pub(crate) top: Option<usize>,
    pub(crate) skip: usize,
    pub(crate) count: bool,
    /// Rows of the (filtered, sorted, `$skip`ped, `$top`ped) result that
    /// earlier pages already delivered.
    pub(crate) skiptoken: usize,
    /// The decoded query in request order, to rebuild next links from.
    pairs: Vec<(String, String)>,
}

/// Splits a raw query string into percent-decoded name/value pairs.
///
/// `+` is kept as a plus sign: OData URLs follow RFC 3986, where `+` is a
/// literal (time zone offsets, signed numbers), not form-encoded space.
pub(crate) fn decode_query(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

fn decode(text: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| "the query string is not valid UTF-8".to_owned())
}

impl QueryOptions {
    /// Parses the raw (still percent-encoded) query string of a request.
    pub(crate) fn parse(raw: Option<&str>) -> Result<QueryOptions, String> {
        let mut options = QueryOptions {
            pairs: decode_query(raw.unwrap_or(""))?,
            ..QueryOptions::default()
        };
        let mut seen = HashSet::new();
        for (name, value) in options.pairs.clone() {
            if name.starts_with('$') && !seen.insert(name.clone()) {
                return Err(format!("query option {name} is given more than once"));
            }
            options.apply(&name, &value)?;
        }
        Ok(options)
    }

    fn apply(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "$select" => self.select = parse_select(value)?,
            "$filter" => self.filter = Some(Filter::parse(value)?),
            "$orderby" => self.orderby = parse_orderby(value)?,
            "$top" => self.top = Some(parse_count(name, value)?),
            "$skip" => self.skip = parse_count(name, value)?,
            "$skiptoken" => self.skiptoken = parse_count(name, value)?,
            "$count" => self.count = parse_bool(name, value)?,
            // This service does not track changes; a token some client
            // kept from elsewhere is ignored rather than rejected.
            "$deltatoken" => {}
            "$format" if value == "json" || value.starts_with("application/json") => {}
            _ if name.starts_with('$') => {
                return Err(format!("system query option {name} is not supported"));
            }
            // Custom query options have no meaning here but are legal.
            _ => {}
        }
        Ok(())
    }

    /// The properties to serialize, in declaration order when all are wanted.
    pub(crate) fn selected(&self) -> &[Prop] {
        self.select.as_deref().unwrap_or(&Prop::ALL)
    }

    /// Whether `product` passes `$filter`.
    pub(crate) fn matches(&self, product: &Product) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|filter| filter.matches(product))
    }

    /// Sorts by `$orderby`, then by `ID` so pages are stable between
    /// requests even when the sort keys tie.
    pub(crate) fn sort(&self, rows: &mut [Product]) {
        rows.sort_by(|a, b| {
            self.orderby
                .iter()
                .map(|&(prop, direction)| {
                    let order = a.value(prop).sort_cmp(&b.value(prop));
                    match direction {
                        Direction::Asc => order,
                        Direction::Desc => order.reverse(),
                    }
                })
                .find(|order| order.is_ne())
                .unwrap_or_else(|| a.id.cmp(&b.id))
        });
    }

    /// A relative link to `resource` with the request's query options and
    /// `$skiptoken=skiptoken`; earlier skip and delta tokens are dropped.
    pub(crate) fn next_link(&self, resource: &str, skiptoken: usize) -> String {
        let mut link = format!("{resource}?");
        let kept = self
            .pairs
            .iter()
            .filter(|(name, _)| name != "$skiptoken" && name != "$deltatoken");
        for (name, value) in kept {
            link.push_str(&crate::odata::query::encode(name));
            link.push('=');
            link.push_str(&crate::odata::query::encode(value));
            link.push('&');
        }
        link.push_str(&format!("$skiptoken={skiptoken}"));
        link
    }

    /// Which rows of `matching` sorted rows one page shows.
    pub(crate) fn page(&self, matching: usize, page_size: usize) -> Page {
        let base = self.skip.min(matching);
        let window = self
            .top
            .map_or(matching - base, |top| top.min(matching - base));
        let offset = self.skiptoken.min(window);
        // A zero page size could never make progress.
        let end = offset.saturating_add(page_size.max(1)).min(window);
        Page {
            start: base + offset,
            end: base + end,
            next_skiptoken: (end < window).then_some(end),
        }
    }
}

/// A page of a sorted result: rows `start..end`, and the `$skiptoken` of
/// the next page if there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) next_skiptoken: Option<usize>,
}

fn parse_select(value: &str) -> Result<Option<Vec<Prop>>, String> {
    let mut props = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item == "*" {
            return Ok(None);
        }
        let prop =
            Prop::from_name(item).ok_or_else(|| format!("unknown property '{item}' in $select"))?;
        if !props.contains(&prop) {
            props.push(prop);
        }
    }
    Ok(Some(props))
}

fn parse_orderby(value: &str) -> Result<Vec<(Prop, Direction)>, String> {
    value
        .split(',')
        .map(|item| {
            let mut words = item.split_whitespace();
            let name = words.next().unwrap_or("");
            let prop = Prop::from_name(name)
                .ok_or_else(|| format!("unknown property '{name}' in $orderby"))?;
            let direction = match words.next() {
                None | Some("asc") => Direction::Asc,
                Some("desc") => Direction::Desc,
                Some(other) => return Err(format!("invalid sort direction '{other}' in $orderby")),
            };
            match words.next() {
                None => Ok((prop, direction)),
                Some(extra) => Err(format!("unexpected '{extra}' in $orderby")),
            }
        })
        .collect()
}

fn parse_count(name: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{name} must be a non-negative integer, got '{value}'"))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{name} must be true or false, got '{value}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> QueryOptions {
        QueryOptions::parse(Some(query)).unwrap_or_else(|e| panic!("{query}: {e}"))
    }

    #[test]
    fn decodes_percent_but_keeps_plus() {
        let pairs = decode_query("$filter=name%20eq%20'a+b'&&x&$top=5").unwrap_or_default();
        assert_eq!(
            pairs,
            [
                ("$filter".to_owned(), "name eq 'a+b'".to_owned()),
                ("x".to_owned(), String::new()),
                ("$top".to_owned(), "5".to_owned()),
            ]
        );
        assert!(decode_query("$filter=%FF").is_err());
    }

    #[test]
    fn parses_the_supported_options() {
        let options = parse(
            "$select=name,ID,name&$top=10&$skip=5&$count=true&$orderby=price desc,name&custom=1",
        );
        assert_eq!(options.select, Some(vec![Prop::Name, Prop::Id]));
        assert_eq!(options.top, Some(10));
        assert_eq!(options.skip, 5);
        assert!(options.count);
        assert_eq!(
            options.orderby,
            [(Prop::Price, Direction::Desc), (Prop::Name, Direction::Asc)]
        );
        assert_eq!(parse("$select=*").selected(), &Prop::ALL);
        assert!(parse("$deltatoken=abc&$format=json").filter.is_none());
    }

    #[test]
    fn rejects_bad_options() {
        for bad in [
            "$top=-1",
            "$skip=x",
            "$count=yes",
            "$select=colour",
            "$select=",
            "$orderby=price up",
            "$orderby=",
            "$expand=category",
            "$top=1&$top=2",
            "$filter=ID eq",
            "$format=xml",
        ] {
            assert!(QueryOptions::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_link_preserves_options_and_replaces_tokens() {
        let options = parse(
            "$filter=name%20eq%20'A%26B'&$skiptoken=100&$deltatoken=xyz&$select=ID,name&$count=true",
        );
        assert_eq!(
            options.next_link("Products", 200),
            "Products?$filter=name%20eq%20'A%26B'&$select=ID,name&$count=true&$skiptoken=200"
        );
        assert_eq!(
            parse("").next_link("Products", 100),
            "Products?$skiptoken=100"
        );
        // The link decodes back to the same options.
        let link = options.next_link("Products", 1);
        let reparsed = parse(link.trim_start_matches("Products?"));
        assert_eq!(reparsed.filter, options.filter);
        assert_eq!(reparsed.skiptoken, 1);
    }

    #[test]
    fn pages_walk_the_result() {
        let first = parse("").page(250, 100);
        assert_eq!(
            first,
            Page {
                start: 0,
                end: 100,
                next_skiptoken: Some(100)
            }
        );
        let last = parse("$skiptoken=200").page(250, 100);
        assert_eq!(
            last,
            Page {
                start: 200,
                end: 250,
                next_skiptoken: None
            }
        );
        let exact = parse("$skiptoken=100").page(200, 100);
        assert_eq!(exact.next_skiptoken, None);
    }

    #[test]
    fn pages_respect_skip_and_top() {
        let options = parse("$skip=10&$top=150");
        assert_eq!(
            options.page(250, 100),
            Page {
                start: 10,
                end: 110,
                next_skiptoken: Some(100)
            }
        );
        let second = parse("$skip=10&$top=150&$skiptoken=100");
        assert_eq!(
            second.page(250, 100),
            Page {
                start: 110,
                end: 160,
                next_skiptoken: None
            }
        );
        let beyond = parse("$skip=300");
        assert_eq!(
            beyond.page(250, 100),
            Page {
                start: 250,
                end: 250,
                next_skiptoken: None
            }
        );
        assert_eq!(parse("$top=0").page(250, 100).next_skiptoken, None);
        assert_eq!(
            parse("").page(3, 0),
            Page {
                start: 0,
                end: 1,
                next_skiptoken: Some(1)
            }
        );
    }

    #[test]
    fn sorting_is_stable_by_id() {
        let make = |id, price| Product {
            price_cents: price,
            ..Product::empty(id, 0)
        };
        let mut rows = vec![
            make(3, Some(100)),
            make(1, Some(100)),
            make(2, None),
            make(4, Some(50)),
        ];
        parse("$orderby=price desc").sort(&mut rows);
        let ids: Vec<i32> = rows.iter().map(|p| p.id).collect();
        assert_eq!(ids, [1, 3, 4, 2]);
        parse("$orderby=price").sort(&mut rows);
        let ids: Vec<i32> = rows.iter().map(|p| p.id).collect();
        assert_eq!(ids, [2, 4, 1, 3]);
    }
}

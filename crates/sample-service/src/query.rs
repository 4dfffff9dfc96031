//! Parsing and application of OData system query options.

use super::filter::{self, Expr, split_top_level};
use super::model::{EntitySetDef, NavDef, SetStore, find_set};
use super::value::compare_typed;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

/// An error answered as an OData error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ODataError {
    /// HTTP status.
    pub status: u16,
    /// Human-readable message.
    pub message: String,
}

impl ODataError {
    /// 400 Bad Request.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ODataError {
            status: 400,
            message: message.into(),
        }
    }

    /// 404 Not Found.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ODataError {
            status: 404,
            message: message.into(),
        }
    }
}

/// Where options appear; each place accepts a different subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A top-level collection request.
    Collection,
    /// A single-entity request: only `$select` and `$expand`.
    Entity,
    /// Inside `$expand=Nav(...)`.
    Nested,
}

/// Filter capabilities switched off by knobs, to mimic servers that lack them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FilterRules {
    /// Answer 400 to filters using `in`.
    pub reject_in: bool,
    /// Answer 400 to filters using `or`.
    pub reject_or: bool,
}

/// One `$orderby` item.
#[derive(Clone, Debug)]
pub(crate) struct OrderKey {
    /// Property name.
    pub property: String,
    /// `desc` given.
    pub descending: bool,
}

/// One `$expand` item with its nested options.
#[derive(Clone, Debug)]
pub(crate) struct Expand {
    /// The navigation being expanded.
    pub nav: NavDef,
    /// Options inside the parentheses.
    pub options: QueryOptions,
}

/// Parsed system query options.
#[derive(Clone, Debug, Default)]
pub(crate) struct QueryOptions {
    /// `$filter`.
    pub filter: Option<Expr>,
    /// `$search` term, lower-cased, quotes removed.
    pub search: Option<String>,
    /// `$select`; `None` means all properties.
    pub select: Option<Vec<String>>,
    /// `$expand`.
    pub expand: Vec<Expand>,
    /// `$orderby`.
    pub orderby: Vec<OrderKey>,
    /// `$top`.
    pub top: Option<usize>,
    /// `$skip`.
    pub skip: Option<usize>,
    /// `$count=true`.
    pub count: bool,
    /// `$skiptoken`, an offset into the result (CAP-style).
    pub skiptoken: Option<usize>,
}

/// Splits a raw query string into percent-decoded pairs, in order. A `+` is
/// kept as a plus sign: OData servers such as CAP do not read it as a space.
pub(crate) fn split_query(raw: &str) -> Result<Vec<(String, String)>, ODataError> {
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| ODataError::bad_request("query is not valid UTF-8"))
    };
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// Builds the query of a nextLink: the request's options as they came, still encoded the way
/// the client wrote them (so nothing is decoded and written again), minus the old `$skiptoken`,
/// plus `$skiptoken=<offset>` at the end.
pub(crate) fn next_link_query(raw: &str, offset: usize) -> String {
    replace_option(raw, "$skiptoken", Some(&offset.to_string()))
}

/// `raw` (a query as sent) without option `name` (compared decoded), and with `name=value`
/// (`value` already encoded) at the end when given; the other options stay as they were written.
pub(crate) fn replace_option(raw: &str, name: &str, value: Option<&str>) -> String {
    raw.split('&')
        .filter(|part| {
            let option = part.split_once('=').map_or(*part, |(option, _)| option);
            !part.is_empty() && percent_decode_str(option).decode_utf8_lossy() != name
        })
        .map(str::to_owned)
        .chain(value.map(|value| format!("{name}={value}")))
        .collect::<Vec<_>>()
        .join("&")
}

/// Parses options for `def`, validating property and navigation names the
/// way a metadata-aware server does.
pub(crate) fn parse_options(
    pairs: &[(String, String)],
    def: &EntitySetDef,
    sets: &[SetStore],
    rules: FilterRules,
    scope: Scope,
) -> Result<QueryOptions, ODataError> {
    let mut opts = QueryOptions::default();
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        if !name.starts_with('$') {
            continue; // custom options (sap-client=...) are legal and ignored
        }
        if seen.contains(&name.as_str()) {
            return Err(ODataError::bad_request(format!(
                "query option {name} given more than once"
            )));
        }
        seen.push(name);
        check_scope(name, scope)?;
        apply_option(&mut opts, name, value, def, sets, rules)?;
    }
    Ok(opts)
}

/// Rejects options a scope does not accept.
fn check_scope(name: &str, scope: Scope) -> Result<(), ODataError> {
    let allowed: &[&str] = match scope {
        Scope::Collection => &[],
        Scope::Entity => &["$select", "$expand", "$format"],
        Scope::Nested => &[
            "$select", "$expand", "$filter", "$orderby", "$top", "$skip", "$count",
        ],
    };
    if scope == Scope::Collection || allowed.contains(&name) {
        Ok(())
    } else {
        Err(ODataError::bad_request(format!(
            "query option {name} is not allowed here"
        )))
    }
}

fn apply_option(
    opts: &mut QueryOptions,
    name: &str,
    value: &str,
    def: &EntitySetDef,
    sets: &[SetStore],
    rules: FilterRules,
) -> Result<(), ODataError> {
    match name {
        "$filter" => opts.filter = Some(parse_filter(value, def, rules)?),
        "$select" => opts.select = Some(parse_select(value, def)?),
        "$expand" => opts.expand = parse_expand(value, def, sets, rules)?,
        "$orderby" => opts.orderby = parse_orderby(value, def)?,
        "$top" => opts.top = Some(parse_count_value(name, value)?),
        "$skip" => opts.skip = Some(parse_count_value(name, value)?),
        "$skiptoken" => opts.skiptoken = Some(parse_count_value(name, value)?),
        "$count" => {
            opts.count = match value {
                "true" => true,
                "false" => false,
                _ => return Err(ODataError::bad_request("$count must be true or false")),
            }
        }
        "$search" => {
            let term = value.trim().trim_matches('"').to_lowercase();
            opts.search = Some(term);
        }
        // A service without change tracking does not know delta tokens; real
        // ones like this simply ignore it, which is what the gateway must cope with.
        "$deltatoken" | "$format" | "$schemaversion" => {}
        "$apply" | "$compute" => {
            return Err(ODataError {
                status: 501,
                message: format!("{name} is not implemented"),
            });
        }
        other => {
            return Err(ODataError::bad_request(format!(
                "unknown system query option {other}"
            )));
        }
    }
    Ok(())
}

fn parse_count_value(name: &str, value: &str) -> Result<usize, ODataError> {
    value
        .parse()
        .map_err(|_| ODataError::bad_request(format!("invalid value '{value}' for {name}")))
}

fn is_property(def: &EntitySetDef, name: &str) -> bool {
    def.edm_type(name).is_some()
}

fn parse_filter(text: &str, def: &EntitySetDef, rules: FilterRules) -> Result<Expr, ODataError> {
    let expr = filter::parse(text).map_err(ODataError::bad_request)?;
    if let Some(prop) = expr.unknown_property(&|name| is_property(def, name)) {
        return Err(ODataError::bad_request(format!(
            "property '{prop}' not found in type '{}'",
            def.entity_type
        )));
    }
    if rules.reject_in && expr.any(&mut |e| matches!(e, Expr::In(..))) {
        return Err(ODataError::bad_request("operator 'in' is not supported"));
    }
    if rules.reject_or && expr.any(&mut |e| matches!(e, Expr::Or(..))) {
        return Err(ODataError::bad_request("operator 'or' is not supported"));
    }
    Ok(expr)
}

fn parse_select(text: &str, def: &EntitySetDef) -> Result<Vec<String>, ODataError> {
    text.split(',')
        .map(str::trim)
        .map(|item| {
            if item == "*" || is_property(def, item) || def.nav_def(item).is_some() {
                Ok(item.to_string())
            } else {
                Err(ODataError::bad_request(format!(
                    "property '{item}' not found in type '{}'",
                    def.entity_type
                )))
            }
        })
        .collect()
}

fn parse_orderby(text: &str, def: &EntitySetDef) -> Result<Vec<OrderKey>, ODataError> {
    text.split(',')
        .map(|item| {
            let mut words = item.split_whitespace();
            let property = words.next().unwrap_or_default().to_string();
            let descending = match words.next() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => {
                    return Err(ODataError::bad_request(format!(
                        "invalid sort direction '{other}'"
                    )));
                }
            };
            if words.next().is_some() || !is_property(def, &property) {
                return Err(ODataError::bad_request(format!(
                    "cannot order by '{}'",
                    item.trim()
                )));
            }
            Ok(OrderKey {
                property,
                descending,
            })
        })
        .collect()
}

fn parse_expand(
    text: &str,
    def: &EntitySetDef,
    sets: &[SetStore],
    rules: FilterRules,
) -> Result<Vec<Expand>, ODataError> {
    let mut out = Vec::new();
    for item in split_top_level(text, ',') {
        let item = item.trim();
        let (name, inner) = match item.split_once('(') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix(')').ok_or_else(|| {
                    ODataError::bad_request(format!("unbalanced parentheses in $expand '{item}'"))
                })?;
                (name.trim(), inner)
            }
            None => (item, ""),
        };
        if name == "*" {
            for nav in &def.navs {
                out.push(expand_item(nav, "", sets, rules)?);
            }
            continue;
        }
        let nav = def.nav_def(name).ok_or_else(|| {
            ODataError::bad_request(format!(
                "navigation property '{name}' not found in type '{}'",
                def.entity_type
            ))
        })?;
        out.push(expand_item(nav, inner, sets, rules)?);
    }
    Ok(out)
}

fn expand_item(
    nav: &NavDef,
    inner: &str,
    sets: &[SetStore],
    rules: FilterRules,
) -> Result<Expand, ODataError> {
    let target = find_set(sets, &nav.target_set).ok_or_else(|| {
        ODataError::bad_request(format!("target set '{}' is not defined", nav.target_set))
    })?;
    let pairs: Vec<(String, String)> = split_top_level(inner, ';')
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (n.trim().to_string(), v.to_string())
        })
        .collect();
    let options = parse_options(&pairs, &target.def, sets, rules, Scope::Nested)?;
    Ok(Expand {
        nav: nav.clone(),
        options,
    })
}

/// Whether a row contains the `$search` term in any string property.
fn matches_search(def: &EntitySetDef, row: &Map<String, Value>, term: &str) -> bool {
    def.declared()
        .filter(|p| p.edm_type == "Edm.String")
        .filter_map(|p| row.get(&p.name).and_then(Value::as_str))
        .any(|s| s.to_lowercase().contains(term))
}

/// Applies filter, search, order, skip and top. Returns the resulting rows
/// and the count before skip/top, which is what `@odata.count` reports.
pub(crate) fn select_rows<'a>(
    rows: impl IntoIterator<Item = &'a Map<String, Value>>,
    def: &EntitySetDef,
    opts: &QueryOptions,
) -> (Vec<&'a Map<String, Value>>, usize) {
    let mut hits: Vec<&Map<String, Value>> = rows
        .into_iter()
        .filter(|row| opts.filter.as_ref().is_none_or(|f| filter::matches(f, row)))
        .filter(|row| {
            opts.search
                .as_deref()
                .is_none_or(|term| matches_search(def, row, term))
        })
        .collect();
    // Stable sort over rows already in key order: ties stay in key order.
    hits.sort_by(|a, b| {
        opts.orderby
            .iter()
            .map(|key| {
                let null = Value::Null;
                let (x, y) = (
                    a.get(&key.property).unwrap_or(&null),
                    b.get(&key.property).unwrap_or(&null),
                );
                let ord = compare_typed(def.edm_type(&key.property), x, y);
                if key.descending { ord.reverse() } else { ord }
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let total = hits.len();
    let mut out: Vec<_> = hits.into_iter().skip(opts.skip.unwrap_or(0)).collect();
    if let Some(top) = opts.top {
        out.truncate(top);
    }
    (out, total)
}

/// Context-URL suffix for `$select`, e.g. `(ID,name)`; empty without one.
pub(crate) fn select_suffix(opts: &QueryOptions) -> String {
    match &opts.select {
        Some(list) if !list.iter().any(|s| s == "*") => format!("({})", list.join(",")),
        _ => String::new(),
    }
}

//! GET on an entity-set collection: server-driven paging, and `/$count`.

use super::knobs::CountMode;
use super::model::find_set;
use super::query::{
    ODataError, Scope, next_link_query, parse_options, select_rows, select_suffix, split_query,
};
use super::render::{Node, Shaper};
use super::reply::{JSON, ReplyBody, error_response, respond, rules, set_header};
use super::request::RecordedRequest;
use super::service::Service;
use http::{HeaderMap, Response};
use serde_json::Value;

/// The `odata.maxpagesize` preference, if any.
fn max_page_size(headers: &HeaderMap) -> Option<usize> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|pref| {
            let (name, value) = pref.trim().split_once('=')?;
            let known = matches!(name.trim(), "odata.maxpagesize" | "maxpagesize");
            known.then(|| value.trim().trim_matches('"').parse().ok())?
        })
        .filter(|n| *n > 0)
}

/// Effective page size and the size to report in `Preference-Applied`: the
/// preference is honoured (and reported) when it is not above the server's
/// own limit.
fn page_size(server: Option<usize>, preferred: Option<usize>) -> (Option<usize>, Option<usize>) {
    match (server.filter(|n| *n > 0), preferred) {
        (Some(s), Some(p)) if p <= s => (Some(p), Some(p)),
        (None, Some(p)) => (Some(p), Some(p)),
        (s, _) => (s, None),
    }
}

/// Answers a page of a collection.
pub(crate) fn get_collection(
    up: &Service,
    req: &RecordedRequest,
    set: &str,
) -> Response<ReplyBody> {
    if req.collection_set.is_none() {
        let error = ODataError::not_found(format!("entity set '{set}' not found"));
        return error_response(&error, None);
    }
    match render_page(up, req, set) {
        Err(error) => error_response(&error, None),
        Ok((body, applied)) => {
            let mut response = respond(200, Some(JSON), ReplyBody::full(body));
            if let Some(n) = applied {
                set_header(
                    &mut response,
                    "preference-applied",
                    &format!("odata.maxpagesize={n}"),
                );
            }
            response
        }
    }
}

/// Renders one page of a collection: the JSON text and the applied
/// `odata.maxpagesize`, if any.
fn render_page(
    up: &Service,
    req: &RecordedRequest,
    set: &str,
) -> Result<(String, Option<usize>), ODataError> {
    let st = up.lock();
    let knobs = &st.knobs;
    let store = find_set(&st.sets, set)
        .ok_or_else(|| ODataError::not_found(format!("entity set '{set}' not found")))?;
    let pairs = split_query(req.query())?;
    let opts = parse_options(
        &pairs,
        &store.def,
        &st.sets,
        rules(knobs),
        Scope::Collection,
    )?;
    let (rows, total) = select_rows(&store.rows, &store.def, &opts);
    let (size, applied) = page_size(knobs.page_size, max_page_size(&req.headers));
    let start = opts.skiptoken.unwrap_or(0).min(rows.len());
    let end = size.map_or(rows.len(), |n| start.saturating_add(n).min(rows.len()));
    let next = (end < rows.len()).then(|| {
        let rel = format!("{set}?{}", next_link_query(req.query(), end));
        up.link(knobs.link_style, &rel)
    });
    let shaper = Shaper {
        sets: &st.sets,
        etags: knobs.etags,
        ieee754: super::render::ieee754_requested(&req.headers),
    };
    let value = rows[start..end]
        .iter()
        .map(|row| {
            Node::Object(shaper.entity(&store.def, row, opts.select.as_deref(), &opts.expand))
        })
        .collect();
    let context = format!("$metadata#{set}{}", select_suffix(&opts));
    let mut members = vec![(
        "@odata.context".to_string(),
        Node::string(up.link(knobs.link_style, &context)),
    )];
    let show_count = opts.count
        && match knobs.count_mode {
            CountMode::EveryPage => true,
            CountMode::FirstPageOnly => opts.skiptoken.is_none(),
            CountMode::Never => false,
        };
    if show_count {
        members.push(("@odata.count".to_string(), Node::Value(Value::from(total))));
    }
    members.push(("value".to_string(), Node::Array(value)));
    if let Some(next) = next {
        members.push(("@odata.nextLink".to_string(), Node::string(next)));
    }
    Ok((Node::Object(members).to_json(knobs.pretty), applied))
}

/// `/Set/$count`: the filtered count as plain text.
pub(crate) fn get_count(
    up: &Service,
    req: &RecordedRequest,
    set: &str,
) -> Result<Response<ReplyBody>, ODataError> {
    let st = up.lock();
    let store = find_set(&st.sets, set)
        .ok_or_else(|| ODataError::not_found(format!("entity set '{set}' not found")))?;
    let pairs = split_query(req.query())?;
    let opts = parse_options(
        &pairs,
        &store.def,
        &st.sets,
        rules(&st.knobs),
        Scope::Collection,
    )?;
    let (_, total) = select_rows(&store.rows, &store.def, &opts);
    Ok(respond(
        200,
        Some("text/plain"),
        ReplyBody::full(total.to_string()),
    ))
}

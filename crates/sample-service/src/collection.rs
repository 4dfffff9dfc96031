//! GET on an entity-set collection: the layer, faults, paging, and `/$count`.

use super::knobs::{CountMode, Fault};
use super::model::find_set;
use super::query::{
    ODataError, Scope, next_link_query, parse_options, select_rows, select_suffix, split_query,
};
use super::render::{Node, Shaper};
use super::reply::{JSON, ReplyBody, error_response, respond, rules, set_header};
use super::request::RecordedRequest;
use super::service::Service;
use bytes::Bytes;
use http::{HeaderMap, Response};
use serde_json::Value;
use std::time::Duration;

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

/// Takes the faults due on collection request number `index`.
fn take_faults(up: &Service, index: usize) -> Vec<Fault> {
    let mut fired = Vec::new();
    up.lock().faults.retain(|pending| {
        let due = index.checked_sub(pending.pushed_at) == Some(pending.fault.page());
        if due {
            fired.push(pending.fault.clone());
        }
        !due
    });
    fired
}

/// Answers a page, after running the layer and applying due faults.
pub(crate) async fn get_collection(
    up: &Service,
    req: &RecordedRequest,
    set: &str,
) -> Response<ReplyBody> {
    if req.collection_set.is_none() {
        let error = ODataError::not_found(format!("entity set '{set}' not found"));
        return error_response(&error, None);
    }
    let index = {
        let mut st = up.lock();
        let index = st.collection_counter;
        st.collection_counter += 1;
        index
    };
    if let Some(layer) = up.layer() {
        layer.before_page(up, req, set);
    }
    let faults = take_faults(up, index);
    let delay: u64 = faults
        .iter()
        .map(|f| match f {
            Fault::Delay { ms, .. } => *ms,
            _ => 0,
        })
        .sum();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    for fault in &faults {
        match fault {
            Fault::Status {
                status,
                retry_after,
                ..
            } => {
                let error = ODataError {
                    status: *status,
                    message: format!("injected fault: status {status}"),
                };
                return error_response(&error, *retry_after);
            }
            Fault::GzipBomb { decoded_bytes, .. } if super::reply::accepts_gzip(req) => {
                return super::reply::gzip_bomb(*decoded_bytes);
            }
            Fault::Malformed { .. } => {
                let body =
                    format!("{{\"@odata.context\":\"$metadata#{set}\",\"value\":[{{\"ID\":1,\"na");
                return respond(200, Some(JSON), ReplyBody::full(body));
            }
            _ => {}
        }
    }
    if let Some(status) = in_filter_status(up, req) {
        let error = ODataError {
            status,
            message: "injected fault: 'in' in $filter".to_string(),
        };
        return error_response(&error, None);
    }
    match render_page(up, req, set, &faults) {
        Err(error) => error_response(&error, None),
        Ok((body, applied)) => {
            let bytes = Bytes::from(body);
            let full_length = bytes.len();
            let broken = faults
                .iter()
                .any(|f| matches!(f, Fault::ResetMidBody { .. }));
            let mut response = if broken {
                let mut r = respond(200, Some(JSON), ReplyBody::broken(bytes));
                set_header(&mut r, "content-length", &full_length.to_string());
                r
            } else {
                respond(200, Some(JSON), ReplyBody::full(bytes))
            };
            let mut applied: Vec<String> = applied
                .map(|n| format!("odata.maxpagesize={n}"))
                .into_iter()
                .collect();
            if let Some(spelling) = own_track_changes(up, req) {
                applied.push(spelling.to_string());
            }
            if !applied.is_empty() {
                set_header(&mut response, "preference-applied", &applied.join(", "));
            }
            response
        }
    }
}

/// The track-changes preference of a request, when the service tracks changes itself.
fn own_track_changes(up: &Service, req: &RecordedRequest) -> Option<&'static str> {
    if !up.lock().knobs.own_change_tracking {
        return None;
    }
    req.headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|pref| {
            let name = pref.split([';', '=']).next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("odata.track-changes") {
                Some("odata.track-changes")
            } else if name.eq_ignore_ascii_case("track-changes") {
                Some("track-changes")
            } else {
                None
            }
        })
}

/// The status to answer a `$filter` using `in` with, when that knob is on and it does.
fn in_filter_status(up: &Service, req: &RecordedRequest) -> Option<u16> {
    let status = up.lock().knobs.in_filter_status?;
    let pairs = split_query(req.query()).ok()?;
    pairs
        .iter()
        .any(|(name, value)| name == "$filter" && value.contains(" in ("))
        .then_some(status)
}

/// Renders one page of a collection: the JSON text and the applied
/// `odata.maxpagesize`, if any.
fn render_page(
    up: &Service,
    req: &RecordedRequest,
    set: &str,
    faults: &[Fault],
) -> Result<(String, Option<usize>), ODataError> {
    let own_tracking = own_track_changes(up, req).is_some() || {
        let knobs = &up.lock().knobs;
        knobs.own_change_tracking && knobs.unasked_delta_links
    };
    let mut guard = up.lock();
    guard.responses += 1;
    let st = &*guard;
    let knobs = &st.knobs;
    let store = find_set(&st.sets, set)
        .ok_or_else(|| ODataError::not_found(format!("entity set '{set}' not found")))?;
    let pairs = split_query(req.query())?;
    let mut opts = parse_options(
        &pairs,
        &store.def,
        &st.sets,
        rules(knobs),
        Scope::Collection,
    )?;
    if knobs.ignore_skip {
        opts.skip = None;
    }
    let (mut rows, total) = select_rows(&store.rows, &store.def, &opts);
    if let Some(n) = knobs.truncate_after {
        rows.truncate(n);
    }
    let (size, applied) = page_size(knobs.page_size, max_page_size(&req.headers));
    let offset = opts.skiptoken.unwrap_or(0);
    let duplicate = faults
        .iter()
        .any(|f| matches!(f, Fault::DuplicateAcrossPages { .. }));
    let start = if duplicate {
        offset.saturating_sub(1)
    } else {
        offset
    }
    .min(rows.len());
    let end = size.map_or(rows.len(), |n| start.saturating_add(n).min(rows.len()));
    let forced_next = faults.iter().find_map(|f| match f {
        Fault::NextLinkTo { url, .. } => Some(url.clone()),
        _ => None,
    });
    let next = forced_next.or_else(|| {
        (end < rows.len()).then(|| {
            let onward = match knobs.next_link_cycle {
                Some((at, back)) if end >= at => back,
                _ => end,
            };
            let rel = format!("{set}?{}", next_link_query(req.query(), onward));
            up.link(knobs.link_style, &rel)
        })
    });
    let shaper = Shaper {
        sets: &st.sets,
        etags: knobs.etags,
        rotate: knobs.reorder.then_some(st.responses),
        drop_keys: faults.iter().any(|f| matches!(f, Fault::DropKey { .. })),
        respell_keys: knobs.respell_keys,
        ieee754: super::render::ieee754_requested(&req.headers),
    };
    let value = rows[start..end]
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let members = shaper.entity(&store.def, row, opts.select.as_deref(), &opts.expand, i);
            Node::Object(members)
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
        let count = match &knobs.count_text {
            // Any JSON text at all, written as it is.
            Some(raw) => Node::Value(serde_json::from_str(raw).unwrap_or(Value::from(total))),
            None => Node::Value(Value::from(total)),
        };
        members.push(("@odata.count".to_string(), count));
    }
    members.push(("value".to_string(), Node::Array(value)));
    match next {
        Some(next) => members.push(("@odata.nextLink".to_string(), Node::string(next))),
        None if own_tracking => {
            let rel = format!("{set}?$deltatoken=fake-{}", st.responses);
            members.push((
                "@odata.deltaLink".to_string(),
                Node::string(up.link(knobs.link_style, &rel)),
            ));
        }
        None => {}
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

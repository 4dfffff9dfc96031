//! Single-entity requests: read by key, property reads, and writes.

use super::knobs::Knobs;
use super::model::{
    SetStore, StoreError, etag, find_set, find_set_mut, key_predicate, parse_key_predicate,
};
use super::query::{ODataError, QueryOptions, Scope, parse_options, select_suffix, split_query};
use super::render::{Node, Shaper};
use super::reply::{JSON, ReplyBody, prefers, respond, rules, set_header};
use super::request::RecordedRequest;
use super::service::{Service, State};
use http::Response;
use serde_json::{Map, Value};

/// How a write changes an existing entity.
#[derive(Clone, Copy)]
pub(crate) enum Write {
    /// PATCH: merge the given properties.
    Merge,
    /// PUT: replace all non-key properties.
    Replace,
}

/// Resolves `Set(key)` to the set and the row index.
fn locate<'a>(st: &'a State, set: &str, key: &str) -> Result<(&'a SetStore, usize), ODataError> {
    let store = find_set(&st.sets, set)
        .ok_or_else(|| ODataError::not_found(format!("entity set '{set}' not found")))?;
    let literals = parse_key_predicate(&store.def, key).map_err(ODataError::bad_request)?;
    let index = store
        .find_vals(&literals)
        .ok_or_else(|| ODataError::not_found(format!("entity {set}({key}) not found")))?;
    Ok((store, index))
}

/// A single entity with its context URL and, when ETags are on, an `ETag`.
fn entity_response(
    up: &Service,
    st: &State,
    status: u16,
    store: &SetStore,
    row: &Map<String, Value>,
    opts: &QueryOptions,
) -> Response<ReplyBody> {
    let shaper = Shaper {
        sets: &st.sets,
        etags: st.knobs.etags,
        ieee754: false,
    };
    let context = format!(
        "$metadata#{}{}/$entity",
        store.def.name,
        select_suffix(opts)
    );
    let mut members = vec![(
        "@odata.context".to_string(),
        Node::string(up.link(st.knobs.link_style, &context)),
    )];
    members.extend(shaper.entity(&store.def, row, opts.select.as_deref(), &opts.expand));
    let body = Node::Object(members).to_json(st.knobs.pretty);
    let mut response = respond(status, Some(JSON), ReplyBody::full(body));
    if st.knobs.etags {
        set_header(&mut response, "etag", &etag(row));
    }
    response
}

/// GET `Set(key)`, honouring `$select` and `$expand`.
pub(crate) fn get_entity(
    up: &Service,
    req: &RecordedRequest,
    set: &str,
    key: &str,
) -> Result<Response<ReplyBody>, ODataError> {
    let guard = up.lock();
    let st = &*guard;
    let (store, index) = locate(st, set, key)?;
    let pairs = split_query(req.query())?;
    let opts = parse_options(
        &pairs,
        &store.def,
        &st.sets,
        rules(&st.knobs),
        Scope::Entity,
    )?;
    Ok(entity_response(
        up,
        st,
        200,
        store,
        &store.rows[index],
        &opts,
    ))
}

/// GET `Set(key)/prop` and `Set(key)/prop/$value`.
pub(crate) fn get_property(
    up: &Service,
    set: &str,
    key: &str,
    property: &str,
    raw: bool,
) -> Result<Response<ReplyBody>, ODataError> {
    let st = up.lock();
    let (store, index) = locate(&st, set, key)?;
    let row = &store.rows[index];
    if store.def.edm_type(property).is_none() && !row.contains_key(property) {
        return Err(ODataError::not_found(format!(
            "property '{property}' not found"
        )));
    }
    let value = row.get(property).cloned().unwrap_or(Value::Null);
    if raw {
        return Ok(match value {
            Value::Null => respond(204, None, ReplyBody::empty()),
            Value::String(s) => respond(200, Some("text/plain"), ReplyBody::full(s)),
            other => respond(200, Some("text/plain"), ReplyBody::full(other.to_string())),
        });
    }
    let context = format!("$metadata#{set}({key})/{property}");
    let body = Node::Object(vec![
        (
            "@odata.context".to_string(),
            Node::string(up.link(st.knobs.link_style, &context)),
        ),
        ("value".to_string(), Node::Value(value)),
    ]);
    Ok(respond(
        200,
        Some(JSON),
        ReplyBody::full(body.to_json(st.knobs.pretty)),
    ))
}

/// The request body as a JSON object.
fn json_object(req: &RecordedRequest) -> Result<Map<String, Value>, ODataError> {
    match serde_json::from_slice(&req.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ODataError::bad_request("entity must be a JSON object")),
        Err(e) => Err(ODataError::bad_request(format!("invalid JSON body: {e}"))),
    }
}

/// 412 unless `If-Match` is absent, `*`, or the row's current ETag; only
/// enforced while ETags are on, like a service without concurrency control.
fn check_if_match(
    req: &RecordedRequest,
    knobs: &Knobs,
    row: &Map<String, Value>,
) -> Result<(), ODataError> {
    let Some(wanted) = req.header("if-match").filter(|_| knobs.etags) else {
        return Ok(());
    };
    let current = etag(row);
    if wanted
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag == current)
    {
        Ok(())
    } else {
        Err(ODataError {
            status: 412,
            message: "ETag does not match".to_string(),
        })
    }
}

/// POST `Set`: 201 with `Location`, or 204 with `Prefer: return=minimal`.
pub(crate) fn post_entity(
    up: &Service,
    req: &RecordedRequest,
    set: &str,
) -> Result<Response<ReplyBody>, ODataError> {
    let mut data = json_object(req)?;
    let mut guard = up.lock();
    let st = &mut *guard;
    let store = find_set_mut(&mut st.sets, set)
        .ok_or_else(|| ODataError::not_found(format!("entity set '{set}' not found")))?;
    // Annotations and deep-insert payloads are not stored as properties.
    data.retain(|name, _| !name.starts_with('@') && store.def.nav_def(name).is_none());
    let index = store.insert(Value::Object(data)).map_err(|e| match e {
        StoreError::Duplicate => ODataError {
            status: 409,
            message: e.to_string(),
        },
        other => ODataError::bad_request(other.to_string()),
    })?;
    let location = format!(
        "{}/{set}{}",
        up.base_url(),
        key_predicate(&store.def, &store.rows[index])
    );
    let st = &*guard;
    let store = find_set(&st.sets, set)
        .ok_or_else(|| ODataError::not_found(format!("entity set '{set}' not found")))?;
    let mut response = if prefers(req, "return=minimal") {
        let mut r = respond(204, None, ReplyBody::empty());
        set_header(&mut r, "odata-entityid", &location);
        r
    } else {
        let opts = QueryOptions::default();
        entity_response(up, st, 201, store, &store.rows[index], &opts)
    };
    set_header(&mut response, "location", &location);
    Ok(response)
}

/// PATCH / PUT `Set(key)`: 204, or 200 with `Prefer: return=representation`.
pub(crate) fn write_entity(
    up: &Service,
    req: &RecordedRequest,
    set: &str,
    key: &str,
    mode: Write,
) -> Result<Response<ReplyBody>, ODataError> {
    let patch = json_object(req)?;
    let mut guard = up.lock();
    let (_, index) = locate(&guard, set, key)?;
    {
        let st = &mut *guard;
        let store = find_set_mut(&mut st.sets, set)
            .ok_or_else(|| ODataError::not_found(format!("entity set '{set}' not found")))?;
        check_if_match(req, &st.knobs, &store.rows[index])?;
        match mode {
            Write::Merge => store.merge(index, &patch),
            Write::Replace => store.replace(index, &patch),
        }
    }
    if !prefers(req, "return=representation") {
        return Ok(respond(204, None, ReplyBody::empty()));
    }
    let st = &*guard;
    let (store, index) = locate(st, set, key)?;
    let opts = QueryOptions::default();
    Ok(entity_response(
        up,
        st,
        200,
        store,
        &store.rows[index],
        &opts,
    ))
}

/// DELETE `Set(key)`: 204 or 404.
pub(crate) fn delete_entity(
    up: &Service,
    req: &RecordedRequest,
    set: &str,
    key: &str,
) -> Result<Response<ReplyBody>, ODataError> {
    let mut guard = up.lock();
    let (store, index) = locate(&guard, set, key)?;
    check_if_match(req, &guard.knobs, &store.rows[index])?;
    if let Some(store) = find_set_mut(&mut guard.sets, set) {
        store.rows.remove(index);
    }
    Ok(respond(204, None, ReplyBody::empty()))
}

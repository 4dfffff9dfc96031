//! The misbehaving upstream: faults the tests put in front of the sample service, so that it
//! fails pages, waits, cuts answers short, loops, reorders, respells or refuses, while the
//! service itself stays an honest OData service. Everything here runs in the tests' layer
//! (`layer.rs`), through the service's [`Next`]: answering instead of it, asking it something
//! else, or rewriting what it answered.
//!
//! Two kinds, both called like the service's own methods (`up.push_fault(..)`,
//! `up.set_truncate_after(..)`): a [`Fault`] queue, each fault fired on one collection request,
//! and settings that hold until turned off.

mod members;

use http::{HeaderValue, StatusCode};
use odata_sample_service::{
    Next, RecordedRequest, Reply, ReplyBody, Service, error_reply, json_reply,
};
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use members::{Members, array, items, string};

/// An injected misbehaviour, consumed by one GET collection request.
///
/// Counting: each fault remembers how many GET collection requests (on any
/// entity set; by-key, `$count`, `$metadata` and writes do not count) the
/// service had received when it was pushed. `page: n` fires on the n-th such
/// request after the push, 0-based, and is then removed. Several faults may
/// fire on the same request: delays are applied first, then the first of
/// Status / Malformed / GzipBomb wins, otherwise the page is answered with the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `status` with an OData error body (and `Retry-After` if given).
    Status {
        /// Which request, see the type docs.
        page: usize,
        /// HTTP status to answer.
        status: u16,
        /// Seconds for a `Retry-After` header.
        retry_after: Option<u64>,
    },
    /// Send headers and about half of the body, then drop the connection.
    ResetMidBody {
        /// Which request.
        page: usize,
    },
    /// Answer 200 with a truncated, invalid JSON body.
    Malformed {
        /// Which request.
        page: usize,
    },
    /// Sleep before answering normally.
    Delay {
        /// Which request.
        page: usize,
        /// Milliseconds to wait.
        ms: u64,
    },
    /// Answer normally but with `@odata.nextLink` set to `url` verbatim
    /// (even on a last page), e.g. pointing at another origin.
    NextLinkTo {
        /// Which request.
        page: usize,
        /// The nextLink to emit.
        url: String,
    },
    /// Omit the key properties from the entities of that page.
    DropKey {
        /// Which request.
        page: usize,
    },
    /// Start that page one row early, so its first entity repeats the last
    /// entity of the previous page (no-op on a request without `$skiptoken`).
    DuplicateAcrossPages {
        /// Which request.
        page: usize,
    },
    /// Answer a request that accepts gzip with a small gzip body that
    /// inflates to `decoded_bytes` of blanks (a decompression bomb); a request
    /// that does not accept gzip gets its page as usual.
    GzipBomb {
        /// Which request.
        page: usize,
        /// Size of the decoded body.
        decoded_bytes: usize,
    },
}

impl Fault {
    /// The request index the fault fires on.
    pub fn page(&self) -> usize {
        match self {
            Fault::Status { page, .. }
            | Fault::ResetMidBody { page }
            | Fault::Malformed { page }
            | Fault::Delay { page, .. }
            | Fault::NextLinkTo { page, .. }
            | Fault::DropKey { page }
            | Fault::DuplicateAcrossPages { page }
            | Fault::GzipBomb { page, .. } => *page,
        }
    }
}

/// Misbehaviour that holds until it is turned off; each field is documented on its [`Faults`]
/// method.
#[derive(Clone, Default)]
struct Settings {
    truncate_after: Option<usize>,
    reorder: bool,
    respell_keys: bool,
    next_link_cycle: Option<(usize, usize)>,
    in_filter_status: Option<u16>,
    ignore_skip: bool,
    count_text: Option<String>,
    revoked_credentials: Vec<String>,
    own_change_tracking: bool,
    unasked_delta_links: bool,
    metadata_delay: Option<Duration>,
}

/// The queue and the settings.
#[derive(Default)]
struct State {
    /// Faults not yet fired, with the collection-request count when each was pushed.
    pending: Vec<(Fault, usize)>,
    /// GET collection requests seen so far.
    collections: usize,
    /// Answers rewritten so far; seeds the property rotation and the fake delta tokens.
    rewritten: usize,
    settings: Settings,
}

/// The faults of one upstream, kept in its layer.
#[derive(Default)]
pub struct FaultState {
    state: Mutex<State>,
}

/// What the faults do to one request, decided before the service answers it.
struct Plan {
    /// The faults due on it (a collection request only).
    fired: Vec<Fault>,
    settings: Settings,
    /// Ordinal of this answer, should it be rewritten.
    seed: usize,
}

impl FaultState {
    /// Locks the state; a test that panicked while holding it must not wedge the next one.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The 401 a revoked credential gets, before anything else sees the request.
    pub fn refusal(&self, request: &RecordedRequest) -> Option<Reply> {
        let revoked = request.header("authorization").is_some_and(|v| {
            self.lock()
                .settings
                .revoked_credentials
                .iter()
                .any(|r| r == v)
        });
        revoked.then(|| {
            let mut reply = error_reply(401, "the access token was revoked", None);
            reply.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            reply
        })
    }

    /// Answers `request` with the faults due on it and the settings in force, asking `next`
    /// (the service) for the answer wherever the faults do not replace it.
    pub async fn answer(&self, request: &RecordedRequest, next: Next<'_>) -> Reply {
        let service = next.service();
        let set = request.collection_set.clone();
        let plan = {
            let mut st = self.lock();
            let mut fired = Vec::new();
            if set.is_some() {
                let index = st.collections;
                st.collections += 1;
                st.pending.retain(|(fault, pushed_at)| {
                    let due = index.checked_sub(*pushed_at) == Some(fault.page());
                    if due {
                        fired.push(fault.clone());
                    }
                    !due
                });
            }
            st.rewritten += 1;
            Plan {
                fired,
                settings: st.settings.clone(),
                seed: st.rewritten,
            }
        };
        if request.path().ends_with("/$metadata")
            && let Some(delay) = plan.settings.metadata_delay
        {
            tokio::time::sleep(delay).await;
        }
        let Some(set) = set else {
            let mut reply = next.run(request).await;
            rewrite_entity(&mut reply, service, &plan);
            return reply;
        };
        let delay: u64 = plan
            .fired
            .iter()
            .map(|f| match f {
                Fault::Delay { ms, .. } => *ms,
                _ => 0,
            })
            .sum();
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if let Some(reply) = answer_instead(request, &set, &plan) {
            return reply;
        }
        let asked = altered_request(request, &plan);
        let mut reply = next.run(asked.as_ref().unwrap_or(request)).await;
        if reply.status() == StatusCode::OK {
            let offset = asked
                .as_ref()
                .unwrap_or(request)
                .query_param("$skiptoken")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            rewrite_page(&mut reply, service, request, &set, offset, &plan);
            if plan
                .fired
                .iter()
                .any(|f| matches!(f, Fault::ResetMidBody { .. }))
            {
                let bytes = reply.body().bytes();
                let length = HeaderValue::from(bytes.len());
                reply.headers_mut().insert("content-length", length);
                *reply.body_mut() = ReplyBody::broken(bytes);
            }
        }
        reply
    }
}

/// The answer a fault gives to a collection request instead of the service: the first of its
/// status, gzip bomb or malformed body faults, or the status for a filter using `in`.
fn answer_instead(request: &RecordedRequest, set: &str, plan: &Plan) -> Option<Reply> {
    for fault in &plan.fired {
        match fault {
            Fault::Status {
                status,
                retry_after,
                ..
            } => {
                let message = format!("injected fault: status {status}");
                return Some(error_reply(*status, &message, *retry_after));
            }
            Fault::GzipBomb { decoded_bytes, .. } if request.accepts_gzip() => {
                return Some(gzip_bomb(*decoded_bytes));
            }
            Fault::Malformed { .. } => {
                let body =
                    format!("{{\"@odata.context\":\"$metadata#{set}\",\"value\":[{{\"ID\":1,\"na");
                return Some(json_reply(200, ReplyBody::full(body)));
            }
            _ => {}
        }
    }
    if let Some(status) = plan.settings.in_filter_status {
        let uses_in = request
            .query_pairs()
            .iter()
            .any(|(name, value)| name == "$filter" && value.contains(" in ("));
        if uses_in {
            return Some(error_reply(status, "injected fault: 'in' in $filter", None));
        }
    }
    None
}

/// The request the service is asked instead of `request`, if a fault changes it: without `$skip`
/// (ignore skip), or one row earlier (duplicate across pages).
fn altered_request(request: &RecordedRequest, plan: &Plan) -> Option<RecordedRequest> {
    let mut altered = None;
    if plan.settings.ignore_skip {
        altered = Some(request.with_option("$skip", None));
    }
    let duplicate = plan
        .fired
        .iter()
        .any(|f| matches!(f, Fault::DuplicateAcrossPages { .. }));
    let offset = request
        .query_param("$skiptoken")
        .and_then(|t| t.parse::<usize>().ok());
    if duplicate && let Some(offset) = offset {
        let earlier = (offset.saturating_sub(1)).to_string();
        let asked = altered.as_ref().unwrap_or(request);
        altered = Some(asked.with_option("$skiptoken", Some(&earlier)));
    }
    altered
}

/// Applies the page faults and settings to a collection page the service answered.
fn rewrite_page(
    reply: &mut Reply,
    service: &Service,
    request: &RecordedRequest,
    set: &str,
    offset: usize,
    plan: &Plan,
) {
    let settings = &plan.settings;
    let forced_next = plan.fired.iter().find_map(|f| match f {
        Fault::NextLinkTo { url, .. } => Some(url.clone()),
        _ => None,
    });
    let drop_keys = plan
        .fired
        .iter()
        .any(|f| matches!(f, Fault::DropKey { .. }));
    let tracking = settings.own_change_tracking.then(|| track_changes(request));
    let applies = settings.truncate_after.is_some()
        || settings.next_link_cycle.is_some()
        || settings.count_text.is_some()
        || settings.reorder
        || settings.respell_keys
        || forced_next.is_some()
        || drop_keys
        || tracking.is_some();
    if !applies {
        return;
    }
    let body = reply.body().bytes();
    let Some(mut page) = std::str::from_utf8(&body).ok().and_then(Members::parse) else {
        return;
    };
    let Some(mut entities) = page.get("value").and_then(items) else {
        return;
    };
    if let Some(n) = settings.truncate_after
        && offset + entities.len() >= n
    {
        entities.truncate(n.saturating_sub(offset));
        page.remove("@odata.nextLink");
    }
    if let Some((at, back)) = settings.next_link_cycle
        && let Some(link) = page.get("@odata.nextLink").and_then(as_string)
        && let Some((start, onward)) = link.rsplit_once("$skiptoken=")
        && onward.parse::<usize>().is_ok_and(|onward| onward >= at)
    {
        page.set(
            "@odata.nextLink",
            string(&format!("{start}$skiptoken={back}")),
        );
    }
    if let Some(url) = forced_next {
        page.set("@odata.nextLink", string(&url));
    }
    if let Some(raw) = &settings.count_text
        && page.get("@odata.count").is_some()
        && let Ok(raw) = RawValue::from_string(raw.clone())
    {
        page.set("@odata.count", raw);
    }
    let keys = service
        .definition(set)
        .map(|def| def.keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>());
    let keys = keys.unwrap_or_default();
    for (i, entity) in entities.iter_mut().enumerate() {
        if let Some(mut members) = Members::parse(entity.get()) {
            if drop_keys {
                members.0.retain(|(name, _)| !keys.contains(name));
            }
            shape_entity(&mut members, &keys, settings, plan.seed + i);
            *entity = members.to_raw();
        }
    }
    page.set("value", array(&entities));
    if let Some(Some(spelling)) = tracking {
        let applied = match reply.headers().get("preference-applied") {
            Some(before) => format!("{}, {spelling}", before.to_str().unwrap_or("")),
            None => spelling.to_owned(),
        };
        if let Ok(applied) = HeaderValue::from_str(&applied) {
            reply.headers_mut().insert("preference-applied", applied);
        }
    }
    let asked = matches!(tracking, Some(Some(_)));
    if settings.own_change_tracking
        && (asked || settings.unasked_delta_links)
        && page.get("@odata.nextLink").is_none()
    {
        // The link in the style of the context URL (relative, from the host or absolute).
        let context = page
            .get("@odata.context")
            .and_then(as_string)
            .unwrap_or_default();
        let prefix = context.split("$metadata").next().unwrap_or("");
        let link = format!("{prefix}{set}?$deltatoken=fake-{}", plan.seed);
        page.set("@odata.deltaLink", string(&link));
    }
    set_body(reply, page.to_raw().get().to_owned());
}

/// Applies the settings that shape entities to a single entity the service answered (a by-key
/// read or a write's answer).
fn rewrite_entity(reply: &mut Reply, service: &Service, plan: &Plan) {
    let settings = &plan.settings;
    if !(settings.reorder || settings.respell_keys) || !reply.status().is_success() {
        return;
    }
    let body = reply.body().bytes();
    let Some(mut entity) = std::str::from_utf8(&body).ok().and_then(Members::parse) else {
        return;
    };
    let Some(context) = entity.get("@odata.context").and_then(as_string) else {
        return;
    };
    let Some(set) = context
        .strip_suffix("/$entity")
        .and_then(|c| c.split_once("$metadata#"))
        .map(|(_, rest)| rest.split('(').next().unwrap_or(rest).to_owned())
    else {
        return;
    };
    let keys: Vec<String> = service
        .definition(&set)
        .map(|def| def.keys.iter().map(|k| k.name.clone()).collect())
        .unwrap_or_default();
    shape_entity(&mut entity, &keys, settings, plan.seed);
    set_body(reply, entity.to_raw().get().to_owned());
}

/// Respells the keys and rotates the properties of one entity (and, rotating, of the entities
/// expanded into it). Control information (`@odata.context`, `@odata.etag`) stays in front.
fn shape_entity(entity: &mut Members, keys: &[String], settings: &Settings, ordinal: usize) {
    if settings.respell_keys {
        for (name, value) in &mut entity.0 {
            if keys.contains(name)
                && let Ok(Value::String(text)) = serde_json::from_str::<Value>(value.get())
            {
                *value = string(&respelled(text));
            }
        }
    }
    if settings.reorder {
        rotate(entity, ordinal);
    }
}

/// Rotates the properties of `entity` by `by`, and those of its expanded entities by their own
/// ordinals.
fn rotate(entity: &mut Members, by: usize) {
    let control = entity
        .0
        .iter()
        .take_while(|(n, _)| n.starts_with('@'))
        .count();
    for (_, value) in entity.0.iter_mut().skip(control) {
        let Some(mut children) = items(value) else {
            continue;
        };
        let mut nested = false;
        for (i, child) in children.iter_mut().enumerate() {
            if let Some(mut members) = Members::parse(child.get()) {
                rotate(&mut members, by + i);
                *child = members.to_raw();
                nested = true;
            }
        }
        if nested {
            *value = array(&children);
        }
    }
    let properties = &mut entity.0[control..];
    if !properties.is_empty() {
        let n = properties.len();
        properties.rotate_left(by % n);
    }
}

/// The same key value spelled another way: a GUID in upper case, a decimal string with one more
/// trailing zero.
fn respelled(text: String) -> String {
    if text.len() == 36 && text.bytes().filter(|b| *b == b'-').count() == 4 {
        text.to_ascii_uppercase()
    } else if text.contains('.') && text.parse::<f64>().is_ok() {
        format!("{text}0")
    } else {
        text
    }
}

/// The spelling of the track-changes preference of a request, if it asks for one.
fn track_changes(request: &RecordedRequest) -> Option<&'static str> {
    request
        .headers
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

/// The text of a JSON string.
fn as_string(value: &RawValue) -> Option<String> {
    serde_json::from_str(value.get()).ok()
}

/// Replaces the body of `reply` (whose length the server then computes again), indented like
/// the one it replaces if that was.
fn set_body(reply: &mut Reply, body: String) {
    let body = if reply.body().bytes().contains(&b'\n') {
        members::pretty(&body)
    } else {
        body
    };
    reply.headers_mut().remove("content-length");
    *reply.body_mut() = ReplyBody::full(body);
}

/// A 200 whose small gzip body inflates to `decoded_bytes` blanks.
fn gzip_bomb(decoded_bytes: usize) -> Reply {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let blanks = vec![b' '; 64 * 1024];
    let mut left = decoded_bytes;
    while left > 0 {
        let n = left.min(blanks.len());
        encoder.write_all(&blanks[..n]).expect("gzip into memory");
        left -= n;
    }
    let body = ReplyBody::full(encoder.finish().expect("gzip into memory"));
    let mut reply = json_reply(200, body);
    reply
        .headers_mut()
        .insert("content-encoding", HeaderValue::from_static("gzip"));
    reply
}

/// Faults on the sample service, called like its own methods (`up.push_fault(..)`).
pub trait Faults {
    /// Queues a fault; see [`Fault`] for how requests are counted.
    fn push_fault(&self, fault: Fault);
    /// Faults not yet fired.
    fn pending_faults(&self) -> usize;
    /// Drops all queued faults.
    fn clear_faults(&self);
    /// Silently end every collection after `n` entities (no nextLink), while `@odata.count`
    /// keeps reporting the real total.
    fn set_truncate_after(&self, n: Option<usize>);
    /// Emit entity properties in a different order in every answer.
    fn set_reorder_properties(&self, on: bool);
    /// Spell key values of collection and entity answers another way while `on`, as servers do
    /// that format one value differently in different answers: GUIDs in upper case, decimals sent
    /// as strings with a trailing zero (`"1.5"` → `"1.50"`). The value stays the same.
    fn set_respell_keys(&self, on: bool);
    /// Make paging loop: a nextLink onward to offset `at` or beyond points back at offset `back`
    /// instead (a server whose paging state is broken). `None` ends the loop.
    fn set_next_link_cycle(&self, cycle: Option<(usize, usize)>);
    /// Answer `status` to any collection `$filter` containing ` in (` (JayStack's server answers
    /// 500); `None` serves them again.
    fn set_in_filter_status(&self, status: Option<u16>);
    /// Ignore `$skip` on collections, as if every request started at the first row.
    fn set_ignore_skip(&self, on: bool);
    /// Write `raw` (JSON text, e.g. `18446744073709551615` or `-1`) as `@odata.count` instead of
    /// the real count; `None` writes the real count again.
    fn set_count_text(&self, raw: Option<&str>);
    /// Answer every request whose `Authorization` is exactly `value` with 401 and a
    /// `WWW-Authenticate` challenge, as an identity provider's revoked token is.
    fn revoke_credential(&self, value: &str);
    /// Pretend to track changes like a service with change tracking of its own (odatapy's
    /// server): a collection request that prefers `odata.track-changes` (or `track-changes`) is
    /// answered with `Preference-Applied` and, on its last page, an `@odata.deltaLink` carrying a
    /// `$deltatoken` that the service then ignores, answering the whole collection.
    fn set_own_change_tracking(&self, on: bool);
    /// With [`Faults::set_own_change_tracking`] on: write the delta link on the last page of
    /// every collection read, whether the request asked for change tracking or not.
    fn set_unasked_delta_links(&self, on: bool);
    /// Wait `delay` before answering each `$metadata` request (`None`: answer at once), like a
    /// service that builds it slowly.
    fn set_metadata_delay(&self, delay: Option<Duration>);
}

/// Changes the settings of `service`'s faults.
fn settings(service: &Service, change: impl FnOnce(&mut Settings)) {
    change(&mut super::layer::of(service).faults.lock().settings);
}

impl Faults for Service {
    fn push_fault(&self, fault: Fault) {
        let layer = super::layer::of(self);
        let mut st = layer.faults.lock();
        let pushed_at = st.collections;
        st.pending.push((fault, pushed_at));
    }

    fn pending_faults(&self) -> usize {
        super::layer::of(self).faults.lock().pending.len()
    }

    fn clear_faults(&self) {
        super::layer::of(self).faults.lock().pending.clear();
    }

    fn set_truncate_after(&self, n: Option<usize>) {
        settings(self, |s| s.truncate_after = n);
    }

    fn set_reorder_properties(&self, on: bool) {
        settings(self, |s| s.reorder = on);
    }

    fn set_respell_keys(&self, on: bool) {
        settings(self, |s| s.respell_keys = on);
    }

    fn set_next_link_cycle(&self, cycle: Option<(usize, usize)>) {
        settings(self, |s| s.next_link_cycle = cycle);
    }

    fn set_in_filter_status(&self, status: Option<u16>) {
        settings(self, |s| s.in_filter_status = status);
    }

    fn set_ignore_skip(&self, on: bool) {
        settings(self, |s| s.ignore_skip = on);
    }

    fn set_count_text(&self, raw: Option<&str>) {
        settings(self, |s| s.count_text = raw.map(str::to_owned));
    }

    fn revoke_credential(&self, value: &str) {
        settings(self, |s| s.revoked_credentials.push(value.to_owned()));
    }

    fn set_own_change_tracking(&self, on: bool) {
        settings(self, |s| s.own_change_tracking = on);
    }

    fn set_unasked_delta_links(&self, on: bool) {
        settings(self, |s| s.unasked_delta_links = on);
    }

    fn set_metadata_delay(&self, delay: Option<Duration>) {
        settings(self, |s| s.metadata_delay = delay);
    }
}

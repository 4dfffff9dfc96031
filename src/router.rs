//! Classifying a request: which route (upstream) it is for, and whether the gateway answers it
//! (a tracked read, a delta, one of our continuation pages, a count on a delta link) or passes it
//! through. Also where links must point: the public base URL, from configuration, trusted
//! forwarding headers, or the request's own Host.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method, Request, header};
use percent_encoding::percent_decode_str;

use crate::Shared;
use crate::config::{IdentityScope, RouteConfig};
use crate::error::{Error, UpstreamFailure};
use crate::odata::entity_id::{KeyProperty, KeyType};
use crate::odata::metadata::{ServiceMetadata, SetKey};
use crate::odata::prefer::Preferences;
use crate::odata::query::ODataQuery;
use crate::track::authorize::CREDENTIAL_HEADERS;
use crate::track::feed::{Scope, SetSpec};
use crate::track::fetch::forwarded_headers;
use crate::track::respond::Operation;
use crate::track::token::SKIPTOKEN_PREFIX;

/// One upstream service: its route and what we learned from its `$metadata`.
pub struct Service {
    /// The route.
    pub route: RouteConfig,
    /// Cached `$metadata`; shared with the task that fetches it.
    metadata: Arc<MetadataCache>,
    /// The route's own upstream client when it has TLS settings; `None` uses the shared one.
    pub(crate) upstream: Option<crate::upstream::Upstream>,
}

impl Service {
    /// A service for a route, metadata not yet fetched, on the shared upstream client.
    pub fn new(route: RouteConfig) -> Self {
        Service {
            route,
            metadata: Arc::default(),
            upstream: None,
        }
    }
}

/// What a `$metadata` fetch ended with: the document (if the upstream served a usable one) or
/// why it could not be fetched.
type MetadataOutcome = Result<Option<Arc<ServiceMetadata>>, Error>;

/// A service's `$metadata` and the one fetch of it in flight. The lock is only held to look or
/// swap, never across the fetch, so that a slow upstream `$metadata` delays only the requests
/// that need it — those for sets the cached document does not key.
#[derive(Default)]
struct MetadataCache {
    state: std::sync::Mutex<MetadataState>,
}

#[derive(Default)]
struct MetadataState {
    /// The last usable document.
    document: Option<Arc<ServiceMetadata>>,
    /// When the last fetch answered (usable document or not); the recheck interval counts from it.
    checked: Option<Instant>,
    /// The fetch in flight: every request that needs `$metadata` meanwhile waits for this one.
    in_flight: Option<tokio::sync::watch::Receiver<Option<MetadataOutcome>>>,
}

/// Why a request path is refused before routing (C37).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// A segment that would become `..` after decoding, or a `..` with parameters (`..;x`):
    /// upstreams and proxies disagree on what such a segment means.
    Ambiguous,
}

/// Whether a raw path segment is `.` or `..`, with `%2e` read as `.` (RFC 3986 §2.3, §5.2.4).
fn dot_segment(segment: &str) -> Option<usize> {
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
            rest = &rest[3..];
        } else {
            return None;
        }
        dots += 1;
    }
    (1..=2).contains(&dots).then_some(dots)
}

/// Remove the dot segments of a raw (still percent-encoded) request path (RFC 3986 §5.2.4,
/// `%2e` as `.`). Every other segment is kept byte for byte, so that an encoded slash inside a
/// key literal (`Products('a%2Fb')`) reaches the upstream as it came. A `..` above the root is
/// dropped, as the RFC says; whether the result is still below the route is the caller's check.
pub(crate) fn remove_dot_segments(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        // `*` (OPTIONS) and the like: nothing to resolve.
        return Ok(path.into());
    };
    // Every dot segment, plain or hidden, has a `.` or a `%2e`: most paths have neither.
    if !rest.bytes().any(|b| b == b'.' || b == b'%') {
        return Ok(path.into());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    for segment in &segments {
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        // An upstream that decodes `%2F` (or treats `\` as a separator, or drops `;params`)
        // before it resolves dots would climb where we did not look.
        let hidden_climb = dot_segment(segment).is_none()
            && decoded
                .split(['/', '\\'])
                .any(|part| part.split(';').next() == Some(".."));
        if hidden_climb {
            return Err(PathError::Ambiguous);
        }
    }
    if segments.iter().all(|s| dot_segment(s).is_none()) {
        return Ok(path.into());
    }
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match dot_segment(segment) {
            Some(dots) => {
                if dots == 2 {
                    out.pop();
                }
                // `a/..` and `a/.` name a directory: the trailing slash stays.
                if i == last {
                    out.push("");
                }
            }
            None => out.push(segment),
        }
    }
    Ok(format!("/{}", out.join("/")).into())
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// No route serves this path.
    NoRoute,
    /// Forward to the upstream of route `route`, at `upstream_url`.
    Proxy {
        /// Index into the services.
        route: usize,
    },
    /// Answer from the store.
    Track {
        /// Index into the services.
        route: usize,
        /// The entity set addressed.
        set: String,
        /// What to do.
        op: Operation,
    },
}

/// The path of a request below a route prefix, or `None` when the route does not serve it.
pub fn below_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('/')
        .or(if prefix.is_empty() { Some(rest) } else { None })
}

/// Find whether a raw query mentions an option (`$deltatoken`, also percent-encoded or in other case).
fn query_has(raw: Option<&str>, option: &str) -> bool {
    raw.is_some_and(|q| {
        q.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            percent_decode_str(name)
                .decode_utf8_lossy()
                .eq_ignore_ascii_case(option)
        })
    })
}

/// Whether a query carries a token of the gateway: any `$deltatoken`, or a `$skiptoken` of ours.
/// Such a request is never forwarded upstream with it (C31).
pub(crate) fn carries_gateway_token(raw_query: Option<&str>) -> bool {
    if query_has(raw_query, "$deltatoken") {
        return true;
    }
    query_has(raw_query, "$skiptoken")
        && ODataQuery::parse(raw_query).map_or(true, |q| {
            q.skiptoken
                .as_deref()
                .is_some_and(|t| t.starts_with(SKIPTOKEN_PREFIX))
        })
}

/// Classify a request without I/O. Tracked reads of sets we cannot key are turned into
/// pass-through later, when `$metadata` has been consulted.
pub fn classify(
    services: &[Service],
    method: &Method,
    path: &str,
    raw_query: Option<&str>,
    prefs: &Preferences,
) -> Result<Decision, Error> {
    let Some((route, rest)) = services
        .iter()
        .enumerate()
        .find_map(|(i, s)| below_prefix(path, &s.route.prefix).map(|rest| (i, rest)))
    else {
        return Ok(Decision::NoRoute);
    };
    // HEAD is answered like GET (C31); the server leaves out the body.
    if method != Method::GET && method != Method::HEAD {
        return Ok(Decision::Proxy { route });
    }
    let has_delta = query_has(raw_query, "$deltatoken");
    let has_skip = query_has(raw_query, "$skiptoken");
    if !has_delta && !has_skip && prefs.track_changes.is_none() {
        return Ok(Decision::Proxy { route });
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let set_segment = |s: &str| -> Option<String> {
        let name = percent_decode_str(s).decode_utf8().ok()?.into_owned();
        let valid = !name.is_empty()
            && !name.starts_with('$')
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.');
        valid.then_some(name)
    };
    let query = || ODataQuery::parse(raw_query).map_err(|e| Error::bad_request(e.to_string()));
    if has_delta {
        let q = query()?;
        let token = q.deltatoken.as_deref().unwrap_or("");
        let op = match segments.as_slice() {
            [set] if token == "latest" => set_segment(set).map(|s| (s, Operation::Initial)),
            [set] => set_segment(set).map(|s| (s, Operation::Delta)),
            [set, "$count"] if token != "latest" => set_segment(set).map(|s| (s, Operation::Count)),
            _ => None,
        };
        return match op {
            Some((set, op)) => Ok(Decision::Track { route, set, op }),
            None => Err(Error::bad_request(
                "$deltatoken can only be used on the entity set (or its /$count) that the delta link was issued for",
            )),
        };
    }
    if has_skip {
        let q = query()?;
        if q.skiptoken
            .as_deref()
            .is_some_and(|t| t.starts_with(SKIPTOKEN_PREFIX))
        {
            return match segments.as_slice() {
                [set] => match set_segment(set) {
                    Some(set) => Ok(Decision::Track {
                        route,
                        set,
                        op: Operation::Page,
                    }),
                    None => Err(Error::bad_request(
                        "a next link of the gateway was used on another resource",
                    )),
                },
                _ => Err(Error::bad_request(
                    "a next link of the gateway was used on another resource",
                )),
            };
        }
        // The upstream's own skiptoken: a page of a pass-through read.
        return Ok(Decision::Proxy { route });
    }
    // track-changes: only a plain entity set collection can be tracked (C2).
    let trackable = match segments.as_slice() {
        [set] => set_segment(set),
        _ => None,
    };
    match trackable {
        Some(set) => {
            let q = query()?;
            if !q.untrackable.is_empty() {
                return Ok(Decision::Proxy { route });
            }
            Ok(Decision::Track {
                route,
                set,
                op: Operation::Initial,
            })
        }
        None => Ok(Decision::Proxy { route }),
    }
}

/// The identity scope of a request: a keyed hash of the headers that identify the caller, or
/// `shared`. A request without any of them is `anonymous`. In the default mode a bearer JWT counts
/// by its identifying claims, read without checking the signature: that is safe only because
/// every tracked request of a per-identity feed is authorized by the upstream with the request's
/// own credentials before it is answered (`track::authorize`).
pub fn scope_of(identity: &IdentityScope, scope_key: &[u8; 32], headers: &HeaderMap) -> Scope {
    let (names, jwt_claims): (Vec<&str>, &[String]) = match identity {
        IdentityScope::Shared => return Scope("shared".into()),
        IdentityScope::Headers(names) => (names.iter().map(String::as_str).collect(), &[]),
        IdentityScope::Credentials { jwt_claims } => {
            if CREDENTIAL_HEADERS.iter().any(|n| headers.contains_key(*n)) {
                (CREDENTIAL_HEADERS.to_vec(), jwt_claims)
            } else {
                (vec!["cookie"], &[])
            }
        }
    };
    let mut h = blake3::Hasher::new_keyed(scope_key);
    let mut any = false;
    for name in names {
        h.update(&(name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        for v in headers.get_all(name) {
            any = true;
            let claims = (name == "authorization" && !jwt_claims.is_empty())
                .then(|| {
                    v.to_str()
                        .ok()
                        .and_then(|v| bearer_jwt_claims(v, jwt_claims))
                })
                .flatten();
            match claims {
                // Tagged so that claims never hash like a credential that happens to spell them.
                Some(claims) => {
                    h.update(b"jwt-claims\0");
                    for (claim, value) in jwt_claims.iter().zip(&claims) {
                        h.update(&(claim.len() as u64).to_be_bytes());
                        h.update(claim.as_bytes());
                        h.update(&(value.len() as u64).to_be_bytes());
                        h.update(value.as_bytes());
                    }
                }
                None => {
                    h.update(&(v.len() as u64).to_be_bytes());
                    h.update(v.as_bytes());
                }
            }
        }
        h.update(b"\0");
    }
    if !any {
        return Scope("anonymous".into());
    }
    Scope(h.finalize().to_hex()[..32].to_owned())
}

/// The values of `claims` in an `Authorization: Bearer` JWT (three base64url parts, the second a
/// JSON object), as canonical JSON, without verifying anything. `None` when the value is not a
/// bearer JWT or lacks one of the claims: the credential is then hashed whole, as an opaque one.
fn bearer_jwt_claims(value: &str, claims: &[String]) -> Option<Vec<String>> {
    use base64::Engine;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let parts: Vec<&str> = token.trim().split('.').collect();
    let base64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let [header, payload, signature] = parts.as_slice() else {
        return None;
    };
    if header.is_empty()
        || payload.is_empty()
        || ![header, payload, signature].iter().all(|p| base64url(p))
    {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let serde_json::Value::Object(map) = serde_json::from_slice(&bytes).ok()? else {
        return None;
    };
    let values: Option<Vec<String>> = claims
        .iter()
        .map(|c| map.get(c).filter(|v| !v.is_null()).map(|v| v.to_string()))
        .collect();
    if values.is_none() {
        tracing::debug!(
            "a bearer JWT lacks an identity claim; scoped by the whole credential instead"
        );
    }
    values
}

/// The public base URL for links in the response to `req`, without trailing slash and without the
/// route prefix: `--public-url`, else what a trusted proxy says (`Forwarded`, `X-Forwarded-Proto`,
/// `-Host`, `-Prefix`), else `http://` + the request's Host.
pub fn public_base<B>(shared: &Shared, req: &Request<B>, peer: SocketAddr) -> String {
    if let Some(url) = &shared.config.public_url {
        return url.as_str().trim_end_matches('/').to_owned();
    }
    let headers = req.headers();
    let host_of_request = || {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .filter(|h| valid_authority(h))
            .unwrap_or_else(|| shared.config.listen.to_string())
    };
    let trusted = shared
        .config
        .trusted_proxies
        .iter()
        .any(|c| c.contains(peer.ip()));
    if !trusted {
        return format!("http://{}", host_of_request());
    }
    let (mut proto, mut host, mut prefix) = (None, None, None);
    if let Some(fwd) = headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        // The first element is the one the client-facing proxy added.
        let first = fwd.split(',').next().unwrap_or("");
        for pair in first.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                let v = v.trim().trim_matches('"').to_owned();
                match k.trim().to_ascii_lowercase().as_str() {
                    "proto" => proto = Some(v),
                    "host" => host = Some(v),
                    _ => {}
                }
            }
        }
    }
    let first_value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    proto = proto.or_else(|| first_value("x-forwarded-proto"));
    host = host.or_else(|| first_value("x-forwarded-host"));
    prefix = prefix.or_else(|| first_value("x-forwarded-prefix"));
    let proto = proto
        .filter(|p| p == "http" || p == "https")
        .unwrap_or_else(|| "http".into());
    let host = host
        .filter(|h| valid_authority(h))
        .unwrap_or_else(host_of_request);
    let prefix = prefix
        .filter(|p| {
            p.starts_with('/')
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}?#".contains(&b))
        })
        .map(|p| p.trim_end_matches('/').to_owned())
        .unwrap_or_default();
    format!("{proto}://{host}{prefix}")
}

/// Whether a Host (or forwarded host) value is a plain `host[:port]`.
pub fn valid_authority(h: &str) -> bool {
    !h.is_empty()
        && h.parse::<http::uri::Authority>()
            .is_ok_and(|a| a.as_str() == h && !h.contains('@'))
}

/// Resolve how to read an entity set: configured key, else `$metadata`. `Ok(None)` means the set
/// cannot be tracked and the request passes through (C2); the log says why and how to fix it.
pub async fn resolve_set(
    shared: &Arc<Shared>,
    service: &Service,
    set: &str,
    headers: &HeaderMap,
) -> Result<Option<SetSpec>, Error> {
    let configured = service.route.sets.get(set);
    let ignore = configured.map(|c| c.ignore.clone()).unwrap_or_default();
    let metadata = metadata(shared, service, set, headers).await?;
    let from_metadata = metadata.as_ref().and_then(|m| m.set(set).cloned());
    if let Some(names) = configured.and_then(|c| c.key.as_ref()) {
        let meta_key = match &from_metadata {
            Some(SetKey::Key(k)) => k.clone(),
            _ => Vec::new(),
        };
        let key = names
            .iter()
            .map(|entry| {
                let (name, ty) = match entry.split_once(':') {
                    Some((n, t)) => (n.trim(), KeyType::from_edm(t.trim())),
                    None => (entry.trim(), None),
                };
                let ty = ty
                    .or_else(|| meta_key.iter().find(|k| k.name == name).map(|k| k.ty))
                    .unwrap_or(KeyType::Inferred);
                KeyProperty {
                    name: name.to_owned(),
                    ty,
                    enum_type: None,
                }
            })
            .collect();
        return Ok(Some(SetSpec {
            name: set.to_owned(),
            key,
            ignore,
        }));
    }
    match from_metadata {
        Some(SetKey::Key(key)) => Ok(Some(SetSpec {
            name: set.to_owned(),
            key,
            ignore,
        })),
        Some(SetKey::Unusable(why)) => {
            tracing::warn!(
                set,
                reason = %why,
                fix = %format!("add [route.sets.{set}] key = [\"…\"] to the route at {}", service.route.origin),
                "entity set has no usable key; passing tracked requests through untracked"
            );
            Ok(None)
        }
        None => {
            if metadata.is_none() {
                tracing::warn!(
                    set,
                    fix = %format!("add [route.sets.{set}] key = [\"…\"] to the route at {}", service.route.origin),
                    "no $metadata from the upstream; passing tracked requests through untracked"
                );
            }
            Ok(None)
        }
    }
}

/// The service's `$metadata`, fetched on first need with the caller's credentials and cached.
/// Fetched again when the cached one does not key `set` and is older than the recheck interval;
/// concurrent requests share one fetch. `Ok(None)` when the upstream does not serve a usable one.
async fn metadata(
    shared: &Arc<Shared>,
    service: &Service,
    set: &str,
    headers: &HeaderMap,
) -> Result<Option<Arc<ServiceMetadata>>, Error> {
    let recheck = shared.config.upstream.metadata_recheck_interval;
    let mut in_flight = {
        let mut state = service
            .metadata
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent = state.checked.is_some_and(|at| at.elapsed() < recheck);
        let keyed = |m: &ServiceMetadata| matches!(m.set(set), Some(SetKey::Key(_)));
        if let Some(m) = &state.document
            && (keyed(m) || recent)
        {
            return Ok(Some(m.clone()));
        }
        if state.document.is_none() && recent {
            return Ok(None);
        }
        // A fetch task that died (it does not panic, but if it did) leaves a closed channel.
        match state
            .in_flight
            .clone()
            .filter(|rx| rx.has_changed().is_ok())
        {
            Some(rx) => rx,
            None => {
                let (tx, rx) = tokio::sync::watch::channel(None);
                state.in_flight = Some(rx.clone());
                let shared = shared.clone();
                let cache = service.metadata.clone();
                let url = format!(
                    "{}/$metadata",
                    service.route.upstream.as_str().trim_end_matches('/')
                );
                let headers = forwarded_headers(headers);
                let upstream = shared.upstream_of(service).clone();
                // A task of its own, so that the fetch goes on for the others when the request
                // that started it is cancelled.
                tokio::spawn(async move {
                    let outcome = fetch_metadata(&shared, &upstream, &url, headers).await;
                    let mut state = cache
                        .state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    state.in_flight = None;
                    let outcome = match outcome {
                        Ok(fetched) => {
                            state.checked = Some(Instant::now());
                            if let Some(m) = fetched {
                                state.document = Some(m);
                            }
                            // An upstream that stops serving `$metadata` leaves the last one in use.
                            Ok(state.document.clone())
                        }
                        Err(e) => Err(e),
                    };
                    drop(state);
                    let _ = tx.send(Some(outcome));
                });
                rx
            }
        }
    };
    let outcome = in_flight
        .wait_for(Option::is_some)
        .await
        .map_err(|_| Error::Internal("the $metadata fetch ended without an answer".into()))?
        .clone();
    outcome.unwrap_or_else(|| Err(Error::Internal("the $metadata fetch has no answer".into())))
}

/// One upstream `$metadata` fetch: the parsed document, `None` when the upstream answers without
/// a usable one.
async fn fetch_metadata(
    shared: &Shared,
    upstream: &crate::upstream::Upstream,
    url: &str,
    headers: HeaderMap,
) -> Result<Option<Arc<ServiceMetadata>>, Error> {
    let mut request = Request::get(url)
        .body(crate::body::empty())
        .map_err(|e| Error::Internal(format!("cannot build a $metadata request: {e}")))?;
    request.headers_mut().extend(headers);
    request.headers_mut().insert(
        header::ACCEPT,
        http::HeaderValue::from_static("application/xml"),
    );
    request.headers_mut().insert(
        header::ACCEPT_ENCODING,
        crate::compress::UPSTREAM_ACCEPT_ENCODING,
    );
    let fetched = upstream
        .fetch(request, shared.config.limits.max_page_bytes)
        .await?;
    if !fetched.status.is_success() {
        tracing::warn!(status = %fetched.status, url, "upstream $metadata not available");
        return Ok(None);
    }
    // A large document is parsed off the request threads.
    let body = fetched.body;
    let parsed =
        tokio::task::spawn_blocking(move || std::str::from_utf8(&body).map(ServiceMetadata::parse))
            .await?;
    match parsed {
        Err(_) => Err(Error::upstream(
            UpstreamFailure::BadAnswer,
            "the upstream $metadata is not UTF-8",
        )),
        Ok(Ok(m)) => Ok(Some(Arc::new(m))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, url, "upstream $metadata cannot be read");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn services(prefixes: &[&str]) -> Vec<Service> {
        prefixes
            .iter()
            .map(|p| {
                Service::new(RouteConfig {
                    prefix: (*p).into(),
                    upstream: url::Url::parse("http://up/x").unwrap(),
                    sets: BTreeMap::new(),
                    poll_interval: None,
                    headers: http::HeaderMap::new(),
                    tls: None,
                    origin: "test".into(),
                })
            })
            .collect()
    }

    fn track() -> Preferences {
        Preferences::parse(["odata.track-changes"])
    }

    #[test]
    fn tracked_reads_need_a_plain_collection_c2() {
        let s = services(&["/svc"]);
        let c =
            |path: &str, q: Option<&str>| classify(&s, &Method::GET, path, q, &track()).unwrap();
        assert_eq!(
            c("/svc/Customers", None),
            Decision::Track {
                route: 0,
                set: "Customers".into(),
                op: Operation::Initial
            }
        );
        for path in [
            "/svc/Customers(1)",
            "/svc/Customers(1)/name",
            "/svc/Fn()",
            "/svc/Customers/$count",
            "/svc/$metadata",
            "/svc",
        ] {
            assert_eq!(c(path, None), Decision::Proxy { route: 0 }, "{path}");
        }
        assert_eq!(
            c("/svc/Customers", Some("$apply=groupby((a))")),
            Decision::Proxy { route: 0 }
        );
        assert_eq!(c("/other/Customers", None), Decision::NoRoute);
        assert_eq!(
            classify(&s, &Method::POST, "/svc/Customers", None, &track()).unwrap(),
            Decision::Proxy { route: 0 }
        );
    }

    #[test]
    fn tokens_route_to_the_tracker_whatever_the_prefer_header() {
        let s = services(&["/svc"]);
        let none = Preferences::default();
        let c = |path: &str, q: &str| classify(&s, &Method::GET, path, Some(q), &none);
        assert!(matches!(
            c("/svc/C", "$deltatoken=x").unwrap(),
            Decision::Track {
                op: Operation::Delta,
                ..
            }
        ));
        assert!(matches!(
            c("/svc/C", "%24deltatoken=x").unwrap(),
            Decision::Track {
                op: Operation::Delta,
                ..
            }
        ));
        assert!(matches!(
            c("/svc/C/$count", "$deltatoken=x").unwrap(),
            Decision::Track {
                op: Operation::Count,
                ..
            }
        ));
        assert!(matches!(
            c("/svc/C", "$deltatoken=latest").unwrap(),
            Decision::Track {
                op: Operation::Initial,
                ..
            }
        ));
        assert!(matches!(
            c("/svc/C", "$skiptoken=odg.abc").unwrap(),
            Decision::Track {
                op: Operation::Page,
                ..
            }
        ));
        assert_eq!(
            c("/svc/C", "$skiptoken=100").unwrap(),
            Decision::Proxy { route: 0 }
        );
        assert!(c("/svc/C(1)", "$deltatoken=x").is_err());
    }

    #[test]
    fn longest_prefix_wins_and_root_prefix_serves_everything() {
        let s = services(&["/a/b", "/a", ""]);
        let p = Preferences::default();
        assert_eq!(
            classify(&s, &Method::GET, "/a/b/C", None, &p).unwrap(),
            Decision::Proxy { route: 0 }
        );
        assert_eq!(
            classify(&s, &Method::GET, "/a/bc/C", None, &p).unwrap(),
            Decision::Proxy { route: 1 }
        );
        assert_eq!(
            classify(&s, &Method::GET, "/z", None, &p).unwrap(),
            Decision::Proxy { route: 2 }
        );
    }

    #[test]
    fn scopes_separate_credentials() {
        let id = IdentityScope::Headers(vec!["authorization".into()]);
        let key = [1u8; 32];
        let mut a = HeaderMap::new();
        a.insert("authorization", "Basic YQ==".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("authorization", "Basic Yg==".parse().unwrap());
        assert_ne!(scope_of(&id, &key, &a), scope_of(&id, &key, &b));
        assert_eq!(scope_of(&id, &key, &a), scope_of(&id, &key, &a.clone()));
        assert_eq!(scope_of(&id, &key, &HeaderMap::new()).0, "anonymous");
        assert_eq!(scope_of(&IdentityScope::Shared, &key, &a).0, "shared");
        // By default, cookies count only when no other credential is there.
        let d = IdentityScope::Credentials {
            jwt_claims: vec!["iss".into(), "sub".into()],
        };
        let mut c1 = HeaderMap::new();
        c1.insert("cookie", "s=1".parse().unwrap());
        let mut c2 = HeaderMap::new();
        c2.insert("cookie", "s=2".parse().unwrap());
        assert_ne!(scope_of(&d, &key, &c1), scope_of(&d, &key, &c2));
        let (mut a1, mut a2) = (a.clone(), a.clone());
        a1.insert("cookie", "s=1".parse().unwrap());
        a2.insert("cookie", "s=2".parse().unwrap());
        assert_eq!(scope_of(&d, &key, &a1), scope_of(&d, &key, &a2));
        assert_ne!(scope_of(&d, &key, &a), scope_of(&d, &key, &b));
        assert_eq!(scope_of(&d, &key, &HeaderMap::new()).0, "anonymous");
    }
    #[test]
    fn dot_segments_are_removed_with_percent_encoded_dots_c37() {
        let r = |p: &str| remove_dot_segments(p).unwrap().into_owned();
        assert_eq!(r("/odata/v4/shop/../../../_admin/stats"), "/_admin/stats");
        assert_eq!(r("/odata/v4/shop/%2e%2e/%2E%2e/.%2e/_admin"), "/_admin");
        assert_eq!(r("/a/./b/../c"), "/a/c");
        assert_eq!(r("/a/b/.."), "/a/");
        assert_eq!(r("/a/b/."), "/a/b/");
        assert_eq!(r("/../../x"), "/x");
        // Not dot segments: kept byte for byte.
        for kept in [
            "/shop/Products('a%2Fb')",
            "/shop/...",
            "/shop/.hidden/..x",
            "/shop/Products('a.b')",
            "*",
        ] {
            assert_eq!(r(kept), kept);
        }
    }

    #[test]
    fn segments_that_hide_a_climb_are_refused_c37() {
        for hidden in [
            "/shop/..%2F..%2F_admin",
            "/shop/..%2f_admin",
            "/shop/x%5C..%5Cy",
            "/shop/..;x/_admin",
        ] {
            assert_eq!(
                remove_dot_segments(hidden),
                Err(PathError::Ambiguous),
                "{hidden}"
            );
        }
    }
    proptest::proptest! {
        /// Whatever the path, the result has no dot segment left, is stable, and a path without
        /// dot segments comes back byte for byte (C37).
        #[test]
        fn resolved_paths_hold_no_dot_segments(
            segments in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(".".to_owned()),
                    proptest::strategy::Just("..".to_owned()),
                    proptest::strategy::Just("%2e%2E".to_owned()),
                    proptest::strategy::Just("%2e".to_owned()),
                    proptest::strategy::Just("a%2Fb".to_owned()),
                    "[a-zA-Z0-9.%()'_-]{0,8}",
                ],
                0..12,
            )
        ) {
            let path = format!("/{}", segments.join("/"));
            if let Ok(resolved) = remove_dot_segments(&path) {
                proptest::prop_assert!(resolved.starts_with('/'));
                proptest::prop_assert!(
                    resolved.split('/').all(|s| dot_segment(s).is_none()),
                    "{} -> {}", path, resolved
                );
                proptest::prop_assert_eq!(remove_dot_segments(&resolved), Ok(resolved.clone()));
                if path.split('/').all(|s| dot_segment(s).is_none()) {
                    proptest::prop_assert_eq!(resolved.as_ref(), path.as_str());
                }
            }
        }
    }

    fn jwt(payload: &str, signature: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "Bearer {}.{}.{}",
            b64(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64(payload),
            b64(signature)
        )
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_jwts_are_scoped_by_their_identifying_claims() {
        let key = [7u8; 32];
        let claims = |c: &[&str]| IdentityScope::Credentials {
            jwt_claims: c.iter().map(|c| (*c).to_owned()).collect(),
        };
        let d = claims(&["iss", "sub"]);
        let first = jwt(r#"{"iss":"https://idp","sub":"alice","exp":1}"#, "sig-1");
        let renewed = jwt(r#"{"exp":2,"sub":"alice","iss":"https://idp"}"#, "sig-2");
        let bob = jwt(r#"{"iss":"https://idp","sub":"bob","exp":1}"#, "sig-1");
        let scope = |id: &IdentityScope, v: &str| scope_of(id, &key, &bearer(v));
        assert_eq!(scope(&d, &first), scope(&d, &renewed));
        assert_ne!(scope(&d, &first), scope(&d, &bob));
        // Another issuer with the same subject is someone else.
        let other_iss = jwt(r#"{"iss":"https://evil","sub":"alice"}"#, "s");
        assert_ne!(scope(&d, &first), scope(&d, &other_iss));
        // A JWT without a configured claim, and opaque tokens, are hashed whole.
        let no_sub = jwt(r#"{"iss":"https://idp","exp":1}"#, "a");
        let no_sub_renewed = jwt(r#"{"iss":"https://idp","exp":2}"#, "b");
        assert_ne!(scope(&d, &no_sub), scope(&d, &no_sub_renewed));
        assert_ne!(scope(&d, "Bearer opaque-1"), scope(&d, "Bearer opaque-2"));
        assert_eq!(scope(&d, "Bearer opaque-1"), scope(&d, "Bearer opaque-1"));
        for not_a_jwt in [
            "Bearer a.b",
            "Bearer a.!.c",
            "Basic a.b.c",
            "Bearer a.bm90IGpzb24.c",
        ] {
            assert_eq!(
                scope(&d, not_a_jwt),
                scope(&claims(&[]), not_a_jwt),
                "{not_a_jwt}"
            );
        }
        // Other claims, when configured; none turns claim scoping off.
        let azure = claims(&["oid", "tid"]);
        let a1 = jwt(r#"{"oid":"o1","tid":"t1","sub":"x"}"#, "1");
        let a2 = jwt(r#"{"oid":"o1","tid":"t1","sub":"y"}"#, "2");
        assert_eq!(scope(&azure, &a1), scope(&azure, &a2));
        assert_ne!(scope(&claims(&[]), &first), scope(&claims(&[]), &renewed));
        // The claims never collide with an opaque credential or the headers mode.
        assert_ne!(
            scope(&d, &first),
            scope(
                &IdentityScope::Headers(vec!["authorization".into()]),
                &first
            )
        );
    }

    proptest::proptest! {
        /// Any `Authorization` value is scoped without a panic, and a JWT's scope depends on its
        /// `iss` and `sub` alone: other claims, their order and the signature do not count.
        #[test]
        fn jwt_scopes_follow_iss_and_sub_only(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            sub in "[a-z0-9]{1,12}",
            exp in proptest::prelude::any::<u64>(),
            extra in "[a-zA-Z0-9 ]{0,20}",
            signature in "[A-Za-z0-9_-]{0,40}",
        ) {
            let key = [3u8; 32];
            let d = IdentityScope::Credentials {
                jwt_claims: vec!["iss".into(), "sub".into()],
            };
            let junk = String::from_utf8_lossy(&junk).into_owned();
            for value in [format!("Bearer {junk}"), format!("Bearer e30.{junk}.c")] {
                if let Ok(v) = value.parse::<http::HeaderValue>() {
                    let mut h = HeaderMap::new();
                    h.insert("authorization", v);
                    let _ = scope_of(&d, &key, &h);
                }
            }
            let a = jwt(&format!(r#"{{"iss":"i","sub":"{sub}","exp":{exp}}}"#), "x");
            let b = jwt(
                &format!(r#"{{"extra":"{extra}","sub":"{sub}","iss":"i"}}"#),
                &signature,
            );
            proptest::prop_assert_eq!(scope_of(&d, &key, &bearer(&a)), scope_of(&d, &key, &bearer(&b)));
            let other = jwt(&format!(r#"{{"iss":"i","sub":"{sub}-"}}"#), "x");
            proptest::prop_assert_ne!(scope_of(&d, &key, &bearer(&a)), scope_of(&d, &key, &bearer(&other)));
        }
    }
}

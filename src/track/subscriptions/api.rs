//! The `$subscriptions` resource of each route, on the main listener beside the service it
//! watches (`/odata/v4/shop/$subscriptions`):
//!
//! - `POST $subscriptions` with `{"deltaLink", "notificationUrl", "expirationDateTime"?,
//!   "clientState"?}`: watch the feed of a delta link the caller holds. The link's token is bound
//!   to the caller's identity scope, so only its holder can subscribe to it; a per-identity feed's
//!   request is authorized upstream like a delta request. Before the subscription exists, the
//!   notification URL must answer a validation request — `POST url?validationToken=T` — with a
//!   2xx whose body is `T`, so that nobody can point the gateway at a URL that did not agree.
//!   `201 Created` with the subscription and its `Location`.
//! - `GET $subscriptions`: the caller's own subscriptions on the route (same identity scope).
//! - `GET`, `PATCH` (`{"expirationDateTime"}`: renew) and `DELETE $subscriptions/{id}`: one of the
//!   caller's own; another scope's answers 404 like one that does not exist.
//!
//! Bad input gets an OData error: 400 for a malformed body, a refused URL or token, a failed
//! validation; 410 for an expired delta link; 429 past the subscription limits.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::Shared;
use crate::body::{self, Body};
use crate::config::IdentityScope;
use crate::error::Error;
use crate::odata::ODataVersion;
use crate::odata::datetime::{format_unix_ms, parse_unix_ms};
use crate::odata::prefer::Preferences;
use crate::odata::query::{DefiningQuery, ODataQuery};
use crate::router::{self, Service};
use crate::store::SubscriptionRow;
use crate::track::authorize::authorize;
use crate::track::callback::{check_url, exchange};
use crate::track::feed::{FeedDef, Scope};
use crate::track::fetch::forwarded_headers;
use crate::track::refresh::RefreshInput;
use crate::track::respond::{TrackedRequest, verified_delta_link};

use super::{Full, SubscriptionId, delta_link};

/// The resource's segment below a route prefix.
pub(crate) const SEGMENT: &str = "$subscriptions";

/// Largest request body read.
const MAX_BODY_BYTES: usize = 16 << 10;
/// Longest `clientState`.
const MAX_CLIENT_STATE: usize = 255;

/// Whether a path below a route prefix addresses the resource: `Some(None)` for the collection,
/// `Some(Some(id))` for one subscription (the id as written).
pub(crate) fn addressed(rest: &str) -> Option<Option<&str>> {
    let tail = rest.strip_prefix(SEGMENT)?;
    if tail.is_empty() || tail == "/" {
        return Some(None);
    }
    tail.strip_prefix('/').map(Some)
}

/// The error for a subscription that does not fit.
pub(crate) fn full(why: Full) -> Error {
    let what = match why {
        Full::Total => {
            "the gateway holds as many subscriptions as it allows (notifications.max_subscriptions)"
        }
        Full::Scope => {
            "this identity holds as many subscriptions as allowed (notifications.max_subscriptions_per_scope); delete one first"
        }
    };
    Error::client(StatusCode::TOO_MANY_REQUESTS, "TooManySubscriptions", what)
}

fn invalid(message: impl Into<String>) -> Error {
    Error::client(StatusCode::BAD_REQUEST, "InvalidSubscription", message)
}

fn not_found() -> Error {
    Error::client(
        StatusCode::NOT_FOUND,
        "NotFound",
        "there is no such subscription of this identity",
    )
}

/// The body of a create request.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Create {
    delta_link: String,
    notification_url: String,
    expiration_date_time: Option<String>,
    client_state: Option<String>,
}

/// The body of a renewal.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Renew {
    expiration_date_time: String,
}

/// What a request to the resource needs besides its body.
struct Caller<'a> {
    shared: &'a Arc<Shared>,
    service: &'a Service,
    headers: HeaderMap,
    scope: Scope,
    /// The route's public root, for links.
    public_root: String,
    version: ODataVersion,
}

/// Answer a request to `$subscriptions` of route `route`; `item` is the id segment, if any.
pub(crate) async fn answer(
    shared: &Arc<Shared>,
    parts: http::request::Parts,
    incoming: Incoming,
    peer: SocketAddr,
    route: usize,
    item: Option<String>,
    version: ODataVersion,
) -> Result<Response<Body>, Error> {
    // Created, renewed or deleted through another replica, perhaps.
    super::reload(shared).await;
    let service = &shared.services[route];
    let mut probe = Request::new(());
    *probe.uri_mut() = parts.uri.clone();
    *probe.headers_mut() = parts.headers.clone();
    let caller = Caller {
        shared,
        service,
        scope: router::scope_of(&shared.config.identity, &shared.scope_key, &parts.headers),
        public_root: format!(
            "{}{}",
            router::public_base(shared, &probe, peer),
            service.route.prefix
        ),
        headers: parts.headers,
        version,
    };
    let allowed = if item.is_some() {
        "GET, PATCH, DELETE"
    } else {
        "GET, POST"
    };
    let id = match &item {
        None => None,
        Some(text) => Some(SubscriptionId::parse(text).ok_or_else(not_found)?),
    };
    match (parts.method, id) {
        (Method::POST, None) => {
            let body = read_body(shared, incoming).await?;
            create(&caller, &body).await
        }
        (Method::GET, None) => list(&caller).await,
        (Method::GET, Some(id)) => {
            let row = own(&caller, id).await?;
            Ok(json_response(StatusCode::OK, represent(&caller, id, &row)))
        }
        (Method::PATCH, Some(id)) => {
            let body = read_body(shared, incoming).await?;
            renew(&caller, id, &body).await
        }
        (Method::DELETE, Some(id)) => delete(&caller, id).await,
        (method, _) => {
            let mut response = Error::client(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not served here; {allowed} are"),
            )
            .into_response(version);
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
            Ok(response)
        }
    }
}

/// The request body, at most [`MAX_BODY_BYTES`], within the body read timeout.
async fn read_body(shared: &Shared, incoming: Incoming) -> Result<Bytes, Error> {
    let limits = &shared.config.limits;
    let read = Limited::new(incoming, MAX_BODY_BYTES).collect();
    match tokio::time::timeout(limits.body_read_timeout, read).await {
        Err(_) => Err(Error::client(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            format!(
                "the request body did not arrive within the limit of {} ms",
                limits.body_read_timeout.as_millis()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Error::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("a subscription request body is at most {MAX_BODY_BYTES} bytes"),
        )),
        Ok(Err(_)) => Err(Error::bad_request("the request body broke off")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// When a subscription ends: the time asked for, capped at the longest lifetime; that lifetime
/// when none is asked for. A time not in the future is refused.
fn expiry(shared: &Shared, asked: Option<&str>, now_ms: u64) -> Result<u64, Error> {
    let longest = now_ms.saturating_add(
        shared
            .config
            .notifications
            .max_subscription_lifetime
            .as_millis() as u64,
    );
    let Some(text) = asked else {
        return Ok(longest);
    };
    let at = parse_unix_ms(text).ok_or_else(|| {
        invalid("expirationDateTime is not an RFC 3339 timestamp, e.g. 2026-12-24T18:00:00Z")
    })?;
    if at <= now_ms {
        return Err(invalid("expirationDateTime is not in the future"));
    }
    Ok(at.min(longest))
}

/// The feed definition a subscription watches.
fn def_of(row: &SubscriptionRow) -> Result<FeedDef, Error> {
    Ok(FeedDef {
        route: row.route.clone(),
        entity_set: row.entity_set.clone(),
        query: DefiningQuery::from_encoded(&row.query).map_err(|e| {
            Error::Store(format!("a stored subscription's query is unreadable: {e}"))
        })?,
        scope: Scope(row.scope.clone()),
    })
}

/// A live subscription of the caller, after the upstream accepted the caller's credentials for
/// its feed (the scope of a bearer JWT is read from unverified claims). 404 for anyone else's.
async fn own(caller: &Caller<'_>, id: SubscriptionId) -> Result<SubscriptionRow, Error> {
    let shared = caller.shared;
    let row = shared
        .subscriptions
        .get(
            id,
            &caller.service.route.prefix,
            &caller.scope,
            shared.clock.now_ms(),
        )
        .ok_or_else(not_found)?;
    authorize(
        shared,
        &caller.service.route.upstream,
        &def_of(&row)?,
        &caller.headers,
    )
    .await?;
    Ok(row)
}

/// The JSON of a subscription.
fn represent(caller: &Caller<'_>, id: SubscriptionId, row: &SubscriptionRow) -> serde_json::Value {
    let mut v = json!({
        "id": id.hex(),
        "deltaLink": delta_link(caller.shared, row),
        "notificationUrl": row.notification_url,
        "createdDateTime": format_unix_ms(row.created_ms),
        "expirationDateTime": format_unix_ms(row.expires_ms),
        "missedNotifications": row.missed,
    });
    if let Some(state) = &row.client_state {
        v["clientState"] = json!(state);
    }
    v
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn location(caller: &Caller<'_>, id: SubscriptionId) -> String {
    format!("{}/{SEGMENT}/{}", caller.public_root, id.hex())
}

/// The caller's subscriptions on this route.
async fn list(caller: &Caller<'_>) -> Result<Response<Body>, Error> {
    let shared = caller.shared;
    let rows = shared.subscriptions.of_scope(
        &caller.service.route.prefix,
        &caller.scope,
        shared.clock.now_ms(),
    );
    // Each feed once: the upstream accepts the caller for it, or the answer is its refusal.
    if shared.config.identity != IdentityScope::Shared {
        let mut checked = std::collections::HashSet::new();
        for (_, row) in &rows {
            if checked.insert(row.feed) {
                authorize(
                    shared,
                    &caller.service.route.upstream,
                    &def_of(row)?,
                    &caller.headers,
                )
                .await?;
            }
        }
    }
    let value: Vec<_> = rows
        .iter()
        .map(|(id, row)| represent(caller, *id, row))
        .collect();
    Ok(json_response(StatusCode::OK, json!({ "value": value })))
}

/// Put the feed of a subscription on the schedule with the caller's credentials (the schedule
/// keeps it there while the subscription lives).
async fn arm(caller: &Caller<'_>, def: &FeedDef) -> Result<(), Error> {
    let shared = caller.shared;
    let Some(interval) = shared.config.poll_interval(&def.route, &def.entity_set) else {
        return Ok(());
    };
    let Some(set) =
        router::resolve_set(shared, caller.service, &def.entity_set, &caller.headers).await?
    else {
        return Err(Error::bad_request(format!(
            "{} is not an entity set the gateway can track",
            def.entity_set
        )));
    };
    let input = RefreshInput {
        feed: def.id(),
        def: def.clone(),
        set,
        service_root: caller.service.route.upstream.clone(),
        headers: forwarded_headers(&caller.headers),
        max_age: interval / 2,
        replica_max_age: interval / 2,
        stale_while_refreshing: std::time::Duration::ZERO,
        background: false,
    };
    shared.schedule.asked(shared, &input, interval);
    Ok(())
}

/// Create a subscription: check the body, the link, the URL and the limits, validate the URL,
/// store it.
async fn create(caller: &Caller<'_>, body: &[u8]) -> Result<Response<Body>, Error> {
    let shared = caller.shared;
    let asked: Create = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "the body is not a subscription ({e}); send {{\"deltaLink\": \"…\", \"notificationUrl\": \"…\"}} with optional \"expirationDateTime\" and \"clientState\""
        ))
    })?;
    if asked
        .client_state
        .as_ref()
        .is_some_and(|s| s.len() > MAX_CLIENT_STATE)
    {
        return Err(invalid(format!(
            "clientState is longer than {MAX_CLIENT_STATE} bytes"
        )));
    }
    let url = check_url(shared, &asked.notification_url)?;
    let now_ms = shared.clock.now_ms();
    let expires_ms = expiry(shared, asked.expiration_date_time.as_deref(), now_ms)?;
    let link = Url::parse(&caller.public_root)
        .and_then(|root| root.join(&asked.delta_link))
        .map_err(|_| invalid("deltaLink is not a URL"))?;
    let set_name = link
        .path_segments()
        .and_then(|mut s| s.next_back())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let query = ODataQuery::parse(link.query()).map_err(|e| invalid(e.to_string()))?;
    if query.deltatoken.is_none() || query.deltatoken.as_deref() == Some("latest") {
        return Err(invalid(
            "deltaLink is not a delta link of the gateway: use the @odata.deltaLink of a tracked read",
        ));
    }
    let route = &caller.service.route;
    if shared
        .config
        .poll_interval(&route.prefix, &set_name)
        .is_none()
    {
        return Err(Error::client(
            StatusCode::BAD_REQUEST,
            "SubscriptionRefused",
            format!(
                "{set_name} is not refreshed in the background (no poll_interval), so nothing would notice its changes; poll its delta link instead"
            ),
        ));
    }
    let tracked = TrackedRequest {
        route: route.prefix.clone(),
        service_root: route.upstream.clone(),
        set_name: set_name.clone(),
        set: None,
        public_root: caller.public_root.clone(),
        version: caller.version,
        prefs: Preferences::default(),
        query,
        headers: caller.headers.clone(),
        scope: caller.scope.clone(),
        format: Default::default(),
    };
    let (token, since, def) = verified_delta_link(shared, &tracked).await?;
    authorize(shared, &route.upstream, &def, &caller.headers).await?;
    shared
        .subscriptions
        .room(shared, &caller.scope, now_ms)
        .map_err(full)?;
    validate(shared, &url).await?;
    // On the schedule before it is stored: a set that cannot be refreshed refuses the
    // subscription instead of leaving one behind that is never notified.
    arm(caller, &def).await?;
    let row = SubscriptionRow {
        feed: def.id().0,
        route: def.route.clone(),
        entity_set: def.entity_set.clone(),
        query: def.query.encoded(),
        collection_url: format!(
            "{}/{}",
            caller.public_root,
            crate::odata::query::encode_path(&def.entity_set)
        ),
        scope: def.scope.0.clone(),
        notification_url: url.to_string(),
        client_state: asked.client_state,
        created_ms: now_ms,
        expires_ms,
        since: since.0,
        issued_at: token.issued_at,
        missed: 0,
    };
    let id = shared.subscriptions.insert(shared, row.clone(), now_ms)?;
    let store = shared.store.clone();
    let stored = tokio::task::spawn_blocking({
        let row = row.clone();
        move || store.put_subscription(id.0, &row)
    })
    .await;
    if let Err(e) = stored
        .map_err(Error::from)
        .and_then(|r| r.map_err(Error::from))
    {
        shared.subscriptions.remove(id);
        return Err(e);
    }
    tracing::info!(subscription = %id.hex(), host = ?url.host_str(), "webhook subscription created");
    let mut response = json_response(StatusCode::CREATED, represent(caller, id, &row));
    if let Ok(v) = HeaderValue::from_str(&location(caller, id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// The validation handshake: `POST url?validationToken=T` must answer 2xx with `T` as its body.
async fn validate(shared: &Shared, url: &Url) -> Result<(), Error> {
    let mut token = [0u8; 16];
    getrandom::fill(&mut token)
        .map_err(|e| Error::Internal(format!("no randomness for a validation token: {e}")))?;
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let mut asked = url.clone();
    asked
        .query_pairs_mut()
        .append_pair("validationToken", &token);
    let request = Request::post(asked.as_str())
        .body(body::empty())
        .map_err(|e| Error::Internal(format!("cannot build a validation request: {e}")))?;
    let failed = |why: String| {
        Error::client(
            StatusCode::BAD_REQUEST,
            "SubscriptionValidationFailed",
            format!(
                "the notification URL did not pass validation: {why}; it must answer POST …?validationToken=T with 200 and the body T"
            ),
        )
    };
    let answer = exchange(shared, request).await.map_err(failed)?;
    if !answer.status.is_success() {
        return Err(failed(format!("it answered {}", answer.status)));
    }
    let echoed = std::str::from_utf8(&answer.body).map(str::trim);
    if echoed != Ok(token.as_str()) {
        return Err(failed("it did not echo the validation token".into()));
    }
    Ok(())
}

/// Renew: a new end, capped like a new subscription's; the feed goes back on the schedule with
/// the caller's credentials (after a restart, this is how a per-identity feed is refreshed again).
async fn renew(
    caller: &Caller<'_>,
    id: SubscriptionId,
    body: &[u8],
) -> Result<Response<Body>, Error> {
    let shared = caller.shared;
    let asked: Renew = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "the body is not a renewal ({e}); send {{\"expirationDateTime\": \"…\"}}"
        ))
    })?;
    let row = own(caller, id).await?;
    let expires_ms = expiry(
        shared,
        Some(&asked.expiration_date_time),
        shared.clock.now_ms(),
    )?;
    let row = shared
        .subscriptions
        .set_expiry(id, expires_ms)
        .unwrap_or(SubscriptionRow { expires_ms, ..row });
    let store = shared.store.clone();
    let stored = row.clone();
    tokio::task::spawn_blocking(move || store.put_subscription(id.0, &stored)).await??;
    arm(caller, &def_of(&row)?).await?;
    Ok(json_response(StatusCode::OK, represent(caller, id, &row)))
}

/// Delete one of the caller's subscriptions.
async fn delete(caller: &Caller<'_>, id: SubscriptionId) -> Result<Response<Body>, Error> {
    let shared = caller.shared;
    own(caller, id).await?;
    if !shared.subscriptions.remove(id) {
        return Err(not_found());
    }
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || store.delete_subscriptions(&[id.0])).await??;
    tracing::info!(subscription = %id.hex(), "webhook subscription deleted");
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_is_the_segment_and_its_items() {
        assert_eq!(addressed("$subscriptions"), Some(None));
        assert_eq!(addressed("$subscriptions/"), Some(None));
        assert_eq!(addressed("$subscriptions/abc"), Some(Some("abc")));
        assert_eq!(addressed("$subscriptionsX"), None);
        assert_eq!(addressed("Customers"), None);
    }
}

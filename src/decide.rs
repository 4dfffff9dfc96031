//! The decision on a request from its head alone: check its bounds (C37), resolve its path,
//! route it, and answer it when the gateway tracks it, or hand it back to be forwarded. The one
//! path of every request, whether it came alone (`server`) or as a part of a `$batch` (`batch`),
//! so both import it and neither imports the other.

use std::net::SocketAddr;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::App;
use crate::body::{self, Body};
use crate::error::{Error, UpstreamFailure};
use crate::odata::ODataVersion;
use crate::odata::prefer::Preferences;
use crate::odata::query::ODataQuery;
use crate::router::{self, Decision};
use crate::track::respond::{self, Answer, Operation, TrackedRequest};

/// What the gateway does with a request, decided from its head alone.
pub(crate) enum Decided {
    /// Answered by the gateway (a tracked request, or an error).
    Answer(Response<Body>),
    /// To be forwarded to the upstream of this route.
    Proxy(usize),
    /// The route's webhook subscriptions (`$subscriptions`, or one of them by id); answered with
    /// the request's body.
    Subscriptions {
        /// Index into the services.
        route: usize,
        /// The id segment, when one subscription is addressed.
        item: Option<String>,
    },
}

/// Check, normalize and route a request head; answer it when the gateway tracks it. The one
/// path of every request, whether it came alone or as a part of a `$batch` (C34).
pub(crate) async fn route_head(
    app: &App,
    req: &mut http::request::Parts,
    peer: SocketAddr,
    version: ODataVersion,
) -> Result<Decided, Error> {
    let uri_bytes = uri_len(&req.uri);
    if uri_bytes > app.config.limits.max_uri_bytes {
        return Err(Error::client(
            StatusCode::URI_TOO_LONG,
            "URITooLong",
            format!(
                "the request URI is longer than the limit of {} bytes",
                app.config.limits.max_uri_bytes
            ),
        ));
    }
    let head_bytes: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + uri_bytes;
    if head_bytes > app.config.limits.max_header_bytes {
        return Err(Error::client(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "RequestHeaderFieldsTooLarge",
            format!(
                "the request head is larger than the limit of {} bytes",
                app.config.limits.max_header_bytes
            ),
        ));
    }
    // RFC 9112 §3.2: a Host that is not a valid authority is refused; it would end up in links.
    if let Some(host) = req.headers.get(header::HOST)
        && !host.to_str().is_ok_and(router::valid_authority)
    {
        return Err(Error::bad_request(
            "the Host header is not a valid host[:port]",
        ));
    }
    let prefs = Preferences::parse(
        req.headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    normalize_path(&app.services, req)?;
    let path = req.uri.path().to_owned();
    let subscriptions = app.services.iter().enumerate().find_map(|(i, s)| {
        let rest = router::below_prefix(&path, &s.route.prefix)?;
        crate::track::subscriptions::api::addressed(rest).map(|item| (i, item.map(str::to_owned)))
    });
    if let Some((route, item)) = subscriptions {
        return Ok(Decided::Subscriptions { route, item });
    }
    let raw_query = req.uri.query().map(str::to_owned);
    let decision = router::classify(
        &app.services,
        &req.method,
        &path,
        raw_query.as_deref(),
        &prefs,
    )?;
    let (route, set, op) = match decision {
        Decision::NoRoute => {
            return Err(Error::client(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no upstream is configured for {path}"),
            ));
        }
        // An OPTIONS on a link of ours is answered here: forwarded, it would carry our token (C31).
        Decision::Proxy { .. }
            if req.method == Method::OPTIONS
                && router::carries_gateway_token(raw_query.as_deref()) =>
        {
            return Ok(Decided::Answer(allow_tracked()));
        }
        Decision::Proxy { route } => return Ok(Decided::Proxy(route)),
        Decision::Track { route, set, op } => (route, set, op),
    };
    let service = &app.services[route];
    let query =
        ODataQuery::parse(raw_query.as_deref()).map_err(|e| Error::bad_request(e.to_string()))?;
    if matches!(op, Operation::Delta | Operation::Count | Operation::Page) {
        let changed = [
            ("$filter", query.filter.is_some()),
            ("$select", query.select.is_some()),
            ("$expand", query.expand.is_some()),
            ("$search", query.search.is_some()),
            ("$orderby", query.orderby.is_some()),
            ("$top", query.top.is_some()),
            ("$skip", query.skip.is_some()),
        ];
        if let Some((name, _)) = changed.iter().find(|(_, present)| *present) {
            return Err(Error::bad_request(format!(
                "{name} cannot be added to a delta or next link: the query is part of the link; start a new tracked read instead"
            )));
        }
    }
    refuse_options_a_link_ignores(op, &query)?;
    // The deadline covers resolving the set and answering; a pass-through is bounded by the
    // upstream timeout instead.
    let deadline = tokio::time::Instant::now() + app.config.limits.tracked_request_timeout;
    let past_deadline = || {
        Error::upstream(
            UpstreamFailure::Timeout,
            format!(
                "the tracked request took longer than the limit of {} ms",
                app.config.limits.tracked_request_timeout.as_millis()
            ),
        )
    };
    let set_spec = match op {
        Operation::Page => None,
        _ => tokio::time::timeout_at(
            deadline,
            router::resolve_set(app, service, &set, &req.headers),
        )
        .await
        .map_err(|_| past_deadline())??,
    };
    if set_spec.is_none() && op != Operation::Page {
        if op == Operation::Initial && query.deltatoken.is_none() {
            // Not trackable: answered normally (C2).
            return Ok(Decided::Proxy(route));
        }
        return Err(Error::bad_request(format!(
            "{set} is not an entity set the gateway can track"
        )));
    }
    // `/$count` answers text/plain; every other tracked answer is JSON (C32).
    let format = if op == Operation::Count {
        Default::default()
    } else {
        let accept = req
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        crate::odata::format::negotiate(query.format.as_deref(), Some(&accept)).map_err(|e| {
            Error::client(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", e.to_string())
        })?
    };
    app.metrics
        .requests
        .get_or_create(&crate::metrics::RequestKind::new(op_label(op)))
        .inc();
    // The public base is read from the head alone.
    let mut probe = Request::new(());
    *probe.uri_mut() = req.uri.clone();
    *probe.headers_mut() = req.headers.clone();
    let public_root = format!(
        "{}{}",
        router::public_base(app, &probe, peer),
        service.route.prefix
    );
    let tracked = TrackedRequest {
        route: service.route.prefix.clone(),
        service_root: service.route.upstream.clone(),
        set_name: set,
        set: set_spec,
        public_root,
        version,
        prefs,
        query,
        scope: router::scope_of(&app.config.identity, &app.scope_key, &req.headers),
        headers: req.headers.clone(),
        format,
    };
    let gzip = crate::compress::accepts_gzip(&req.headers);
    let answer = tokio::time::timeout_at(deadline, respond::answer(app, op, tracked))
        .await
        .map_err(|_| past_deadline())??;
    match answer {
        Answer::Response(response) => {
            Ok(Decided::Answer(crate::compress::negotiate(response, gzip)))
        }
        Answer::PassThrough => Ok(Decided::Proxy(route)),
    }
}

/// The length of the URI as written (`Uri`'s `Display`), without writing it.
fn uri_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1)
}

/// Resolve the dot segments of the request path before anything looks at it (C37), and refuse
/// a path that climbs out of the route it was sent to: an upstream, or a proxy before it, that
/// resolves them itself would otherwise serve what lies outside the service root.
fn normalize_path(
    services: &[router::Service],
    req: &mut http::request::Parts,
) -> Result<(), Error> {
    let raw = req.uri.path();
    let resolved = router::remove_dot_segments(raw).map_err(|_| {
        Error::bad_request(
            "the request path has a segment that decodes to '..'; send the path without it",
        )
    })?;
    if resolved == raw {
        return Ok(());
    }
    let addressed = services
        .iter()
        .find(|s| router::below_prefix(raw, &s.route.prefix).is_some());
    if let Some(service) = addressed
        && router::below_prefix(&resolved, &service.route.prefix).is_none()
    {
        return Err(Error::bad_request(format!(
            "the request path leaves the service root {}",
            service.route.prefix
        )));
    }
    let path_and_query = match req.uri.query() {
        Some(q) => format!("{resolved}?{q}"),
        None => resolved.into_owned(),
    };
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| Error::bad_request("the request path cannot be read"))?,
    );
    req.uri = http::Uri::from_parts(parts)
        .map_err(|_| Error::bad_request("the request path cannot be read"))?;
    Ok(())
}

/// Options that would change the answer but that a delta link, a next link or `latest` cannot
/// honour: its query was fixed when the link was issued.
fn refuse_options_a_link_ignores(op: Operation, query: &ODataQuery) -> Result<(), Error> {
    let from_link = matches!(op, Operation::Delta | Operation::Count | Operation::Page)
        || query.deltatoken.as_deref() == Some("latest");
    if !from_link {
        return Ok(());
    }
    if let Some(name) = query.untrackable.first() {
        return Err(Error::bad_request(format!(
            "{name} cannot be used with a delta or next link: the gateway cannot track changes of its result"
        )));
    }
    if op != Operation::Page && query.skiptoken.is_some() {
        return Err(Error::bad_request(
            "$skiptoken cannot be added to a delta link: follow the next links the gateway returns",
        ));
    }
    Ok(())
}

fn op_label(op: Operation) -> &'static str {
    match op {
        Operation::Initial => "initial",
        Operation::Delta => "delta",
        Operation::Page => "page",
        Operation::Count => "count",
    }
}

/// The answer to `OPTIONS` on a delta or next link of the gateway: what it serves there (C31).
fn allow_tracked() -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    response
}

/// Take the track-changes preference out of a request the gateway does not track, keeping the
/// other preferences: an upstream that tracks changes itself would otherwise answer with delta
/// links of its own, which the gateway rewrites onto itself and cannot serve (C2, C36).
pub(crate) fn strip_track_changes(headers: &mut http::HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all("prefer").iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    headers.remove("prefer");
    for value in values {
        let kept = match value.to_str() {
            Ok(text) => crate::odata::prefer::without_track_changes(text)
                .and_then(|kept| HeaderValue::from_str(&kept).ok()),
            Err(_) => Some(value),
        };
        if let Some(kept) = kept {
            headers.append("prefer", kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_length_is_the_length_of_the_written_uri() {
        for uri in [
            "/",
            "/odata/v4/shop/Products(1)",
            "/odata/v4/shop/Products?$top=1&$skip=2",
            "/a?",
            "*",
            "http://example.com:8080/x?y=1",
            "http://example.com",
            "example.com:443",
        ] {
            let parsed: http::Uri = uri.parse().unwrap();
            assert_eq!(uri_len(&parsed), parsed.to_string().len(), "{uri}");
        }
    }
}

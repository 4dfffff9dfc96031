//! Listeners and the request pipeline: accept connections (HTTP/1.1 and HTTP/2), run each request
//! through the tower stack (request id → tracing → panic guard → handler), drain in-flight requests on
//! shutdown. The admin listener serves `/metrics`, `/healthz` and `/readyz`. Before a request is
//! routed, its path is resolved and bounded (C37); `refusals` gives heads that hyper refuses on
//! its own the same OData error answer.

mod refusals;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::body::{self, Body};
use crate::error::{Error, UpstreamFailure};
use crate::odata::prefer::Preferences;
use crate::odata::query::ODataQuery;
use crate::odata::{ODataVersion, names};
use crate::router::{self, Decision};
use crate::track::respond::{self, Answer, Operation, TrackedRequest};
use crate::{App, Shared};

/// How long in-flight requests may run on after shutdown was asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A started gateway.
pub struct Running {
    /// Where the gateway listens.
    pub addr: SocketAddr,
    /// Where the admin endpoints listen, if enabled.
    pub admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop accepting, drain in-flight requests, and wait until done.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Wait until the gateway stops (after `cancel` on the token given to [`start`]).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Bind the listeners of `app` and serve until `shutdown` is cancelled.
pub async fn start(app: App, shutdown: CancellationToken) -> std::io::Result<Running> {
    let listener = TcpListener::bind(app.config.listen).await?;
    let addr = listener.local_addr()?;
    let admin = match app.config.admin_listen {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    tracing::info!(%addr, admin = ?admin_addr, "gateway listening");
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        if let Some(admin) = admin {
            tokio::spawn(serve_admin(app.clone(), admin, token.clone()));
        }
        let retention = tokio::spawn(crate::track::retention::run(app.clone(), token.clone()));
        serve(app, listener, token).await;
        let _ = retention.await;
    });
    Ok(Running {
        addr,
        admin_addr,
        shutdown,
        task,
    })
}

fn connection_builder(app: &Shared) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // hyper refuses heads beyond its buffer with a bare 431; it gets room to spare so that a
        // head over our limit reaches `route`, which answers with an OData error.
        .max_buf_size(
            app.config
                .limits
                .max_header_bytes
                .saturating_mul(2)
                .max(16 * 1024),
        )
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(app.config.limits.header_read_timeout);
    builder
        .http2()
        .max_header_list_size(app.config.limits.max_header_bytes as u32)
        .timer(hyper_util::rt::TokioTimer::new());
    builder
}

async fn serve(app: App, listener: TcpListener, shutdown: CancellationToken) {
    let builder = connection_builder(&app);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(
        app.config.limits.max_connections,
    ));
    loop {
        // At the connection limit, stop accepting until one closes (backpressure, not errors).
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let head_timeout = app.config.limits.header_read_timeout;
        let app = app.clone();
        let service = ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                // The handler runs in its own task so that a panic in it becomes a 500 for this
                // request instead of a dropped connection.
                async move {
                    let span = request_span(&req);
                    let response = match tokio::spawn(tracing::Instrument::instrument(
                        handle(app, req, peer),
                        span,
                    ))
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Error::Internal("a request handler panicked".into())
                            .into_response(ODataVersion::V40),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // hyper's header timer starts only once it knows the protocol; until then a silent
            // client would hold its connection (and a connection slot) for ever.
            let started = tokio::select! {
                _ = shutdown.cancelled() => false,
                started = protocol_starts(&stream, head_timeout) => started,
            };
            if !started {
                tracing::debug!(%peer, "closing a connection that sent no request in time");
                return;
            }
            let connection = builder
                .serve_connection(
                    refusals::RefusalBodies::new(TokioIo::new(stream)),
                    TowerToHyperService::new(service),
                )
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time; closing");
    }
}

/// The HTTP/2 connection preface; hyper tells HTTP/1 from HTTP/2 by it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Wait until a new connection has sent enough for hyper to pick the protocol (the HTTP/2
/// preface, or bytes that cannot start it), at most `limit`. `false` when it did not; an
/// end of stream counts as started, for hyper to close.
async fn protocol_starts(stream: &tokio::net::TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return false,
        };
        if n == 0 || n == buf.len() || buf[..n] != H2_PREFACE[..n] {
            return true;
        }
        if n == seen {
            // `peek` answers at once while the bytes it saw are still unread: poll instead.
            tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(20)),
            )
            .await;
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
        seen = n;
    }
}

fn request_span(req: &Request<Incoming>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", id, method = %req.method(), path = %req.uri().path())
}

/// Answer one request: classify, then proxy or track. Never fails: errors become OData error
/// responses here.
pub async fn handle(app: App, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    app.metrics.in_flight.inc();
    let started = std::time::Instant::now();
    let version = ODataVersion::negotiate(
        req.headers()
            .get(names::ODATA_MAX_VERSION)
            .and_then(|v| v.to_str().ok()),
    );
    let mut response = match route(&app, req, peer, version).await {
        Ok(r) => r,
        Err(e) => e.into_response(version),
    };
    app.metrics.in_flight.dec();
    tracing::info!(
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "answered"
    );
    if !response.headers().contains_key(names::ODATA_VERSION) {
        response.headers_mut().insert(
            names::ODATA_VERSION,
            HeaderValue::from_static(version.header_value()),
        );
    }
    response
}

async fn route(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
    version: ODataVersion,
) -> Result<Response<Body>, Error> {
    let (mut parts, incoming) = req.into_parts();
    let route = match route_head(app, &mut parts, peer, version).await? {
        Routed::Answer(response) => return Ok(response),
        Routed::Proxy(route) => route,
    };
    let service = &app.services[route];
    let addressed = router::below_prefix(parts.uri.path(), &service.route.prefix);
    if parts.method == Method::POST && addressed == Some("$batch") {
        return crate::batch::answer(app, parts, incoming, peer, route).await;
    }
    let metadata = parts.method == Method::GET && addressed == Some("$metadata");
    let response = proxy(app, Request::from_parts(parts, incoming), peer, route).await?;
    if metadata {
        return Ok(crate::discovery::metadata_response(app, service, response).await);
    }
    Ok(response)
}

/// What the gateway does with a request, decided from its head alone.
pub(crate) enum Routed {
    /// Answered by the gateway (a tracked request, or an error).
    Answer(Response<Body>),
    /// To be forwarded to the upstream of this route.
    Proxy(usize),
}

/// Check, normalize and route a request head; answer it when the gateway tracks it. The one
/// path of every request, whether it came alone or as a part of a `$batch` (C34).
pub(crate) async fn route_head(
    app: &App,
    req: &mut http::request::Parts,
    peer: SocketAddr,
    version: ODataVersion,
) -> Result<Routed, Error> {
    let uri_bytes = req.uri.to_string().len();
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
        Decision::Proxy { route } => return Ok(Routed::Proxy(route)),
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
            return Ok(Routed::Proxy(route));
        }
        return Err(Error::bad_request(format!(
            "{set} is not an entity set the gateway can track"
        )));
    }
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
    };
    let answer = tokio::time::timeout_at(deadline, respond::answer(app, op, tracked))
        .await
        .map_err(|_| past_deadline())??;
    match answer {
        Answer::Response(response) => Ok(Routed::Answer(response)),
        Answer::PassThrough => Ok(Routed::Proxy(route)),
    }
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

async fn proxy(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
    route: usize,
) -> Result<Response<Body>, Error> {
    app.metrics
        .requests
        .get_or_create(&crate::metrics::RequestKind::new("proxy"))
        .inc();
    let service = &app.services[route];
    let prefix = &service.route.prefix;
    let upstream_root = service
        .route
        .upstream
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let rest = req.uri().path().strip_prefix(prefix.as_str()).unwrap_or("");
    let mut upstream_url = format!("{upstream_root}{rest}");
    if let Some(q) = req.uri().query() {
        upstream_url.push('?');
        upstream_url.push_str(q);
    }
    let public_root = format!("{}{}", router::public_base(app, &req, peer), prefix);
    crate::proxy::forward(app, req, &upstream_url, &upstream_root, &public_root).await
}

/// Whether the store answers, read on the blocking pool like every store call.
async fn ready(app: &App) -> Result<(), Error> {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.token_secret()).await??;
    Ok(())
}

async fn serve_admin(app: App, listener: TcpListener, shutdown: CancellationToken) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(admin(&app, &req).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn admin(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut r = Response::new(body::full(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            app.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        (&Method::GET, "/readyz") => match ready(app).await {
            Ok(_) => text(StatusCode::OK, "ready\n".into(), "text/plain"),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable\n".into(),
                "text/plain",
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

//! Listeners and the request pipeline: accept connections (HTTP/1.1 and HTTP/2), run each request
//! through the tower stack (request id → tracing → panic guard → handler), drain in-flight requests on
//! shutdown. The admin listener serves the status page (`/`), `/metrics`, `/healthz` and `/readyz`. What happens to a
//! request is decided from its head in `decide` (bounds, path, route, tracked answer); `refusals`
//! gives heads that hyper refuses on its own the same OData error answer.

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
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::body::{self, Body};
use crate::decide::{self, Decided};
use crate::error::Error;
use crate::odata::{ODataVersion, names};
use crate::router;
use crate::{App, Shared};

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

/// Longest a stopping gateway waits for compactions under way (each is one transaction per batch,
/// so one cut short loses nothing).
const COMPACTION_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest a stopping gateway waits for refreshes still ending once no request waits for them (a
/// refresh killed half-way commits nothing, so one cut short loses nothing either).
const REFRESH_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
        let schedule = tokio::spawn(crate::track::schedule::run(app.clone(), token.clone()));
        serve(app.clone(), listener, token).await;
        let _ = retention.await;
        let _ = schedule.await;
        app.feeds.refreshes_ended(REFRESH_SHUTDOWN_WAIT).await;
        app.feeds.compactions_ended(COMPACTION_SHUTDOWN_WAIT).await;
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
    let request_ids = RequestIds::new();
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
        // Small answers go out at once instead of waiting for the client's ACK (Nagle).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY");
        }
        let head_timeout = app.config.limits.header_read_timeout;
        let app = app.clone();
        let service = ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(request_ids.clone()))
            .layer(PropagateRequestIdLayer::x_request_id())
            .service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                let span = request_span(&req);
                // A panic in the handler becomes a 500 for this request instead of a dropped
                // connection. Caught on the connection's own task: a task per request would cost a
                // spawn and a wake-up on every pass-through.
                let handled = CatchPanic(Box::pin(tracing::Instrument::instrument(
                    handle(app, req, peer),
                    span,
                )));
                async move {
                    let response = handled.await.unwrap_or_else(|()| {
                        Error::Internal("a request handler panicked".into())
                            .into_response(ODataVersion::V40)
                    });
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
    let grace = app.config.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        // Refreshes still running are dropped with the runtime at their next await: a refresh
        // commits in one transaction at its end, so an abandoned one leaves nothing behind.
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "in-flight requests did not finish within shutdown_grace; abandoning them, nothing partial is committed"
        );
    }
}

/// Request ids for requests that come without an `X-Request-Id`: a random prefix drawn once per
/// process and a counter, spelled like a UUID. Unique within a run and, with 64 random bits,
/// across runs, without a `getrandom` system call per request.
#[derive(Clone)]
struct RequestIds {
    prefix: u64,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        // Without entropy the prefix still separates runs by start time.
        let prefix = match getrandom::fill(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        };
        RequestIds {
            prefix,
            next: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = self.prefix;
        let id = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            p >> 32,
            (p >> 16) & 0xffff,
            p & 0xffff,
            n >> 48,
            n & 0xffff_ffff_ffff
        );
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// A future whose panics end it with `Err(())` instead of unwinding into the connection.
struct CatchPanic<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        // The future is dropped after a panic and never polled again, so whatever state the
        // panic left it in cannot be observed.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
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
        .get(names::REQUEST_ID)
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
    let (mut response, passed_through) = match route(&app, req, peer, version).await {
        Ok(Routed::Tracked(r)) => (r, false),
        Ok(Routed::PassedThrough(r)) => (r, true),
        Err(e) => (e.into_response(version), false),
    };
    app.metrics.in_flight.dec();
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    // A line per pass-through would cost more than the hop itself (formatting and a write to
    // stderr per request); those that went well are logged at debug, like an access log that
    // is off by default. Tracked requests, refusals and failures stay at info.
    if passed_through && status < 500 {
        tracing::debug!(status, ms, "answered");
    } else {
        tracing::info!(status, ms, "answered");
    }
    if !response.headers().contains_key(names::ODATA_VERSION) {
        response.headers_mut().insert(
            names::ODATA_VERSION,
            HeaderValue::from_static(version.header_value()),
        );
    }
    response
}

/// A response and whether the gateway answered it itself or relayed the upstream's.
enum Routed {
    Tracked(Response<Body>),
    PassedThrough(Response<Body>),
}

async fn route(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
    version: ODataVersion,
) -> Result<Routed, Error> {
    let (mut parts, incoming) = req.into_parts();
    let route = match decide::route_head(app, &mut parts, peer, version).await? {
        Decided::Answer(response) => return Ok(Routed::Tracked(response)),
        Decided::Proxy(route) => route,
        Decided::Subscriptions { route, item } => {
            return crate::track::subscriptions::api::answer(
                app, parts, incoming, peer, route, item, version,
            )
            .await
            .map(Routed::Tracked);
        }
    };
    let service = &app.services[route];
    let addressed = router::below_prefix(parts.uri.path(), &service.route.prefix);
    if parts.method == Method::POST && addressed == Some("$batch") {
        return crate::batch::answer(app, parts, incoming, peer, route)
            .await
            .map(Routed::Tracked);
    }
    let metadata = parts.method == Method::GET && addressed == Some("$metadata");
    let response = proxy(app, Request::from_parts(parts, incoming), peer, route).await?;
    if metadata {
        return Ok(Routed::PassedThrough(
            crate::discovery::metadata_response(app, service, response).await,
        ));
    }
    Ok(Routed::PassedThrough(response))
}

async fn proxy(
    app: &App,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    route: usize,
) -> Result<Response<Body>, Error> {
    decide::strip_track_changes(req.headers_mut());
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
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let mut response = crate::proxy::forward(
        app,
        app.upstream_of(service),
        req,
        &upstream_url,
        &upstream_root,
        &public_root,
    )
    .await?;
    if read {
        // The same URL is answered by the gateway with change tracking when the request prefers
        // it: a cache must not hand this answer to such a request (RFC 7240 §2, C30).
        vary_on_prefer(response.headers_mut());
    }
    Ok(response)
}

/// Add `Prefer` to the `Vary` of an answer, keeping what the upstream put there.
fn vary_on_prefer(headers: &mut http::HeaderMap) {
    let covered = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| {
            let name = name.trim();
            name == "*" || name.eq_ignore_ascii_case("prefer")
        });
    if !covered {
        headers.append(header::VARY, HeaderValue::from_static("Prefer"));
    }
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
        (&Method::GET, "/metrics") => {
            app.sample_gauges().await;
            text(
                StatusCode::OK,
                app.metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        (&Method::GET, "/") => match crate::status::page(app).await {
            Ok(html) => {
                let mut r = text(StatusCode::OK, html, "text/html; charset=utf-8");
                // Nothing on the page loads or runs anything; a value that slipped through the
                // escaping could not either.
                r.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
                );
                r
            }
            Err(e) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("status unavailable: {e}\n"),
                "text/plain",
            ),
        },
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

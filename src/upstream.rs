//! The pooled HTTP clients the gateway talks to upstreams with (HTTP/1.1 and HTTP/2, plain or TLS
//! via rustls), with the timeouts and size limits that keep a slow or hostile upstream from holding
//! the gateway, and the origin guard that keeps enumerations on the upstream's service root.
//!
//! One default client serves every route without TLS settings; a route with `[route.tls]` gets a
//! client (and so a connection pool) of its own, so that two routes on one origin with different
//! roots or client certificates never share a connection.

mod tls;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::body::Body;
use crate::compress;
use crate::config::{RouteTls, UpstreamConfig};
use crate::error::{Error, UpstreamFailure};
use crate::metrics::StatusClass;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Idle keep-alive connections kept per upstream host. Every pass-through in flight holds one
/// connection, so a pool smaller than the clients' concurrency closes connections after each burst
/// and opens new ones on the next (with 32, a `-c64` load reconnected all the time). Idle ones close
/// after a minute.
const POOL_MAX_IDLE_PER_HOST: usize = 512;

/// A cheap-to-clone handle on the pooled client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, Body>,
    timeout: Duration,
    /// Every request is counted here by the class of its answer.
    requests: Family<StatusClass, Counter>,
}

/// A whole upstream response read into memory (bounded).
#[derive(Debug)]
pub struct Fetched {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Upstream {
    /// Build the client; `requests` counts what it sends. Without `tls` it trusts the bundled web
    /// PKI roots and presents no client certificate.
    pub fn new(
        config: &UpstreamConfig,
        requests: Family<StatusClass, Counter>,
        tls: Option<&RouteTls>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match tls {
            None => builder.with_webpki_roots(),
            Some(tls) => builder.with_tls_config(rustls::ClientConfig::clone(&tls.client)),
        };
        let https = builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(https);
        Upstream {
            client,
            timeout: config.timeout,
            requests,
        }
    }

    /// Send a request and wait for the response head (bounded by the upstream timeout). The body is
    /// left to the caller to stream.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, Error> {
        let authority = request.uri().authority().cloned();
        let result = tokio::time::timeout(self.timeout, self.client.request(request)).await;
        let status = match &result {
            Ok(Ok(response)) => Some(response.status()),
            _ => None,
        };
        self.requests.get_or_create(&StatusClass::of(status)).inc();
        match result {
            Err(_) => Err(Error::upstream(
                UpstreamFailure::Timeout,
                "the upstream did not answer in time",
            )),
            Ok(Err(e)) => {
                if caused_by_body_limit(&e) {
                    // The client's streamed body outgrew the limit while it was being forwarded.
                    return Err(Error::client(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "PayloadTooLarge",
                        "the request body is larger than the gateway's limit",
                    ));
                }
                if let Some(cause) = tls::failure(&e) {
                    let upstream = authority.as_ref().map(|a| a.as_str()).unwrap_or("");
                    tracing::warn!(upstream, cause, error = ?e, "TLS with the upstream failed");
                    return Err(Error::upstream(UpstreamFailure::Tls, cause));
                }
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
                Err(Error::upstream(
                    UpstreamFailure::Unreachable,
                    "the upstream cannot be reached",
                ))
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Send a request and read the whole response, at most `max_bytes`, within the upstream timeout.
    pub async fn fetch(&self, request: Request<Body>, max_bytes: usize) -> Result<Fetched, Error> {
        let too_large = || {
            Error::upstream(
                UpstreamFailure::BadAnswer,
                format!("an upstream response is larger than the limit of {max_bytes} bytes"),
            )
        };
        let broke = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "upstream body failed");
            Error::upstream(
                UpstreamFailure::Unreachable,
                "the upstream connection broke while reading a response",
            )
        };
        let read = async {
            let response = self.send(request).await?;
            let (mut parts, body) = response.into_parts();
            let coding = compress::coding(&parts.headers).map_err(|c| {
                Error::upstream(
                    UpstreamFailure::BadAnswer,
                    format!("the upstream answered with Content-Encoding {c}, which the gateway did not ask for"),
                )
            })?;
            let mut body = Limited::new(body, max_bytes);
            let body = match coding {
                compress::Coding::Identity => body
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.is::<http_body_util::LengthLimitError>() {
                            too_large()
                        } else {
                            broke(&e)
                        }
                    })?
                    .to_bytes(),
                compress::Coding::Gzip => {
                    // The decoded size is what counts against the limit: a small body that
                    // inflates beyond it fails like a large one.
                    let mut inflater = compress::Inflater::new(max_bytes);
                    while let Some(frame) = body.frame().await {
                        let frame = frame.map_err(|e| {
                            if e.is::<http_body_util::LengthLimitError>() {
                                too_large()
                            } else {
                                broke(&e)
                            }
                        })?;
                        if let Ok(data) = frame.into_data() {
                            inflater
                                .push(&data)
                                .await
                                .map_err(|e| inflate_error(e, &too_large))?;
                        }
                    }
                    let decoded = inflater
                        .finish()
                        .map_err(|e| inflate_error(e, &too_large))?;
                    parts.headers.remove(http::header::CONTENT_ENCODING);
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                    Bytes::from(decoded)
                }
            };
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, read).await {
            Err(_) => Err(Error::upstream(
                UpstreamFailure::Timeout,
                "the upstream did not answer in time",
            )),
            Ok(result) => result,
        }
    }
}

fn inflate_error(e: compress::InflateError, too_large: &dyn Fn() -> Error) -> Error {
    match e {
        compress::InflateError::TooLarge => too_large(),
        compress::InflateError::Corrupt => Error::upstream(
            UpstreamFailure::BadAnswer,
            "the upstream sent a gzip body that cannot be decoded",
        ),
    }
}

/// Whether an error was caused by a request body exceeding its `Limited` bound.
fn caused_by_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// Resolve a link the upstream gave us (relative to the service root, root-relative, or absolute)
/// and accept it only if it stays on the upstream's origin and under its service root: a nextLink
/// elsewhere is never followed (no SSRF). `$deltatoken` is stripped, since some upstreams copy
/// unknown tokens into their links.
pub fn resolve_link(service_root: &Url, link: &str) -> Result<Url, Error> {
    // Relative links are relative to the service root (the context URL's base), which needs a
    // trailing slash to resolve `Customers?…` beneath it.
    let mut base = service_root.clone();
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    let url = base.join(link).map_err(|_| {
        Error::upstream(
            UpstreamFailure::BadAnswer,
            "the upstream sent a nextLink that is not a URL",
        )
    })?;
    let same_origin = url.scheme() == service_root.scheme()
        && url.host_str() == service_root.host_str()
        && url.port_or_known_default() == service_root.port_or_known_default();
    if !same_origin
        || !url.path().starts_with(base.path())
        || url.username() != ""
        || url.password().is_some()
    {
        tracing::warn!(
            link,
            "upstream nextLink leaves the service root; refusing to follow it"
        );
        return Err(Error::upstream(
            UpstreamFailure::BadAnswer,
            "the upstream sent a nextLink outside its service root; it was not followed",
        ));
    }
    Ok(strip_deltatoken(url))
}

fn strip_deltatoken(mut url: Url) -> Url {
    let Some(query) = url.query() else { return url };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            !name.eq_ignore_ascii_case("$deltatoken") && !name.eq_ignore_ascii_case("%24deltatoken")
        })
        .collect();
    let kept = kept.join("&");
    url.set_query(if kept.is_empty() { None } else { Some(&kept) });
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_resolve_relative_to_the_service_root() {
        let root = Url::parse("http://up:4004/odata/v4/shop").unwrap();
        let r = |l: &str| resolve_link(&root, l).map(|u| u.to_string());
        assert_eq!(
            r("Customers?$skiptoken=5").unwrap(),
            "http://up:4004/odata/v4/shop/Customers?$skiptoken=5"
        );
        assert_eq!(
            r("/odata/v4/shop/Customers?x=1").unwrap(),
            "http://up:4004/odata/v4/shop/Customers?x=1"
        );
        assert_eq!(
            r("http://up:4004/odata/v4/shop/Customers?$deltatoken=abc&$skiptoken=9").unwrap(),
            "http://up:4004/odata/v4/shop/Customers?$skiptoken=9"
        );
    }

    #[test]
    fn next_links_off_the_upstream_are_refused() {
        let root = Url::parse("http://up:4004/odata/v4/shop").unwrap();
        for bad in [
            "http://evil:4004/odata/v4/shop/Customers",
            "http://up:4005/odata/v4/shop/Customers",
            "https://up:4004/odata/v4/shop/Customers",
            "/admin/secrets",
            "../../other/Customers",
            "http://user:pw@up:4004/odata/v4/shop/C",
            "/odata/v4/shopping/C",
        ] {
            assert!(resolve_link(&root, bad).is_err(), "{bad}");
        }
    }
}

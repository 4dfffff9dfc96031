//! Reading from the upstream during a refresh: one GET with the feed's forwarded credentials, our
//! own `Accept`/`Prefer`/`OData-MaxVersion`, 429/503 retried after `Retry-After` within a budget
//! shared by the whole refresh, at most `limits.max_pages_per_refresh` pages in all, and none
//! past the refresh's deadline (`limits.refresh_timeout`). The deadline is kept here, where the
//! refresh waits, rather than by cancelling the refresh from outside: a refresh cut off at any
//! await could leave a first load's batch being written after it failed. Cheap to clone, so the
//! next page can be fetched while the current one is hashed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, header};
use url::Url;

use crate::Shared;
use crate::body;
use crate::error::{Error, UpstreamFailure};
use crate::upstream::Fetched;

/// Headers never forwarded on enumeration requests: hop-by-hop ones, and those we set ourselves or
/// that would change what the upstream returns. `X-Request-Id` is forwarded on purpose: upstream
/// requests carry the id of the client request that caused them (tests/request_id.rs).
const NOT_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "expect",
    "prefer",
    "accept",
    "accept-encoding",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "range",
    "odata-maxversion",
    "odata-version",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
];

/// The request headers of a tracked request that go upstream with its enumerations.
pub fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// GETs for one refresh.
#[derive(Clone)]
pub struct Fetcher {
    shared: Arc<Shared>,
    /// Credentials and other end-to-end headers of the request that asked for the refresh.
    headers: Arc<HeaderMap>,
    /// Entity set, for messages.
    set: Arc<str>,
    /// 429/503 retries left for the whole refresh.
    retries_left: Arc<AtomicU32>,
    /// Pages left for the whole refresh: paging that never ends (a nextLink cycle the link check
    /// misses, a read-on that keeps getting rows) stops here instead of holding the feed.
    requests_left: Arc<AtomicU64>,
    /// When the refresh must have read everything.
    deadline: Instant,
    /// The route's upstream client.
    upstream: crate::upstream::Upstream,
    /// The feed is read with `IEEE754Compatible=true`, which the upstream is asked for in
    /// `Accept` (C32).
    ieee754: bool,
}

impl Fetcher {
    /// A fetcher with the refresh's retry budget, on the client of the route with prefix `route`.
    pub fn new(shared: Arc<Shared>, route: &str, headers: HeaderMap, set: &str) -> Self {
        let retries = shared.config.upstream.max_retries;
        Fetcher {
            upstream: shared.upstream_for(route).clone(),
            headers: Arc::new(headers),
            set: Arc::from(set),
            retries_left: Arc::new(AtomicU32::new(retries)),
            requests_left: Arc::new(AtomicU64::new(shared.config.limits.max_pages_per_refresh)),
            deadline: Instant::now() + shared.config.limits.refresh_timeout,
            ieee754: false,
            shared,
        }
    }

    /// Ask the upstream for `IEEE754Compatible=true` JSON (or not).
    pub(crate) fn ieee754(mut self, on: bool) -> Self {
        self.ieee754 = on;
        self
    }

    /// [`Fetcher::get`] for a page whose number the upstream decides — the enumeration's, the
    /// read-on's, and every page a removal check is continued on by a nextLink — counted against
    /// `limits.max_pages_per_refresh`. The first page of each removal check is not: their number
    /// is bounded by the candidates, and a feed whose rows went in bulk must still be confirmable
    /// one key at a time.
    pub async fn get_page(&self, url: &Url, on_refusal: OnRefusal) -> Result<Bytes, Error> {
        let limit = self.shared.config.limits.max_pages_per_refresh;
        if self
            .requests_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            tracing::warn!(set = %self.set, limit, "the refresh reached its page cap");
            return Err(Error::upstream(
                UpstreamFailure::BadAnswer,
                format!(
                    "reading {} took more than the limit of {limit} upstream pages per refresh; nothing was committed",
                    self.set
                ),
            ));
        }
        self.get(url, on_refusal).await
    }

    /// GET an upstream URL and return the body of a 2xx answer; other answers are handled as
    /// `on_refusal` says.
    pub async fn get(&self, url: &Url, on_refusal: OnRefusal) -> Result<Bytes, Error> {
        let fetched = self.get_status(url).await?;
        let status = fetched.status;
        if status.is_success() {
            return Ok(fetched.body);
        }
        match on_refusal {
            OnRefusal::FallBack if matches!(status.as_u16(), 401 | 403) => {
                return Err(passed_on(&fetched));
            }
            OnRefusal::FallBack if status.as_u16() != 429 => {
                return Err(rejected());
            }
            OnRefusal::Reworded if status == http::StatusCode::BAD_REQUEST => {
                return Err(rejected());
            }
            OnRefusal::PassOn
                if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) =>
            {
                return Err(passed_on(&fetched));
            }
            _ => {}
        }
        tracing::warn!(set = %self.set, %status, url = %url, "upstream page failed");
        Err(Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "the upstream answered {status} while {} was read; nothing was committed",
                self.set
            ),
        ))
    }

    /// The error for a refresh that read the upstream for longer than `limits.refresh_timeout`.
    fn deadline_passed(&self) -> Error {
        let limit = self.shared.config.limits.refresh_timeout;
        tracing::warn!(set = %self.set, limit_s = limit.as_secs_f64(), "the refresh ran out of time");
        Error::upstream(
            UpstreamFailure::Timeout,
            format!(
                "reading {} from the upstream took longer than the refresh timeout of {}s; nothing was committed",
                self.set,
                limit.as_secs_f64()
            ),
        )
    }

    /// GET an upstream URL; 429/503 are retried after their `Retry-After` while the budget lasts.
    pub async fn get_status(&self, url: &Url) -> Result<Fetched, Error> {
        loop {
            let mut request = Request::builder()
                .method(Method::GET)
                .uri(url.as_str())
                .body(body::empty())
                .map_err(|e| Error::Internal(format!("cannot build an upstream request: {e}")))?;
            let headers = request.headers_mut();
            headers.extend(self.headers.as_ref().clone());
            let accept = if self.ieee754 {
                crate::odata::query::IEEE754_FORMAT
            } else {
                "application/json"
            };
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            // Pages are JSON and compress well; the fetch inflates them under the page limit.
            headers.insert(
                header::ACCEPT_ENCODING,
                crate::compress::UPSTREAM_ACCEPT_ENCODING,
            );
            headers.insert("odata-maxversion", HeaderValue::from_static("4.0"));
            let prefer = format!(
                "odata.maxpagesize={}",
                self.shared.config.upstream.page_size
            );
            if let Ok(v) = HeaderValue::from_str(&prefer) {
                headers.insert("prefer", v);
            }
            let fetch = self
                .upstream
                .fetch(request, self.shared.config.limits.max_page_bytes);
            let fetched = tokio::time::timeout_at(self.deadline, fetch)
                .await
                .map_err(|_| self.deadline_passed())??;
            let status = fetched.status;
            let retry = matches!(status.as_u16(), 429 | 503)
                && self
                    .retries_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if retry {
                let wait = retry_after(&fetched.headers)
                    .unwrap_or(Duration::from_secs(1))
                    .min(self.shared.config.upstream.max_retry_wait);
                tracing::info!(set = %self.set, %status, wait_ms = wait.as_millis() as u64, "upstream asks to retry");
                if Instant::now() + wait >= self.deadline {
                    return Err(self.deadline_passed());
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            return Ok(fetched);
        }
    }
}

/// The upstream's refusal of the client's request or credentials, passed on as it came.
pub(crate) fn passed_on(fetched: &Fetched) -> Error {
    Error::Rejected {
        status: fetched.status,
        message: upstream_message(&fetched.body),
        code: upstream_code(&fetched.body),
        challenge: fetched.headers.get(header::WWW_AUTHENTICATE).cloned(),
    }
}

/// What a non-2xx answer means to the caller of [`Fetcher::get`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRefusal {
    /// Any non-2xx fails the refresh (a later page: the upstream is inconsistent).
    Fail,
    /// Any refusal but 401, 403 and 429 means "this form of query is not supported" (servers
    /// say so with 400, 501 or even 500): the caller tries another. 401/403 are passed on.
    FallBack,
    /// A 4xx refuses the client's own query or credentials (the first page of a read): the
    /// client gets the upstream's status and message.
    PassOn,
    /// A link of the upstream's that we reworded: a 400 refuses the rewording ([`rejected`]),
    /// and the caller follows the link as written; anything else fails the refresh as with `Fail`.
    Reworded,
}

/// The message of an upstream OData error body, shortened; a generic one when there is none.
fn upstream_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| "no reason given".to_owned());
    message.chars().take(300).collect()
}

/// The code of an upstream OData error body, when it is a short identifier-like string: it goes
/// to the client as the error's code (C26 needs a non-empty one; odd text is not passed on).
fn upstream_code(body: &[u8]) -> Option<String> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let code = value["error"]["code"].as_str()?.trim();
    let usable = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b':'));
    usable.then(|| code.to_owned())
}

/// `Retry-After` as seconds (HTTP dates are not worth the parsing; they fall back to the default).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A GET running in its own task; aborted if dropped unawaited (a failed refresh stops reading).
pub struct Prefetch(tokio::task::JoinHandle<Result<Bytes, Error>>);

impl Prefetch {
    /// Start fetching `url`.
    pub fn start(fetcher: &Fetcher, url: Url, on_refusal: OnRefusal) -> Self {
        let fetcher = fetcher.clone();
        Prefetch(tokio::spawn(async move {
            fetcher.get_page(&url, on_refusal).await
        }))
    }

    /// The body, once fetched.
    pub async fn wait(&mut self) -> Result<Bytes, Error> {
        (&mut self.0).await?
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The marker error for "the upstream rejected this form of query": removal confirmation steps
/// down to a simpler form (see [`crate::track::feed::ConfirmStrategy`]).
pub(crate) fn rejected() -> Error {
    Error::upstream(UpstreamFailure::BadAnswer, REJECTED)
}

const REJECTED: &str = "the upstream rejected the query";

/// Whether `e` is [`rejected`]'s.
pub(crate) fn is_rejected(e: &Error) -> bool {
    matches!(e, Error::Upstream { message, .. } if message == REJECTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_forwarded_but_not_hop_by_hop_or_our_own_headers() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("prefer", HeaderValue::from_static("odata.track-changes"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        let f = forwarded_headers(&h);
        assert!(f.contains_key("authorization") && f.contains_key("x-api-key"));
        assert!(!f.contains_key("connection") && !f.contains_key("prefer"));
    }

    #[test]
    fn upstream_error_codes_are_kept_when_they_are_identifiers() {
        let code = |body: &str| upstream_code(body.as_bytes());
        assert_eq!(
            code(r#"{"error":{"code":"InvalidFilter","message":"x"}}"#).as_deref(),
            Some("InvalidFilter")
        );
        assert_eq!(
            code(r#"{"error":{"code":"400","message":"x"}}"#).as_deref(),
            Some("400")
        );
        assert_eq!(code(r#"{"error":{"code":"","message":"x"}}"#), None);
        assert_eq!(code(r#"{"error":{"code":"a b <script>"}}"#), None);
        assert_eq!(code(r#"{"error":{"code":12}}"#), None);
        assert_eq!(code("not json"), None);
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }
}

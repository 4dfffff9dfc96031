//! The callback preference (C33; OData 4.01 Part 1, "Preference callback"): a delta request with no
//! changes and `Prefer: callback; url="…"` is answered `202 Accepted` with the delta link in
//! `Location`, and the gateway calls the URL — an HTTP GET, as the protocol says — once a
//! background refresh finds the feed changed past that link. The notification carries nothing of
//! the feed; the delta link stays the truth, so a duplicate call is harmless.
//!
//! Callback URLs go only to hosts in `notifications.allowed_hosts` (none by default): otherwise a
//! client could make the gateway call into any network it can reach. Pending callbacks are held in
//! memory, at most `notifications.max_pending`; a restart forgets them and clients fall back to
//! polling their delta links.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, Response, StatusCode, header};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::Shared;
use crate::body::{self, Body};
use crate::error::Error;
use crate::odata::{ODataVersion, names};

use super::feed::{FeedId, Version};

/// Bytes of a callback's answer the gateway reads (and ignores).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Callbacks waiting for their feed to change.
pub(crate) struct Callbacks {
    pending: Mutex<HashMap<FeedId, Vec<Waiting>>>,
}

/// One callback: call `url` once the feed is past `since`.
#[derive(Clone)]
struct Waiting {
    url: Url,
    since: Version,
}

/// A callback URL the client may give: absolute http(s), without credentials, to an allowed host.
pub(crate) fn check_url(shared: &Shared, text: &str) -> Result<Url, Error> {
    let refused = |why: &str| {
        Error::client(
            StatusCode::BAD_REQUEST,
            "CallbackRefused",
            format!("the callback URL is refused: {why}"),
        )
    };
    let url = Url::parse(text).map_err(|_| refused("it is not an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refused("only http and https callbacks are made"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refused("it carries credentials"));
    }
    if !shared.config.notifications.allows(&url) {
        return Err(refused(
            "its host is not in the gateway's notifications.allowed_hosts",
        ));
    }
    Ok(url)
}

impl Callbacks {
    /// No callbacks.
    pub(crate) fn new() -> Self {
        Callbacks {
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<FeedId, Vec<Waiting>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wait for `feed` to change past `since`, then call `url`. False when as many callbacks as
    /// allowed are waiting already (the same URL for the same version counts once).
    pub(crate) fn register(&self, max: usize, feed: FeedId, url: Url, since: Version) -> bool {
        let mut pending = self.pending();
        let list = pending.entry(feed).or_default();
        if list.iter().any(|w| w.url == url && w.since == since) {
            return true;
        }
        let total: usize = pending.values().map(Vec::len).sum();
        if total >= max {
            return false;
        }
        pending
            .entry(feed)
            .or_default()
            .push(Waiting { url, since });
        true
    }

    /// Forget the callbacks of feeds that left the schedule.
    pub(crate) fn forget(&self, feeds: impl IntoIterator<Item = FeedId>) {
        let mut pending = self.pending();
        for feed in feeds {
            if let Some(list) = pending.remove(&feed) {
                tracing::debug!(
                    callbacks = list.len(),
                    "the feed left the schedule; its callbacks are forgotten"
                );
            }
        }
    }

    /// Number of callbacks waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending().values().map(Vec::len).sum()
    }

    /// `feed` is at `version` now: call every callback waiting for a version before it.
    pub(crate) fn feed_at(
        &self,
        shared: &Arc<Shared>,
        feed: FeedId,
        version: Version,
        shutdown: &CancellationToken,
    ) {
        let due: Vec<Waiting> = {
            let mut pending = self.pending();
            let Some(list) = pending.get_mut(&feed) else {
                return;
            };
            let (due, waiting): (Vec<Waiting>, Vec<Waiting>) =
                list.drain(..).partition(|w| w.since < version);
            *list = waiting;
            if list.is_empty() {
                pending.remove(&feed);
            }
            due
        };
        for waiting in due {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = deliver(&shared, &waiting.url) => {}
                }
            });
        }
    }
}

/// `202 Accepted`: no changes yet; `Location` is the delta link to read once the callback comes.
pub(crate) fn accepted(
    version: ODataVersion,
    delta_link: &str,
    spelling: &'static str,
) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(delta_link) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(
        names::PREFERENCE_APPLIED,
        HeaderValue::from_static(spelling),
    );
    headers.insert(
        names::ODATA_VERSION,
        HeaderValue::from_static(version.header_value()),
    );
    headers.insert(header::VARY, HeaderValue::from_static("OData-MaxVersion"));
    response
}

/// GET the callback URL until it answers 2xx, with bounded retries and a doubling backoff.
async fn deliver(shared: &Shared, url: &Url) {
    let sent = send_with_retries(shared, url, || {
        Request::get(url.as_str()).body(body::empty())
    })
    .await;
    if !sent {
        tracing::warn!(host = ?url.host_str(), "a callback was given up; the client polls its delta link");
    }
}

/// Send a notification to `url` until it answers 2xx: at most `notifications.max_attempts`
/// attempts of `notifications.timeout` each, waiting `retry_backoff` before the second and
/// twice as long before each further one. `build` makes each attempt's request. Counted in the
/// notification metrics; true when one attempt was answered 2xx. Shared by callbacks and webhook
/// subscriptions.
pub(crate) async fn send_with_retries(
    shared: &Shared,
    url: &Url,
    build: impl Fn() -> http::Result<Request<Body>>,
) -> bool {
    let n = &shared.config.notifications;
    let mut backoff = n.retry_backoff;
    for attempt in 1..=n.max_attempts {
        let request = match build() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "a notification request cannot be built");
                return false;
            }
        };
        match exchange(shared, request).await {
            Ok(answer) if answer.status.is_success() => {
                shared.metrics.notifications_sent.inc();
                return true;
            }
            Ok(answer) => {
                tracing::info!(host = ?url.host_str(), status = %answer.status, attempt, "a notification was refused")
            }
            Err(why) => {
                tracing::info!(host = ?url.host_str(), error = %why, attempt, "a notification failed")
            }
        }
        if attempt < n.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }
    shared.metrics.notifications_failed.inc();
    tracing::info!(host = ?url.host_str(), attempts = n.max_attempts, "a notification was given up");
    false
}

/// One attempt: the answer (its body at most 64 KiB), or why there is none.
pub(crate) async fn exchange(
    shared: &Shared,
    request: Request<Body>,
) -> Result<crate::upstream::Fetched, String> {
    let timeout = shared.config.notifications.timeout;
    match tokio::time::timeout(timeout, shared.upstream.fetch(request, MAX_ANSWER_BYTES)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_callbacks_are_bounded_and_counted_once() {
        let c = Callbacks::new();
        let url = Url::parse("http://h/cb").unwrap();
        let other = Url::parse("http://h/other").unwrap();
        assert!(c.register(2, FeedId([1; 16]), url.clone(), Version(3)));
        assert!(c.register(2, FeedId([1; 16]), url.clone(), Version(3)));
        assert!(c.register(2, FeedId([2; 16]), url.clone(), Version(3)));
        assert!(!c.register(2, FeedId([2; 16]), other.clone(), Version(3)));
        assert_eq!(c.len(), 2);
        c.forget([FeedId([1; 16])]);
        assert_eq!(c.len(), 1);
        assert!(c.register(2, FeedId([2; 16]), other, Version(3)));
    }
}

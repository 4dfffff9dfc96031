//! Admission of refreshes: at most `limits.max_concurrent_refreshes` enumerate the upstreams at
//! once, across all feeds, and at most `limits.max_refresh_waiters` wait for a turn; a request
//! past that gets 503 with `Retry-After` at once instead of piling up memory and connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// When a client refused for want of a refresh turn may try again: a refresh of a usual feed
/// takes seconds.
const REFRESH_RETRY_AFTER_SECS: u64 = 5;

/// The refresh turns of the whole gateway.
pub(crate) struct RefreshPermits {
    /// One permit per refresh that may run.
    running: Arc<Semaphore>,
    /// Requests waiting for a permit now.
    waiting: AtomicUsize,
    /// How many may wait.
    max_waiters: usize,
}

/// Decrements the waiting count however the wait ends, a client hanging up included.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RefreshPermits {
    /// `max_running` refreshes at once (at least one), `max_waiters` waiting.
    pub(crate) fn new(max_running: usize, max_waiters: usize) -> Self {
        RefreshPermits {
            running: Arc::new(Semaphore::new(max_running.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiters,
        }
    }

    /// A turn to refresh: at once when one is free, after a wait when there is room among the
    /// waiters, else 503.
    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit, Error> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let admitted = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_waiters).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return Err(busy());
        }
        let _waiting = Waiting(&self.waiting);
        self.running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("the refresh semaphore was closed".into()))
    }
}

impl RefreshPermits {
    /// Requests waiting for a turn now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

fn busy() -> Error {
    Error::Limited {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "RefreshesBusy",
        message: "the gateway is running and queueing as many refreshes as it may (limits.max_concurrent_refreshes, limits.max_refresh_waiters); try again shortly".into(),
        retry_after_secs: REFRESH_RETRY_AFTER_SECS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_past_the_bound_are_refused_with_503() {
        let permits = Arc::new(RefreshPermits::new(1, 1));
        let first = permits.acquire().await.unwrap();
        let waiter = {
            let permits = permits.clone();
            tokio::spawn(async move { permits.acquire().await.map(drop) })
        };
        while permits.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let e = permits.acquire().await.unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(permits.waiting.load(Ordering::SeqCst), 0);
        // A waiter that gives up leaves its place.
        let held = permits.acquire().await.unwrap();
        let gave_up = {
            let permits = permits.clone();
            tokio::spawn(async move { permits.acquire().await.map(drop) })
        };
        while permits.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gave_up.abort();
        let _ = gave_up.await;
        assert_eq!(permits.waiting.load(Ordering::SeqCst), 0);
        drop(held);
    }
}

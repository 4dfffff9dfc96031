//! Retention (DESIGN "Retention"): when a token stops being valid, when the tombstones it could need
//! may be purged, and when a feed no valid token can name may be dropped — all counted in the same
//! whole seconds as a token's issued-at, and all decided from what is on disk, so that a crash at any
//! instant cannot make a still-valid token lose its feed or its tombstones (C25, C29).
//!
//! A periodic sweep also records when feeds were last used and drops the in-memory index of feeds
//! nobody asked about for a while (the store has it), and frees the in-memory slots of idle
//! feeds nobody holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::feed::FeedId;
use crate::Shared;
use crate::error::Error;

/// An index unused this long leaves memory.
const INDEX_IDLE: Duration = Duration::from_secs(600);

/// Added to every retention deadline on top of the token lifetime: the wall clock may step back a
/// little between issuing a token and committing a version, and a margin costs nothing but keeping
/// tombstones and idle feeds a moment longer.
const MARGIN_SECS: u64 = 2;

/// The wall clock that tokens, commits and retention read. It follows the system clock; tests can
/// pin it to an instant to look at the edges of the token lifetime.
#[derive(Debug, Default)]
pub struct Clock {
    /// Unix ms the clock is pinned to; 0 follows the system clock.
    pinned_ms: AtomicU64,
}

impl Clock {
    /// Now, in unix ms.
    pub fn now_ms(&self) -> u64 {
        match self.pinned_ms.load(Ordering::Relaxed) {
            0 => unix_ms(SystemTime::now()),
            pinned => pinned,
        }
    }

    /// Now, in whole unix seconds: the unit of a token's issued-at.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Pin the clock to `unix_ms` (0 lets it follow the system clock again). For tests.
    pub fn pin_ms(&self, unix_ms: u64) {
        self.pinned_ms.store(unix_ms, Ordering::Relaxed);
    }
}

/// Whether a token issued at `issued_at` (unix s) is still inside the lifetime `ttl` at `now_secs`.
/// Whole seconds: a token is valid through the last second of its lifetime.
pub(crate) fn token_is_valid(issued_at: u64, now_secs: u64, ttl: Duration) -> bool {
    now_secs.saturating_sub(issued_at) <= ttl.as_secs()
}

/// Tombstones of versions committed before this instant (unix ms) may be purged at `now_ms`.
///
/// A token needs the versions committed after its baseline was fixed, and its issued-at was taken
/// before that (and rounded down), so every token that needs a version committed in second `c` was
/// issued in `c` or earlier and is valid at most through second `c + ttl`. Purging only versions
/// with `c + ttl + margin < now` — the boundary in whole seconds, like `token_is_valid` — never takes
/// a tombstone from a valid token.
pub(crate) fn purge_before_ms(now_ms: u64, ttl: Duration) -> u64 {
    (now_ms / 1000)
        .saturating_sub(ttl.as_secs() + MARGIN_SECS)
        .saturating_mul(1000)
}

/// How far ahead of a token's issued-at the stored retention mark is moved when it must move, so
/// that a feed polled all the time costs one durable write per this much time, not one per request.
/// A feed outlives its last token by at most this much.
fn cover_ahead(ttl: Duration) -> Duration {
    (ttl / 16).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// Feeds whose stored retention mark is before this instant (unix ms) can have no valid token left.
///
/// The mark (`FeedMeta::last_used_ms`) is at or after the issued-at of every token handed out (see
/// `record_issued`), and a token issued in second `t` is valid until second `t + ttl` ends.
fn drop_before_ms(now_ms: u64, ttl: Duration) -> u64 {
    (now_ms / 1000)
        .saturating_sub(ttl.as_secs() + 1 + MARGIN_SECS)
        .saturating_mul(1000)
}

/// Make sure the store knows, durably, that a token of `feed` issued at `issued_at` (unix s) is
/// about to be handed out; call it before the response that carries the token is written. The
/// feed's retention mark is moved only when the token is newer than the mark, and then a little
/// ahead (`cover_ahead`), so polling writes rarely; a crash after this returns cannot let the sweep
/// drop the feed while the token is valid, whatever is lost from memory.
pub(crate) async fn record_issued(
    shared: &Arc<Shared>,
    feed: FeedId,
    issued_at: u64,
) -> Result<(), Error> {
    let issued_ms = issued_at.saturating_mul(1000);
    if shared.feeds.covered(feed).is_some_and(|c| c >= issued_ms) {
        return Ok(());
    }
    let until_ms =
        issued_ms.saturating_add(cover_ahead(shared.config.token_ttl).as_millis() as u64);
    let store = shared.store.clone();
    let covered =
        tokio::task::spawn_blocking(move || store.cover_issued(feed, issued_ms, until_ms))
            .await??;
    shared.feeds.set_covered(feed, covered);
    Ok(())
}

/// Sweep until `shutdown`.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    // Often enough that a short token lifetime is honoured, never more than once a minute.
    let every =
        (shared.config.token_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                sweep(&shared).await;
                return;
            }
            _ = tick.tick() => sweep(&shared).await,
        }
    }
}

/// One sweep; failures are logged and retried next time.
pub async fn sweep(shared: &Arc<Shared>) {
    let used = shared.feeds.take_used();
    if !used.is_empty() {
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.touch(&used)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record feed use"),
            Err(e) => tracing::warn!(error = %e, "cannot record feed use"),
        }
    }

    for (_, slot) in shared.feeds.slots() {
        if let Ok(mut slot) = slot.try_lock()
            && slot.index.is_some()
            && slot.last_used.is_some_and(|t| t.elapsed() > INDEX_IDLE)
        {
            slot.index = None;
            slot.meta = None;
        }
    }

    // Only the stored mark decides: what this process remembers of recent use may be gone after a
    // crash, while the mark was written before any token it covers was handed out.
    let ttl = shared.config.token_ttl;
    let cutoff = drop_before_ms(shared.clock.now_ms(), ttl);
    let in_use_for = ttl + Duration::from_secs(1 + MARGIN_SECS);
    let store = shared.store.clone();
    let idle = match tokio::task::spawn_blocking(move || store.idle_feeds(cutoff)).await {
        Ok(Ok(idle)) => idle,
        _ => return,
    };
    for feed in idle {
        let slot = shared.feeds.slot(feed);
        // A feed being refreshed, or used since start, is in use; it is looked at again next time.
        let Ok(mut guard) = slot.try_lock() else {
            continue;
        };
        if guard.last_used.is_some_and(|t| t.elapsed() < in_use_for) {
            continue;
        }
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.drop_feed(feed, cutoff)).await {
            Ok(Ok(true)) => {
                guard.forget();
                shared.feeds.unregister(feed);
                shared.metrics.feeds_dropped.inc();
                tracing::info!(feed = ?feed.0, "dropped a feed unused for longer than the token lifetime");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot drop an idle feed"),
            Err(e) => tracing::warn!(error = %e, "cannot drop an idle feed"),
        }
    }
    // Last, so that the slots the drops above looked at are freed too.
    let freed = shared.feeds.free_idle(INDEX_IDLE);
    if freed > 0 {
        tracing::debug!(freed, "freed the memory of idle feeds");
    }
}

/// Milliseconds since the epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_token_is_valid_through_the_last_second_of_its_lifetime_c25() {
        assert!(token_is_valid(1000, 1000 + 86_400, DAY));
        assert!(!token_is_valid(1000, 1000 + 86_401, DAY));
        assert!(token_is_valid(1000, 999, DAY), "a clock that stepped back");
    }

    #[test]
    fn no_version_a_valid_token_needs_is_purged_c25() {
        // Committed in second c, needed by tokens issued in second c or before.
        for c_ms in [5_000_000, 5_000_500, 5_000_999] {
            let issued = c_ms / 1000;
            for now_ms in (c_ms..c_ms + 90_000_000).step_by(97) {
                if token_is_valid(issued, now_ms / 1000, DAY) {
                    assert!(
                        c_ms >= purge_before_ms(now_ms, DAY),
                        "committed {c_ms}, purged at {now_ms}"
                    );
                }
            }
        }
        // …and tombstones do go eventually.
        assert!(5_000_999 < purge_before_ms(5_000_999 + 86_400_000 + 4_000, DAY));
    }

    #[test]
    fn no_feed_is_dropped_while_a_token_it_covers_is_valid_c29() {
        let ttl = Duration::from_secs(3);
        let issued = 1_000u64;
        // The mark covers the token exactly (the least it may), yet the drop waits for its expiry.
        let mark_ms = issued * 1000;
        for now_ms in (mark_ms..mark_ms + 20_000).step_by(7) {
            if token_is_valid(issued, now_ms / 1000, ttl) {
                assert!(
                    mark_ms >= drop_before_ms(now_ms, ttl),
                    "dropped at {now_ms}"
                );
            }
        }
        assert!(mark_ms < drop_before_ms(mark_ms + 8_000, ttl));
    }

    #[test]
    fn the_mark_moves_rarely_but_not_far() {
        assert_eq!(cover_ahead(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(cover_ahead(Duration::from_secs(32)), Duration::from_secs(2));
        assert_eq!(cover_ahead(30 * DAY), Duration::from_secs(3600));
    }

    #[test]
    fn a_pinned_clock_stands_still() {
        let clock = Clock::default();
        clock.pin_ms(1_234_567);
        assert_eq!((clock.now_ms(), clock.now_secs()), (1_234_567, 1_234));
        clock.pin_ms(0);
        assert!(clock.now_ms() > 1_700_000_000_000);
    }
}

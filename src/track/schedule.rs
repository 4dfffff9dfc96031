//! Background refresh (DESIGN "Always fresh"): feeds that clients use and that have a
//! `poll_interval` are refreshed on a jittered schedule, so that a delta request is answered from
//! the store at once and the upstream sees one enumeration per interval however many clients poll.
//!
//! Every scheduled refresh goes through [`ensure_fresh`] — the feed's single-flight slot and the
//! gateway's refresh turns — so there is never more than one refresh per feed, and the schedule
//! takes at most half of `limits.max_concurrent_refreshes`, leaving the rest to clients. A feed no
//! client asked for during `feed_idle_ttl` leaves the schedule; at most `max_scheduled_feeds` are on
//! it, further feeds refresh when asked.
//!
//! Credentials: a `shared`-scope feed is refreshed with the route's own `[route.headers]`; a
//! per-identity feed with the credentials of the last client request that the upstream accepted
//! for it. When the upstream refuses those (401/403, an expired token), the feed's schedule stops
//! until a client asks again, and that request refreshes with its own credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::config::IdentityScope;
use crate::error::Error;

use super::feed::FeedId;
use super::refresh::{RefreshInput, ensure_fresh};

/// When the refresh turns are all taken, a background refresh tries again after this.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// The feeds on the schedule.
pub(crate) struct Schedule {
    entries: Mutex<HashMap<FeedId, Entry>>,
    /// Wakes the loop when a feed joins (its first due time may be the nearest).
    joined: Notify,
    /// Most entries.
    max: usize,
}

/// One scheduled feed.
struct Entry {
    /// How to refresh it: the client's request, with the credentials the schedule may use.
    input: RefreshInput,
    /// Its `poll_interval`.
    interval: Duration,
    /// When a client last asked for it; idle feeds leave the schedule.
    last_asked: Instant,
    /// When it is next refreshed.
    due: Instant,
    /// When its last background refresh started: the next one is timed from it, so that a
    /// refresh's own length does not stretch the interval.
    started: Instant,
    /// A refresh of the schedule is under way (one per feed at a time).
    running: bool,
    /// The upstream refused the remembered credentials: no background refresh until a client
    /// asks again.
    stopped: bool,
}

impl Schedule {
    /// An empty schedule of at most `max` feeds.
    pub(crate) fn new(max: usize) -> Self {
        Schedule {
            entries: Mutex::new(HashMap::new()),
            joined: Notify::new(),
            max,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<FeedId, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A client's request on a feed was answered (and authorized): keep the feed on the schedule,
    /// with these credentials, or put it there.
    pub(crate) fn asked(&self, shared: &Shared, input: &RefreshInput, interval: Duration) {
        let now = Instant::now();
        let input = background_input(shared, input, interval);
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(&input.feed) {
            entry.last_asked = now;
            entry.interval = interval;
            entry.input = input;
            if entry.stopped {
                entry.stopped = false;
                entry.due = now + jittered(interval);
                drop(entries);
                self.joined.notify_one();
            }
            return;
        }
        if entries.len() >= self.max {
            tracing::debug!(
                max = self.max,
                "the schedule is full (max_scheduled_feeds); the feed refreshes when asked"
            );
            return;
        }
        entries.insert(
            input.feed,
            Entry {
                input,
                interval,
                last_asked: now,
                due: now + jittered(interval),
                started: now,
                running: false,
                stopped: false,
            },
        );
        drop(entries);
        self.joined.notify_one();
    }

    /// Number of feeds on the schedule.
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }

    /// Drop idle feeds (into `left`), mark the due ones running and return them, with the next
    /// due time.
    /// Feeds in `watched` (by webhook subscriptions) stay however long nobody asked.
    fn take_due(
        &self,
        now: Instant,
        idle_ttl: Duration,
        watched: &std::collections::HashSet<FeedId>,
        left: &mut Vec<FeedId>,
    ) -> (Vec<RefreshInput>, Option<Instant>) {
        let mut entries = self.entries();
        entries.retain(|feed, e| {
            let keep =
                e.running || now.duration_since(e.last_asked) < idle_ttl || watched.contains(feed);
            if !keep {
                left.push(*feed);
            }
            keep
        });
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for entry in entries.values_mut() {
            if entry.running || entry.stopped {
                continue;
            }
            if entry.due <= now {
                entry.running = true;
                entry.started = now;
                due.push(entry.input.clone());
            } else {
                next = Some(next.map_or(entry.due, |n| n.min(entry.due)));
            }
        }
        (due, next)
    }

    /// A background refresh of `feed` ended. Returns whether the feed left the schedule.
    fn finished(&self, feed: FeedId, outcome: &Result<(), Error>) -> bool {
        let now = Instant::now();
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(&feed) else {
            return true;
        };
        entry.running = false;
        match outcome {
            // From the start: one enumeration per interval, however long each takes; at once when
            // one took longer than the interval.
            Ok(()) => entry.due = (entry.started + jittered(entry.interval)).max(now),
            Err(Error::Rejected { status, .. }) if matches!(status.as_u16(), 401 | 403) => {
                tracing::info!(%status, "the upstream refused the remembered credentials; background refresh of the feed stops until a client asks again");
                entry.stopped = true;
            }
            // Dropped by retention since it was scheduled.
            Err(Error::Expired { .. }) => {
                entries.remove(&feed);
                return true;
            }
            Err(Error::Limited { .. }) => entry.due = now + BUSY_RETRY,
            Err(_) => entry.due = now + jittered(entry.interval),
        }
        false
    }
}

/// The request the schedule repeats: the client's, without its `Cache-Control`, with the
/// credentials the schedule may use, and reusing any refresh younger than half the interval
/// (one a client just ran is as good).
fn background_input(shared: &Shared, input: &RefreshInput, interval: Duration) -> RefreshInput {
    let mut input = input.clone();
    input.background = true;
    input.max_age = interval / 2;
    // Another replica's schedule refreshing the feed keeps it fresh for this one too: its refresh
    // is taken unless nearly an interval old, so one replica's schedule does the enumerating.
    input.replica_max_age = interval - interval / 10;
    input.stale_while_refreshing = Duration::ZERO;
    if shared.config.identity == IdentityScope::Shared {
        input.headers = shared
            .config
            .routes
            .iter()
            .find(|r| r.prefix == input.def.route)
            .map(|r| r.headers.clone())
            .unwrap_or_default();
    }
    input
}

/// How often a replica on a shared store reads the subscriptions other replicas created, renewed
/// or deleted.
const SUBSCRIPTION_SYNC: Duration = Duration::from_secs(2);

/// 97.5 to 100 % of the interval, at random: feeds that joined together drift apart, and, timed
/// from the start of the last refresh, the next one starts before the last one's answer is
/// `interval` old, so that clients keep being answered from the store (while it runs, by the
/// stale-while-refreshing grace), at about one enumeration per interval.
fn jittered(interval: Duration) -> Duration {
    let r = (getrandom::u64().unwrap_or(0) % 1000) as u32;
    (interval - interval / 40).saturating_add(interval / 40 * r / 1000)
}

/// Run the schedule until `shutdown`. A refresh under way is not cancelled halfway by it (it runs
/// in its own task and commits whole or not at all); the loop just stops waiting for it.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let turns = Arc::new(Semaphore::new(
        (shared.config.limits.max_concurrent_refreshes / 2).max(1),
    ));
    let mut tasks = JoinSet::new();
    let mut left = Vec::new();
    let mut synced: Option<Instant> = None;
    loop {
        if synced.is_none_or(|at| at.elapsed() >= SUBSCRIPTION_SYNC) {
            crate::track::subscriptions::reload(&shared).await;
            synced = Some(Instant::now());
        }
        crate::track::subscriptions::sweep(&shared).await;
        let watched = shared.subscriptions.watched(shared.clock.now_ms());
        let (due, next) = shared.schedule.take_due(
            Instant::now(),
            shared.config.schedule.feed_idle_ttl,
            &watched,
            &mut left,
        );
        // Nothing will notice their changes any more; their clients poll again.
        shared.callbacks.forget(left.drain(..));
        shared
            .metrics
            .scheduled_feeds
            .set(shared.schedule.len() as i64);
        for input in due {
            let shared = shared.clone();
            let turns = turns.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let feed = input.feed;
                let outcome = match turns.acquire_owned().await {
                    Ok(_turn) => ensure_fresh(&shared, input).await.map(|f| f.version),
                    Err(_) => Err(Error::Internal("the schedule's turns were closed".into())),
                };
                match &outcome {
                    Ok(version) => {
                        shared.callbacks.feed_at(&shared, feed, *version, &shutdown);
                        shared
                            .subscriptions
                            .feed_at(&shared, feed, *version, &shutdown);
                    }
                    Err(e) => tracing::debug!(error = %e, "background refresh failed"),
                }
                if shared.schedule.finished(feed, &outcome.map(drop)) {
                    shared.callbacks.forget([feed]);
                }
            });
        }
        let mut wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        if shared.store.is_shared() {
            wake = wake.min(Instant::now() + SUBSCRIPTION_SYNC);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(wake) => {}
            _ = shared.schedule.joined.notified() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_97_5_and_100_percent_of_the_interval() {
        let ten = Duration::from_secs(10);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let d = jittered(ten);
            assert!(
                d < Duration::from_millis(10000) && d >= Duration::from_millis(9750),
                "{d:?}"
            );
            seen.insert(d);
        }
        assert!(seen.len() > 100, "the delays vary");
    }
}

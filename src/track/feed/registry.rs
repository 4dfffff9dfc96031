//! The registry of feeds in memory: one single-flight slot per feed, the progress of first loads,
//! each feed's last publish, the feeds the caps count, and the marks that save store reads when
//! tokens are issued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::StatusCode;

use crate::config::Limits;
use crate::error::Error;

use super::{FeedId, ProgressSender, Scope, Slot, Version};

/// All feeds in memory, and the count of stored feeds that the feed caps apply to.
#[derive(Default)]
pub struct Feeds {
    /// Two slots for one feed would let two refreshes race, so a slot leaves the map only when
    /// nobody holds it (see [`Feeds::free_idle`]); a later request then gets a new one, which
    /// reads the store again.
    map: Mutex<HashMap<FeedId, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Feeds whose tokens were issued or used since the last sweep, with when (unix ms).
    used: Mutex<HashMap<FeedId, u64>>,
    /// Progress of first loads, for first reads served while they run.
    loads: Mutex<HashMap<FeedId, ProgressSender>>,
    /// Feeds that hold entities in the store or are being created, for the feed caps.
    stored: Mutex<StoredFeeds>,
    /// Each feed's stored retention mark as last read or written (unix ms): a lower bound of what
    /// is on disk, so that issuing a token the mark already covers needs no store access.
    covered: Mutex<HashMap<FeedId, u64>>,
    /// Each feed's last successful refresh, readable without waiting for its slot.
    published: Mutex<HashMap<FeedId, Published>>,
    /// Feeds whose superseded states are being removed after a publish: one such run per feed
    /// (a later publish's marks are taken by the run under way or by the next).
    compacting: Arc<Mutex<std::collections::HashSet<FeedId>>>,
    /// Refresh tasks under way ([`Feeds::refresh_task`]).
    refreshing: Arc<AtomicUsize>,
}

/// A refresh task under way ([`Feeds::refresh_task`]), counted until dropped.
pub(crate) struct RefreshTask(Arc<AtomicUsize>);

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A claimed compaction of one feed ([`Feeds::start_compaction`]), released when dropped.
pub(crate) struct CompactionClaim {
    set: Arc<Mutex<std::collections::HashSet<FeedId>>>,
    feed: FeedId,
}

impl Drop for CompactionClaim {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.feed);
    }
}

/// A feed's last successful refresh and whether another is under way: what a request needs to
/// be answered from the store without waiting for the slot that a running refresh holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Published {
    /// The version it published.
    pub version: Version,
    /// When it finished (tokio's clock, like [`LastRefresh::finished`]).
    pub finished: tokio::time::Instant,
    /// The same, on the wall clock.
    pub finished_at: SystemTime,
    /// Whether a refresh of the feed is running now.
    pub refreshing: bool,
}

/// The feeds the caps count: stored ones, and new ones admitted whose first load is under way.
#[derive(Default)]
struct StoredFeeds {
    scope_of: HashMap<FeedId, Scope>,
    per_scope: HashMap<Scope, usize>,
}

impl StoredFeeds {
    fn insert(&mut self, feed: FeedId, scope: &Scope) {
        if self.scope_of.insert(feed, scope.clone()).is_none() {
            *self.per_scope.entry(scope.clone()).or_default() += 1;
        }
    }

    fn remove(&mut self, feed: FeedId) {
        if let Some(scope) = self.scope_of.remove(&feed)
            && let Some(n) = self.per_scope.get_mut(&scope)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_scope.remove(&scope);
            }
        }
    }
}

/// When a client refused for the feed caps may try again: feeds are freed by the retention
/// sweep, which runs at most a minute apart.
const FEED_CAP_RETRY_AFTER_SECS: u64 = 60;

impl Feeds {
    /// Claim the compaction of `feed`'s superseded states; `None` while another run has it.
    pub(crate) fn start_compaction(&self, feed: FeedId) -> Option<CompactionClaim> {
        let claimed = self
            .compacting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(feed);
        claimed.then(|| CompactionClaim {
            set: self.compacting.clone(),
            feed,
        })
    }

    /// Wait, at most `bound`, until no compaction runs: at shutdown, so that the store is closed
    /// when the gateway has stopped.
    pub(crate) async fn compactions_ended(&self, bound: std::time::Duration) {
        wait_until(bound, || {
            self.compacting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        })
        .await;
    }

    /// Count a refresh task until the returned value is dropped.
    pub(crate) fn refresh_task(&self) -> RefreshTask {
        self.refreshing.fetch_add(1, Ordering::SeqCst);
        RefreshTask(Arc::clone(&self.refreshing))
    }

    /// Wait, at most `bound`, until no refresh task runs: at shutdown, after the listeners
    /// closed, so that the store is closed when the gateway has stopped.
    pub(crate) async fn refreshes_ended(&self, bound: std::time::Duration) {
        wait_until(bound, || self.refreshing.load(Ordering::SeqCst) == 0).await;
    }

    /// The slot of a feed, created on first use.
    pub fn slot(&self, id: FeedId) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(id).or_default().clone()
    }

    /// The progress channel of a feed's first loads, created on first use.
    pub fn load_progress(&self, id: FeedId) -> ProgressSender {
        let mut loads = self
            .loads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loads
            .entry(id)
            .or_insert_with(|| tokio::sync::watch::channel(None).0)
            .clone()
    }

    /// The progress of a feed's first loads, if one ran since start.
    pub fn progress_of(&self, id: FeedId) -> Option<ProgressSender> {
        let loads = self
            .loads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loads.get(&id).cloned()
    }

    /// Record how a feed's running first load ended, if one is running.
    pub fn finish_load(&self, id: FeedId, outcome: &Result<Version, Error>) {
        if let Some(tx) = self.progress_of(id) {
            tx.send_if_modified(|p| match p {
                Some(p) if p.done.is_none() => {
                    p.done = Some(outcome.clone());
                    true
                }
                _ => false,
            });
        }
    }

    /// Note that a token of the feed was issued or used now.
    pub fn touch(&self, id: FeedId, now_ms: u64) {
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        used.insert(id, now_ms);
    }

    /// The stored retention mark of a feed, as far as this process knows it.
    pub(crate) fn covered(&self, id: FeedId) -> Option<u64> {
        self.covered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&id)
            .copied()
    }

    /// Remember a feed's stored retention mark (it only grows).
    pub(crate) fn set_covered(&self, id: FeedId, until_ms: u64) {
        let mut covered = self
            .covered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mark = covered.entry(id).or_default();
        *mark = (*mark).max(until_ms);
    }

    /// The feeds touched since the last call.
    pub fn take_used(&self) -> Vec<(FeedId, u64)> {
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        used.drain().collect()
    }

    /// All slots, for sweeps.
    pub fn slots(&self) -> Vec<(FeedId, Arc<tokio::sync::Mutex<Slot>>)> {
        let map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Count feeds found in the store at start towards the caps.
    pub(crate) fn register_stored(&self, feeds: impl IntoIterator<Item = (FeedId, Scope)>) {
        let mut stored = self.stored_feeds();
        for (feed, scope) in feeds {
            stored.insert(feed, &scope);
        }
    }

    /// Admit a request on `feed`: a feed that is stored (or being created) always; a new one only
    /// within the caps, and it then counts at once so that concurrent creations cannot overshoot.
    /// Returns whether the feed is new. Past `max_feeds` the answer is 503 (the gateway is full),
    /// past `max_feeds_per_scope` 429 (this caller has enough); the `shared` scope is bound by the
    /// total alone, since everyone is in it.
    pub(crate) fn admit(
        &self,
        feed: FeedId,
        scope: &Scope,
        limits: &Limits,
    ) -> Result<bool, Error> {
        let mut stored = self.stored_feeds();
        if stored.scope_of.contains_key(&feed) {
            return Ok(false);
        }
        if stored.scope_of.len() >= limits.max_feeds {
            return Err(Error::Limited {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "TooManyFeeds",
                message: format!(
                    "the gateway already tracks its limit of {} feeds (limits.max_feeds); existing delta links keep working, a new tracked read can be tried again later",
                    limits.max_feeds
                ),
                retry_after_secs: FEED_CAP_RETRY_AFTER_SECS,
            });
        }
        let per_scope = stored.per_scope.get(scope).copied().unwrap_or(0);
        if scope.0 != "shared" && per_scope >= limits.max_feeds_per_scope {
            return Err(Error::Limited {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "TooManyFeedsForCaller",
                message: format!(
                    "these credentials already have the limit of {} tracked feeds (limits.max_feeds_per_scope); follow the delta links you have, or let unused ones expire",
                    limits.max_feeds_per_scope
                ),
                retry_after_secs: FEED_CAP_RETRY_AFTER_SECS,
            });
        }
        stored.insert(feed, scope);
        Ok(true)
    }

    /// Record whether a feed holds entities in the store now, after a refresh or a drop.
    pub(crate) fn set_stored(&self, feed: FeedId, scope: &Scope, stored: bool) {
        let mut feeds = self.stored_feeds();
        if stored {
            feeds.insert(feed, scope);
        } else {
            feeds.remove(feed);
        }
    }

    /// Forget a stored feed for the caps (it was dropped).
    pub(crate) fn unregister(&self, feed: FeedId) {
        self.stored_feeds().remove(feed);
        self.published_map().remove(&feed);
    }

    /// The feed's last successful refresh, if this process saw one and none failed since.
    pub(crate) fn published(&self, feed: FeedId) -> Option<Published> {
        self.published_map().get(&feed).copied()
    }

    /// A refresh of `feed` starts.
    pub(crate) fn refresh_started(&self, feed: FeedId) {
        if let Some(p) = self.published_map().get_mut(&feed) {
            p.refreshing = true;
        }
    }

    /// A refresh of `feed` ended: it published `published`, or failed (`None`), which forgets
    /// the last success, so that requests wait for the next refresh as they would on the slot.
    pub(crate) fn refresh_ended(&self, feed: FeedId, published: Option<Published>) {
        let mut map = self.published_map();
        match published {
            Some(p) => map.insert(feed, p),
            None => map.remove(&feed),
        };
    }

    fn published_map(&self) -> std::sync::MutexGuard<'_, HashMap<FeedId, Published>> {
        self.published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stored_feeds(&self) -> std::sync::MutexGuard<'_, StoredFeeds> {
        self.stored
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remove the slots nobody holds, nobody has locked, and no request needed for `idle`; returns
    /// how many. Under the map lock no one can take a new handle on a slot, so a slot whose only
    /// handle is the map's cannot have a refresh running or waiting: removing it cannot leave two
    /// slots for one feed. What it held in memory is in the store.
    pub(crate) fn free_idle(&self, idle: Duration) -> usize {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = map.len();
        map.retain(|_, slot| {
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            match slot.try_lock() {
                Ok(s) => s.last_used.is_some_and(|t| t.elapsed() < idle),
                Err(_) => true,
            }
        });
        self.published_map()
            .retain(|feed, _| map.contains_key(feed));
        before - map.len()
    }

    /// Number of feeds the caps count (stored, or being created).
    pub fn stored_len(&self) -> usize {
        self.stored_feeds().scope_of.len()
    }

    /// Number of feeds in memory.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Whether no feed is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Poll `done` every 10 ms until it holds or `bound` has passed.
async fn wait_until(bound: std::time::Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + bound;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn idle_slots_are_freed_only_when_nobody_holds_or_locks_them() {
        let feeds = Feeds::default();
        let (a, b, c, d) = (
            FeedId([1; 16]),
            FeedId([2; 16]),
            FeedId([3; 16]),
            FeedId([4; 16]),
        );
        for id in [a, b, c, d] {
            feeds.slot(id).lock().await.last_used = Some(Instant::now());
        }
        // Recently used: kept.
        assert_eq!(feeds.free_idle(Duration::from_secs(600)), 0);
        assert_eq!(feeds.len(), 4);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A handle held (a request waiting for the slot), and a lock held (a refresh): kept.
        let held = feeds.slot(b);
        let locked = feeds.slot(c).lock_owned().await;
        assert_eq!(feeds.free_idle(Duration::from_millis(10)), 2);
        assert_eq!(feeds.len(), 2);
        let ids: Vec<FeedId> = feeds.slots().into_iter().map(|(id, _)| id).collect();
        assert!(ids.contains(&b) && ids.contains(&c), "{ids:?}");
        drop((held, locked));
        assert_eq!(feeds.free_idle(Duration::from_millis(10)), 2);
        assert!(feeds.is_empty());
        // A freed feed gets a new, empty slot that reads the store again.
        assert!(feeds.slot(a).lock().await.last_used.is_none());
    }

    #[test]
    fn new_feeds_are_admitted_within_the_total_and_per_scope_caps() {
        let limits = Limits {
            max_request_body_bytes: 1,
            max_page_bytes: 1,
            max_entities_per_feed: 1,
            max_header_bytes: 1,
            max_connections: 1,
            max_feeds: 3,
            max_feeds_per_scope: 2,
            max_concurrent_refreshes: 1,
            max_refresh_waiters: 0,
            max_uri_bytes: 1,
            header_read_timeout: Duration::from_secs(1),
            body_read_timeout: Duration::from_secs(1),
            tracked_request_timeout: Duration::from_secs(1),
            max_pages_per_refresh: 1,
            refresh_timeout: Duration::from_secs(1),
            max_batch_parts: 1,
            max_batch_bytes: 1,
            store_cache_bytes: 1 << 20,
        };
        let feeds = Feeds::default();
        let (alice, bob) = (Scope("alice".into()), Scope("bob".into()));
        assert!(feeds.admit(FeedId([1; 16]), &alice, &limits).unwrap());
        assert!(feeds.admit(FeedId([2; 16]), &alice, &limits).unwrap());
        // An existing feed always; a third of alice's is refused with 429.
        assert!(!feeds.admit(FeedId([1; 16]), &alice, &limits).unwrap());
        let e = feeds.admit(FeedId([3; 16]), &alice, &limits).unwrap_err();
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(feeds.admit(FeedId([4; 16]), &bob, &limits).unwrap());
        let e = feeds.admit(FeedId([5; 16]), &bob, &limits).unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        // A dropped feed makes room.
        feeds.unregister(FeedId([2; 16]));
        assert!(feeds.admit(FeedId([3; 16]), &alice, &limits).unwrap());
    }
}

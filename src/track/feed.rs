//! Feeds: one tracked result (route, entity set, normalized defining query, identity scope), its
//! versions, and the per-feed state the gateway keeps in memory — the diff index and the single-flight
//! slot through which every refresh of the feed passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;

use crate::config::Limits;
use crate::error::Error;
use crate::odata::entity_id::KeyProperty;
use crate::odata::query::DefiningQuery;
use crate::store::FeedMeta;

pub use crate::ids::{FeedId, Scope, Version};

/// What defines a feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedDef {
    /// Route prefix.
    pub route: String,
    /// Entity set name.
    pub entity_set: String,
    /// Normalized defining query.
    pub query: DefiningQuery,
    /// Identity scope.
    pub scope: Scope,
}

impl FeedDef {
    /// The feed's id: a hash of the whole definition, with lengths so fields cannot run together.
    pub fn id(&self) -> FeedId {
        let mut h = blake3::Hasher::new();
        for part in [
            &self.route,
            &self.entity_set,
            &self.query.encoded(),
            &self.scope.0,
        ] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        FeedId(id)
    }

    /// The context a token of this feed may be presented in (see `token`): route, set and scope.
    /// The query is bound through the feed id inside the token.
    pub fn binding(route: &str, entity_set: &str, scope: &Scope) -> Vec<u8> {
        let mut b = Vec::new();
        for part in [route, entity_set, &scope.0] {
            b.extend_from_slice(&(part.len() as u64).to_be_bytes());
            b.extend_from_slice(part.as_bytes());
        }
        b
    }
}

/// How to read an entity set: its key and the properties that do not count as changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    /// Entity set name.
    pub name: String,
    /// Key properties.
    pub key: Vec<KeyProperty>,
    /// Top-level properties left out of the content hash.
    pub ignore: Vec<String>,
}

/// Numbers the refreshes of a feed, so that one refresh can tell the entries it saw from the rest.
/// One byte per entry: the counter restarts every 255 refreshes (see [`Slot::next_generation`]),
/// which costs one pass over the index then, against 7 bytes per entry for a `u64` that never
/// wraps (and 3 more of padding for a `u32`).
pub type Generation = u8;

/// The generation of entries no refresh has seen since they were loaded; never a refresh's own.
pub const NEVER_SEEN: Generation = 0;

pub use super::index::{INDEX_ENTRY_BYTES, Index, IndexEntry};

/// Hashes [`KeyHash`]es for the index without running a general-purpose hash again: a key hash is
/// already blake3 output, so 8 of its bytes are taken and only mixed with a per-map random seed
/// (one multiply), which keeps an upstream that chooses its keys from aiming them all at a few
/// buckets of the table.
#[derive(Clone, Copy, Debug)]
pub struct BuildKeyHasher {
    seed: u64,
}

impl Default for BuildKeyHasher {
    fn default() -> Self {
        use std::hash::BuildHasher;
        // std's per-process random keys, without a dependency of our own for randomness.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x6b65_7973_u64);
        BuildKeyHasher { seed: seed | 1 }
    }
}

impl std::hash::BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            seed: self.seed,
            state: 0,
        }
    }
}

/// The hasher of [`BuildKeyHasher`].
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher {
    seed: u64,
    state: u64,
}

impl std::hash::Hasher for KeyHasher {
    fn write_u64(&mut self, n: u64) {
        self.state ^= n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached by `KeyHash`, which writes one u64; kept correct for any other use.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = self.state.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    fn finish(&self) -> u64 {
        // A folded 64×64→128-bit multiply: every output bit depends on every input and seed bit.
        let product = u128::from(self.state) * u128::from(self.seed);
        (product as u64) ^ ((product >> 64) as u64)
    }
}

/// The result of the last refresh of a feed, shared with requests that arrived while it ran.
#[derive(Clone, Debug)]
pub struct LastRefresh {
    /// When it ended, on tokio's clock (which tests of schedules pause).
    pub finished: tokio::time::Instant,
    /// Wall-clock end, for the freshness header.
    pub finished_at: SystemTime,
    /// The version it left the feed at, or why it failed.
    pub outcome: Result<Version, Error>,
    /// Whether the schedule ran it (with remembered or the gateway's own credentials).
    pub background: bool,
}

/// How candidate removals are looked up upstream; a step down whenever the upstream rejects one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConfirmStrategy {
    /// `$filter=ID in (…)`, batched.
    #[default]
    In,
    /// `$filter=ID eq 1 or ID eq 2 …`, batched.
    Or,
    /// `$filter=ID eq 1`, one request per key.
    Single,
    /// `GET Set(1)`, one request per key (only for feeds without a filter).
    ByKey,
}

/// A feed's in-memory state; one refresh at a time holds it.
#[derive(Default)]
pub struct Slot {
    /// Entities and tombstones: key hash → row, content hash and last sighting. Loaded from the
    /// store on first use and kept in step with every publish; `None` until loaded, and dropped when
    /// a refresh fails (it may hold that refresh's unpublished state).
    pub index: Option<Index>,
    /// The stored meta, `None` until the feed's first commit.
    pub meta: Option<FeedMeta>,
    /// The generation of the last refresh; numbers the sightings in the index.
    pub generation: Generation,
    /// The last refresh's result.
    pub last: Option<LastRefresh>,
    /// What removal confirmation the upstream accepted last time, so we start there.
    pub confirm: ConfirmStrategy,
    /// When a request last needed the index; idle indexes are dropped from memory.
    pub last_used: Option<Instant>,
}

impl Slot {
    /// The generation of a refresh about to start. An entry whose `seen` differs from it after the
    /// enumeration was not seen by this refresh: a removal candidate. After the largest generation
    /// the count starts again at 1; every entry is marked [`NEVER_SEEN`] first, so that no entry
    /// last seen a whole cycle ago (by a refresh that failed, or before an index reload) can pass
    /// for one seen now.
    pub fn next_generation(&mut self) -> Generation {
        self.generation = match self.generation.checked_add(1) {
            Some(g) => g,
            None => {
                if let Some(index) = self.index.as_mut() {
                    for entry in index.values_mut() {
                        entry.seen = NEVER_SEEN;
                    }
                }
                NEVER_SEEN + 1
            }
        };
        self.generation
    }

    /// Forget everything in memory; the store is the truth and is read again on next use.
    pub fn forget(&mut self) {
        self.index = None;
        self.meta = None;
        self.last = None;
    }
}

/// How far a feed's first load has got, so that a first read can be served while it runs.
#[derive(Clone, Debug)]
pub struct LoadProgress {
    /// The feed's definition: until the load is published, the store does not have it.
    pub def: FeedDef,
    /// The version the load writes at, published when it ends.
    pub pending: Version,
    /// The load's first row number.
    pub first_row: u64,
    /// Rows below this one (from `first_row`) are in the store at `pending`.
    pub written: u64,
    /// Set when a row already written was written again with other content (the upstream sent its
    /// key twice): a client may have been served the earlier state.
    pub rewritten: bool,
    /// `None` while the load runs; how it ended.
    pub done: Option<Result<Version, Error>>,
}

/// Where a feed's first load reports its progress (`None` before any).
pub type ProgressSender = tokio::sync::watch::Sender<Option<LoadProgress>>;

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
    compacting: Mutex<std::collections::HashSet<FeedId>>,
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
    /// Claim the compaction of `feed`'s superseded states; false while another run has it.
    pub(crate) fn start_compaction(&self, feed: FeedId) -> bool {
        self.compacting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(feed)
    }

    /// Release what [`Feeds::start_compaction`] claimed.
    pub(crate) fn end_compaction(&self, feed: FeedId) {
        self.compacting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&feed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ContentHash, KeyHash};

    fn key(i: u32) -> KeyHash {
        KeyHash::of(&i.to_string())
    }

    fn entry(seen: Generation) -> IndexEntry {
        IndexEntry {
            seen,
            ..IndexEntry::loaded(0, ContentHash([1; 16]))
        }
    }

    /// The keys a refresh of `generation` would take for removal candidates.
    fn unseen(slot: &Slot, generation: Generation) -> Vec<KeyHash> {
        let mut keys: Vec<KeyHash> = slot
            .index
            .iter()
            .flat_map(|index| index.iter())
            .filter(|(_, e)| e.seen != generation)
            .map(|(k, _)| *k)
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn removal_candidates_stay_right_across_the_generation_wrap() {
        let mut slot = Slot {
            generation: Generation::MAX - 1,
            ..Slot::default()
        };
        let mut index = Index::default();
        // Key 0 was last seen by generation 2 of the cycle before: the next refresh after the
        // wrap but one would also be generation 2. Key 1 was never seen since its load; key 2
        // is seen by the last refresh before the wrap.
        index.insert(key(0), entry(2)).unwrap();
        index.insert(key(1), entry(NEVER_SEEN)).unwrap();
        index.insert(key(2), entry(Generation::MAX - 1)).unwrap();
        slot.index = Some(index);
        let mark = |slot: &mut Slot, k: u32, g: Generation| {
            if let Some(e) = slot.index.as_mut().and_then(|i| i.get_mut(&key(k))) {
                e.seen = g;
            }
        };

        assert_eq!(slot.next_generation(), Generation::MAX);
        mark(&mut slot, 2, Generation::MAX);
        assert_eq!(unseen(&slot, Generation::MAX), sorted(&[0, 1]));

        // Past the wrap: generation 1 again, and no entry carries a generation from before.
        assert_eq!(slot.next_generation(), 1);
        assert_eq!(unseen(&slot, 1), sorted(&[0, 1, 2]));
        mark(&mut slot, 1, 1);
        // Without the reset, key 0 (seen at 2 a cycle ago) would pass for seen now.
        assert_eq!(slot.next_generation(), 2);
        assert_eq!(unseen(&slot, 2), sorted(&[0, 1, 2]));
    }

    fn sorted(keys: &[u32]) -> Vec<KeyHash> {
        let mut keys: Vec<KeyHash> = keys.iter().map(|&k| key(k)).collect();
        keys.sort();
        keys
    }

    #[test]
    fn removal_candidates_match_a_counter_that_never_wraps_over_many_refreshes() {
        // 2,000 refreshes (seven cycles of generations), each seeing a pseudo-random part of 64
        // entities, as a refresh that fails halfway does; the candidates after each must be
        // exactly the entries that refresh did not see, as a 64-bit count tells them.
        let mut slot = Slot::default();
        let mut index = Index::default();
        let mut reference: HashMap<KeyHash, u64> = HashMap::new();
        for k in 0..64 {
            index.insert(key(k), entry(NEVER_SEEN)).unwrap();
            reference.insert(key(k), 0);
        }
        slot.index = Some(index);
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for refresh in 1..=2000u64 {
            let generation = slot.next_generation();
            for k in 0..64 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Some entities go unseen for hundreds of refreshes: only every 5th is ever seen
                // often.
                let seen = if k % 5 == 0 {
                    rng.is_multiple_of(2)
                } else {
                    rng.is_multiple_of(600)
                };
                if seen {
                    if let Some(e) = slot.index.as_mut().and_then(|i| i.get_mut(&key(k))) {
                        e.seen = generation;
                    }
                    reference.insert(key(k), refresh);
                }
            }
            let mut expected: Vec<KeyHash> = reference
                .iter()
                .filter(|(_, last)| **last != refresh)
                .map(|(k, _)| *k)
                .collect();
            expected.sort();
            assert_eq!(unseen(&slot, generation), expected, "refresh {refresh}");
        }
    }

    #[test]
    fn the_index_hasher_spreads_key_hashes_over_the_table() {
        use std::hash::BuildHasher;
        let build = BuildKeyHasher::default();
        // The low bits pick the bucket: 4096 keys over 1024 buckets must not pile up.
        let mut buckets = vec![0u32; 1024];
        for i in 0..4096 {
            buckets[(build.hash_one(key(i)) % 1024) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| n < 20),
            "{:?}",
            buckets.iter().max()
        );
        // Two maps do not share a seed, so a collision found against one is worth nothing elsewhere.
        assert_ne!(
            build.hash_one(key(1)),
            BuildKeyHasher::default().hash_one(key(1))
        );
    }

    fn def(scope: &str, query: &str) -> FeedDef {
        FeedDef {
            route: "/svc".into(),
            entity_set: "Customers".into(),
            query: DefiningQuery::from_encoded(query).unwrap(),
            scope: Scope(scope.into()),
        }
    }

    #[test]
    fn feed_ids_differ_by_query_and_scope() {
        assert_eq!(def("a", "$select=x").id(), def("a", "$select=x").id());
        assert_ne!(def("a", "$select=x").id(), def("b", "$select=x").id());
        assert_ne!(def("a", "$select=x").id(), def("a", "$select=y").id());
    }

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

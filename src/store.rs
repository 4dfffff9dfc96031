//! The store boundary: what the gateway keeps about feeds (their meta, the states of every entity,
//! the changes index, retention marks), webhook subscriptions and the token secret, behind one
//! trait, [`FeedStore`], with two implementations:
//! - [`embedded`]: redb, one file in `--data-dir`, the default; one process.
//! - [`postgres`]: PostgreSQL (`--store postgres://…`), which several replicas share.
//!
//! Both keep the same model, so one conformance suite (`conformance`) runs on each: a refresh writes
//! changed rows in bounded batches as states at the pending version V+1, invisible until the
//! publish (one small transaction that writes the feed meta) makes them the published version;
//! readers take, per row, the newest state at or below the published version. A failed refresh
//! leaves pending states that the next settle of the feed discards.
//!
//! Every method blocks; async callers run them in `spawn_blocking`.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{ContentHash, FeedId, KeyHash, Version};
use crate::odata::delta::Reason;

#[cfg(test)]
mod conformance;
pub mod embedded;
pub mod postgres;

pub use embedded::{OpenExistingError, RedbStore, file_path};

/// A store failure: I/O, corruption, or a bug. Answered with 503/500, never blamed on the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

impl StoreError {
    fn new(e: impl std::fmt::Display) -> Self {
        StoreError(e.to_string())
    }
}

/// Everything stored about a feed besides its entities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedMeta {
    /// Route prefix the feed was defined under.
    pub route: String,
    /// Entity set name.
    pub entity_set: String,
    /// Normalized defining query, encoded (C8).
    pub query: String,
    /// Identity scope label (a keyed hash of the credentials, or `shared`).
    pub scope: String,
    /// Published version: the last refresh that found a difference.
    pub version: u64,
    /// Live (not removed) entities at `version`.
    pub live: u64,
    /// The feed's retention mark (unix ms): no token of the feed handed out so far was issued
    /// after it (it is written before a newer token is handed out, possibly a little ahead), and the
    /// feed was last used or committed no later. A feed whose mark is older than the token lifetime
    /// can have no valid token left and is dropped. It only grows; every writer keeps the larger.
    #[serde(default)]
    pub last_used_ms: u64,
    /// Set when the feed's entities were dropped for disuse. The definition stays, so an expired
    /// token still gets a `Location` with its query (C25), and versions go on from where they were.
    #[serde(default)]
    pub dropped: bool,
    /// The row number the next new key of the feed gets.
    #[serde(default)]
    pub next_row: u64,
}

/// Offsets into an encoded entity state.
const FORMAT: u8 = 2;
const KEY_AT: usize = 1;
const CONTENT_AT: usize = 17;
const FLAG_AT: usize = 33;
const HEADER: usize = 34;

/// One stored state of an entity: the one row type from upstream page to store and back. It is
/// built once from an upstream entity (or a confirmed removal), written to the store as it is, and read
/// back without copying its parts apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityRow {
    bytes: Vec<u8>,
    /// End of the predicate, end of the key members; the body follows.
    predicate_end: usize,
    members_end: usize,
}

impl EntityRow {
    /// The state of a live entity; `write_body` appends the compact body to the buffer it is given.
    pub fn live(
        key_hash: KeyHash,
        content: ContentHash,
        predicate: &str,
        key_members: &[u8],
        body_len_hint: usize,
        write_body: impl FnOnce(&mut Vec<u8>),
    ) -> Self {
        let mut bytes =
            Vec::with_capacity(HEADER + 8 + predicate.len() + key_members.len() + body_len_hint);
        Self::header(&mut bytes, key_hash, content, 0, predicate, key_members);
        let (predicate_end, members_end) = (
            HEADER + 4 + predicate.len(),
            HEADER + 8 + predicate.len() + key_members.len(),
        );
        write_body(&mut bytes);
        EntityRow {
            bytes,
            predicate_end,
            members_end,
        }
    }

    /// The state of an entity that left the feed: its key stays, for the tombstone.
    pub fn removed(key_hash: KeyHash, reason: Reason, predicate: &str, key_members: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(HEADER + 8 + predicate.len() + key_members.len());
        let flag = match reason {
            Reason::Deleted => 1,
            Reason::Changed => 2,
        };
        Self::header(
            &mut bytes,
            key_hash,
            ContentHash([0; 16]),
            flag,
            predicate,
            key_members,
        );
        let members_end = bytes.len();
        EntityRow {
            bytes,
            predicate_end: HEADER + 4 + predicate.len(),
            members_end,
        }
    }

    fn header(
        out: &mut Vec<u8>,
        key_hash: KeyHash,
        content: ContentHash,
        flag: u8,
        predicate: &str,
        key_members: &[u8],
    ) {
        out.push(FORMAT);
        out.extend_from_slice(&key_hash.0);
        out.extend_from_slice(&content.0);
        out.push(flag);
        for part in [predicate.as_bytes(), key_members] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }

    /// Check an encoded state read from the store.
    fn decode(bytes: Vec<u8>) -> Result<Self, StoreError> {
        let (predicate_end, members_end) = Self::bounds(&bytes)?;
        std::str::from_utf8(&bytes[HEADER + 4..predicate_end])
            .map_err(|_| StoreError::new("an entity row is corrupt"))?;
        Ok(EntityRow {
            bytes,
            predicate_end,
            members_end,
        })
    }

    fn bounds(bytes: &[u8]) -> Result<(usize, usize), StoreError> {
        let corrupt = || StoreError::new("an entity row is corrupt");
        if bytes.len() < HEADER || bytes[0] != FORMAT || bytes[FLAG_AT] > 2 {
            return Err(corrupt());
        }
        let mut at = HEADER;
        let mut ends = [0usize; 2];
        for end in &mut ends {
            let len = bytes.get(at..at + 4).ok_or_else(corrupt)?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| corrupt())?) as usize;
            at = at.checked_add(4 + len).ok_or_else(corrupt)?;
            if at > bytes.len() {
                return Err(corrupt());
            }
            *end = at;
        }
        Ok((ends[0], ends[1]))
    }

    /// The encoded state, as stored.
    fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is held (never, for a valid state).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Hash of the key predicate.
    pub fn key_hash(&self) -> KeyHash {
        KeyHash(fixed(&self.bytes, KEY_AT))
    }

    /// Hash of the canonical content (zero once removed).
    pub fn content(&self) -> ContentHash {
        ContentHash(fixed(&self.bytes, CONTENT_AT))
    }

    /// Set when the entity has left the feed.
    pub fn removed_reason(&self) -> Option<Reason> {
        removed_flag(&self.bytes)
    }

    /// The key predicate: `42`, `ID=1,Line=2`.
    pub fn predicate(&self) -> &str {
        std::str::from_utf8(&self.bytes[HEADER + 4..self.predicate_end]).unwrap_or_default()
    }

    /// Key members as compact JSON, for 4.01 tombstones.
    pub fn key_members(&self) -> &[u8] {
        &self.bytes[self.predicate_end + 4..self.members_end]
    }

    /// Latest body (compact JSON); empty once removed.
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.members_end..]
    }
}

fn fixed(bytes: &[u8], at: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Some(src) = bytes.get(at..at + 16) {
        out.copy_from_slice(src);
    }
    out
}

/// The removed flag of an encoded state, read without decoding the rest.
fn removed_flag(bytes: &[u8]) -> Option<Reason> {
    match bytes.get(FLAG_AT) {
        Some(1) => Some(Reason::Deleted),
        Some(2) => Some(Reason::Changed),
        _ => None,
    }
}

/// A row number and the state a refresh writes for it.
#[derive(Clone, Debug)]
pub struct PendingRow {
    /// The row.
    pub row: u64,
    /// Whether the row had a published state before this refresh (which the new one supersedes).
    pub existed: bool,
    /// The new state.
    pub state: EntityRow,
}

/// The store's page size, which an update of a stored row dirties (see [`PendingRow::write_cost`]).
const STORE_PAGE_BYTES: usize = 4096;

impl PendingRow {
    /// What writing the row costs a store transaction, in bytes held until its commit and written
    /// by it. A row that replaces one already stored lands at a random place of the table, and its
    /// write copies a whole page, so it counts as a page beside its own bytes; new rows append and
    /// share pages.
    pub fn write_cost(&self) -> usize {
        self.state.len() + if self.existed { STORE_PAGE_BYTES } else { 0 }
    }
}

/// What the maintenance before a refresh did.
#[derive(Clone, Debug, Default)]
pub struct Settled {
    /// Pending states of an unpublished version that were discarded.
    pub discarded: u64,
    /// Superseded states removed.
    pub compacted: u64,
    /// Key hashes of the tombstones purged because they were older than the retention window.
    pub purged: Vec<KeyHash>,
    /// The highest version a refresh of the feed wrote at without publishing it. It is never used
    /// again, so a cursor naming it cannot be mistaken for a later load's.
    pub burned: u64,
}

/// Entries per table (see [`FeedStore::sizes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreSizes {
    /// Feeds defined.
    pub feeds: u64,
    /// Entity states, published and pending.
    pub entity_states: u64,
    /// Entries of the changes index.
    pub changes: u64,
    /// Superseded states not yet compacted.
    pub stale: u64,
    /// Refreshes writing (or cut short).
    pub pending: u64,
}

/// One row of a feed as the in-memory index loads it.
#[derive(Clone, Copy, Debug)]
pub struct IndexRow {
    /// The row number.
    pub row: u64,
    /// The key hash.
    pub key_hash: KeyHash,
    /// The content hash, `None` for a tombstone.
    pub content: Option<ContentHash>,
}

/// The key of a removal candidate, read from its stored state for the upstream check.
#[derive(Clone, Debug)]
pub struct RowKey {
    /// The row number.
    pub row: u64,
    /// The key hash.
    pub key_hash: KeyHash,
    /// The key predicate.
    pub predicate: String,
    /// Key members as compact JSON.
    pub key_members: Vec<u8>,
}

/// A webhook subscription as stored: what it watches, where it calls, until when, and where its
/// next notification's delta link starts. Never any credential: after a restart a per-identity
/// feed is refreshed again only once a request of its client puts it back on the schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRow {
    /// The feed watched.
    pub feed: [u8; 16],
    /// Route prefix of the feed.
    pub route: String,
    /// Entity set of the feed.
    pub entity_set: String,
    /// The feed's defining query, encoded (to authorize a client's request on it upstream).
    pub query: String,
    /// The feed's collection on the gateway, as the client that created it addresses it: the
    /// base of the delta links of its notifications.
    pub collection_url: String,
    /// Identity scope of the client that created it; only that scope sees it.
    pub scope: String,
    /// Where notifications go.
    pub notification_url: String,
    /// Echoed in every notification, for the receiver to check the sender.
    pub client_state: Option<String>,
    /// When it was created (unix ms).
    pub created_ms: u64,
    /// When it ends (unix ms).
    pub expires_ms: u64,
    /// The version the next notification's delta link starts from.
    pub since: u64,
    /// The issue time (unix s) that goes with `since` in that link.
    pub issued_at: u64,
    /// Notifications given up since the last one delivered.
    pub missed: u64,
}

/// The refreshes of a feed that ended well, as a store shared by replicas records them
/// ([`FeedStore::feed_and_refreshes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshMark {
    /// How many, since the feed was created.
    pub count: u64,
    /// When the last one ended (unix ms; 0 for none).
    pub at_ms: u64,
}

/// A held [`FeedStore::lock_feed`]; released when dropped, and by the store when the process
/// holding it dies.
pub struct FeedLock(#[allow(dead_code)] Box<dyn Send + Sync>);

impl FeedLock {
    /// A lock that holds `guard` until it is dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        FeedLock(Box::new(guard))
    }
}

/// The operations of a store, as the gateway uses them. Implementations are cheap to share behind
/// an `Arc`; every method blocks (run it in `spawn_blocking`), and a failure is a [`StoreError`],
/// answered 503: a store outage is never the client's fault.
pub trait FeedStore: Send + Sync {
    /// The secret that token keys are derived from, created once when the store is.
    fn token_secret(&self) -> Result<Vec<u8>, StoreError>;

    /// How many entries each table holds, for operations and tests.
    fn sizes(&self) -> Result<StoreSizes, StoreError>;

    /// The bytes the store takes: its file, or its tables with their indexes and TOAST.
    fn bytes(&self) -> Result<u64, StoreError>;

    /// A feed's meta, if the feed exists.
    fn feed(&self, feed: FeedId) -> Result<Option<FeedMeta>, StoreError>;

    /// Every feed's meta, dropped ones included, in id order.
    fn feeds(&self) -> Result<Vec<(FeedId, FeedMeta)>, StoreError>;

    /// Maintenance before a refresh writes: discard states of an unpublished version, purge
    /// tombstones of versions committed before `purge_before_ms`, and (a store may do it here or in
    /// [`FeedStore::compact_superseded`]) remove states superseded by published ones. Safe to
    /// repeat after a crash.
    fn settle(&self, feed: FeedId, purge_before_ms: u64) -> Result<Settled, StoreError>;

    /// Hold the refreshes of `feed` for this process until the returned lock is dropped: with
    /// several replicas on one store, one refresh per feed at a time across all of them, waiting
    /// (bounded by the store's statement timeout) while another replica refreshes. `None` where
    /// this process is the only writer (the embedded store: a feed's slot serializes refreshes).
    fn lock_feed(&self, feed: FeedId) -> Result<Option<FeedLock>, StoreError> {
        let _ = feed;
        Ok(None)
    }

    /// Whether other processes may publish into this store (so [`FeedStore::lock_feed`] may have
    /// to wait for one).
    fn is_shared(&self) -> bool {
        false
    }

    /// A feed's meta with its refresh mark: how many refreshes of the feed ended well, a publish
    /// or not, and when the last one did. A replica that waited for [`FeedStore::lock_feed`]
    /// compares the counts before and after to tell that another replica refreshed the feed
    /// meanwhile, even one that found no change, and a replica whose own refresh is old takes one
    /// of another replica young enough as its own. A store with one writer keeps no mark.
    fn feed_and_refreshes(
        &self,
        feed: FeedId,
    ) -> Result<(Option<FeedMeta>, RefreshMark), StoreError> {
        Ok((self.feed(feed)?, RefreshMark::default()))
    }

    /// Count a refresh of `feed` that found no change, ended at `now_ms` (a publish counts
    /// itself).
    fn count_unchanged_refresh(&self, feed: FeedId, now_ms: u64) -> Result<(), StoreError> {
        let _ = (feed, now_ms);
        Ok(())
    }

    /// Claim the sending of subscription `id`'s notification of `version` for `hold_ms`: with
    /// several replicas, only the one whose claim succeeds sends it. A claim gives way to one of a
    /// newer version, and to any once its hold ran out (its holder died sending). A store with one
    /// writer grants every claim.
    fn claim_notification(
        &self,
        id: [u8; 16],
        version: Version,
        now_ms: u64,
        hold_ms: u64,
    ) -> Result<bool, StoreError> {
        let _ = (id, version, now_ms, hold_ms);
        Ok(true)
    }

    /// Remove the states superseded by published ones; returns how many. Called after a publish,
    /// beside the next refresh of the feed, so it must be safe to run concurrently with one (it
    /// touches only states at or below the published version). A store whose `settle` removes
    /// them already has nothing left to do here.
    fn compact_superseded(&self, feed: FeedId) -> Result<u64, StoreError> {
        let _ = feed;
        Ok(0)
    }

    /// Visit every row of a feed at its published version, tombstones included, for the in-memory
    /// index; returns the feed's meta as of the same snapshot.
    fn visit_index(
        &self,
        feed: FeedId,
        visit: &mut dyn FnMut(IndexRow),
    ) -> Result<Option<FeedMeta>, StoreError>;

    /// Write a batch of a refresh's changed rows as states at the pending version `version`.
    fn write_pending(
        &self,
        feed: FeedId,
        version: Version,
        rows: &[PendingRow],
    ) -> Result<(), StoreError>;

    /// Publish a refresh: the feed's meta (whose version makes the pending states visible), the
    /// version's commit time if it is new, and the pending marker cleared, atomically.
    fn publish(&self, feed: FeedId, meta: &FeedMeta, now_ms: u64) -> Result<(), StoreError>;

    /// The keys of removal candidates, from their published states.
    fn keys_of(&self, feed: FeedId, rows: &[u64]) -> Result<Vec<RowKey>, StoreError>;

    /// Whether `version` of a feed was published (and its commit time is still recorded).
    fn was_published(&self, feed: FeedId, version: Version) -> Result<bool, StoreError>;

    /// Published rows of a feed by row number (missing ones are skipped).
    fn rows(&self, feed: FeedId, rows: &[u64]) -> Result<Vec<(u64, EntityRow)>, StoreError>;

    /// Record when feeds were last used; a mark only grows.
    fn touch(&self, used: &[(FeedId, u64)]) -> Result<(), StoreError>;

    /// Make a feed's retention mark cover a token issued at `issued_ms` (moving it to `until_ms`
    /// when it is older), durably. Returns the mark afterwards; 0 for a feed not stored.
    fn cover_issued(&self, feed: FeedId, issued_ms: u64, until_ms: u64) -> Result<u64, StoreError>;

    /// Feeds (not dropped) not used since `before_ms`.
    fn idle_feeds(&self, before_ms: u64) -> Result<Vec<FeedId>, StoreError>;

    /// Every feed that holds entities (not dropped), with its scope label.
    fn stored_feeds(&self) -> Result<Vec<(FeedId, String)>, StoreError>;

    /// Delete everything stored for a feed but its definition, if it is still unused since
    /// `before_ms`. Returns whether it was dropped.
    fn drop_feed(&self, feed: FeedId, before_ms: u64) -> Result<bool, StoreError>;

    /// Visit the body of every live entity of a feed at its published version, with its row.
    fn visit_live(&self, feed: FeedId, visit: &mut dyn FnMut(u64, &[u8]))
    -> Result<(), StoreError>;

    /// Up to `limit` live entities in row order after row `after`, passing over the first `skip`,
    /// as of `visible` (a pending version) or, when `None`, the published version.
    fn live_page_at(
        &self,
        feed: FeedId,
        after: Option<u64>,
        skip: u64,
        limit: usize,
        visible: Option<Version>,
    ) -> Result<Vec<(u64, EntityRow)>, StoreError>;

    /// Up to `limit` entries of the delta (`since`, `upto`] in (version, row) order after
    /// `after`, each with its newest published state; a row appears once.
    fn delta_page(
        &self,
        feed: FeedId,
        since: Version,
        upto: Version,
        after: Option<(Version, u64)>,
        limit: usize,
    ) -> Result<Vec<(Version, u64, EntityRow)>, StoreError>;

    /// How many entries the delta (`since`, `upto`] holds (C23, C24).
    fn delta_count(&self, feed: FeedId, since: Version, upto: Version) -> Result<u64, StoreError>;

    /// Every stored webhook subscription, by id.
    fn subscriptions(&self) -> Result<Vec<([u8; 16], SubscriptionRow)>, StoreError>;

    /// Write a subscription (new or changed), durably.
    fn put_subscription(&self, id: [u8; 16], row: &SubscriptionRow) -> Result<(), StoreError>;

    /// Remove subscriptions; those already gone are skipped.
    fn delete_subscriptions(&self, ids: &[[u8; 16]]) -> Result<(), StoreError>;
}

/// The store the gateway runs on: a cheap-to-clone handle on one [`FeedStore`].
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn FeedStore>,
}

impl Deref for Store {
    type Target = dyn FeedStore;

    fn deref(&self) -> &Self::Target {
        self.engine.as_ref()
    }
}

impl Store {
    /// A handle on a store.
    pub fn new(engine: Arc<dyn FeedStore>) -> Self {
        Store { engine }
    }

    /// Open (or create) the embedded store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Store::new(Arc::new(RedbStore::open(dir)?)))
    }

    /// [`Store::open`] with a page cache of at most `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        Ok(Store::new(Arc::new(RedbStore::open_with_cache(
            dir,
            cache_bytes,
        )?)))
    }

    /// [`FeedStore::visit_index`] with a closure.
    pub fn load_index(
        &self,
        feed: FeedId,
        mut visit: impl FnMut(IndexRow),
    ) -> Result<Option<FeedMeta>, StoreError> {
        self.engine.visit_index(feed, &mut visit)
    }

    /// [`FeedStore::visit_live`] with a closure.
    pub fn scan_live(
        &self,
        feed: FeedId,
        mut visit: impl FnMut(u64, &[u8]),
    ) -> Result<(), StoreError> {
        self.engine.visit_live(feed, &mut visit)
    }

    /// Live entities at the published version (see [`FeedStore::live_page_at`]).
    pub fn live_page(
        &self,
        feed: FeedId,
        after: Option<u64>,
        skip: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EntityRow)>, StoreError> {
        self.engine.live_page_at(feed, after, skip, limit, None)
    }
}

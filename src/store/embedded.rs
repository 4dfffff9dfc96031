//! The embedded store (redb), the default: feeds, the states of every entity of every feed, and the changes
//! index that makes "what changed since version v" a range scan.
//!
//! Schema (all keys big-endian so that byte order is numeric order):
//! - `meta`:     name → bytes: the schema version and the token secret.
//! - `feeds`:    FeedId → feed meta (definition, published version, counts, next row number).
//! - `entities`: FeedId ‖ row ‖ Version → entity state (key hash, content hash, removed flag and
//!   reason, key predicate, key members, latest body — empty once removed). The row number is
//!   assigned when a key is first seen and only grows, so a first load appends to the B-tree; the
//!   initial response pages rows in this order, which is the upstream's first-seen order.
//! - `changes`:  FeedId ‖ Version ‖ row → (): the states written at each version.
//! - `stale`:    FeedId ‖ Version ‖ row → (): rows that had a state before the version wrote a new
//!   one; once the version is published, the older states are garbage and are compacted away.
//! - `pending`:  FeedId → the version a refresh is writing.
//! - `versions`: FeedId ‖ Version → commit time (unix ms), to find tombstones older than the
//!   retention window.
//! - `subscriptions`: subscription id → a webhook subscription ([`SubscriptionRow`], JSON). Added
//!   without a schema bump: a store without the table gets an empty one at start, and an older
//!   gateway that opens the file leaves the table alone.
//!
//! Bounded commits: a refresh writes changed rows in batches as it goes, as states at the pending
//! version V+1 beside the published ones, never over them. Readers take, per row, the newest state
//! at or below the published version, read in the same transaction, so pending states are invisible
//! until the publish — one small transaction that writes the feed meta. A failed refresh, or a crash
//! at any instant, leaves pending states that the next refresh of the feed, or the next start,
//! discards (listed by `pending` and found through `changes`).
//!
//! Durability: batches commit with `Durability::None` (losing them in a crash is harmless, they are
//! unpublished); the publish commits with `Durability::Immediate`, which also makes every earlier
//! batch durable, and only then is a token naming the version handed out. redb's copy-on-write
//! commit makes a crash at any instant leave either the old or the new version, never a mix (C29).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::*;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FEEDS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("feeds");
const ENTITIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("entities");
const CHANGES: TableDefinition<&[u8; 32], ()> = TableDefinition::new("changes");
const STALE: TableDefinition<&[u8; 32], ()> = TableDefinition::new("stale");
const PENDING: TableDefinition<&[u8; 16], u64> = TableDefinition::new("pending");
const VERSIONS: TableDefinition<&[u8; 24], u64> = TableDefinition::new("versions");
const SUBSCRIPTIONS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("subscriptions");

/// The `changes` table of schema versions 1 and 2 (keyed by key hash), deleted by the migration.
const OLD_CHANGES: TableDefinition<&[u8; 40], ()> = TableDefinition::new("changes");

/// Bumped when the layout of any table changes. Stores of versions 1 and 2 (entities keyed by a
/// key hash: the predicate as spelled, then the key identity) are migrated at start (see
/// `migrate_keyed_by_hash`); any other version is refused.
const SCHEMA_VERSION: &[u8] = b"3";
const DB_FILE: &str = "gateway.redb";

/// Rows per transaction of the maintenance passes (discarding, compacting, purging).
const MAINTENANCE_BATCH: usize = 20_000;

/// Superseded states removed per transaction by [`RedbStore::compact_superseded`].
const COMPACTION_BATCH: usize = 2_000;

macro_rules! impl_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::new(e) }
        }
    )*};
}
impl_from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn entity_key(feed: FeedId, row: u64, version: Version) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&feed.0);
    k[16..24].copy_from_slice(&row.to_be_bytes());
    k[24..].copy_from_slice(&version.0.to_be_bytes());
    k
}

fn change_key(feed: FeedId, version: Version, row: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&feed.0);
    k[16..24].copy_from_slice(&version.0.to_be_bytes());
    k[24..].copy_from_slice(&row.to_be_bytes());
    k
}

fn version_key(feed: FeedId, version: Version) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&feed.0);
    k[16..].copy_from_slice(&version.0.to_be_bytes());
    k
}

/// The two u64 after the feed id of an `entities` or `changes` key.
fn split_key(k: &[u8; 32]) -> (u64, u64) {
    let mut a = [0u8; 8];
    a.copy_from_slice(&k[16..24]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[24..]);
    (u64::from_be_bytes(a), u64::from_be_bytes(b))
}

/// The newest state of `row` at or below `upto`, with its version.
fn latest<T: ReadableTable<&'static [u8; 32], &'static [u8]>>(
    entities: &T,
    feed: FeedId,
    row: u64,
    upto: Version,
) -> Result<Option<(Version, Vec<u8>)>, StoreError> {
    let first = entity_key(feed, row, Version(0));
    let last = entity_key(feed, row, upto);
    match entities.range::<&[u8; 32]>(&first..=&last)?.next_back() {
        None => Ok(None),
        Some(item) => {
            let (k, v) = item?;
            let (_, version) = split_key(k.value());
            Ok(Some((Version(version), v.value().to_vec())))
        }
    }
}

fn read_meta<T: ReadableTable<&'static [u8; 16], &'static [u8]>>(
    feeds: &T,
    feed: FeedId,
) -> Result<Option<FeedMeta>, StoreError> {
    match feeds.get(&feed.0)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(StoreError::new),
    }
}

/// The store: a cheap-to-clone handle on one redb database. All methods block; async callers run
/// them in `spawn_blocking`.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    /// The file, for its size.
    path: std::path::PathBuf,
    /// Hands the pages of unpublished batches to the disk while a refresh runs.
    writeback: Arc<Writeback>,
}

/// When the background write-back syncs the store file: once batches not yet published hold
/// `after` bytes, every `every` bytes of batches.
#[derive(Clone, Copy, Debug)]
struct WritebackAt {
    after: usize,
    every: usize,
}

/// A refresh that writes less than 64 MiB before its publish (100k rows of ~300 B) leaves its
/// pages to the publish's one sync, as it always did; a larger one has them synced every 8 MiB.
const WRITEBACK_AT: WritebackAt = WritebackAt {
    after: 64 << 20,
    every: 8 << 20,
};

/// Background write-back of the store file. Batches commit without waiting for the disk, and the
/// publish that makes a refresh durable then waits for every page they wrote: for a first load of
/// a million rows, half a gigabyte, in the time the last client page waits for its delta link. A
/// thread of its own syncs the file while a large refresh writes instead (see [`WRITEBACK_AT`]),
/// so the publish finds most pages on disk. A sync only makes durable earlier what the operating
/// system may write back at any moment anyway, so the store's crash safety does not change.
struct Writeback {
    at: WritebackAt,
    /// Bytes of batches written since the last publish, and since the last hand-off.
    unpublished: std::sync::atomic::AtomicUsize,
    since: std::sync::atomic::AtomicUsize,
    /// Wakes the thread; holds one request at most, so a slow disk coalesces them. `None` where
    /// the thread could not be started (the publish then syncs everything, as without it).
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    /// Syncs done.
    #[cfg(test)]
    synced: Arc<std::sync::atomic::AtomicU64>,
}

impl Writeback {
    /// A write-back thread for the file at `path`; it ends when the store's last handle is gone.
    fn start(path: &Path, at: WritebackAt) -> Self {
        let synced = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let started = std::fs::File::open(path).and_then(|file| {
            let synced = synced.clone();
            std::thread::Builder::new()
                .name("store-writeback".into())
                .spawn(move || {
                    while woken.recv().is_ok() {
                        if let Err(e) = file.sync_data() {
                            tracing::debug!(error = %e, "the store's background write-back stopped");
                            return;
                        }
                        synced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
        });
        if let Err(e) = &started {
            tracing::debug!(error = %e, "no background write-back of the store");
        }
        Writeback {
            at,
            unpublished: std::sync::atomic::AtomicUsize::new(0),
            since: std::sync::atomic::AtomicUsize::new(0),
            wake: started.ok().map(|_| wake),
            #[cfg(test)]
            synced,
        }
    }

    /// Note `bytes` more written by a batch, and wake the thread when it is time.
    fn wrote(&self, bytes: usize) {
        use std::sync::atomic::Ordering;
        let Some(wake) = &self.wake else { return };
        let unpublished = self.unpublished.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let since = self.since.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if unpublished >= self.at.after && since >= self.at.every {
            self.since.store(0, Ordering::Relaxed);
            // Full: a sync is about to run, and it takes these pages too.
            let _ = wake.try_send(());
        }
    }

    /// A publish synced the file: what the batches wrote is on disk.
    fn published(&self) {
        use std::sync::atomic::Ordering;
        self.unpublished.store(0, Ordering::Relaxed);
        self.since.store(0, Ordering::Relaxed);
    }
}

impl RedbStore {
    /// Open (or create) the store in `dir`, creating the token secret on first start, migrating a
    /// store of the previous layout, and discarding whatever refreshes cut short by a crash wrote.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, crate::config::DEFAULT_STORE_CACHE_BYTES)
    }

    /// [`RedbStore::open`] with a page cache of at most `cache_bytes` (`limits.store_cache_bytes`).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        Self::opened(db, path)
    }

    /// The store on an opened database: initialized, with what a crash cut short discarded.
    fn opened(db: Database, path: std::path::PathBuf) -> Result<Self, StoreError> {
        let store = RedbStore {
            db: Arc::new(db),
            writeback: Arc::new(Writeback::start(&path, WRITEBACK_AT)),
            path,
        };
        store.init(&store.path)?;
        store.recover()?;
        Ok(store)
    }

    fn init(&self, path: &Path) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let existing = meta.get("schema_version")?.map(|v| v.value().to_vec());
            match existing {
                Some(v) if v == b"1" || v == b"2" => {
                    drop(meta);
                    migrate_keyed_by_hash(&tx)?;
                    meta = tx.open_table(META)?;
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                    tracing::warn!(store = %path.display(), from = %String::from_utf8_lossy(&v), "migrated the store to schema version 3: tracked feeds start over, their delta links answer 410 Gone");
                }
                Some(v) if v != SCHEMA_VERSION => {
                    return Err(StoreError(format!(
                        "{} has schema version {}, this gateway reads {}: move the file away (clients then start over with a new tracked read) or run the gateway release that wrote it",
                        path.display(),
                        String::from_utf8_lossy(&v),
                        String::from_utf8_lossy(SCHEMA_VERSION)
                    )));
                }
                Some(_) => {}
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
            }
            if meta.get("token_secret")?.is_none() {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret)
                    .map_err(|e| StoreError(format!("no randomness for the token secret: {e}")))?;
                meta.insert("token_secret", &secret[..])?;
            }
            tx.open_table(FEEDS)?;
            tx.open_table(ENTITIES)?;
            tx.open_table(CHANGES)?;
            tx.open_table(STALE)?;
            tx.open_table(PENDING)?;
            tx.open_table(VERSIONS)?;
            tx.open_table(SUBSCRIPTIONS)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Discard the pending states of every refresh that a crash cut short.
    fn recover(&self) -> Result<(), StoreError> {
        let cut_short: Vec<FeedId> = {
            let tx = self.db.begin_read()?;
            let pending = tx.open_table(PENDING)?;
            pending
                .iter()?
                .map(|item| item.map(|(k, _)| FeedId(*k.value())))
                .collect::<Result<_, _>>()?
        };
        for feed in cut_short {
            let n = self.discard_pending(feed)?;
            if n > 0 {
                tracing::info!(feed = ?feed.0, states = n, "discarded what a refresh cut short had written");
            }
        }
        Ok(())
    }

    /// The secret that token keys are derived from.
    pub fn token_secret(&self) -> Result<Vec<u8>, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let secret = meta
            .get("token_secret")?
            .ok_or_else(|| StoreError::new("the token secret is missing"))?;
        Ok(secret.value().to_vec())
    }

    /// How many entries each table holds, for operations and tests.
    pub fn sizes(&self) -> Result<StoreSizes, StoreError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read()?;
        Ok(StoreSizes {
            feeds: tx.open_table(FEEDS)?.len()?,
            entity_states: tx.open_table(ENTITIES)?.len()?,
            changes: tx.open_table(CHANGES)?.len()?,
            stale: tx.open_table(STALE)?.len()?,
            pending: tx.open_table(PENDING)?.len()?,
        })
    }

    /// A feed's meta, if the feed exists.
    pub fn feed(&self, feed: FeedId) -> Result<Option<FeedMeta>, StoreError> {
        let tx = self.db.begin_read()?;
        let feeds = tx.open_table(FEEDS)?;
        read_meta(&feeds, feed)
    }

    /// Maintenance before a refresh writes: discard states of an unpublished version (a refresh
    /// that failed) and purge tombstones of versions committed before `purge_before_ms`. Every
    /// step runs in bounded transactions, and each is safe to repeat after a crash. Superseded
    /// states are removed apart from this, after a publish ([`RedbStore::compact_superseded`]).
    pub fn settle(&self, feed: FeedId, purge_before_ms: u64) -> Result<Settled, StoreError> {
        let mut settled = Settled {
            discarded: self.discard_pending(feed)?,
            ..Settled::default()
        };
        settled.purged = self.purge(feed, purge_before_ms)?;
        let tx = self.db.begin_read()?;
        settled.burned = tx
            .open_table(PENDING)?
            .get(&feed.0)?
            .map_or(0, |v| v.value());
        Ok(settled)
    }

    /// Delete every state above the published version of a feed. The pending marker stays, as the
    /// record of a version number that must not be used again.
    fn discard_pending(&self, feed: FeedId) -> Result<u64, StoreError> {
        let mut discarded = 0;
        loop {
            let tx = self.db.begin_write()?;
            let done;
            {
                let feeds = tx.open_table(FEEDS)?;
                let published = Version(read_meta(&feeds, feed)?.map_or(0, |m| m.version));
                let mut changes = tx.open_table(CHANGES)?;
                let mut entities = tx.open_table(ENTITIES)?;
                let mut stale = tx.open_table(STALE)?;
                let first = change_key(feed, Version(published.0.saturating_add(1)), 0);
                let last = change_key(feed, Version(u64::MAX), u64::MAX);
                let batch: Vec<(u64, u64)> = changes
                    .range::<&[u8; 32]>(&first..=&last)?
                    .take(MAINTENANCE_BATCH)
                    .map(|item| item.map(|(k, _)| split_key(k.value())))
                    .collect::<Result<_, _>>()?;
                for &(version, row) in &batch {
                    entities.remove(&entity_key(feed, row, Version(version)))?;
                    changes.remove(&change_key(feed, Version(version), row))?;
                    stale.remove(&change_key(feed, Version(version), row))?;
                }
                discarded += batch.len() as u64;
                done = batch.len() < MAINTENANCE_BATCH;
                if done {
                    // Stale marks of pending rows whose state was already discarded.
                    stale.retain_in::<&[u8; 32], _>(&first..=&last, |_, _| false)?;
                }
            }
            tx.commit()?;
            if done {
                return Ok(discarded);
            }
        }
    }

    /// Remove the states superseded by published ones, with their index entries; returns how many.
    /// Only states at or below the published version are touched, read again in every
    /// transaction, so this may run beside a refresh of the same feed (or another run of itself):
    /// redb serializes the transactions, and a mark one run removed the other no longer finds.
    /// Superseded rows lie at random places of the table, so a transaction takes at most
    /// [`COMPACTION_BATCH`] of them, which bounds the pages it holds dirty until its commit.
    pub fn compact_superseded(&self, feed: FeedId) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let tx = self.db.begin_write()?;
            let done;
            {
                let feeds = tx.open_table(FEEDS)?;
                let published = Version(read_meta(&feeds, feed)?.map_or(0, |m| m.version));
                let mut changes = tx.open_table(CHANGES)?;
                let mut entities = tx.open_table(ENTITIES)?;
                let mut stale = tx.open_table(STALE)?;
                let first = change_key(feed, Version(0), 0);
                let last = change_key(feed, published, u64::MAX);
                let batch: Vec<(u64, u64)> = stale
                    .range::<&[u8; 32]>(&first..=&last)?
                    .take(COMPACTION_BATCH)
                    .map(|item| item.map(|(k, _)| split_key(k.value())))
                    .collect::<Result<_, _>>()?;
                for &(version, row) in &batch {
                    let older: Vec<u64> = entities
                        .range::<&[u8; 32]>(
                            &entity_key(feed, row, Version(0))
                                ..&entity_key(feed, row, Version(version)),
                        )?
                        .map(|item| item.map(|(k, _)| split_key(k.value()).1))
                        .collect::<Result<_, _>>()?;
                    for old in older {
                        entities.remove(&entity_key(feed, row, Version(old)))?;
                        changes.remove(&change_key(feed, Version(old), row))?;
                        removed += 1;
                    }
                    stale.remove(&change_key(feed, Version(version), row))?;
                }
                done = batch.len() < COMPACTION_BATCH;
            }
            tx.commit()?;
            if done {
                return Ok(removed);
            }
        }
    }

    /// Delete tombstones (and their index entries) of versions committed before `before_ms`. Live
    /// rows of those versions stay. A still-valid token was issued after every such version was
    /// committed, so its delta starts above them and never needs them (DESIGN "Retention").
    fn purge(&self, feed: FeedId, before_ms: u64) -> Result<Vec<KeyHash>, StoreError> {
        let mut purged = Vec::new();
        let expired: Vec<Version> = {
            let tx = self.db.begin_read()?;
            let versions = tx.open_table(VERSIONS)?;
            let mut out = Vec::new();
            for item in versions.range::<&[u8; 24]>(
                &version_key(feed, Version(0))..=&version_key(feed, Version(u64::MAX)),
            )? {
                let (k, committed) = item?;
                if committed.value() >= before_ms {
                    break;
                }
                let mut v = [0u8; 8];
                v.copy_from_slice(&k.value()[16..]);
                out.push(Version(u64::from_be_bytes(v)));
            }
            out
        };
        for version in expired {
            let tx = self.db.begin_write()?;
            {
                let mut changes = tx.open_table(CHANGES)?;
                let mut entities = tx.open_table(ENTITIES)?;
                let rows: Vec<u64> = changes
                    .range::<&[u8; 32]>(
                        &change_key(feed, version, 0)..=&change_key(feed, version, u64::MAX),
                    )?
                    .map(|item| item.map(|(k, _)| split_key(k.value()).1))
                    .collect::<Result<_, _>>()?;
                for row in rows {
                    let Some((at, state)) = latest(&entities, feed, row, Version(u64::MAX))? else {
                        continue;
                    };
                    if at != version || removed_flag(&state).is_none() {
                        continue;
                    }
                    entities.remove(&entity_key(feed, row, version))?;
                    changes.remove(&change_key(feed, version, row))?;
                    purged.push(KeyHash(fixed(&state, KEY_AT)));
                }
                tx.open_table(VERSIONS)?
                    .remove(&version_key(feed, version))?;
            }
            tx.commit()?;
        }
        Ok(purged)
    }

    /// Visit every row of a feed at its published version — live ones and tombstones — for the
    /// in-memory diff index. Returns the feed's meta, read in the same transaction.
    pub fn load_index(
        &self,
        feed: FeedId,
        mut visit: impl FnMut(IndexRow),
    ) -> Result<Option<FeedMeta>, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = read_meta(&tx.open_table(FEEDS)?, feed)?;
        let published = Version(meta.as_ref().map_or(0, |m| m.version));
        let entities = tx.open_table(ENTITIES)?;
        let mut states = entities
            .range::<&[u8; 32]>(
                &entity_key(feed, 0, Version(0))..=&entity_key(feed, u64::MAX, Version(u64::MAX)),
            )?
            .peekable();
        while let Some(item) = states.next() {
            let (k, v) = item?;
            let (row, version) = split_key(k.value());
            if version > published.0 || newer_follows(&mut states, row, published) {
                continue;
            }
            let state = v.value();
            visit(IndexRow {
                row,
                key_hash: KeyHash(fixed(state, KEY_AT)),
                content: removed_flag(state)
                    .is_none()
                    .then(|| ContentHash(fixed(state, CONTENT_AT))),
            });
        }
        Ok(meta)
    }

    /// Write a batch of a refresh's changed rows as states at the pending version `version`, beside
    /// the published states. Not durable by itself: the publish makes it so, and a crash before
    /// that loses nothing that was visible.
    pub fn write_pending(
        &self,
        feed: FeedId,
        version: Version,
        rows: &[PendingRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        {
            tx.open_table(PENDING)?.insert(&feed.0, version.0)?;
            let mut entities = tx.open_table(ENTITIES)?;
            let mut changes = tx.open_table(CHANGES)?;
            let mut stale = tx.open_table(STALE)?;
            for p in rows {
                entities.insert(&entity_key(feed, p.row, version), p.state.as_bytes())?;
                changes.insert(&change_key(feed, version, p.row), ())?;
                if p.existed {
                    stale.insert(&change_key(feed, version, p.row), ())?;
                }
            }
        }
        tx.commit()?;
        self.writeback
            .wrote(rows.iter().map(PendingRow::write_cost).sum());
        Ok(())
    }

    /// Publish a refresh: store the feed's meta (whose version makes the pending states visible),
    /// record the version's commit time if it is new, and clear the pending marker. Its cost does
    /// not depend on how many rows the refresh wrote.
    pub fn publish(&self, feed: FeedId, meta: &FeedMeta, now_ms: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut feeds = tx.open_table(FEEDS)?;
            let previous = read_meta(&feeds, feed)?;
            let mut meta = meta.clone();
            meta.last_used_ms = meta
                .last_used_ms
                .max(now_ms)
                .max(previous.as_ref().map_or(0, |m| m.last_used_ms));
            let encoded = serde_json::to_vec(&meta).map_err(StoreError::new)?;
            feeds.insert(&feed.0, encoded.as_slice())?;
            if previous.is_none_or(|p| p.version != meta.version) {
                tx.open_table(VERSIONS)?
                    .insert(&version_key(feed, Version(meta.version)), now_ms)?;
            }
            tx.open_table(PENDING)?.remove(&feed.0)?;
        }
        tx.commit()?;
        self.writeback.published();
        Ok(())
    }

    /// The keys of removal candidates, from their published states, without their bodies.
    pub fn keys_of(&self, feed: FeedId, rows: &[u64]) -> Result<Vec<RowKey>, StoreError> {
        let tx = self.db.begin_read()?;
        let published = Version(read_meta(&tx.open_table(FEEDS)?, feed)?.map_or(0, |m| m.version));
        let entities = tx.open_table(ENTITIES)?;
        let mut out = Vec::with_capacity(rows.len());
        for &row in rows {
            let first = entity_key(feed, row, Version(0));
            let last = entity_key(feed, row, published);
            let Some(item) = entities.range::<&[u8; 32]>(&first..=&last)?.next_back() else {
                continue;
            };
            let (_, v) = item?;
            let state = v.value();
            let (predicate_end, members_end) = EntityRow::bounds(state)?;
            out.push(RowKey {
                row,
                key_hash: KeyHash(fixed(state, KEY_AT)),
                predicate: String::from_utf8_lossy(&state[HEADER + 4..predicate_end]).into_owned(),
                key_members: state[predicate_end + 4..members_end].to_vec(),
            });
        }
        Ok(out)
    }

    /// Whether `version` of a feed was published (and its commit time is still recorded, which it
    /// is for longer than any token lives).
    pub fn was_published(&self, feed: FeedId, version: Version) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        let versions = tx.open_table(VERSIONS)?;
        Ok(versions.get(&version_key(feed, version))?.is_some())
    }

    /// Published rows of a feed by row number (missing ones are skipped).
    pub fn rows(&self, feed: FeedId, rows: &[u64]) -> Result<Vec<(u64, EntityRow)>, StoreError> {
        let tx = self.db.begin_read()?;
        let published = Version(read_meta(&tx.open_table(FEEDS)?, feed)?.map_or(0, |m| m.version));
        let entities = tx.open_table(ENTITIES)?;
        let mut out = Vec::with_capacity(rows.len());
        for &row in rows {
            if let Some((_, state)) = latest(&entities, feed, row, published)? {
                out.push((row, EntityRow::decode(state)?));
            }
        }
        Ok(out)
    }

    /// Record when feeds were last used (one transaction for all of them).
    pub fn touch(&self, used: &[(FeedId, u64)]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut feeds = tx.open_table(FEEDS)?;
            for (feed, at_ms) in used {
                let Some(mut meta) = read_meta(&feeds, *feed)? else {
                    continue;
                };
                if meta.last_used_ms < *at_ms {
                    meta.last_used_ms = *at_ms;
                    let encoded = serde_json::to_vec(&meta).map_err(StoreError::new)?;
                    feeds.insert(&feed.0, encoded.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Make a feed's retention mark cover a token issued at `issued_ms`: if the stored mark is
    /// older, move it to `until_ms` (at least `issued_ms`) in a durable commit. Returns the mark as
    /// stored afterwards; 0 for a feed that is not stored.
    pub fn cover_issued(
        &self,
        feed: FeedId,
        issued_ms: u64,
        until_ms: u64,
    ) -> Result<u64, StoreError> {
        // Most calls find the mark far enough already; a read transaction costs no fsync.
        match self.feed(feed)? {
            None => return Ok(0),
            Some(meta) if meta.last_used_ms >= issued_ms => return Ok(meta.last_used_ms),
            Some(_) => {}
        }
        let tx = self.db.begin_write()?;
        let mark;
        {
            let mut feeds = tx.open_table(FEEDS)?;
            let Some(mut meta) = feeds
                .get(&feed.0)?
                .map(|v| serde_json::from_slice::<FeedMeta>(v.value()))
                .transpose()
                .map_err(StoreError::new)?
            else {
                return Ok(0);
            };
            if meta.last_used_ms >= issued_ms {
                return Ok(meta.last_used_ms);
            }
            meta.last_used_ms = until_ms.max(issued_ms);
            mark = meta.last_used_ms;
            let encoded = serde_json::to_vec(&meta).map_err(StoreError::new)?;
            feeds.insert(&feed.0, encoded.as_slice())?;
        }
        tx.commit()?;
        Ok(mark)
    }

    /// Feeds not used since `before_ms`.
    pub fn idle_feeds(&self, before_ms: u64) -> Result<Vec<FeedId>, StoreError> {
        let tx = self.db.begin_read()?;
        let feeds = tx.open_table(FEEDS)?;
        let mut out = Vec::new();
        for item in feeds.iter()? {
            let (k, v) = item?;
            let meta: FeedMeta = serde_json::from_slice(v.value()).map_err(StoreError::new)?;
            if !meta.dropped && meta.last_used_ms < before_ms {
                out.push(FeedId(*k.value()));
            }
        }
        Ok(out)
    }

    /// Every feed that holds entities (not dropped), with its scope label: what the feed caps count.
    pub(crate) fn stored_feeds(&self) -> Result<Vec<(FeedId, String)>, StoreError> {
        let tx = self.db.begin_read()?;
        let feeds = tx.open_table(FEEDS)?;
        let mut out = Vec::new();
        for item in feeds.iter()? {
            let (k, v) = item?;
            let meta: FeedMeta = serde_json::from_slice(v.value()).map_err(StoreError::new)?;
            if !meta.dropped {
                out.push((FeedId(*k.value()), meta.scope));
            }
        }
        Ok(out)
    }

    /// Delete everything stored for a feed but its definition, if it is still unused since
    /// `before_ms`. Returns whether it was dropped.
    pub fn drop_feed(&self, feed: FeedId, before_ms: u64) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut feeds = tx.open_table(FEEDS)?;
            let Some(mut meta) = read_meta(&feeds, feed)? else {
                return Ok(false);
            };
            if meta.dropped || meta.last_used_ms >= before_ms {
                return Ok(false);
            }
            meta.dropped = true;
            meta.live = 0;
            let encoded = serde_json::to_vec(&meta).map_err(StoreError::new)?;
            feeds.insert(&feed.0, encoded.as_slice())?;
            let low = entity_key(feed, 0, Version(0));
            let high = entity_key(feed, u64::MAX, Version(u64::MAX));
            tx.open_table(ENTITIES)?
                .retain_in::<&[u8; 32], _>(&low..=&high, |_, _| false)?;
            tx.open_table(CHANGES)?
                .retain_in::<&[u8; 32], _>(&low..=&high, |_, _| false)?;
            tx.open_table(STALE)?
                .retain_in::<&[u8; 32], _>(&low..=&high, |_, _| false)?;
            tx.open_table(VERSIONS)?.retain_in::<&[u8; 24], _>(
                &version_key(feed, Version(0))..=&version_key(feed, Version(u64::MAX)),
                |_, _| false,
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Visit the body of every live entity of a feed with its row (for ordering by content).
    pub fn scan_live(
        &self,
        feed: FeedId,
        mut visit: impl FnMut(u64, &[u8]),
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        let published = Version(read_meta(&tx.open_table(FEEDS)?, feed)?.map_or(0, |m| m.version));
        let entities = tx.open_table(ENTITIES)?;
        let mut states = entities
            .range::<&[u8; 32]>(
                &entity_key(feed, 0, Version(0))..=&entity_key(feed, u64::MAX, Version(u64::MAX)),
            )?
            .peekable();
        while let Some(item) = states.next() {
            let (k, v) = item?;
            let (row, version) = split_key(k.value());
            if version > published.0
                || newer_follows(&mut states, row, published)
                || removed_flag(v.value()).is_some()
            {
                continue;
            }
            let (_, members_end) = EntityRow::bounds(v.value())?;
            visit(row, &v.value()[members_end..]);
        }
        Ok(())
    }

    /// Up to `limit` live entities of a feed in row order (the upstream's first-seen order), after
    /// row `after`, passing over the first `skip` of them (a client's `$skip`).
    pub fn live_page(
        &self,
        feed: FeedId,
        after: Option<u64>,
        skip: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EntityRow)>, StoreError> {
        self.live_page_at(feed, after, skip, limit, None)
    }

    /// [`RedbStore::live_page`] as of `visible` instead of the published version: a first read served
    /// while the feed's first load runs reads the rows written so far at the pending version.
    pub fn live_page_at(
        &self,
        feed: FeedId,
        after: Option<u64>,
        mut skip: u64,
        limit: usize,
        visible: Option<Version>,
    ) -> Result<Vec<(u64, EntityRow)>, StoreError> {
        let tx = self.db.begin_read()?;
        let published = match visible {
            Some(v) => v,
            None => Version(read_meta(&tx.open_table(FEEDS)?, feed)?.map_or(0, |m| m.version)),
        };
        let entities = tx.open_table(ENTITIES)?;
        let first_row = match after {
            Some(row) if row == u64::MAX => return Ok(Vec::new()),
            Some(row) => row + 1,
            None => 0,
        };
        let mut out = Vec::with_capacity(limit.min(4096));
        let mut states = entities
            .range::<&[u8; 32]>(
                &entity_key(feed, first_row, Version(0))
                    ..=&entity_key(feed, u64::MAX, Version(u64::MAX)),
            )?
            .peekable();
        while let Some(item) = states.next() {
            let (k, v) = item?;
            let (row, version) = split_key(k.value());
            // Skipped rows need no decoding: the removed flag sits at a fixed offset.
            if version > published.0
                || newer_follows(&mut states, row, published)
                || removed_flag(v.value()).is_some()
            {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            out.push((row, EntityRow::decode(v.value().to_vec())?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `limit` entries of the delta (`since`, `upto`] in (version, row) order, after `after`,
    /// each with its newest published state. An entry whose row has a newer state is passed over:
    /// that state has its own entry, in this delta or the next one, so every row appears once.
    pub fn delta_page(
        &self,
        feed: FeedId,
        since: Version,
        upto: Version,
        after: Option<(Version, u64)>,
        limit: usize,
    ) -> Result<Vec<(Version, u64, EntityRow)>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(4096));
        self.delta_entries(feed, since, upto, after, |version, row, state| {
            out.push((version, row, EntityRow::decode(state.to_vec())?));
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// How many entries the delta (`since`, `upto`] holds (C23, C24).
    pub fn delta_count(
        &self,
        feed: FeedId,
        since: Version,
        upto: Version,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        self.delta_entries(feed, since, upto, None, |_, _, _| {
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }

    /// Visit the entries of the delta (`since`, `upto`] after `after` until `visit` says stop.
    fn delta_entries(
        &self,
        feed: FeedId,
        since: Version,
        upto: Version,
        after: Option<(Version, u64)>,
        mut visit: impl FnMut(Version, u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        if upto <= since {
            return Ok(());
        }
        let tx = self.db.begin_read()?;
        let published = Version(read_meta(&tx.open_table(FEEDS)?, feed)?.map_or(0, |m| m.version));
        let upto = upto.min(published);
        let changes = tx.open_table(CHANGES)?;
        let entities = tx.open_table(ENTITIES)?;
        let start = match after {
            Some((v, row)) => change_key(feed, v, row),
            None => change_key(feed, Version(since.0 + 1), 0),
        };
        let end = change_key(feed, upto, u64::MAX);
        for item in changes.range::<&[u8; 32]>(&start..=&end)? {
            let (k, _) = item?;
            let (version, row) = split_key(k.value());
            let version = Version(version);
            if Some((version, row)) == after {
                continue;
            }
            let Some((at, state)) = latest(&entities, feed, row, published)? else {
                continue;
            };
            if at != version {
                continue;
            }
            if !visit(version, row, &state)? {
                break;
            }
        }
        Ok(())
    }
}

/// Whether the next state in a range scan is a newer published state of the same row (so the
/// current one is superseded).
fn newer_follows<'a, I>(states: &mut std::iter::Peekable<I>, row: u64, published: Version) -> bool
where
    I: Iterator<
        Item = Result<
            (
                redb::AccessGuard<'a, &'static [u8; 32]>,
                redb::AccessGuard<'a, &'static [u8]>,
            ),
            redb::StorageError,
        >,
    >,
{
    match states.peek() {
        Some(Ok((k, _))) => {
            let (next_row, next_version) = split_key(k.value());
            next_row == row && next_version <= published.0
        }
        _ => false,
    }
}

/// Migrate a schema 1 or 2 store: its rows were keyed by a key hash, which this layout cannot read
/// in place. The token secret stays; every feed keeps its definition and version but is marked
/// dropped, so each delta link issued before gets 410 Gone with the query to start over (C25).
fn migrate_keyed_by_hash(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.delete_table(ENTITIES)?;
    tx.delete_table(OLD_CHANGES)?;
    tx.delete_table(VERSIONS)?;
    let mut feeds = tx.open_table(FEEDS)?;
    let ids: Vec<[u8; 16]> = feeds
        .iter()?
        .map(|item| item.map(|(k, _)| *k.value()))
        .collect::<Result<_, _>>()?;
    for id in ids {
        let Some(mut meta) = read_meta(&feeds, FeedId(id))? else {
            continue;
        };
        meta.dropped = true;
        meta.live = 0;
        let encoded = serde_json::to_vec(&meta).map_err(StoreError::new)?;
        feeds.insert(&id, encoded.as_slice())?;
    }
    Ok(())
}

impl RedbStore {
    /// Every feed's meta, dropped ones included, in id order: for the status page and the
    /// operator tools.
    pub fn feeds(&self) -> Result<Vec<(FeedId, FeedMeta)>, StoreError> {
        let tx = self.db.begin_read()?;
        let feeds = tx.open_table(FEEDS)?;
        let mut out = Vec::new();
        for item in feeds.iter()? {
            let (k, v) = item?;
            let meta: FeedMeta = serde_json::from_slice(v.value()).map_err(StoreError::new)?;
            out.push((FeedId(*k.value()), meta));
        }
        Ok(out)
    }
}

impl RedbStore {
    /// Every stored webhook subscription, by id.
    pub fn subscriptions(&self) -> Result<Vec<([u8; 16], SubscriptionRow)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SUBSCRIPTIONS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let row = serde_json::from_slice(v.value()).map_err(StoreError::new)?;
            out.push((*k.value(), row));
        }
        Ok(out)
    }

    /// Write a subscription (new or changed), durably.
    pub fn put_subscription(&self, id: [u8; 16], row: &SubscriptionRow) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(row).map_err(StoreError::new)?;
        let tx = self.db.begin_write()?;
        tx.open_table(SUBSCRIPTIONS)?
            .insert(&id, encoded.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Remove subscriptions; those already gone are skipped.
    pub fn delete_subscriptions(&self, ids: &[[u8; 16]]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(SUBSCRIPTIONS)?;
            for id in ids {
                table.remove(id)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Why an operator tool could not open a store.
#[derive(Debug, thiserror::Error)]
pub enum OpenExistingError {
    /// There is no store file in the directory.
    #[error("there is no store at {0}")]
    Missing(String),
    /// A running gateway holds the file (redb's file lock).
    #[error("a gateway is running on this data dir; stop it or use the admin listener")]
    InUse,
    /// Anything else.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RedbStore {
    /// Open the store in `dir` for an operator tool: never create one, and tell a store that a
    /// running gateway holds from other failures.
    pub fn open_existing(dir: &Path) -> Result<Self, OpenExistingError> {
        let path = file_path(dir);
        if !path.is_file() {
            return Err(OpenExistingError::Missing(path.display().to_string()));
        }
        let opened = redb::Builder::new()
            .set_cache_size(crate::config::DEFAULT_STORE_CACHE_BYTES)
            .create(&path);
        match opened {
            Ok(db) => Ok(Self::opened(db, path)?),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(OpenExistingError::InUse),
            Err(e) => Err(StoreError(format!("cannot open {}: {e}", path.display())).into()),
        }
    }

    /// Compact the file (redb gives freed pages back to the file system). Needs the only handle
    /// on the store; returns whether anything was compacted.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        let db = Arc::get_mut(&mut self.db)
            .ok_or_else(|| StoreError::new("the store is in use; it cannot be compacted now"))?;
        let mut compacted = false;
        // Each pass moves pages towards the start; a few passes reach the end of what it can do.
        for _ in 0..8 {
            if !db
                .compact()
                .map_err(|e| StoreError(format!("compaction failed: {e}")))?
            {
                break;
            }
            compacted = true;
        }
        Ok(compacted)
    }
}

/// The store's file in a data directory, for its size and for tools that must not create one.
pub fn file_path(dir: &Path) -> std::path::PathBuf {
    dir.join(DB_FILE)
}

impl FeedStore for RedbStore {
    fn token_secret(&self) -> Result<Vec<u8>, StoreError> {
        RedbStore::token_secret(self)
    }
    fn bytes(&self) -> Result<u64, StoreError> {
        std::fs::metadata(&self.path).map(|m| m.len()).map_err(|e| {
            StoreError(format!(
                "cannot read the size of {}: {e}",
                self.path.display()
            ))
        })
    }

    fn sizes(&self) -> Result<StoreSizes, StoreError> {
        RedbStore::sizes(self)
    }
    fn feed(&self, feed: FeedId) -> Result<Option<FeedMeta>, StoreError> {
        RedbStore::feed(self, feed)
    }
    fn feeds(&self) -> Result<Vec<(FeedId, FeedMeta)>, StoreError> {
        RedbStore::feeds(self)
    }
    fn settle(&self, feed: FeedId, purge_before_ms: u64) -> Result<Settled, StoreError> {
        RedbStore::settle(self, feed, purge_before_ms)
    }
    fn compact_superseded(&self, feed: FeedId) -> Result<u64, StoreError> {
        RedbStore::compact_superseded(self, feed)
    }
    fn visit_index(
        &self,
        feed: FeedId,
        visit: &mut dyn FnMut(IndexRow),
    ) -> Result<Option<FeedMeta>, StoreError> {
        RedbStore::load_index(self, feed, visit)
    }
    fn write_pending(
        &self,
        feed: FeedId,
        version: Version,
        rows: &[PendingRow],
    ) -> Result<(), StoreError> {
        RedbStore::write_pending(self, feed, version, rows)
    }
    fn publish(&self, feed: FeedId, meta: &FeedMeta, now_ms: u64) -> Result<(), StoreError> {
        RedbStore::publish(self, feed, meta, now_ms)
    }
    fn keys_of(&self, feed: FeedId, rows: &[u64]) -> Result<Vec<RowKey>, StoreError> {
        RedbStore::keys_of(self, feed, rows)
    }
    fn was_published(&self, feed: FeedId, version: Version) -> Result<bool, StoreError> {
        RedbStore::was_published(self, feed, version)
    }
    fn rows(&self, feed: FeedId, rows: &[u64]) -> Result<Vec<(u64, EntityRow)>, StoreError> {
        RedbStore::rows(self, feed, rows)
    }
    fn touch(&self, used: &[(FeedId, u64)]) -> Result<(), StoreError> {
        RedbStore::touch(self, used)
    }
    fn cover_issued(&self, feed: FeedId, issued_ms: u64, until_ms: u64) -> Result<u64, StoreError> {
        RedbStore::cover_issued(self, feed, issued_ms, until_ms)
    }
    fn idle_feeds(&self, before_ms: u64) -> Result<Vec<FeedId>, StoreError> {
        RedbStore::idle_feeds(self, before_ms)
    }
    fn stored_feeds(&self) -> Result<Vec<(FeedId, String)>, StoreError> {
        RedbStore::stored_feeds(self)
    }
    fn drop_feed(&self, feed: FeedId, before_ms: u64) -> Result<bool, StoreError> {
        RedbStore::drop_feed(self, feed, before_ms)
    }
    fn visit_live(
        &self,
        feed: FeedId,
        visit: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(), StoreError> {
        RedbStore::scan_live(self, feed, visit)
    }
    fn live_page_at(
        &self,
        feed: FeedId,
        after: Option<u64>,
        skip: u64,
        limit: usize,
        visible: Option<Version>,
    ) -> Result<Vec<(u64, EntityRow)>, StoreError> {
        RedbStore::live_page_at(self, feed, after, skip, limit, visible)
    }
    fn delta_page(
        &self,
        feed: FeedId,
        since: Version,
        upto: Version,
        after: Option<(Version, u64)>,
        limit: usize,
    ) -> Result<Vec<(Version, u64, EntityRow)>, StoreError> {
        RedbStore::delta_page(self, feed, since, upto, after, limit)
    }
    fn delta_count(&self, feed: FeedId, since: Version, upto: Version) -> Result<u64, StoreError> {
        RedbStore::delta_count(self, feed, since, upto)
    }
    fn subscriptions(&self) -> Result<Vec<([u8; 16], SubscriptionRow)>, StoreError> {
        RedbStore::subscriptions(self)
    }
    fn put_subscription(&self, id: [u8; 16], row: &SubscriptionRow) -> Result<(), StoreError> {
        RedbStore::put_subscription(self, id, row)
    }
    fn delete_subscriptions(&self, ids: &[[u8; 16]]) -> Result<(), StoreError> {
        RedbStore::delete_subscriptions(self, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{live, meta};
    use redb::ReadableTableMetadata;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn rows_round_trip() {
        let row = EntityRow::live(
            KeyHash([1; 16]),
            ContentHash([3; 16]),
            "'a''b'",
            br#""ID":"a'b""#,
            0,
            |out| out.extend_from_slice(br#"{"ID":"a'b"}"#),
        );
        let back = EntityRow::decode(row.as_bytes().to_vec()).unwrap();
        assert_eq!(back, row);
        assert_eq!(back.predicate(), "'a''b'");
        assert_eq!(back.key_members(), br#""ID":"a'b""#);
        assert_eq!(back.body(), br#"{"ID":"a'b"}"#);
        assert_eq!(back.key_hash(), KeyHash([1; 16]));
        assert_eq!(back.removed_reason(), None);
        let gone = EntityRow::removed(KeyHash([1; 16]), Reason::Changed, "7", b"\"ID\":7");
        let back = EntityRow::decode(gone.as_bytes().to_vec()).unwrap();
        assert_eq!(back.removed_reason(), Some(Reason::Changed));
        assert_eq!(back.body(), b"");
        assert_eq!(back.predicate(), "7");
        assert!(EntityRow::decode(row.as_bytes()[..20].to_vec()).is_err());
    }

    fn bodies(store: &RedbStore, feed: FeedId) -> Vec<String> {
        store
            .live_page(feed, None, 0, 100)
            .unwrap()
            .into_iter()
            .map(|(_, r)| String::from_utf8(r.body().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn pending_states_are_invisible_until_published_and_discarded_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let feed = FeedId([9; 16]);
        let first: Vec<PendingRow> = (0..3)
            .map(|row| PendingRow {
                row,
                existed: false,
                state: live(row, &format!("a{row}")),
            })
            .collect();
        store.write_pending(feed, Version(1), &first).unwrap();
        assert!(bodies(&store, feed).is_empty(), "nothing published yet");
        store.publish(feed, &meta(1, 3, 3), 1).unwrap();
        assert_eq!(bodies(&store, feed), ["a0", "a1", "a2"]);

        // A refresh that rewrites row 1 and fails: readers and the next load see version 1.
        let update = [PendingRow {
            row: 1,
            existed: true,
            state: live(1, "b1"),
        }];
        store.write_pending(feed, Version(2), &update).unwrap();
        assert_eq!(bodies(&store, feed), ["a0", "a1", "a2"]);
        assert_eq!(store.delta_count(feed, Version(1), Version(2)).unwrap(), 0);
        let settled = store.settle(feed, 0).unwrap();
        assert_eq!(settled.discarded, 1);
        let mut loaded = 0;
        store.load_index(feed, |_| loaded += 1).unwrap();
        assert_eq!(loaded, 3);

        // The same change published: one delta entry, and the old state compacted away.
        store.write_pending(feed, Version(2), &update).unwrap();
        store.publish(feed, &meta(2, 3, 3), 2).unwrap();
        assert_eq!(bodies(&store, feed), ["a0", "b1", "a2"]);
        assert_eq!(store.delta_count(feed, Version(0), Version(2)).unwrap(), 3);
        assert_eq!(store.delta_count(feed, Version(1), Version(2)).unwrap(), 1);
        assert_eq!(store.compact_superseded(feed).unwrap(), 1);
        assert_eq!(store.compact_superseded(feed).unwrap(), 0);
        assert_eq!(store.delta_count(feed, Version(0), Version(2)).unwrap(), 3);
        let page = store
            .delta_page(feed, Version(1), Version(2), None, 10)
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].2.body(), b"b1");
    }

    #[test]
    fn large_refreshes_are_handed_to_the_disk_in_the_background_and_small_ones_are_not() {
        use std::sync::atomic::Ordering;
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let feed = FeedId([6; 16]);
        let wait_for_sync = |synced: &AtomicU64, n: u64| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while synced.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "no background sync");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let body = "x".repeat(2000);
        let batch = |from: u64, n: u64| -> Vec<PendingRow> {
            (from..from + n)
                .map(|row| PendingRow {
                    row,
                    existed: false,
                    state: live(row, &body),
                })
                .collect()
        };
        let synced = {
            let mut store = RedbStore::open(dir.path()).unwrap();
            // Small thresholds: syncs once 1 MiB is unpublished, every 256 KiB.
            store.writeback = Arc::new(Writeback::start(
                &file_path(dir.path()),
                WritebackAt {
                    after: 1 << 20,
                    every: 256 << 10,
                },
            ));
            let synced = store.writeback.synced.clone();
            // 200 kB: left to the publish.
            store
                .write_pending(feed, Version(1), &batch(0, 100))
                .unwrap();
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(synced.load(Ordering::Relaxed), 0);
            // Past 1 MiB unpublished: synced in the background.
            for start in (100..700).step_by(100) {
                store
                    .write_pending(feed, Version(1), &batch(start, 100))
                    .unwrap();
            }
            wait_for_sync(&synced, 1);
            store.publish(feed, &meta(1, 700, 700), 1).unwrap();
            // After the publish the count starts again: a refresh of 300 kB (more than `every`,
            // less than `after`) is left to its publish.
            let before = synced.load(Ordering::Relaxed);
            store
                .write_pending(feed, Version(2), &batch(700, 150))
                .unwrap();
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(synced.load(Ordering::Relaxed), before);
            store.publish(feed, &meta(2, 850, 850), 2).unwrap();
            synced
        };
        // The thread ends with the store, and the file opens again with everything published.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Arc::strong_count(&synced) > 1 {
            assert!(Instant::now() < deadline, "the thread outlived the store");
            std::thread::sleep(Duration::from_millis(10));
        }
        let store = RedbStore::open(dir.path()).unwrap();
        let mut loaded = 0;
        store.load_index(feed, |_| loaded += 1).unwrap();
        assert_eq!(loaded, 850);
    }

    #[test]
    fn a_crash_before_the_publish_is_cleaned_up_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let feed = FeedId([4; 16]);
        {
            let store = RedbStore::open(dir.path()).unwrap();
            let rows = [PendingRow {
                row: 0,
                existed: false,
                state: live(0, "x"),
            }];
            store.write_pending(feed, Version(1), &rows).unwrap();
            // Some other commit makes the batch durable before the process dies.
            store.touch(&[]).unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert!(store.feed(feed).unwrap().is_none());
        let tx = store.db.begin_read().unwrap();
        assert_eq!(tx.open_table(ENTITIES).unwrap().len().unwrap(), 0);
        assert_eq!(tx.open_table(CHANGES).unwrap().len().unwrap(), 0);
        // The marker stays: version 1 is burned and the next load writes at 2.
        assert_eq!(tx.open_table(PENDING).unwrap().len().unwrap(), 1);
        drop(tx);
        assert_eq!(store.settle(feed, 0).unwrap().burned, 1);
    }

    #[test]
    fn a_schema_1_or_2_store_is_migrated_keeping_the_secret_and_dropping_the_feeds() {
        for old in [&b"1"[..], b"2"] {
            migrates(old);
        }
    }

    fn migrates(old: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let feed = FeedId([2; 16]);
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut m = tx.open_table(META).unwrap();
                m.insert("schema_version", old).unwrap();
                m.insert("token_secret", &[7u8; 32][..]).unwrap();
                let encoded = serde_json::to_vec(&meta(3, 1, 0)).unwrap();
                tx.open_table(FEEDS)
                    .unwrap()
                    .insert(&feed.0, encoded.as_slice())
                    .unwrap();
                tx.open_table(ENTITIES)
                    .unwrap()
                    .insert(&[1u8; 32], &b"old row"[..])
                    .unwrap();
                tx.open_table(OLD_CHANGES)
                    .unwrap()
                    .insert(&[1u8; 40], ())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.token_secret().unwrap(), vec![7u8; 32]);
        let migrated = store.feed(feed).unwrap().unwrap();
        assert!(migrated.dropped);
        assert_eq!(migrated.version, 3);
        let sizes = store.sizes().unwrap();
        assert_eq!((sizes.entity_states, sizes.changes), (0, 0));
        drop(store);
        // Opened again, it is a schema 3 store.
        RedbStore::open(dir.path()).unwrap();
    }
}

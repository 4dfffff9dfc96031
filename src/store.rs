//! The embedded store (redb): feeds, the current state of every entity of every feed, and the changes
//! index that makes "what changed since version v" a range scan.
//!
//! Schema (all keys big-endian so that byte order is numeric order):
//! - `meta`:     name → bytes: the schema version and the token secret.
//! - `feeds`:    FeedId → feed meta (definition, current version, counts).
//! - `entities`: FeedId ‖ KeyHash → entity row (content hash, version of last change, removed flag and
//!   reason, key predicate, key members, latest body — empty once removed). Tombstones are rows.
//! - `changes`:  FeedId ‖ Version ‖ KeyHash → (). When a row's version moves from a to b, its entry
//!   moves from (a, key) to (b, key), so every entity is in the index exactly once.
//! - `versions`: FeedId ‖ Version → commit time (unix ms), to find tombstones older than the
//!   retention window.
//!
//! Durability: every commit is `Durability::Immediate` (redb's default): when `commit` returns, the
//! version is on disk, and only then is a token naming it handed out. redb's copy-on-write commit
//! makes a crash at any instant leave either the old or the new version, never a mix (C29).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::odata::delta::Reason;
use crate::track::feed::{FeedId, Version};
use crate::track::hash::{ContentHash, KeyHash};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FEEDS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("feeds");
const ENTITIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("entities");
const CHANGES: TableDefinition<&[u8; 40], ()> = TableDefinition::new("changes");
const VERSIONS: TableDefinition<&[u8; 24], u64> = TableDefinition::new("versions");

/// Bumped when the layout of any table changes; a store of another version is refused at start.
/// 2: entities are keyed by the hash of their key identity (`KeyHash::of`), no longer of the key
/// predicate as spelled; a version 1 store is re-keyed when it is opened (`rekey_v1`).
const SCHEMA_VERSION: &[u8] = b"2";
const DB_FILE: &str = "gateway.redb";

/// A store failure: I/O, corruption, or a bug. Answered with 503/500, never blamed on the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

impl StoreError {
    fn new(e: impl std::fmt::Display) -> Self {
        StoreError(e.to_string())
    }
}

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
    redb::CommitError
);

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
    /// Current version: the last refresh that found a difference.
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
}

/// The stored state of one entity of a feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityRow {
    /// Hash of the canonical content (zero once removed).
    pub content: ContentHash,
    /// The version of its last change.
    pub version: Version,
    /// Set when the entity has left the feed.
    pub removed: Option<Reason>,
    /// The key predicate: `42`, `ID=1,Line=2`.
    pub predicate: String,
    /// Key members as compact JSON, for 4.01 tombstones.
    pub key_members: Vec<u8>,
    /// Latest body (compact JSON); empty once removed.
    pub body: Vec<u8>,
}

impl EntityRow {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            40 + self.predicate.len() + self.key_members.len() + self.body.len(),
        );
        out.push(1);
        out.extend_from_slice(&self.content.0);
        out.extend_from_slice(&self.version.0.to_be_bytes());
        out.push(match self.removed {
            None => 0,
            Some(Reason::Deleted) => 1,
            Some(Reason::Changed) => 2,
        });
        for part in [self.predicate.as_bytes(), &self.key_members] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// The body part of an encoded row, without decoding the rest.
    fn body_of(bytes: &[u8]) -> Result<&[u8], StoreError> {
        let corrupt = || StoreError::new("an entity row is corrupt");
        let mut at = 26;
        for _ in 0..2 {
            let len = bytes.get(at..at + 4).ok_or_else(corrupt)?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| corrupt())?) as usize;
            at = at.checked_add(4 + len).ok_or_else(corrupt)?;
        }
        bytes.get(at..).ok_or_else(corrupt)
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::new("an entity row is corrupt");
        let take = |bytes: &mut &[u8], n: usize| -> Result<Vec<u8>, StoreError> {
            if bytes.len() < n {
                return Err(corrupt());
            }
            let (head, tail) = bytes.split_at(n);
            *bytes = tail;
            Ok(head.to_vec())
        };
        let mut b = bytes;
        if take(&mut b, 1)? != [1] {
            return Err(corrupt());
        }
        let content = ContentHash(take(&mut b, 16)?.try_into().map_err(|_| corrupt())?);
        let version = Version(u64::from_be_bytes(
            take(&mut b, 8)?.try_into().map_err(|_| corrupt())?,
        ));
        let removed = match take(&mut b, 1)?[0] {
            0 => None,
            1 => Some(Reason::Deleted),
            2 => Some(Reason::Changed),
            _ => return Err(corrupt()),
        };
        let mut parts = Vec::new();
        for _ in 0..2 {
            let len =
                u32::from_be_bytes(take(&mut b, 4)?.try_into().map_err(|_| corrupt())?) as usize;
            parts.push(take(&mut b, len)?);
        }
        let key_members = parts.pop().unwrap_or_default();
        let predicate =
            String::from_utf8(parts.pop().unwrap_or_default()).map_err(|_| corrupt())?;
        Ok(EntityRow {
            content,
            version,
            removed,
            predicate,
            key_members,
            body: b.to_vec(),
        })
    }
}

/// One change a refresh commits.
#[derive(Clone, Debug)]
pub enum RowChange {
    /// A new entity, a changed one, or one that came back.
    Upsert {
        /// Its key hash.
        key_hash: KeyHash,
        /// New content hash.
        content: ContentHash,
        /// Key predicate.
        predicate: String,
        /// Key members, compact JSON.
        key_members: Vec<u8>,
        /// Compact body.
        body: Vec<u8>,
    },
    /// An entity confirmed gone from the feed.
    Remove {
        /// Its key hash.
        key_hash: KeyHash,
        /// Why.
        reason: Reason,
    },
}

impl RowChange {
    /// The row an upsert writes at `version`; `None` for a removal.
    fn upserted_row(&self, version: Version) -> Option<(KeyHash, EntityRow)> {
        let RowChange::Upsert {
            key_hash,
            content,
            predicate,
            key_members,
            body,
        } = self
        else {
            return None;
        };
        Some((
            *key_hash,
            EntityRow {
                content: *content,
                version,
                removed: None,
                predicate: predicate.clone(),
                key_members: key_members.clone(),
                body: body.clone(),
            },
        ))
    }
}

/// What a commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Rows written.
    pub changed: u64,
    /// Tombstones purged because they were older than the retention window.
    pub purged: u64,
}

fn entity_key(feed: FeedId, key: KeyHash) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&feed.0);
    k[16..].copy_from_slice(&key.0);
    k
}

fn change_key(feed: FeedId, version: Version, key: KeyHash) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(&feed.0);
    k[16..24].copy_from_slice(&version.0.to_be_bytes());
    k[24..].copy_from_slice(&key.0);
    k
}

fn version_key(feed: FeedId, version: Version) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&feed.0);
    k[16..].copy_from_slice(&version.0.to_be_bytes());
    k
}

fn split_change_key(k: &[u8; 40]) -> (Version, KeyHash) {
    let mut v = [0u8; 8];
    v.copy_from_slice(&k[16..24]);
    let mut h = [0u8; 16];
    h.copy_from_slice(&k[24..]);
    (Version(u64::from_be_bytes(v)), KeyHash(h))
}

/// The store: a cheap-to-clone handle on one redb database. All methods block; async callers run
/// them in `spawn_blocking`.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Open (or create) the store in `dir`, creating the token secret on first start.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        let store = Store { db: Arc::new(db) };
        store.init()?;
        Ok(store)
    }

    fn init(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let existing = meta.get("schema_version")?.map(|v| v.value().to_vec());
            match existing {
                Some(v) if v == b"1" => {
                    let moved = rekey_v1(&tx)?;
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                    tracing::info!(
                        moved,
                        "store upgraded to schema version 2: entities re-keyed by key identity"
                    );
                }
                Some(v) if v != SCHEMA_VERSION => {
                    return Err(StoreError(format!(
                        "the store has schema version {}, this gateway reads {}",
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
            tx.open_table(VERSIONS)?;
        }
        tx.commit()?;
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

    /// A feed's meta, if the feed exists.
    pub fn feed(&self, feed: FeedId) -> Result<Option<FeedMeta>, StoreError> {
        let tx = self.db.begin_read()?;
        let feeds = tx.open_table(FEEDS)?;
        match feeds.get(&feed.0)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(StoreError::new),
        }
    }

    /// The live entities of a feed as (key hash, content hash): the in-memory diff index is built
    /// from this when a feed is first used after start.
    pub fn live_hashes(&self, feed: FeedId) -> Result<Vec<(KeyHash, ContentHash)>, StoreError> {
        let tx = self.db.begin_read()?;
        let entities = tx.open_table(ENTITIES)?;
        let mut out = Vec::new();
        for item in entities.range::<&[u8; 32]>(
            &entity_key(feed, KeyHash([0; 16]))..=&entity_key(feed, KeyHash([0xff; 16])),
        )? {
            let (k, v) = item?;
            let row = v.value();
            // Only the fixed header is needed: format, content hash, version, removed flag.
            if row.len() < 26 || row[25] != 0 {
                continue;
            }
            let mut key = [0u8; 16];
            key.copy_from_slice(&k.value()[16..]);
            let mut content = [0u8; 16];
            content.copy_from_slice(&row[1..17]);
            out.push((KeyHash(key), ContentHash(content)));
        }
        Ok(out)
    }

    /// Rows of a feed by key hash (missing ones are skipped).
    pub fn rows(
        &self,
        feed: FeedId,
        keys: &[KeyHash],
    ) -> Result<Vec<(KeyHash, EntityRow)>, StoreError> {
        let tx = self.db.begin_read()?;
        let entities = tx.open_table(ENTITIES)?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = entities.get(&entity_key(feed, *k))? {
                out.push((*k, EntityRow::decode(v.value())?));
            }
        }
        Ok(out)
    }

    /// Commit one refresh as version `meta.version` in a single write transaction: write the changed
    /// rows, move their index entries, record the version's commit time, store the meta, and purge
    /// tombstones committed before `purge_before_ms`.
    pub fn commit(
        &self,
        feed: FeedId,
        meta: &FeedMeta,
        changes: &[RowChange],
        now_ms: u64,
        purge_before_ms: u64,
    ) -> Result<CommitStats, StoreError> {
        let version = Version(meta.version);
        let mut stats = CommitStats::default();
        let tx = self.db.begin_write()?;
        {
            let mut entities = tx.open_table(ENTITIES)?;
            let mut index = tx.open_table(CHANGES)?;
            let mut versions = tx.open_table(VERSIONS)?;
            for change in changes {
                let (key_hash, new_row) = match change {
                    RowChange::Upsert { .. } => match change.upserted_row(version) {
                        Some(upsert) => upsert,
                        None => continue,
                    },
                    RowChange::Remove { key_hash, reason } => {
                        let Some(old) = entities.get(&entity_key(feed, *key_hash))? else {
                            continue;
                        };
                        let old = EntityRow::decode(old.value())?;
                        (
                            *key_hash,
                            EntityRow {
                                content: ContentHash([0; 16]),
                                version,
                                removed: Some(*reason),
                                predicate: old.predicate,
                                key_members: old.key_members,
                                body: Vec::new(),
                            },
                        )
                    }
                };
                put_row(&mut entities, &mut index, feed, key_hash, &new_row)?;
                stats.changed += 1;
            }
            if stats.changed > 0 {
                versions.insert(&version_key(feed, version), now_ms)?;
            }
            stats.purged = purge(
                feed,
                &mut entities,
                &mut index,
                &mut versions,
                purge_before_ms,
            )?;
            let mut feeds = tx.open_table(FEEDS)?;
            let mut meta = meta.clone();
            // The refresh does not know the mark; a smaller one would uncover issued tokens.
            let stored_mark = feeds
                .get(&feed.0)?
                .map(|v| serde_json::from_slice::<FeedMeta>(v.value()))
                .transpose()
                .map_err(StoreError::new)?
                .map_or(0, |m| m.last_used_ms);
            meta.last_used_ms = meta.last_used_ms.max(now_ms).max(stored_mark);
            let encoded = serde_json::to_vec(&meta).map_err(StoreError::new)?;
            feeds.insert(&feed.0, encoded.as_slice())?;
        }
        tx.commit()?;
        Ok(stats)
    }

    /// Write rows of a feed's first load ahead of its commit, at the version that commit will give
    /// the feed. The feed's meta is not touched, so until the commit no token names the feed and
    /// no reader looks at these rows; a crash leaves rows that the next load compares against.
    pub fn stage(
        &self,
        feed: FeedId,
        version: Version,
        rows: &[RowChange],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut entities = tx.open_table(ENTITIES)?;
            let mut index = tx.open_table(CHANGES)?;
            for change in rows {
                if let Some((key_hash, row)) = change.upserted_row(version) {
                    put_row(&mut entities, &mut index, feed, key_hash, &row)?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Record when feeds were last used (one transaction for all of them).
    pub fn touch(&self, used: &[(FeedId, u64)]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut feeds = tx.open_table(FEEDS)?;
            for (feed, at_ms) in used {
                let Some(mut meta) = feeds
                    .get(&feed.0)?
                    .map(|v| serde_json::from_slice::<FeedMeta>(v.value()))
                    .transpose()
                    .map_err(StoreError::new)?
                else {
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
            let Some(mut meta) = feeds
                .get(&feed.0)?
                .map(|v| serde_json::from_slice::<FeedMeta>(v.value()))
                .transpose()
                .map_err(StoreError::new)?
            else {
                return Ok(false);
            };
            if meta.dropped || meta.last_used_ms >= before_ms {
                return Ok(false);
            }
            meta.dropped = true;
            meta.live = 0;
            let encoded = serde_json::to_vec(&meta).map_err(StoreError::new)?;
            feeds.insert(&feed.0, encoded.as_slice())?;
            let mut entities = tx.open_table(ENTITIES)?;
            remove_range(
                &mut entities,
                entity_key(feed, KeyHash([0; 16])),
                entity_key(feed, KeyHash([0xff; 16])),
            )?;
            let mut index = tx.open_table(CHANGES)?;
            remove_range(
                &mut index,
                change_key(feed, Version(0), KeyHash([0; 16])),
                change_key(feed, Version(u64::MAX), KeyHash([0xff; 16])),
            )?;
            let mut versions = tx.open_table(VERSIONS)?;
            remove_range(
                &mut versions,
                version_key(feed, Version(0)),
                version_key(feed, Version(u64::MAX)),
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Visit the body of every live entity of a feed (for ordering by content).
    pub fn scan_live(
        &self,
        feed: FeedId,
        mut visit: impl FnMut(KeyHash, &[u8]),
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        let entities = tx.open_table(ENTITIES)?;
        let start = entity_key(feed, KeyHash([0; 16]));
        let end = entity_key(feed, KeyHash([0xff; 16]));
        for item in entities.range::<&[u8; 32]>(&start..=&end)? {
            let (k, v) = item?;
            let row = v.value();
            if row.get(25).is_some_and(|flag| *flag != 0) {
                continue;
            }
            let mut key = [0u8; 16];
            key.copy_from_slice(&k.value()[16..]);
            visit(KeyHash(key), EntityRow::body_of(row)?);
        }
        Ok(())
    }

    /// Up to `limit` live entities of a feed in key-hash order, after `after`, passing over the
    /// first `skip` of them (a client's `$skip`).
    pub fn live_page(
        &self,
        feed: FeedId,
        after: Option<KeyHash>,
        mut skip: u64,
        limit: usize,
    ) -> Result<Vec<(KeyHash, EntityRow)>, StoreError> {
        let tx = self.db.begin_read()?;
        let entities = tx.open_table(ENTITIES)?;
        let start = entity_key(feed, after.unwrap_or(KeyHash([0; 16])));
        let end = entity_key(feed, KeyHash([0xff; 16]));
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in entities.range::<&[u8; 32]>(&start..=&end)? {
            let (k, v) = item?;
            let mut key = [0u8; 16];
            key.copy_from_slice(&k.value()[16..]);
            let key = KeyHash(key);
            if Some(key) == after {
                continue;
            }
            // The removed flag sits at a fixed offset; skipped rows need no decoding.
            if v.value().get(25).is_some_and(|flag| *flag != 0) {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            out.push((key, EntityRow::decode(v.value())?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `limit` entries of the delta (`since`, `upto`] in (version, key) order, after `after`,
    /// each with its current row.
    pub fn delta_page(
        &self,
        feed: FeedId,
        since: Version,
        upto: Version,
        after: Option<(Version, KeyHash)>,
        limit: usize,
    ) -> Result<Vec<(Version, KeyHash, EntityRow)>, StoreError> {
        if upto <= since {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read()?;
        let index = tx.open_table(CHANGES)?;
        let entities = tx.open_table(ENTITIES)?;
        let start = match after {
            Some((v, k)) => change_key(feed, v, k),
            None => change_key(feed, Version(since.0 + 1), KeyHash([0; 16])),
        };
        let end = change_key(feed, upto, KeyHash([0xff; 16]));
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in index.range::<&[u8; 40]>(&start..=&end)? {
            let (k, _) = item?;
            let (version, key) = split_change_key(k.value());
            if Some((version, key)) == after {
                continue;
            }
            let Some(row) = entities.get(&entity_key(feed, key))? else {
                continue;
            };
            out.push((version, key, EntityRow::decode(row.value())?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// How many entries the delta (`since`, `upto`] holds (C23, C24).
    pub fn delta_count(
        &self,
        feed: FeedId,
        since: Version,
        upto: Version,
    ) -> Result<u64, StoreError> {
        if upto <= since {
            return Ok(0);
        }
        let tx = self.db.begin_read()?;
        let index = tx.open_table(CHANGES)?;
        let start = change_key(feed, Version(since.0 + 1), KeyHash([0; 16]));
        let end = change_key(feed, upto, KeyHash([0xff; 16]));
        let mut n = 0;
        for item in index.range::<&[u8; 40]>(&start..=&end)? {
            item?;
            n += 1;
        }
        Ok(n)
    }
}

/// Re-key a schema 1 store: rows whose key predicate is not spelled the way its identity is (an
/// upper-case GUID, `1.50`) move to the hash of the identity, with their changes entry, so that the
/// next refresh finds them under the key it computes. Two rows that turn out to be one key (the
/// same value spelled two ways, which schema 1 took for two entities) become one: the live one, or
/// else the newer. Runs in the transaction that opens the store, so a crash leaves schema 1 to be
/// re-keyed again. Returns the rows moved.
fn rekey_v1(tx: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut entities = tx.open_table(ENTITIES)?;
    let mut index = tx.open_table(CHANGES)?;
    let mut moves = Vec::new();
    for item in entities.iter()? {
        let (k, v) = item?;
        let row = EntityRow::decode(v.value())?;
        let identity = KeyHash::of(&row.predicate);
        if identity.0[..] != k.value()[16..] {
            moves.push((*k.value(), identity, row));
        }
    }
    let moved = moves.len() as u64;
    for (old_key, identity, row) in moves {
        let mut feed = [0u8; 16];
        feed.copy_from_slice(&old_key[..16]);
        let mut old = [0u8; 16];
        old.copy_from_slice(&old_key[16..]);
        let (feed, old) = (FeedId(feed), KeyHash(old));
        entities.remove(&old_key)?;
        index.remove(&change_key(feed, row.version, old))?;
        let new_key = entity_key(feed, identity);
        let existing = entities
            .get(&new_key)?
            .map(|v| EntityRow::decode(v.value()))
            .transpose()?;
        if let Some(existing) = existing {
            let rank = |r: &EntityRow| (r.removed.is_none(), r.version);
            if rank(&existing) >= rank(&row) {
                continue;
            }
            index.remove(&change_key(feed, existing.version, identity))?;
        }
        entities.insert(&new_key, row.encode().as_slice())?;
        index.insert(&change_key(feed, row.version, identity), ())?;
    }
    Ok(moved)
}

/// Write an entity row and move its entry in the changes index to the row's version.
fn put_row(
    entities: &mut redb::Table<&[u8; 32], &[u8]>,
    index: &mut redb::Table<&[u8; 40], ()>,
    feed: FeedId,
    key_hash: KeyHash,
    row: &EntityRow,
) -> Result<(), StoreError> {
    let ek = entity_key(feed, key_hash);
    let old_version = entities
        .get(&ek)?
        .map(|v| EntityRow::decode(v.value()).map(|r| r.version))
        .transpose()?;
    if let Some(old) = old_version {
        index.remove(&change_key(feed, old, key_hash))?;
    }
    entities.insert(&ek, row.encode().as_slice())?;
    index.insert(&change_key(feed, row.version, key_hash), ())?;
    Ok(())
}

/// Delete every key in `first..=last` of a table.
fn remove_range<const N: usize, V: redb::Value + 'static>(
    table: &mut redb::Table<&[u8; N], V>,
    first: [u8; N],
    last: [u8; N],
) -> Result<(), StoreError> {
    let keys: Vec<[u8; N]> = table
        .range::<&[u8; N]>(&first..=&last)?
        .map(|item| item.map(|(k, _)| *k.value()))
        .collect::<Result<_, _>>()?;
    for k in &keys {
        table.remove(k)?;
    }
    Ok(())
}

/// Delete tombstones (and their index entries) of versions committed before `before_ms`. Live rows
/// of those versions stay. The caller picks `before_ms` so that every token that could need such a
/// version has expired (`retention::purge_before_ms`, DESIGN "Retention").
fn purge(
    feed: FeedId,
    entities: &mut redb::Table<&[u8; 32], &[u8]>,
    index: &mut redb::Table<&[u8; 40], ()>,
    versions: &mut redb::Table<&[u8; 24], u64>,
    before_ms: u64,
) -> Result<u64, StoreError> {
    let mut expired = Vec::new();
    for item in versions.range::<&[u8; 24]>(
        &version_key(feed, Version(0))..=&version_key(feed, Version(u64::MAX)),
    )? {
        let (k, committed) = item?;
        if committed.value() >= before_ms {
            break;
        }
        let mut v = [0u8; 8];
        v.copy_from_slice(&k.value()[16..]);
        expired.push(Version(u64::from_be_bytes(v)));
    }
    let mut purged = 0;
    for version in expired {
        let mut tombstones = Vec::new();
        let start = change_key(feed, version, KeyHash([0; 16]));
        let end = change_key(feed, version, KeyHash([0xff; 16]));
        for item in index.range::<&[u8; 40]>(&start..=&end)? {
            let (k, _) = item?;
            let (_, key) = split_change_key(k.value());
            if let Some(row) = entities.get(&entity_key(feed, key))?
                && row.value().get(25).is_some_and(|flag| *flag != 0)
            {
                tombstones.push(key);
            }
        }
        for key in tombstones {
            entities.remove(&entity_key(feed, key))?;
            index.remove(&change_key(feed, version, key))?;
            purged += 1;
        }
        versions.remove(&version_key(feed, version))?;
    }
    Ok(purged)
}

impl Store {
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

impl Store {
    /// Open the store in `dir` for an operator tool: never create one, and tell a store that a
    /// running gateway holds from other failures.
    pub fn open_existing(dir: &Path) -> Result<Self, OpenExistingError> {
        let path = file_path(dir);
        if !path.is_file() {
            return Err(OpenExistingError::Missing(path.display().to_string()));
        }
        match Database::create(&path) {
            Ok(db) => {
                let store = Store { db: Arc::new(db) };
                store.init()?;
                Ok(store)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(predicate: &str, version: u64, removed: Option<Reason>) -> EntityRow {
        EntityRow {
            content: ContentHash([1; 16]),
            version: Version(version),
            removed,
            predicate: predicate.into(),
            key_members: Vec::new(),
            body: b"{}".to_vec(),
        }
    }

    /// A schema 1 store holds rows under the hash of the predicate as spelled; opened now, they
    /// are found under the hash of their identity, one row per key.
    #[test]
    fn a_schema_1_store_is_re_keyed_by_key_identity() {
        let dir = tempfile::tempdir().unwrap();
        let feed = FeedId([5; 16]);
        let legacy = |p: &str| KeyHash(truncate16(blake3::hash(p.as_bytes())));
        let rows = [
            row(
                "ABCDEF01-2345-6789-ABCD-EF0123456789",
                3,
                Some(Reason::Deleted),
            ),
            row("abcdef01-2345-6789-abcd-ef0123456789", 4, None),
            row("1.50", 2, None),
            row("7", 1, None),
        ];
        {
            let store = Store::open(dir.path()).unwrap();
            let tx = store.db.begin_write().unwrap();
            {
                let mut meta = tx.open_table(META).unwrap();
                meta.insert("schema_version", &b"1"[..]).unwrap();
                let mut entities = tx.open_table(ENTITIES).unwrap();
                let mut index = tx.open_table(CHANGES).unwrap();
                for r in &rows {
                    let k = legacy(&r.predicate);
                    entities
                        .insert(&entity_key(feed, k), r.encode().as_slice())
                        .unwrap();
                    index.insert(&change_key(feed, r.version, k), ()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let live = store.live_hashes(feed).unwrap();
        let mut keys: Vec<KeyHash> = live.iter().map(|(k, _)| *k).collect();
        keys.sort();
        let mut want = vec![
            KeyHash::of("abcdef01-2345-6789-abcd-ef0123456789"),
            KeyHash::of("1.5"),
            KeyHash::of("7"),
        ];
        want.sort();
        assert_eq!(keys, want);
        let delta = store
            .delta_page(feed, Version(0), Version(9), None, 100)
            .unwrap();
        assert_eq!(delta.len(), 3, "one changes entry per key");
        let kept = store.rows(feed, &[KeyHash::of("1.50")]).unwrap();
        assert_eq!(kept[0].1.predicate, "1.50", "the literal stays as sent");
        // Opening again changes nothing.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.live_hashes(feed).unwrap().len(), 3);
    }

    fn truncate16(h: blake3::Hash) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.as_bytes()[..16]);
        out
    }

    #[test]
    fn rows_round_trip() {
        let row = EntityRow {
            content: ContentHash([3; 16]),
            version: Version(9),
            removed: Some(Reason::Changed),
            predicate: "'a''b'".into(),
            key_members: br#""ID":"a'b""#.to_vec(),
            body: br#"{"ID":"a'b"}"#.to_vec(),
        };
        assert_eq!(EntityRow::decode(&row.encode()).unwrap(), row);
        assert_eq!(
            EntityRow::body_of(&row.encode()).unwrap(),
            row.body.as_slice()
        );
        assert!(EntityRow::decode(&row.encode()[..20]).is_err());
    }
}

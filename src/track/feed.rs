//! Feeds: one tracked result (route, entity set, normalized defining query, identity scope), its
//! versions, and the per-feed state the gateway keeps in memory — the diff index and the single-flight
//! slot through which every refresh of the feed passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::error::Error;
use crate::odata::entity_id::KeyProperty;
use crate::odata::query::DefiningQuery;
use crate::store::FeedMeta;

use crate::ids::{ContentHash, KeyHash};

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

/// One entry of the in-memory diff index: a live entity, or a tombstone (so that a key that comes
/// back gets its old row again, and appears once in a delta).
#[derive(Clone, Copy, Debug)]
pub struct IndexEntry {
    /// The entity's row number in the store, assigned when its key was first seen.
    pub row: u64,
    /// Content hash as of the current version; [`IndexEntry::REMOVED`] for a tombstone.
    pub content: ContentHash,
    /// The number of the refresh that last saw the entity upstream.
    pub seen: u64,
}

impl IndexEntry {
    /// The content hash of a tombstone: no canonical form hashes to 128 zero bits in practice.
    pub const REMOVED: ContentHash = ContentHash([0; 16]);

    /// Whether the entity is in the feed (not a tombstone).
    pub fn is_live(&self) -> bool {
        self.content != Self::REMOVED
    }
}

/// The result of the last refresh of a feed, shared with requests that arrived while it ran.
#[derive(Clone, Debug)]
pub struct LastRefresh {
    /// When it ended.
    pub finished: Instant,
    /// Wall-clock end, for the freshness header.
    pub finished_at: SystemTime,
    /// The version it left the feed at, or why it failed.
    pub outcome: Result<Version, Error>,
}

/// A feed's in-memory state; one refresh at a time holds it.
#[derive(Default)]
pub struct Slot {
    /// Entities and tombstones: key hash → row, content hash and last sighting. Loaded from the
    /// store on first use and kept in step with every publish; `None` until loaded, and dropped when
    /// a refresh fails (it may hold that refresh's unpublished state).
    pub index: Option<HashMap<KeyHash, IndexEntry>>,
    /// The stored meta, `None` until the feed's first commit.
    pub meta: Option<FeedMeta>,
    /// Refreshes run since start; numbers the sightings in the index.
    pub refreshes: u64,
    /// The last refresh's result.
    pub last: Option<LastRefresh>,
    /// What removal confirmation the upstream accepted last time, so we start there.
    pub confirm: super::refresh::ConfirmStrategy,
    /// When a request last needed the index; idle indexes are dropped from memory.
    pub last_used: Option<Instant>,
}

impl Slot {
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

/// All feeds used since start.
#[derive(Default)]
pub struct Feeds {
    /// Slots are never removed: two slots for one feed would let two refreshes race.
    map: Mutex<HashMap<FeedId, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Feeds whose tokens were issued or used since the last sweep, with when (unix ms).
    used: Mutex<HashMap<FeedId, u64>>,
    /// Progress of first loads, for first reads served while they run.
    loads: Mutex<HashMap<FeedId, ProgressSender>>,
}

impl Feeds {
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
}

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

use super::hash::{ContentHash, KeyHash};

/// 128-bit hash of a feed's definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedId(pub [u8; 16]);

/// A feed's version: bumped by every refresh that found a difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(pub u64);

/// Who a feed belongs to: a keyed hash of the caller's credentials, or `shared`. Feed content is
/// never served across scopes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope(pub String);

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

/// One entry of the in-memory diff index.
#[derive(Clone, Copy, Debug)]
pub struct IndexEntry {
    /// Content hash as of the current version.
    pub content: ContentHash,
    /// The number of the refresh that last saw the entity upstream.
    pub seen: u64,
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
    /// Live entities: key hash → content hash and last sighting. Loaded from the store on first use
    /// and kept in step with every commit; `None` until loaded.
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

/// All feeds used since start.
#[derive(Default)]
pub struct Feeds {
    /// Slots are never removed: two slots for one feed would let two refreshes race.
    map: Mutex<HashMap<FeedId, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Feeds whose tokens were issued or used since the last sweep, with when (unix ms).
    used: Mutex<HashMap<FeedId, u64>>,
    /// Each feed's stored retention mark as last read or written (unix ms): a lower bound of what
    /// is on disk, so that issuing a token the mark already covers needs no store access.
    covered: Mutex<HashMap<FeedId, u64>>,
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

//! Feeds: one tracked result (route, entity set, normalized defining query, identity scope), its
//! versions, and the per-feed state the gateway keeps in memory — the diff index (`track::index`)
//! and the single-flight slot through which every refresh of the feed passes. `registry` holds
//! the slots of all feeds and what requests read without waiting for one.

use std::time::{Instant, SystemTime};

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

pub use super::index::{BuildKeyHasher, INDEX_ENTRY_BYTES, Index, IndexEntry, KeyHasher};

mod registry;

pub use registry::Feeds;
pub(crate) use registry::Published;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn def(scope: &str, query: &str) -> FeedDef {
        FeedDef {
            route: "/svc".into(),
            entity_set: "Customers".into(),
            query: DefiningQuery::from_encoded(query).unwrap(),
            scope: Scope(scope.into()),
        }
    }
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
    fn feed_ids_differ_by_query_and_scope() {
        assert_eq!(def("a", "$select=x").id(), def("a", "$select=x").id());
        assert_ne!(def("a", "$select=x").id(), def("b", "$select=x").id());
        assert_ne!(def("a", "$select=x").id(), def("a", "$select=y").id());
    }
}

//! The in-memory diff index of a feed: for every key the feed holds (entities and tombstones), its
//! store row, content hash, the hash of the raw bytes it was last read as, and the refresh that last
//! saw it.
//!
//! Entries live in one dense array (kept in chunks, so that it grows without moving them), in the
//! order their keys were first seen, which is the order
//! the upstream lists them in (the enumeration asks for it); a small hash table maps key hashes to
//! positions in that array. Two things follow:
//! - A refresh reading an unchanged upstream meets the entries in array order, so it can check the
//!   next expected entry's raw hash ([`Index::raw_at`]) before it parses a key or looks anything up:
//!   identical bytes are the same entity in the same state, and the array is read in sequence
//!   instead of at a random place of a large table per entity.
//! - Memory is the entries plus 4 bytes and a control byte per table bucket, not a whole entry per
//!   bucket of a table that doubles.

use hashbrown::HashTable;

use crate::ids::{ContentHash, KeyHash};

use super::feed::{Generation, NEVER_SEEN};

/// One entry of the index, beside its 16-byte key: a live entity, or a tombstone (so that a key
/// that comes back gets its old row again, and appears once in a delta).
#[derive(Clone, Copy, Debug)]
pub struct IndexEntry {
    /// The entity's row number in the store, assigned when its key was first seen.
    pub row: u64,
    /// Content hash as of the current version; [`IndexEntry::REMOVED`] for a tombstone.
    pub content: ContentHash,
    /// The hash of the raw bytes the entity was last read as ([`RawHash::of`]), or
    /// [`RawHash::UNKNOWN`] (loaded from the store, or a tombstone). Only in memory.
    pub raw: RawHash,
    /// The generation of the refresh that last saw the entity upstream (`Slot::next_generation`);
    /// [`NEVER_SEEN`] for entries loaded from the store and not seen since.
    pub seen: Generation,
}

impl IndexEntry {
    /// The content hash of a tombstone: no canonical form hashes to 128 zero bits in practice.
    pub const REMOVED: ContentHash = ContentHash([0; 16]);

    /// An entry loaded from the store, not seen by any refresh since.
    pub fn loaded(row: u64, content: ContentHash) -> Self {
        IndexEntry {
            row,
            content,
            raw: RawHash::UNKNOWN,
            seen: NEVER_SEEN,
        }
    }

    /// Whether the entity is in the feed (not a tombstone).
    pub fn is_live(&self) -> bool {
        self.content != Self::REMOVED
    }
}

/// 64 bits of keyed blake3 over an entity's bytes exactly as the upstream sent them. Two equal raw
/// hashes at the expected place of the index are taken as the same entity unchanged, so a false
/// match would hide a change. The key is random per process (raw hashes are never stored): 64 bits
/// of an unkeyed hash could be collided on purpose (about 2^32 tries) by a client that writes two
/// versions of an entity through the upstream; under a secret key it cannot aim at a collision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawHash(u64);

impl RawHash {
    /// No raw bytes known: never equal to the hash of any bytes.
    pub const UNKNOWN: RawHash = RawHash(0);

    /// The raw hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let hash = blake3::keyed_hash(raw_key(), bytes);
        let mut word = [0u8; 8];
        word.copy_from_slice(&hash.as_bytes()[..8]);
        // 0 is reserved for `UNKNOWN`.
        RawHash(u64::from_le_bytes(word).max(1))
    }
}

/// The process's secret key for [`RawHash`]: from the operating system's random source, or, should
/// that fail, from std's randomly seeded hasher keys (still unknown outside the process).
fn raw_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            use std::hash::BuildHasher;
            for (i, chunk) in key.chunks_mut(8).enumerate() {
                let word = std::collections::hash_map::RandomState::new().hash_one(i);
                chunk.copy_from_slice(&word.to_le_bytes());
            }
        }
        key
    })
}

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

/// Marks a position of the entry array whose entry was removed (its row is never a real one).
const VACANT_ROW: u64 = u64::MAX;

/// The index cannot take another entry (more than `u32::MAX - 1` positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the feed index is full")]
pub struct IndexFull;

/// The in-memory diff index of a feed: key hash → row, content hash, raw hash and last sighting.
#[derive(Default)]
pub struct Index {
    /// Keys and entries by position; a vacant position has [`VACANT_ROW`] until it is reused.
    entries: Chunks,
    /// Positions in `entries`, hashed by their key.
    table: HashTable<u32>,
    /// Vacant positions, reused before the array grows.
    vacant: Vec<u32>,
    /// Seeds the table's hash of key hashes.
    hasher: BuildKeyHasher,
}

/// Entries per chunk of [`Chunks`]: 3.5 MiB of them.
const CHUNK: usize = 1 << 16;

/// The index's array, kept in chunks of [`CHUNK`] entries: growing never moves the entries
/// already held. One array that doubles copies all of them and holds both sizes for a moment (at
/// 10M entries, 896 MiB beside 448 MiB), which was most of the peak memory of a 10M first read.
/// A chunk grows by doubling up to its full size, so a small feed costs what its entries need.
#[derive(Default)]
struct Chunks {
    chunks: Vec<Vec<(KeyHash, IndexEntry)>>,
    len: usize,
}

impl Chunks {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, position: usize) -> Option<&(KeyHash, IndexEntry)> {
        self.chunks.get(position / CHUNK)?.get(position % CHUNK)
    }

    fn get_mut(&mut self, position: usize) -> Option<&mut (KeyHash, IndexEntry)> {
        self.chunks
            .get_mut(position / CHUNK)?
            .get_mut(position % CHUNK)
    }

    /// Add an entry at position `len`. The chunks before its own are full; those after it, if
    /// any, were reserved and are still empty.
    fn push(&mut self, item: (KeyHash, IndexEntry)) {
        let at = self.len / CHUNK;
        if self.chunks.len() == at {
            self.chunks.push(Vec::new());
        }
        self.chunks[at].push(item);
        self.len += 1;
    }

    /// Room for `additional` more entries: the chunks they fall in allocated at once, each at the
    /// size it will need.
    fn reserve(&mut self, additional: usize) {
        let end = self.len.saturating_add(additional);
        let mut at = self.len;
        while at < end {
            let chunk = at / CHUNK;
            let needed = (end - chunk * CHUNK).min(CHUNK);
            match self.chunks.get_mut(chunk) {
                Some(c) => c.reserve_exact(needed.saturating_sub(c.len())),
                None => self.chunks.push(Vec::with_capacity(needed)),
            }
            at = (chunk + 1) * CHUNK;
        }
    }

    /// How many entries fit without allocating.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        let mut capacity = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            if c.capacity() < CHUNK {
                return i * CHUNK + c.capacity();
            }
            capacity = (i + 1) * CHUNK;
        }
        capacity
    }

    fn iter(&self) -> impl Iterator<Item = &(KeyHash, IndexEntry)> {
        self.chunks.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut (KeyHash, IndexEntry)> {
        self.chunks.iter_mut().flatten()
    }
}

impl std::ops::Index<usize> for Chunks {
    type Output = (KeyHash, IndexEntry);

    fn index(&self, position: usize) -> &Self::Output {
        &self.chunks[position / CHUNK][position % CHUNK]
    }
}

impl std::ops::IndexMut<usize> for Chunks {
    fn index_mut(&mut self, position: usize) -> &mut Self::Output {
        &mut self.chunks[position / CHUNK][position % CHUNK]
    }
}

/// Memory of one [`Index`] entry: key and entry in the array, and a position and control byte in
/// the table at its usual load (7/8).
pub const INDEX_ENTRY_BYTES: usize =
    std::mem::size_of::<(KeyHash, IndexEntry)>() + (std::mem::size_of::<u32>() + 1) * 8 / 7;

impl Index {
    fn hash(&self, key: &KeyHash) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    fn position(&self, key: &KeyHash) -> Option<u32> {
        let entries = &self.entries;
        self.table
            .find(self.hash(key), |&p| entries[p as usize].0 == *key)
            .copied()
    }

    /// The number of entries (entities and tombstones).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the index holds no entry.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Make room for `additional` more entries at once, rather than growing by doubling (each
    /// doubling copies the entries and rehashes the table, and holds both sizes for a moment).
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.table.reserve(additional, |&p| {
            use std::hash::BuildHasher;
            hasher.hash_one(entries[p as usize].0)
        });
    }

    /// The entry of `key`.
    pub fn get(&self, key: &KeyHash) -> Option<&IndexEntry> {
        self.position(key).map(|p| &self.entries[p as usize].1)
    }

    /// The entry of `key`, to change.
    pub fn get_mut(&mut self, key: &KeyHash) -> Option<&mut IndexEntry> {
        let p = self.position(key)?;
        Some(&mut self.entries[p as usize].1)
    }

    /// The entry of `key` with its position.
    pub fn find_mut(&mut self, key: &KeyHash) -> Option<(usize, &mut IndexEntry)> {
        let p = self.position(key)? as usize;
        Some((p, &mut self.entries[p].1))
    }

    /// The raw hash of the live entity at `position`. A tombstone has none: bytes equal to those
    /// the entity had before it left are its return, a change. Nor has a vacant position, one
    /// past the end, or an entry whose bytes are not known.
    pub fn raw_at(&self, position: usize) -> Option<RawHash> {
        self.entries
            .get(position)
            .filter(|(_, e)| e.row != VACANT_ROW && e.raw != RawHash::UNKNOWN && e.is_live())
            .map(|(_, e)| e.raw)
    }

    /// The entry at `position`.
    pub fn at_mut(&mut self, position: usize) -> Option<&mut IndexEntry> {
        self.entries
            .get_mut(position)
            .map(|(_, e)| e)
            .filter(|e| e.row != VACANT_ROW)
    }

    /// Add `key`, or replace its entry. A new key takes a vacant position or the next one.
    pub fn insert(&mut self, key: KeyHash, entry: IndexEntry) -> Result<(), IndexFull> {
        if let Some(existing) = self.get_mut(&key) {
            *existing = entry;
            return Ok(());
        }
        self.insert_new(key, entry)
    }

    /// Add `key`, which the caller has just looked up and not found: [`Index::insert`] without
    /// the lookup.
    pub fn insert_new(&mut self, key: KeyHash, entry: IndexEntry) -> Result<(), IndexFull> {
        debug_assert!(self.position(&key).is_none(), "insert_new of a key present");
        let position = match self.vacant.pop() {
            Some(p) => {
                self.entries[p as usize] = (key, entry);
                p
            }
            None => {
                let p = u32::try_from(self.entries.len())
                    .ok()
                    .filter(|&p| p < u32::MAX)
                    .ok_or(IndexFull)?;
                self.entries.push((key, entry));
                p
            }
        };
        let hash = self.hash(&key);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.table.insert_unique(hash, position, |&p| {
            use std::hash::BuildHasher;
            hasher.hash_one(entries[p as usize].0)
        });
        Ok(())
    }

    /// Remove `key`'s entry; its position is reused by a later insert.
    pub fn remove(&mut self, key: &KeyHash) -> Option<IndexEntry> {
        let hash = self.hash(key);
        let entries = &self.entries;
        let found = self
            .table
            .find_entry(hash, |&p| entries[p as usize].0 == *key)
            .ok()?;
        let (p, _) = found.remove();
        let (_, entry) = std::mem::replace(
            &mut self.entries[p as usize],
            (
                KeyHash([0; 16]),
                IndexEntry::loaded(VACANT_ROW, IndexEntry::REMOVED),
            ),
        );
        self.vacant.push(p);
        Some(entry)
    }

    /// Every entry with its key, in position order.
    pub fn iter(&self) -> impl Iterator<Item = (&KeyHash, &IndexEntry)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.row != VACANT_ROW)
            .map(|(k, e)| (k, e))
    }

    /// Every entry.
    pub fn values(&self) -> impl Iterator<Item = &IndexEntry> {
        self.iter().map(|(_, e)| e)
    }

    /// Every entry, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut IndexEntry> {
        self.entries
            .iter_mut()
            .filter(|(_, e)| e.row != VACANT_ROW)
            .map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> KeyHash {
        KeyHash::of(&i.to_string())
    }

    fn entry(row: u64, raw: &[u8]) -> IndexEntry {
        IndexEntry {
            raw: RawHash::of(raw),
            ..IndexEntry::loaded(row, ContentHash([7; 16]))
        }
    }

    #[test]
    fn entries_are_found_by_key_after_inserts_removals_and_reuse() {
        let mut index = Index::default();
        for i in 0..1000 {
            index.insert(key(i), entry(u64::from(i), b"x")).unwrap();
        }
        for i in (0..1000).step_by(3) {
            assert_eq!(index.remove(&key(i)).map(|e| e.row), Some(u64::from(i)));
        }
        assert!(index.remove(&key(0)).is_none());
        for i in 1000..1200 {
            index.insert(key(i), entry(u64::from(i), b"y")).unwrap();
        }
        for i in 0..1200 {
            let removed = i < 1000 && i % 3 == 0;
            assert_eq!(
                index.get(&key(i)).map(|e| e.row),
                (!removed).then_some(u64::from(i)),
                "key {i}"
            );
        }
        assert_eq!(index.len(), 1200 - 334);
        assert_eq!(index.iter().count(), index.len());
        // The vacated positions were taken again before the array grew.
        assert_eq!(index.entries.len(), 1000);
    }

    #[test]
    fn room_made_at_once_holds_the_entries_without_growing_and_keeps_those_present() {
        let mut index = Index::default();
        index.insert(key(0), entry(0, b"x")).unwrap();
        index.reserve(5000);
        let (entries, table) = (index.entries.capacity(), index.table.capacity());
        assert!(entries >= 5001 && table >= 5001, "{entries} {table}");
        for i in 1..5001 {
            index.insert_new(key(i), entry(u64::from(i), b"y")).unwrap();
        }
        assert_eq!(
            (index.entries.capacity(), index.table.capacity()),
            (entries, table)
        );
        assert_eq!(index.get(&key(0)).map(|e| e.row), Some(0));
        assert_eq!(index.get(&key(5000)).map(|e| e.row), Some(5000));
        assert_eq!(index.len(), 5001);
    }

    #[test]
    fn entries_across_chunks_are_found_by_key_and_by_position() {
        let mut index = Index::default();
        let n = CHUNK as u32 + 10;
        for i in 0..n {
            index
                .insert(key(i), entry(u64::from(i), &i.to_le_bytes()))
                .unwrap();
        }
        assert_eq!(index.entries.chunks.len(), 2);
        for i in [0, CHUNK as u32 - 1, CHUNK as u32, n - 1] {
            assert_eq!(index.get(&key(i)).map(|e| e.row), Some(u64::from(i)));
            assert_eq!(
                index.raw_at(i as usize),
                Some(RawHash::of(&i.to_le_bytes()))
            );
        }
        assert_eq!(index.raw_at(n as usize), None, "past the end");
        index.at_mut(CHUNK).unwrap().seen = 7;
        assert_eq!(index.get(&key(CHUNK as u32)).unwrap().seen, 7);
        // A position vacated in the first chunk is reused before the second grows.
        index.remove(&key(3)).unwrap();
        index.insert(key(n), entry(u64::from(n), b"z")).unwrap();
        assert_eq!(index.entries.len(), n as usize);
        assert_eq!(index.raw_at(3), Some(RawHash::of(b"z")));
        assert_eq!(index.iter().count(), n as usize);
        assert_eq!(index.values_mut().count(), n as usize);
    }

    #[test]
    fn room_made_for_several_chunks_is_filled_in_position_order() {
        let mut index = Index::default();
        let n = 2 * CHUNK as u32 + 5;
        index.reserve(n as usize);
        assert_eq!(index.entries.chunks.len(), 3);
        assert!(index.entries.capacity() >= n as usize);
        let capacity = index.entries.capacity();
        for i in 0..n {
            index
                .insert_new(key(i), entry(u64::from(i), &i.to_le_bytes()))
                .unwrap();
        }
        assert_eq!(index.entries.capacity(), capacity, "no chunk grew");
        for i in [0, CHUNK as u32 - 1, CHUNK as u32, 2 * CHUNK as u32, n - 1] {
            assert_eq!(index.get(&key(i)).map(|e| e.row), Some(u64::from(i)));
            assert_eq!(
                index.raw_at(i as usize),
                Some(RawHash::of(&i.to_le_bytes()))
            );
        }
        let rows: Vec<u64> = index.values().map(|e| e.row).collect();
        assert_eq!(rows, (0..u64::from(n)).collect::<Vec<_>>());
        // Room made again part-way through a chunk.
        index.reserve(10);
        index.insert_new(key(n), entry(u64::from(n), b"z")).unwrap();
        assert_eq!(index.raw_at(n as usize), Some(RawHash::of(b"z")));
    }

    #[test]
    fn raw_hashes_are_read_by_position_in_the_order_keys_came() {
        let mut index = Index::default();
        for i in 0..5 {
            let body = format!("{{\"ID\":{i}}}");
            index
                .insert(key(i), entry(u64::from(i), body.as_bytes()))
                .unwrap();
        }
        assert_eq!(index.raw_at(3), Some(RawHash::of(b"{\"ID\":3}")));
        assert_eq!(index.raw_at(5), None, "past the end");
        index
            .insert(key(9), IndexEntry::loaded(9, ContentHash([1; 16])))
            .unwrap();
        assert_eq!(index.raw_at(5), None, "raw bytes not known");
        index.get_mut(&key(3)).unwrap().raw = RawHash::of(b"changed");
        assert_eq!(index.raw_at(3), Some(RawHash::of(b"changed")));
        index.get_mut(&key(3)).unwrap().content = IndexEntry::REMOVED;
        assert_eq!(index.raw_at(3), None, "a tombstone");
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

    #[test]
    fn a_vacant_position_never_matches() {
        let mut index = Index::default();
        index.insert(key(1), entry(1, b"a")).unwrap();
        index.remove(&key(1));
        assert_eq!(index.raw_at(0), None);
        assert!(index.at_mut(0).is_none());
    }
}

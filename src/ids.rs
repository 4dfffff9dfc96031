//! Domain ids shared by the store, the tracking core and the error type. This module sits at the
//! bottom of the crate's module graph: it imports nothing of ours, so no import cycle can run
//! through it.

/// 128-bit hash of a feed's definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedId(pub [u8; 16]);

/// A feed's version: bumped by every refresh that found a difference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(pub u64);

/// Who a feed belongs to: a keyed hash of the caller's credentials, or `shared`. Feed content is
/// never served across scopes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope(pub String);

/// 128 bits of blake3 over an entity's canonical form: collisions are out of reach in practice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 16]);

/// 128 bits of blake3 over an entity's key identity (its predicate with every value in one
/// spelling; `KeyHash::of` in `track::hash`): how the in-memory index names an entity of a feed.
/// Its `Hash` (in `track::hash`) feeds 8 of its bytes to the hasher: they are blake3 output already.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 16]);

/// The first 128 bits of a blake3 hash.
pub(crate) fn truncate(h: blake3::Hash) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

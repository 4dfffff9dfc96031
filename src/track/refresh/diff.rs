//! The diff of one page against the feed's index: entities that are, byte for byte, the entries
//! the index expects next are only stamped as seen; the others are digested, looked up by key,
//! and, when new or changed, turned into rows for the store, in page order.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::error::{Error, UpstreamFailure};
use crate::track::feed::{Index, IndexEntry};
use crate::track::hash::{Digest, EntityError, Hasher, KeyHash};
use crate::track::index::BuildKeyHasher;
use crate::track::index::RawHash;

use super::Pass;
use super::page::{ChangedEntity, HashingPage, PageDigests, PageEntity, digest_all, rows_all};

/// What [`Pass::note`] found for one entity.
struct Noted {
    /// The entity's row, and whether that row had a published state before this refresh, when
    /// the entity is new or changed and so is to be written.
    write: Option<(u64, bool)>,
    /// Whether this refresh saw the key before (the upstream listed it twice).
    seen_before: bool,
}

/// Up to this many entities of a page are digested or compacted on the refresh's own task: a few
/// microseconds each, less than a hand-off to the blocking pool and back.
const INLINE_ENTITIES: usize = 64;

impl Pass<'_> {
    /// Wait for a page's hashes and note its entities in the diff. Entities whose raw bytes are
    /// those of the entry the index expects next are unchanged; the others are digested (on the
    /// blocking pool, unless the hashing step did already) and looked up by key.
    pub(super) async fn apply_page(
        &mut self,
        page: Option<HashingPage>,
        index: &mut Index,
    ) -> Result<(), Error> {
        let Some(mut page) = page else { return Ok(()) };
        let mut entities = (&mut page.task).await?;
        let hits = self.expect_in_order(&entities, index);
        let misses = hits.iter().filter(|h| h.is_none()).count();
        // Most of a page new or changed (a first load, or the first refresh after the index was
        // read from the store, which knows no raw hashes): digest the next pages at once.
        self.digest_in_worker = misses * 2 > entities.len();
        let undigested: Vec<usize> = (0..entities.len())
            .filter(|&i| hits[i].is_none() && entities[i].digest.is_none())
            .collect();
        // A few are digested in place below; a round trip to the blocking pool costs more.
        if undigested.len() > INLINE_ENTITIES {
            let spans: Vec<(usize, usize)> = undigested.iter().map(|&i| entities[i].span).collect();
            let shared = page.body.clone();
            let set = self.input.set.clone();
            let digests =
                tokio::task::spawn_blocking(move || digest_all(&shared, &spans, &set, true))
                    .await?;
            for (i, digested) in undigested.into_iter().zip(digests) {
                entities[i].digest = digested.digest;
            }
        }
        self.apply_digests(&page.body, entities, Some(&hits), index, None)
            .await?;
        self.flush_if_full().await
    }

    /// Which entities of a page are, byte for byte, the entries the index expects next: an
    /// upstream lists a feed in the same order every time, so after the entry at position `p`
    /// comes the one at `p + 1`. After a run of `m` entities that were not (changed ones, which
    /// still hold their positions, or new ones, which do not), the next is looked for at `p + m`,
    /// at `p`, and at `p + m + 1` (an entity that left). Only a guess of positions: a wrong one
    /// costs digests, never a missed change, since [`Pass::apply_digests`] compares the bytes again
    /// in page order, and it moves the expected position to where each entity really was.
    fn expect_in_order(&self, entities: &[PageEntity], index: &Index) -> Vec<Option<usize>> {
        let (mut cursor, mut misses) = (self.cursor, 0usize);
        entities
            .iter()
            .map(|entity| {
                // After `misses` changed entities; after as many new ones; or one further, past
                // an entity that left.
                let after_changed = cursor.saturating_add(misses);
                let hit = [after_changed, cursor, after_changed.saturating_add(1)]
                    .into_iter()
                    .find(|&p| index.raw_at(p) == Some(entity.raw));
                match hit {
                    Some(p) => {
                        cursor = p + 1;
                        misses = 0;
                    }
                    None => misses = misses.saturating_add(1),
                }
                hit
            })
            .collect()
    }

    /// The error for an entity that cannot be keyed or hashed.
    pub(super) fn unreadable(&self, e: EntityError) -> Error {
        Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "an entity of {} cannot be read ({e}); nothing was committed",
                self.set_name()
            ),
        )
    }

    /// Note the hashed entities of one page (or one entity read by key) in the diff, in order; with
    /// `found`, collect their key hashes there too. New and changed entities are kept in their
    /// compact form, written on the blocking pool.
    pub(super) async fn apply_digests(
        &mut self,
        body: &Bytes,
        entities: PageDigests,
        hits: Option<&[Option<usize>]>,
        index: &mut Index,
        mut found: Option<&mut HashSet<KeyHash>>,
    ) -> Result<(), Error> {
        // The page's last state of each new or changed key. The index learns every state at once,
        // so a later sighting that matches it changes nothing, and one that differs replaces it.
        let mut changed: Vec<ChangedEntity> = Vec::new();
        // Whether a key of the page was seen before in this refresh: only then can `changed` hold
        // a key twice.
        let mut repeated = false;
        for (i, entity) in entities.into_iter().enumerate() {
            let hit = hits.and_then(|h| h.get(i).copied().flatten());
            // The expected entry, still in the state these bytes were read as (an earlier entity
            // of this page with the same key may have changed it): unchanged, only seen.
            if let Some((p, entry)) = hit.and_then(|p| Some((p, index.at_mut(p)?)))
                && entry.raw == entity.raw
            {
                if entry.seen != self.generation {
                    self.tally.sighting();
                }
                entry.seen = self.generation;
                self.cursor = p + 1;
                continue;
            }
            self.digested += 1;
            let span = entity.span;
            let digest = match entity.digest {
                Some(digest) => digest,
                None => Hasher::default().digest(
                    &body[span.0..span.1],
                    &self.input.set.key,
                    &self.input.set.ignore,
                ),
            };
            let digest = digest.map_err(|e| self.unreadable(e))?;
            if let Some(found) = found.as_deref_mut() {
                found.insert(digest.key_hash);
            }
            let noted = self.note(&digest, entity.raw, index)?;
            if let Some((row, existed)) = noted.write {
                repeated |= noted.seen_before;
                changed.push((span, digest, row, existed));
            }
        }
        self.check_size()?;
        if changed.is_empty() {
            return Ok(());
        }
        if repeated {
            // The last state of each key wins; a row had a published state whichever sighting
            // says so.
            let mut last: HashMap<KeyHash, usize, BuildKeyHasher> = HashMap::default();
            for (i, (_, digest, _, _)) in changed.iter().enumerate() {
                last.insert(digest.key_hash, i);
            }
            let mut existed: HashSet<KeyHash> = HashSet::new();
            for (_, digest, _, was) in &changed {
                if *was {
                    existed.insert(digest.key_hash);
                }
            }
            changed = changed
                .into_iter()
                .enumerate()
                .filter(|(i, (_, digest, _, _))| last.get(&digest.key_hash) == Some(i))
                .map(|(_, (span, digest, row, was))| {
                    let was = was || existed.contains(&digest.key_hash);
                    (span, digest, row, was)
                })
                .collect();
        }
        let rows = if changed.len() > INLINE_ENTITIES {
            let shared = body.clone();
            tokio::task::spawn_blocking(move || rows_all(&shared, changed)).await?
        } else {
            rows_all(body, changed)
        };
        for row in rows {
            self.push(row);
        }
        Ok(())
    }

    /// Note one hashed entity in the diff. A key seen twice in one refresh counts once; its last
    /// state wins. The index entry takes the new state at once (a new key gets the next row
    /// number). One lookup of the key in the index, which for a first load is a miss per entity.
    fn note(&mut self, digest: &Digest, raw: RawHash, index: &mut Index) -> Result<Noted, Error> {
        match index.find_mut(&digest.key_hash) {
            Some((position, entry)) => {
                // The upstream's order continues after it (see `expect_in_order`).
                self.cursor = position + 1;
                let seen_before = entry.seen == self.generation;
                if !seen_before {
                    self.tally.sighting();
                }
                entry.seen = self.generation;
                entry.raw = raw;
                if entry.content == digest.content {
                    return Ok(Noted {
                        write: None,
                        seen_before,
                    });
                }
                entry.content = digest.content;
                if entry.row >= self.first_new_row
                    && let Some(progress) = &self.progress
                {
                    progress.send_modify(|p| {
                        if let Some(p) = p {
                            p.rewritten = true;
                        }
                    });
                }
                Ok(Noted {
                    write: Some((entry.row, entry.row < self.first_new_row)),
                    seen_before,
                })
            }
            None => {
                self.tally.sighting();
                let row = self.next_row;
                self.next_row += 1;
                index
                    .insert_new(
                        digest.key_hash,
                        IndexEntry {
                            row,
                            content: digest.content,
                            raw,
                            seen: self.generation,
                        },
                    )
                    .map_err(|_| {
                        Error::upstream(
                            UpstreamFailure::BadAnswer,
                            format!(
                                "{} holds more entities than one feed can track; nothing was committed",
                                self.set_name()
                            ),
                        )
                    })?;
                Ok(Noted {
                    write: Some((row, false)),
                    seen_before: false,
                })
            }
        }
    }

    /// Fail as soon as the feed outgrows `max_entities_per_feed`, rather than after reading the
    /// whole upstream. Deliveries are bounded at twice the limit too, against an upstream that
    /// sends the same rows again and again under new links.
    fn check_size(&self) -> Result<(), Error> {
        let limit = self.shared.config.limits.max_entities_per_feed;
        if self.tally.distinct <= limit && self.tally.delivered <= limit.saturating_mul(2) {
            return Ok(());
        }
        Err(Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "{} holds more than the limit of {limit} entities per feed; nothing was committed",
                self.set_name()
            ),
        ))
    }
}

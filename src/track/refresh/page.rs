//! One upstream page: parsed once to locate its entities and paging controls, then each entity's
//! raw bytes hashed (and, where the diff needs it, its key read and its canonical content hashed)
//! on the blocking pool; and the stored rows of the entities the diff found new or changed.

use bytes::Bytes;

use crate::odata::page::{Page, PageError};
use crate::store::{EntityRow, PendingRow};
use crate::track::feed::SetSpec;
use crate::track::hash::{Digest, EntityError, Hasher};
use crate::track::index::RawHash;

/// An entity of a page as the hashing step leaves it.
pub(super) struct PageEntity {
    /// Its byte range in the page.
    pub(super) span: (usize, usize),
    /// The hash of its bytes as sent.
    pub(super) raw: RawHash,
    /// Its key and content hash, when the hashing step made them (see [`digest_all`]).
    pub(super) digest: Option<Result<Digest, EntityError>>,
}

/// The entities of a page, in page order.
pub(super) type PageDigests = Vec<PageEntity>;

/// What the parse of a page yields besides its entities: the paging controls and where in the body
/// each entity lies, so that it can be hashed without parsing the page again.
pub(super) struct Scanned {
    pub(super) next_link: Option<String>,
    pub(super) count: Option<u64>,
    pub(super) spans: Vec<(usize, usize)>,
}

/// Parse a page and locate its entities in the body.
pub(super) fn scan(body: &[u8]) -> Result<Scanned, PageError> {
    let page = Page::parse(body)?;
    let base = body.as_ptr() as usize;
    let spans: Vec<(usize, usize)> = page
        .entities
        .iter()
        .map(|raw| {
            // Borrowed raw values point into the body they were parsed from.
            let start = (raw.get().as_ptr() as usize).wrapping_sub(base);
            (start, start.saturating_add(raw.get().len()))
        })
        .filter(|&(start, end)| start <= end && end <= body.len())
        .collect();
    if spans.len() != page.entities.len() {
        return Err(PageError::Malformed(
            "a parsed entity lies outside its page".into(),
        ));
    }
    Ok(Scanned {
        next_link: page.next_link,
        count: page.count,
        spans,
    })
}

/// A new or changed entity of a page: its byte range, digest, row, and whether the row had a
/// published state.
pub(super) type ChangedEntity = ((usize, usize), Digest, u64, bool);

/// The stored states of a page's new and changed entities, built from their raw bytes (compacted)
/// on the blocking pool.
pub(super) fn rows_all(body: &[u8], changed: Vec<ChangedEntity>) -> Vec<PendingRow> {
    changed
        .into_iter()
        .map(|((start, end), digest, row, existed)| {
            let raw = &body[start..end];
            let state = EntityRow::live(
                digest.key_hash,
                digest.content,
                &digest.key.predicate,
                &digest.key.members,
                raw.len(),
                |out| crate::odata::json::write_compact(raw, out),
            );
            PendingRow {
                row,
                existed,
                state,
            }
        })
        .collect()
}

/// One page being keyed and hashed on the blocking pool.
pub(super) struct HashingPage {
    pub(super) body: Bytes,
    pub(super) task: tokio::task::JoinHandle<PageDigests>,
}

impl HashingPage {
    pub(super) fn start(
        body: Bytes,
        spans: Vec<(usize, usize)>,
        set: SetSpec,
        digest: bool,
    ) -> Self {
        let shared = body.clone();
        let task = tokio::task::spawn_blocking(move || digest_all(&shared, &spans, &set, digest));
        HashingPage { body, task }
    }
}

/// Hash the raw bytes of every entity (given as byte ranges) of a page, and with `digest` read its
/// key and hash its canonical content too. Without, only the entities that turn out not to be the
/// ones the index expects are digested later ([`super::Pass`]'s `apply_page`): on a feed that changed little,
/// that skips the canonical writer, the key and the table lookup for nearly every entity.
pub(super) fn digest_all(
    body: &[u8],
    spans: &[(usize, usize)],
    set: &SetSpec,
    digest: bool,
) -> PageDigests {
    let mut hasher = Hasher::default();
    spans
        .iter()
        .map(|&(a, b)| {
            let raw = &body[a..b];
            PageEntity {
                span: (a, b),
                raw: RawHash::of(raw),
                digest: digest.then(|| hasher.digest(raw, &set.key, &set.ignore)),
            }
        })
        .collect()
}

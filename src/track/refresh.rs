//! Refresh: enumerate the upstream collection, key and hash every entity, diff against the feed's
//! in-memory index, confirm every candidate removal upstream (C27), and publish the result as one
//! new version. Changed rows go to the store in bounded batches as the enumeration yields them, at
//! the pending version that no token names yet; one small transaction publishes it. Anything
//! incomplete — a failed page, a timeout, malformed JSON, an entity without its key, a link off the
//! upstream — fails the refresh and publishes nothing, so every token stays valid (C28, C29); what
//! it wrote is discarded by the next refresh of the feed or the next start.
//!
//! Concurrent requests on one feed share one refresh (single-flight): the slot lock is held by the
//! refresh, which runs in its own task so a client hanging up does not cancel it halfway.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use url::Url;

use crate::Shared;
use crate::error::{Error, UpstreamFailure};
use crate::odata::page::{Page, PageError};
use crate::odata::query::{encode_pairs, encode_path};
use crate::store::{EntityRow, FeedMeta, PendingRow};

use super::feed::{
    BuildKeyHasher, FeedDef, FeedId, Generation, Index, IndexEntry, LastRefresh, LoadProgress,
    ProgressSender, Published, SetSpec, Slot, Version,
};
use super::hash::{Digest, EntityError, Hasher, KeyHash};
use super::index::RawHash;

mod confirm;
pub mod tally;

use super::fetch::Prefetch;
use super::fetch::{Fetcher, OnRefusal};
use tally::{ReadOn, Tally, Verdict};

/// What a tracked request needs to refresh a feed.
#[derive(Clone, Debug)]
pub struct RefreshInput {
    /// The feed.
    pub feed: FeedId,
    /// Its definition.
    pub def: FeedDef,
    /// How to read its entity set.
    pub set: SetSpec,
    /// The upstream service root.
    pub service_root: Url,
    /// Request headers forwarded upstream (credentials and the like).
    pub headers: HeaderMap,
    /// A successful refresh younger than this is reused: the larger of `min_refresh_interval` and
    /// the feed's `poll_interval`, lowered by a client's `Cache-Control`.
    pub max_age: Duration,
    /// How much older than `max_age` the last refresh may be while another one is running, for a
    /// request answered from the store instead of waiting for it (RFC 5861's
    /// stale-while-revalidate): a feed's `poll_interval` for a client that did not ask for a
    /// fresher answer with `Cache-Control`, zero otherwise.
    pub stale_while_refreshing: Duration,
    /// Asked for by the schedule, not by a client: it never creates a feed, and its failure is
    /// not handed to a client that happens to arrive while it runs (the credentials were not theirs).
    pub background: bool,
}

/// A refreshed feed, as a request sees it.
#[derive(Clone, Copy, Debug)]
pub struct Fresh {
    /// The feed's version after the refresh.
    pub version: Version,
    /// When the refresh behind it finished.
    pub finished_at: SystemTime,
    /// Whether this request ran that refresh, so the upstream accepted its own credentials.
    pub(crate) by_this_request: bool,
}

/// Bring a feed up to date, sharing a refresh with concurrent requests: a refresh that was still
/// running when this request arrived, or a successful one younger than `input.max_age`, is
/// reused. Its result is as of its enumeration, which is all a delta promises (C28).
pub async fn ensure_fresh(shared: &Arc<Shared>, input: RefreshInput) -> Result<Fresh, Error> {
    // tokio's clock, so that schedules can be tested on paused time.
    let arrived = tokio::time::Instant::now();
    let new_feed = shared
        .feeds
        .admit(input.feed, &input.def.scope, &shared.config.limits)?;
    if new_feed && input.background {
        // The feed was dropped since it was scheduled; only a client may create it again.
        shared.feeds.unregister(input.feed);
        return Err(Error::Expired {
            location: String::new(),
        });
    }
    // A client's request is answered from the last published version, young enough, without
    // waiting for a refresh that holds the slot: a feed on a schedule is being refreshed a good
    // part of the time, and its readers need not queue behind the schedule.
    if !input.background
        && let Some(p) = shared.feeds.published(input.feed)
    {
        let age = p.finished.elapsed();
        let grace = if p.refreshing {
            input.stale_while_refreshing
        } else {
            Duration::ZERO
        };
        if age < input.max_age.saturating_add(grace) {
            shared.metrics.refresh_reused.inc();
            return Ok(Fresh {
                version: p.version,
                finished_at: p.finished_at,
                by_this_request: false,
            });
        }
    }
    let slot = shared.feeds.slot(input.feed);
    let mut guard = slot.lock_owned().await;
    guard.last_used = Some(Instant::now());
    if let Some(last) = &guard.last {
        // A refresh that was running when this request arrived (or started after it) is shared,
        // unless it was a background one that failed. Strictly after: on a coarse (or paused)
        // clock, one that ended just before the request arrived can read as the same instant.
        let shared_run = last.finished > arrived && (last.outcome.is_ok() || !last.background);
        let recent = last.outcome.is_ok() && last.finished.elapsed() < input.max_age;
        if shared_run || recent {
            shared.metrics.refresh_reused.inc();
            return last.outcome.clone().map(|version| Fresh {
                version,
                finished_at: last.finished_at,
                by_this_request: false,
            });
        }
    }
    // Taken with the slot locked: other requests on this feed wait for the slot and share the
    // refresh instead of taking turns of their own.
    let permit = match shared.refresh_permits.acquire().await {
        Ok(permit) => permit,
        Err(e) => {
            if new_feed {
                shared.feeds.unregister(input.feed);
            }
            return Err(e);
        }
    };
    let shared = shared.clone();
    // In the span of the request that started it, so that its log lines carry that request id.
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let started = Instant::now();
        shared.feeds.refresh_started(input.feed);
        let outcome = run(&shared, &mut guard, &input).await;
        drop(permit);
        if guard.index.is_some() {
            let stored = guard.meta.as_ref().is_some_and(|m| !m.dropped);
            shared
                .feeds
                .set_stored(input.feed, &input.def.scope, stored);
        }
        if outcome.is_ok() {
            super::authorize::refreshed_with(&shared, &input.def, &input.headers);
        }
        shared.feeds.finish_load(input.feed, &outcome);
        if outcome.is_err() {
            // The index may hold what this refresh saw but did not publish; the store has the
            // published state, and the next refresh loads it again.
            guard.index = None;
        }
        let finished_at = SystemTime::now();
        let elapsed = started.elapsed();
        shared
            .metrics
            .refresh_seconds
            .get_or_create(&crate::metrics::SetLabel::new(
                &input.def.route,
                &input.set.name,
            ))
            .observe(elapsed.as_secs_f64());
        shared.refresh_history.finished(super::history::Finished {
            def: &input.def,
            finished_at,
            duration: elapsed,
            outcome: outcome.clone().map_err(|e| e.to_string()),
            entities: guard.meta.as_ref().map(|m| m.live),
            index_entries: guard.index.as_ref().map_or(0, |i| i.len()),
        });
        match &outcome {
            Ok(v) => {
                shared
                    .metrics
                    .refreshes
                    .get_or_create(&crate::metrics::Outcome::ok())
                    .inc();
                tracing::info!(set = %input.set.name, feed = %feed_label(input.feed), version = v.0, ms = elapsed.as_millis() as u64, "refreshed");
            }
            Err(e) => {
                shared
                    .metrics
                    .refreshes
                    .get_or_create(&crate::metrics::Outcome::failed())
                    .inc();
                tracing::warn!(set = %input.set.name, feed = %feed_label(input.feed), error = %e, "refresh failed; nothing committed");
            }
        }
        let finished = tokio::time::Instant::now();
        let published = outcome.as_ref().ok().map(|&version| Published {
            version,
            finished,
            finished_at,
            refreshing: false,
        });
        shared.feeds.refresh_ended(input.feed, published);
        guard.last = Some(LastRefresh {
            finished,
            finished_at,
            outcome: outcome.clone(),
            background: input.background,
        });
        outcome.map(|version| Fresh {
            version,
            finished_at,
            by_this_request: true,
        })
    }));
    task.await?
}

/// The state of one refresh while it runs.
struct Pass<'a> {
    shared: &'a Shared,
    input: &'a RefreshInput,
    /// This refresh's generation; index entries it sees are stamped with it.
    generation: Generation,
    /// GETs of this refresh, with its retry budget and page cap.
    fetcher: Fetcher,
    /// Pages and entities read against the upstream's count.
    tally: Tally,
    /// Hashes of the nextLinks followed, to notice one that points back at a page already read.
    /// At most one per page, so the page cap bounds it.
    links: HashSet<[u8; 16]>,
    /// The version this refresh writes at and publishes if it finds a difference.
    pending_version: Version,
    /// Rows numbered from here on were first seen by this refresh.
    first_new_row: u64,
    /// The number the next new key gets.
    next_row: u64,
    /// Changed rows not yet written, and their size.
    batch: Vec<PendingRow>,
    batch_bytes: usize,
    /// Rows written at the pending version so far.
    written: u64,
    /// On a feed's first load: where the rows written so far are announced, so that the first read
    /// can be served while the load runs. Rows are then written after every upstream page.
    progress: Option<ProgressSender>,
    /// Whether the hashing step digests every entity of the next pages, rather than only hashing
    /// their raw bytes for [`Pass::expect_in_order`]: when most of the last page needed digests.
    digest_in_worker: bool,
    /// The index position the next entity is expected at: after the last one found in the index
    /// (see [`Pass::expect_in_order`]).
    cursor: usize,
    /// Entities that were keyed and looked up rather than found unchanged in place, for the log.
    digested: u64,
}

/// A batch of changed rows is written once it holds this many rows or bytes, so a refresh holds
/// one batch in memory however many rows changed.
const BATCH_ROWS: usize = 20_000;
const BATCH_BYTES: usize = 8 << 20;

/// Up to this many entities of a page are digested or compacted on the refresh's own task: a few
/// microseconds each, less than a hand-off to the blocking pool and back.
const INLINE_ENTITIES: usize = 64;

/// The store's page size, which an update of a stored row dirties (see [`Pass::push`]).
const STORE_PAGE_BYTES: usize = 4096;

async fn run(
    shared: &Arc<Shared>,
    slot: &mut Slot,
    input: &RefreshInput,
) -> Result<Version, Error> {
    let now = shared.clock.now_ms();
    let purge_before = super::retention::purge_before_ms(now, shared.config.token_ttl);
    let store = shared.store.clone();
    let feed = input.feed;
    // Whatever a failed refresh of this feed wrote is discarded before anything is compared.
    let settled = tokio::task::spawn_blocking(move || store.settle(feed, purge_before)).await??;
    shared
        .metrics
        .tombstones_purged
        .inc_by(settled.purged.len() as u64);
    match slot.index.as_mut() {
        None => {
            let store = shared.store.clone();
            let (meta, index) = tokio::task::spawn_blocking(move || {
                let mut index = Index::default();
                let mut full = false;
                let meta = store.load_index(feed, |r| {
                    let entry = IndexEntry::loaded(r.row, r.content.unwrap_or(IndexEntry::REMOVED));
                    full |= index.insert(r.key_hash, entry).is_err();
                })?;
                if full {
                    return Err(Error::Internal(
                        "the stored feed holds more entries than its index can".into(),
                    ));
                }
                Ok::<_, Error>((meta, index))
            })
            .await??;
            slot.index = Some(index);
            slot.meta = meta;
        }
        Some(index) => {
            for key in &settled.purged {
                if index.get(key).is_some_and(|e| !e.is_live()) {
                    index.remove(key);
                }
            }
        }
    }
    let generation = slot.next_generation();
    let current = slot.meta.as_ref().map(|m| m.version).unwrap_or(0);
    let next_row = slot.meta.as_ref().map(|m| m.next_row).unwrap_or(0);
    // A version a failed refresh wrote at is not used again (a cursor may name it).
    let pending_version = Version(current.max(settled.burned) + 1);
    let first_load = slot.meta.as_ref().is_none_or(|m| m.dropped);
    let progress = first_load.then(|| {
        let tx = shared.feeds.load_progress(feed);
        tx.send_replace(Some(LoadProgress {
            def: input.def.clone(),
            pending: pending_version,
            first_row: next_row,
            written: next_row,
            rewritten: false,
            done: None,
        }));
        tx
    });
    let mut pass = Pass {
        shared,
        input,
        generation,
        fetcher: Fetcher::new(
            shared.clone(),
            &input.def.route,
            input.headers.clone(),
            &input.set.name,
        )
        .ieee754(input.def.query.ieee754()),
        tally: Tally::default(),
        links: HashSet::new(),
        pending_version,
        first_new_row: next_row,
        next_row,
        batch: Vec::new(),
        batch_bytes: 0,
        written: 0,
        progress,
        digest_in_worker: true,
        cursor: 0,
        digested: 0,
    };
    let Some(index) = slot.index.as_mut() else {
        return Err(Error::Internal("the feed index was not loaded".into()));
    };

    // An index just read from the store knows no raw bytes: digest from the start.
    pass.digest_in_worker = index.raw_at(0).is_none();
    pass.enumerate(index).await?;
    let candidates: Vec<(KeyHash, u64)> = index
        .iter()
        .filter(|(_, e)| e.is_live() && e.seen != pass.generation)
        .map(|(k, e)| (*k, e.row))
        .collect();
    let removals = pass.confirm(index, candidates, &mut slot.confirm).await?;
    for (key, reason) in &removals {
        if let Some(entry) = index.get_mut(&key.key_hash) {
            entry.content = IndexEntry::REMOVED;
            entry.raw = RawHash::UNKNOWN;
        }
        let state = EntityRow::removed(key.key_hash, *reason, &key.predicate, &key.key_members);
        pass.push(PendingRow {
            row: key.row,
            existed: true,
            state,
        });
    }
    pass.flush().await?;

    let live = index.values().filter(|e| e.is_live()).count() as u64;
    if live > shared.config.limits.max_entities_per_feed {
        return Err(Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "{} holds more than the limit of {} entities per feed; nothing was committed",
                input.set.name, shared.config.limits.max_entities_per_feed
            ),
        ));
    }
    let stored = slot.meta.as_ref().is_some_and(|m| !m.dropped);
    tracing::debug!(
        set = %input.set.name,
        entities = pass.tally.delivered,
        digested = pass.digested,
        written = pass.written,
        "enumerated"
    );
    if pass.written == 0 && stored {
        return Ok(Version(current));
    }
    let version = if pass.written > 0 {
        pending_version.0
    } else {
        current
    };
    let meta = FeedMeta {
        route: input.def.route.clone(),
        entity_set: input.def.entity_set.clone(),
        query: input.def.query.encoded(),
        scope: input.def.scope.0.clone(),
        version,
        live,
        last_used_ms: 0,
        dropped: false,
        next_row: pass.next_row,
    };
    let store = shared.store.clone();
    let meta_for_publish = meta.clone();
    let now = shared.clock.now_ms();
    tokio::task::spawn_blocking(move || store.publish(feed, &meta_for_publish, now)).await??;
    slot.meta = Some(meta);
    compact_in_background(shared, feed);
    let removed = removals.len() as u64;
    let upserts = pass.written.saturating_sub(removed);
    shared.metrics.entities_changed.inc_by(upserts);
    shared.metrics.entities_removed.inc_by(removed);
    shared.refresh_history.committed(input.feed, pass.written);
    tracing::debug!(
        set = %input.set.name,
        version,
        written = pass.written,
        removals = removals.len(),
        purged = settled.purged.len(),
        discarded = settled.discarded,
        "published"
    );
    Ok(Version(version))
}

/// Remove the states a publish superseded (the old states of changed rows) on the blocking pool,
/// apart from the refresh: the refresh's answer does not wait for it, and the next refresh hashes
/// its pages while it runs. A failure leaves the marks for the next run.
fn compact_in_background(shared: &Arc<Shared>, feed: FeedId) {
    if !shared.feeds.start_compaction(feed) {
        return;
    }
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        match shared.store.compact_superseded(feed) {
            Ok(removed) => {
                tracing::debug!(feed = %feed_label(feed), removed, "superseded states removed")
            }
            Err(e) => {
                tracing::warn!(feed = %feed_label(feed), error = %e, "removing superseded states failed; the next publish retries")
            }
        }
        shared.feeds.end_compaction(feed);
    });
}

/// An entity of a page as the hashing step leaves it.
struct PageEntity {
    /// Its byte range in the page.
    span: (usize, usize),
    /// The hash of its bytes as sent.
    raw: RawHash,
    /// Its key and content hash, when the hashing step made them (see [`digest_all`]).
    digest: Option<Result<Digest, EntityError>>,
}

/// The entities of a page, in page order.
type PageDigests = Vec<PageEntity>;

/// What the parse of a page yields besides its entities: the paging controls and where in the body
/// each entity lies, so that it can be hashed without parsing the page again.
struct Scanned {
    next_link: Option<String>,
    count: Option<u64>,
    spans: Vec<(usize, usize)>,
}

/// Parse a page and locate its entities in the body.
fn scan(body: &[u8]) -> Result<Scanned, PageError> {
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
type ChangedEntity = ((usize, usize), Digest, u64, bool);

/// The stored states of a page's new and changed entities, built from their raw bytes (compacted)
/// on the blocking pool.
fn rows_all(body: &[u8], changed: Vec<ChangedEntity>) -> Vec<PendingRow> {
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

/// The short, fixed-size identity of a link, for the set of links followed.
fn link_hash(url: &Url) -> [u8; 16] {
    let hash = blake3::hash(url.as_str().as_bytes());
    let mut out = [0; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    out
}

/// One page being keyed and hashed on the blocking pool.
struct HashingPage {
    body: Bytes,
    task: tokio::task::JoinHandle<PageDigests>,
}

impl HashingPage {
    fn start(body: Bytes, spans: Vec<(usize, usize)>, set: SetSpec, digest: bool) -> Self {
        let shared = body.clone();
        let task = tokio::task::spawn_blocking(move || digest_all(&shared, &spans, &set, digest));
        HashingPage { body, task }
    }
}

/// Hash the raw bytes of every entity (given as byte ranges) of a page, and with `digest` read its
/// key and hash its canonical content too. Without, only the entities that turn out not to be the
/// ones the index expects are digested later ([`Pass::apply_page`]): on a feed that changed little,
/// that skips the canonical writer, the key and the table lookup for nearly every entity.
fn digest_all(body: &[u8], spans: &[(usize, usize)], set: &SetSpec, digest: bool) -> PageDigests {
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

/// A short label of a feed for logs (the first bytes of its id, in hex).
fn feed_label(feed: FeedId) -> String {
    feed.0[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Pass<'_> {
    fn set_name(&self) -> &str {
        &self.input.set.name
    }

    fn key_names(&self) -> Vec<&str> {
        self.input.set.key.iter().map(|k| k.name.as_str()).collect()
    }

    /// The collection URL with a query.
    fn collection_url(&self, pairs: &[(String, String)]) -> Url {
        let mut url = self.input.service_root.clone();
        let path = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            encode_path(self.set_name())
        );
        url.set_path(&path);
        let q = encode_pairs(pairs);
        url.set_query(if q.is_empty() { None } else { Some(&q) });
        url
    }

    /// Read every page of the feed's upstream collection.
    async fn enumerate(&mut self, index: &mut Index) -> Result<(), Error> {
        let mut pairs = self.input.def.query.enumeration(&self.key_names());
        pairs.push(("$count".into(), "true".into()));
        // A refusal of the first request is about the client's query or credentials; later ones
        // are the upstream's fault. An upstream that cannot count or order may refuse what we
        // added to the query, so that is tried without before the client is blamed.
        match self.read_collection(&pairs, index, OnRefusal::PassOn).await {
            Err(Error::Rejected { status, .. }) if matches!(status.as_u16(), 400 | 501) => {
                tracing::info!(set = %self.set_name(), %status, "the upstream refused $count/$orderby; enumerating without them");
                pairs.retain(|(n, _)| n != "$count" && n != "$orderby");
                self.read_collection(&pairs, index, OnRefusal::PassOn)
                    .await?;
            }
            other => other?,
        }
        self.check_complete(&pairs, index).await
    }

    /// Read a collection query and every page after it.
    async fn read_collection(
        &mut self,
        pairs: &[(String, String)],
        index: &mut Index,
        on_refusal: OnRefusal,
    ) -> Result<(), Error> {
        // A pipeline: the next page is fetched while earlier ones are parsed and hashed on the
        // blocking pool (pages are up to `max_page_bytes`; parsing them on the threads that serve
        // requests would stall those), two pages hashing at a time so that both cores work.
        // Results are applied in page order, so that a key seen twice keeps its last state.
        let url = self.collection_url(pairs);
        self.links.insert(link_hash(&url));
        let mut next = Some(Prefetch::start(&self.fetcher, url, on_refusal));
        let mut hashing: VecDeque<HashingPage> = VecDeque::new();
        loop {
            let Some(mut fetch) = next.take() else {
                break;
            };
            let body = fetch.wait().await?;
            let scanned = self.scan_page(&body).await?;
            if let Some(link) = &scanned.next_link {
                let url = crate::upstream::resolve_link(&self.input.service_root, link)?;
                self.follow(&url)?;
                next = Some(Prefetch::start(&self.fetcher, url, OnRefusal::Fail));
            }
            hashing.push_back(HashingPage::start(
                body,
                scanned.spans,
                self.input.set.clone(),
                self.digest_in_worker,
            ));
            if hashing.len() >= 2 {
                self.apply_page(hashing.pop_front(), index).await?;
            }
        }
        while !hashing.is_empty() {
            self.apply_page(hashing.pop_front(), index).await?;
        }
        Ok(())
    }

    /// Queue a changed row for the store. A row that replaces one already stored lands at a random
    /// place of the table, and its write holds a whole copied page in the transaction until the
    /// commit, so it counts as a page beside its own bytes; new rows append and share pages.
    fn push(&mut self, row: PendingRow) {
        self.batch_bytes += row.state.len() + if row.existed { STORE_PAGE_BYTES } else { 0 };
        self.batch.push(row);
    }

    /// Note a nextLink about to be followed; one seen before in this refresh is a cycle, which would
    /// otherwise be read until the page cap.
    fn follow(&mut self, url: &Url) -> Result<(), Error> {
        if self.links.insert(link_hash(url)) {
            return Ok(());
        }
        tracing::warn!(set = %self.set_name(), link = %url, "the upstream's nextLink points back at a page already read");
        Err(Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "the upstream's paging of {} loops back to a page already read; nothing was committed",
                self.set_name()
            ),
        ))
    }

    /// Write the queued rows at the pending version once there are enough of them, so that memory
    /// holds a batch rather than every changed row.
    async fn flush_if_full(&mut self) -> Result<(), Error> {
        let streaming = self.progress.is_some() && !self.batch.is_empty();
        if streaming || self.batch.len() >= BATCH_ROWS || self.batch_bytes >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Write the queued rows at the pending version.
    async fn flush(&mut self) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.written += rows.len() as u64;
        let store = self.shared.store.clone();
        let feed = self.input.feed;
        let version = self.pending_version;
        tokio::task::spawn_blocking(move || store.write_pending(feed, version, &rows)).await??;
        if let Some(progress) = &self.progress {
            // Every row numbered so far was in this batch or an earlier one.
            let written = self.next_row;
            progress.send_modify(|p| {
                if let Some(p) = p {
                    p.written = written;
                }
            });
        }
        Ok(())
    }

    /// Wait for a page's hashes and note its entities in the diff. Entities whose raw bytes are
    /// those of the entry the index expects next are unchanged; the others are digested (on the
    /// blocking pool, unless the hashing step did already) and looked up by key.
    async fn apply_page(
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

    /// Parse an upstream page on the blocking pool and count it.
    async fn scan_page(&mut self, body: &Bytes) -> Result<Scanned, Error> {
        let shared = body.clone();
        let scanned = tokio::task::spawn_blocking(move || scan(&shared)).await?;
        let scanned = scanned.map_err(|e| self.unreadable_page(e))?;
        self.count_page(&scanned);
        Ok(scanned)
    }

    /// Count a parsed page.
    fn count_page(&mut self, scanned: &Scanned) {
        self.tally.page(scanned.spans.len() as u64, scanned.count);
        self.shared
            .metrics
            .entities_enumerated
            .inc_by(scanned.spans.len() as u64);
        self.shared.metrics.upstream_pages.inc();
    }

    /// The error for a page that is not an OData collection.
    fn unreadable_page(&self, e: PageError) -> Error {
        tracing::warn!(set = %self.set_name(), error = %e, "unreadable upstream page");
        Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "the upstream sent an unreadable page of {}; nothing was committed",
                self.set_name()
            ),
        )
    }

    /// Cross-check the enumeration with the upstream's `@odata.count`. An upstream that stops early
    /// without a nextLink (silent truncation, or a silent cap on every answer) is read on with
    /// `$skip`/`$top` until the count is reached or a round comes back empty; the page cap and the
    /// refresh timeout bound how long. Rows that went while the enumeration ran leave a shortfall
    /// the read-on cannot fill: that is churn, and the removal confirmation decides about those
    /// rows (C27). Only an upstream that keeps delivering rows it already sent fails the refresh.
    async fn check_complete(
        &mut self,
        pairs: &[(String, String)],
        index: &mut Index,
    ) -> Result<(), Error> {
        let step = u64::from(self.shared.config.upstream.page_size);
        let mut read_on = ReadOn::new(&self.tally, step);
        let mut verdict = read_on.first(&self.tally);
        if verdict != Verdict::Complete {
            tracing::warn!(
                set = %self.set_name(),
                reported = self.tally.reported,
                delivered = self.tally.distinct,
                "the upstream delivered fewer entities than it counted; reading on with $skip"
            );
        }
        while let Verdict::ReadOn { skip, top } = verdict {
            let before = self.tally;
            let mut more: Vec<(String, String)> = pairs
                .iter()
                .filter(|(n, _)| n != "$count")
                .cloned()
                .collect();
            more.push(("$skip".into(), skip.to_string()));
            more.push(("$top".into(), top.to_string()));
            self.read_collection(&more, index, OnRefusal::Fail).await?;
            verdict = read_on.after_round(
                &self.tally,
                self.tally.delivered.saturating_sub(before.delivered),
                self.tally.distinct.saturating_sub(before.distinct),
            );
        }
        match verdict {
            Verdict::Truncated => Err(Error::upstream(
                UpstreamFailure::BadAnswer,
                format!(
                    "the upstream counted {} entities of {} but delivered {}, even when asked past them; nothing was committed",
                    self.tally.reported.unwrap_or(0),
                    self.set_name(),
                    self.tally.distinct
                ),
            )),
            Verdict::Explained => {
                tracing::info!(set = %self.set_name(), reported = self.tally.reported, delivered = self.tally.distinct, "the upstream holds fewer entities than it counted; rows went while it was read");
                Ok(())
            }
            Verdict::Complete | Verdict::ReadOn { .. } => Ok(()),
        }
    }

    /// The error for an entity that cannot be keyed or hashed.
    fn unreadable(&self, e: EntityError) -> Error {
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
    async fn apply_digests(
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
            let seen_before = index
                .get(&digest.key_hash)
                .is_some_and(|e| e.seen == self.generation);
            if let Some((row, existed)) = self.note(&digest, entity.raw, index)? {
                repeated |= seen_before;
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
    /// number). Returns the entity's row, and whether that row had a published state before this
    /// refresh, when the entity is new or changed and so is to be written.
    fn note(
        &mut self,
        digest: &Digest,
        raw: RawHash,
        index: &mut Index,
    ) -> Result<Option<(u64, bool)>, Error> {
        match index.find_mut(&digest.key_hash) {
            Some((position, entry)) => {
                // The upstream's order continues after it (see `expect_in_order`).
                self.cursor = position + 1;
                if entry.seen != self.generation {
                    self.tally.sighting();
                }
                entry.seen = self.generation;
                entry.raw = raw;
                if entry.content == digest.content {
                    return Ok(None);
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
                Ok(Some((entry.row, entry.row < self.first_new_row)))
            }
            None => {
                self.tally.sighting();
                let row = self.next_row;
                self.next_row += 1;
                index
                    .insert(
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
                Ok(Some((row, false)))
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

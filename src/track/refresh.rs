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
//!
//! This module runs a refresh and commits it; `enumerate` reads the upstream's pages, `page`
//! parses and hashes one, `diff` compares it with the index, `confirm` looks removal candidates up
//! upstream, and `tally` checks what was read against the upstream's count.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use url::Url;

use crate::Shared;
use crate::error::{Error, UpstreamFailure};
use crate::store::{EntityRow, FeedMeta, PendingRow, StoreError};

use super::feed::{
    FeedDef, FeedId, Generation, Index, IndexEntry, LastRefresh, LoadProgress, ProgressSender,
    Published, SetSpec, Slot, Version,
};
use super::hash::KeyHash;
use super::index::RawHash;

mod confirm;
mod diff;
mod enumerate;
mod page;
pub mod tally;

use super::fetch::Fetcher;
use tally::Tally;

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
    /// With a store shared by replicas: a refresh another replica ended less than this long ago
    /// is taken as this one's (`max_age`, or for the schedule most of the interval).
    pub replica_max_age: Duration,
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
    // Counted until everything of it is dropped, the store included: a stopping gateway waits for
    // it, so the store is closed once the gateway has stopped.
    let counted = shared.feeds.refresh_task();
    // In the span of the request that started it, so that its log lines carry that request id.
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let started = Instant::now();
        shared.feeds.refresh_started(input.feed);
        let mut elsewhere = None;
        let outcome = failing_on_panic(run(&shared, &mut guard, &input, &mut elsewhere)).await;
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
        // A refresh another replica ran is as old as it is, not as this request.
        let age = elsewhere.unwrap_or_default();
        let finished_at = SystemTime::now()
            .checked_sub(age)
            .unwrap_or_else(SystemTime::now);
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
        let now = tokio::time::Instant::now();
        let finished = now.checked_sub(age).unwrap_or(now);
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
        let fresh = outcome.map(|version| Fresh {
            version,
            finished_at,
            by_this_request: true,
        });
        drop(guard);
        drop(shared);
        drop(counted);
        fresh
    }));
    task.await?
}

/// Runs a refresh so that a panic in it ends it as a failed refresh: the bookkeeping after it still
/// runs, so readers of a streamed first load are told it failed instead of waiting for their
/// timeout, and the slot's index, which may hold what the refresh saw but never published, is
/// dropped rather than compared against by the next refresh.
async fn failing_on_panic<T>(
    refresh: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(refresh)
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            tracing::error!(panic = %what, "a refresh panicked; it ends as failed");
            Err(Error::Internal(format!("the refresh failed: {what}")))
        })
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
    /// Whether nextLinks are followed as the upstream wrote them, `$count` included: set when an
    /// upstream refused a link without it. Otherwise `$count=true` is taken out of nextLinks: the
    /// first page reports the count, and the upstream counts once per refresh rather than once per
    /// page (SAP CAP counts the whole collection again for every page that asks).
    count_in_links: bool,
    /// The version this refresh writes at and publishes if it finds a difference.
    pending_version: Version,
    /// Rows numbered from here on were first seen by this refresh.
    first_new_row: u64,
    /// The number the next new key gets.
    next_row: u64,
    /// Changed rows not yet written, and their size.
    batch: Vec<PendingRow>,
    batch_bytes: usize,
    /// Rows written at the pending version so far (or being written).
    written: u64,
    /// The batch being written while the next pages are read: at most one, so that a refresh holds
    /// two batches at most and writes them in order.
    in_flight: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
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

/// Refresh the feed. Where another replica's refresh is taken instead, `elsewhere` says how long
/// ago it ended.
async fn run(
    shared: &Arc<Shared>,
    slot: &mut Slot,
    input: &RefreshInput,
    elsewhere: &mut Option<Duration>,
) -> Result<Version, Error> {
    let now = shared.clock.now_ms();
    let purge_before = super::retention::purge_before_ms(now, shared.config.token_ttl);
    let feed = input.feed;
    // With a store shared by several replicas, one refresh of the feed at a time across them; then
    // whatever another replica published since this slot last looked is what to compare with.
    let before = if shared.store.is_shared() {
        let store = shared.store.clone();
        Some(tokio::task::spawn_blocking(move || store.feed_and_refreshes(feed)).await??)
    } else {
        None
    };
    let store = shared.store.clone();
    let _lock = tokio::task::spawn_blocking(move || store.lock_feed(feed)).await??;
    if let Some((_, before)) = before {
        let store = shared.store.clone();
        let (stored, refreshes) =
            tokio::task::spawn_blocking(move || store.feed_and_refreshes(feed)).await??;
        if let Some(meta) = &stored
            && !meta.dropped
            && slot.meta.as_ref().map(|m| m.version) != Some(meta.version)
        {
            catch_up(shared, slot, feed, meta).await?;
        }
        // Another replica refreshed the feed while this one waited for the lock, publishing or
        // finding nothing new: its refresh was running when this request asked and ended after,
        // which is what joining a running refresh of this process gives too (single flight), so
        // its version is the answer. So is one it ended recently enough for this request.
        let age = Duration::from_millis(shared.clock.now_ms().saturating_sub(refreshes.at_ms));
        let waited_for = refreshes.count != before.count;
        let young = refreshes.count > 0 && age < input.replica_max_age;
        if (waited_for || young)
            && let Some(meta) = stored.filter(|m| !m.dropped)
        {
            *elsewhere = Some(if waited_for { Duration::ZERO } else { age });
            return Ok(Version(meta.version));
        }
    }
    let store = shared.store.clone();
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
        count_in_links: false,
        pending_version,
        first_new_row: next_row,
        next_row,
        batch: Vec::new(),
        batch_bytes: 0,
        written: 0,
        in_flight: None,
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
    let confirm = &mut slot.confirm;
    let compared = async {
        pass.enumerate(index).await?;
        let candidates: Vec<(KeyHash, u64)> = index
            .iter()
            .filter(|(_, e)| e.is_live() && e.seen != pass.generation)
            .map(|(k, e)| (*k, e.row))
            .collect();
        let removals = pass.confirm(index, candidates, confirm).await?;
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
        pass.flush_all().await?;
        Ok::<_, Error>(removals)
    }
    .await;
    if compared.is_err() {
        // Nothing of this refresh may land after it ended: the next one's settle discards what it
        // wrote only once it is all written.
        pass.abandon_write().await;
    }
    let removals = compared?;

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
        if shared.store.is_shared() {
            // Replicas waiting for this lock take this refresh as theirs.
            let store = shared.store.clone();
            let now = shared.clock.now_ms();
            tokio::task::spawn_blocking(move || store.count_unchanged_refresh(feed, now)).await??;
        }
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

/// A replica's index takes the changes another replica published when there are fewer than one
/// per this many entries it holds; with more, it is read again whole.
const CATCH_UP_SHARE: u64 = 4;

/// Rows of changes read per call while catching up.
const CATCH_UP_PAGE: usize = 2000;

/// Bring this replica's index of `feed` up to `stored`, a version another replica published, from
/// the changes since the version the index holds rather than by reading every row again. The
/// index is read whole instead (by the caller, which finds it gone) when there is none to start
/// from, the history of its version is purged, or a large part of the feed changed.
async fn catch_up(
    shared: &Arc<Shared>,
    slot: &mut Slot,
    feed: FeedId,
    stored: &FeedMeta,
) -> Result<(), Error> {
    let held = slot
        .meta
        .as_ref()
        .filter(|m| !m.dropped)
        .map(|m| Version(m.version));
    let (Some(held), Some(mut index)) = (held, slot.index.take()) else {
        slot.index = None;
        slot.meta = None;
        return Ok(());
    };
    let upto = Version(stored.version);
    let store = shared.store.clone();
    let caught = tokio::task::spawn_blocking(move || {
        if held >= upto || !store.was_published(feed, held)? {
            return Ok::<_, Error>(None);
        }
        let changes = store.delta_count(feed, held, upto)?;
        if changes.saturating_mul(CATCH_UP_SHARE) > index.len() as u64 {
            return Ok(None);
        }
        let mut after = None;
        let mut seen = 0u64;
        loop {
            let page = store.delta_page(feed, held, upto, after, CATCH_UP_PAGE)?;
            let Some(&(version, row, _)) = page.last() else {
                break;
            };
            after = Some((version, row));
            for (_, row, state) in page {
                seen += 1;
                let content = if state.removed_reason().is_some() {
                    IndexEntry::REMOVED
                } else {
                    state.content()
                };
                match index.get_mut(&state.key_hash()) {
                    Some(entry) => {
                        entry.row = row;
                        entry.content = content;
                        // The raw bytes are unknown: the next refresh digests this entity.
                        entry.raw = RawHash::UNKNOWN;
                    }
                    None => {
                        let entry = IndexEntry::loaded(row, content);
                        if index.insert(state.key_hash(), entry).is_err() {
                            return Ok(None);
                        }
                    }
                }
            }
            // The count bounds the loop, against a store that would page on past it.
            if seen > changes {
                return Ok(None);
            }
        }
        Ok(Some((index, seen)))
    })
    .await??;
    match caught {
        Some((index, rows)) => {
            tracing::debug!(feed = %feed_label(feed), from = held.0, to = upto.0, rows, "index caught up from the changes");
            shared.metrics.index_catch_ups.inc();
            slot.index = Some(index);
            slot.meta = Some(stored.clone());
        }
        None => {
            slot.index = None;
            slot.meta = None;
        }
    }
    Ok(())
}

/// Remove the states a publish superseded (the old states of changed rows) on the blocking pool,
/// apart from the refresh: the refresh's answer does not wait for it, and the next refresh hashes
/// its pages while it runs. A failure leaves the marks for the next run.
fn compact_in_background(shared: &Arc<Shared>, feed: FeedId) {
    let Some(claim) = shared.feeds.start_compaction(feed) else {
        return;
    };
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || {
        let outcome = store.compact_superseded(feed);
        // The store before the claim: a shutdown that waited for the claims finds it closed.
        drop(store);
        match outcome {
            Ok(removed) => {
                tracing::debug!(feed = %feed_label(feed), removed, "superseded states removed")
            }
            Err(e) => {
                tracing::warn!(feed = %feed_label(feed), error = %e, "removing superseded states failed; the next publish retries")
            }
        }
        drop(claim);
    });
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

    /// Queue a changed row for the store; the batch's size counts what writing it costs.
    fn push(&mut self, row: PendingRow) {
        self.batch_bytes += row.write_cost();
        self.batch.push(row);
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

    /// Start writing the queued rows at the pending version, once the batch before them is
    /// written: the store writes one batch while the refresh reads and hashes the next pages.
    async fn flush(&mut self) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.written_so_far().await?;
        let rows = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.written += rows.len() as u64;
        let store = self.shared.store.clone();
        let feed = self.input.feed;
        let version = self.pending_version;
        // Every row numbered so far is in this batch or an earlier one: announced to a first read
        // served meanwhile as soon as they are written.
        let written = self.next_row;
        let progress = self.progress.clone();
        let task = tokio::task::spawn_blocking(move || {
            store.write_pending(feed, version, &rows)?;
            if let Some(progress) = progress {
                progress.send_modify(|p| {
                    if let Some(p) = p {
                        p.written = written;
                    }
                });
            }
            Ok(())
        });
        self.in_flight = Some(task);
        Ok(())
    }

    /// Write the queued rows and wait until every batch is written.
    async fn flush_all(&mut self) -> Result<(), Error> {
        self.flush().await?;
        self.written_so_far().await
    }

    /// Wait for the batch being written.
    async fn written_so_far(&mut self) -> Result<(), Error> {
        match self.in_flight.take() {
            Some(task) => Ok(task.await??),
            None => Ok(()),
        }
    }

    /// The refresh failed: wait for the batch being written, whatever its outcome, so that none of
    /// its rows lands after the refresh ended.
    async fn abandon_write(&mut self) {
        if let Some(task) = self.in_flight.take() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refresh_that_panics_ends_as_a_failed_refresh_with_its_message() {
        let outcome: Result<Version, Error> = failing_on_panic(async {
            let page: Vec<u8> = Vec::new();
            if page.is_empty() {
                panic!("page {} out of range", 3);
            }
            Ok(Version(1))
        })
        .await;
        match outcome {
            Err(Error::Internal(message)) => assert!(message.contains("page 3 out of range")),
            other => panic!("expected an internal error, got {other:?}"),
        }
        let literal: Result<Version, Error> =
            failing_on_panic(async { panic!("a literal message") }).await;
        assert!(matches!(literal, Err(Error::Internal(m)) if m.contains("a literal message")));
    }

    #[tokio::test]
    async fn a_refresh_that_does_not_panic_keeps_its_outcome() {
        assert_eq!(
            failing_on_panic(async { Ok::<_, Error>(Version(7)) })
                .await
                .unwrap(),
            Version(7)
        );
        let failed = failing_on_panic(async {
            Err::<Version, _>(Error::Internal("the upstream said no".into()))
        })
        .await;
        assert!(matches!(failed, Err(Error::Internal(m)) if m == "the upstream said no"));
    }
}

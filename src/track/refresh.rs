//! Refresh: enumerate the upstream collection, key and hash every entity, diff against the feed's
//! in-memory index, confirm every candidate removal upstream (C27), and commit the result as one new
//! version in one write transaction. Anything incomplete — a failed page, a timeout, malformed JSON,
//! an entity without its key, a link off the upstream — fails the refresh and commits nothing, so
//! every token stays valid (C28, C29).
//!
//! Concurrent requests on one feed share one refresh (single-flight): the slot lock is held by the
//! refresh, which runs in its own task so a client hanging up does not cancel it halfway.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use url::Url;

use crate::Shared;
use crate::error::{Error, UpstreamFailure};
use crate::odata::page::Page;
use crate::odata::query::{encode_pairs, encode_path};
use crate::store::{FeedMeta, RowChange};

use super::feed::{FeedDef, FeedId, IndexEntry, LastRefresh, SetSpec, Slot, Version};
use super::hash::{ContentHash, Digest, EntityError, Hasher, KeyHash};

mod confirm;
mod fetch;

pub use confirm::ConfirmStrategy;
use fetch::Prefetch;
pub use fetch::forwarded_headers;
pub(crate) use fetch::{Fetcher, OnRefusal};

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
    let task = tokio::spawn(async move {
        let started = Instant::now();
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
        let finished_at = SystemTime::now();
        let elapsed = started.elapsed();
        shared
            .metrics
            .refresh_seconds
            .observe(elapsed.as_secs_f64());
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
        guard.last = Some(LastRefresh {
            finished: tokio::time::Instant::now(),
            finished_at,
            outcome: outcome.clone(),
            background: input.background,
        });
        outcome.map(|version| Fresh {
            version,
            finished_at,
            by_this_request: true,
        })
    });
    task.await?
}

/// A changed or new entity waiting for the commit.
struct Pending {
    content: ContentHash,
    predicate: String,
    key_members: Vec<u8>,
    body: Vec<u8>,
}

/// The state of one refresh while it runs.
struct Pass<'a> {
    shared: &'a Shared,
    input: &'a RefreshInput,
    /// This refresh's number; index entries it sees are stamped with it.
    generation: u64,
    pending: HashMap<KeyHash, Pending>,
    hasher: Hasher,
    /// GETs of this refresh, with its retry budget.
    fetcher: Fetcher,
    pages: u64,
    /// Entities received from the upstream, duplicates included.
    delivered: u64,
    /// Distinct keys seen by this refresh.
    distinct: u64,
    /// The latest `@odata.count` the upstream reported, if it reports one.
    reported: Option<u64>,
    /// On a feed's first load, new rows are written to the store in batches as they come (at the
    /// version the final commit will give the feed) instead of being held in memory: no token
    /// names the feed yet, so no reader can see a partial load. `None` on later refreshes.
    staging_version: Option<Version>,
    /// Rows written so far by staging.
    staged: u64,
}

/// Rows held in memory before a first load writes them to the store.
const STAGE_BATCH: usize = 20_000;

async fn run(
    shared: &Arc<Shared>,
    slot: &mut Slot,
    input: &RefreshInput,
) -> Result<Version, Error> {
    if slot.index.is_none() {
        let store = shared.store.clone();
        let feed = input.feed;
        let (meta, live) = tokio::task::spawn_blocking(move || {
            Ok::<_, Error>((store.feed(feed)?, store.live_hashes(feed)?))
        })
        .await??;
        let index = live
            .into_iter()
            .map(|(k, content)| (k, IndexEntry { content, seen: 0 }))
            .collect();
        slot.index = Some(index);
        slot.meta = meta;
    }
    slot.refreshes += 1;
    let mut pass = Pass {
        shared,
        input,
        generation: slot.refreshes,
        pending: HashMap::new(),
        hasher: Hasher::default(),
        fetcher: Fetcher::new(shared.clone(), input.headers.clone(), &input.set.name),
        pages: 0,
        delivered: 0,
        distinct: 0,
        reported: None,
        staging_version: match &slot.meta {
            Some(m) if !m.dropped => None,
            other => Some(Version(other.as_ref().map_or(0, |m| m.version) + 1)),
        },
        staged: 0,
    };
    let Some(index) = slot.index.as_mut() else {
        return Err(Error::Internal("the feed index was not loaded".into()));
    };

    pass.enumerate(index).await?;
    let candidates: Vec<KeyHash> = index
        .iter()
        .filter(|(_, e)| e.seen != pass.generation)
        .map(|(k, _)| *k)
        .collect();
    let removals = pass.confirm(index, candidates, &mut slot.confirm).await?;

    let new_keys = pass
        .pending
        .keys()
        .filter(|k| !index.contains_key(k))
        .count() as u64;
    let live = index.len() as u64 + new_keys - removals.len() as u64;
    if live > shared.config.limits.max_entities_per_feed {
        return Err(Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "{} holds more than the limit of {} entities per feed; nothing was committed",
                input.set.name, shared.config.limits.max_entities_per_feed
            ),
        ));
    }
    let current = slot.meta.as_ref().map(|m| m.version).unwrap_or(0);
    let stored = slot.meta.as_ref().is_some_and(|m| !m.dropped);
    if pass.pending.is_empty() && removals.is_empty() && stored {
        return Ok(Version(current));
    }
    // A first load that wrote rows ahead (now, or before a crash) commits them as a version too.
    let changed = !pass.pending.is_empty()
        || !removals.is_empty()
        || pass.staged > 0
        || (!stored && !index.is_empty());
    let version = if changed { current + 1 } else { current };
    let meta = FeedMeta {
        route: input.def.route.clone(),
        entity_set: input.def.entity_set.clone(),
        query: input.def.query.encoded(),
        scope: input.def.scope.0.clone(),
        version,
        live,
        last_used_ms: 0,
        dropped: false,
    };
    let (mut changes, index_updates) = pass.drain_pending();
    for (key_hash, reason) in &removals {
        changes.push(RowChange::Remove {
            key_hash: *key_hash,
            reason: *reason,
        });
    }
    let now = shared.clock.now_ms();
    let purge_before = super::retention::purge_before_ms(now, shared.config.token_ttl);
    let store = shared.store.clone();
    let feed = input.feed;
    let meta_for_commit = meta.clone();
    let stats = tokio::task::spawn_blocking(move || {
        store.commit(feed, &meta_for_commit, &changes, now, purge_before)
    })
    .await??;
    for (key_hash, content) in index_updates {
        index.insert(
            key_hash,
            IndexEntry {
                content,
                seen: pass.generation,
            },
        );
    }
    for (key_hash, _) in &removals {
        index.remove(key_hash);
    }
    slot.meta = Some(meta);
    shared.metrics.entities_changed.inc_by(stats.changed);
    shared.metrics.tombstones_purged.inc_by(stats.purged);
    tracing::debug!(
        set = %input.set.name,
        version,
        upserts = stats.changed.saturating_sub(removals.len() as u64),
        removals = removals.len(),
        purged = stats.purged,
        "committed"
    );
    Ok(Version(version))
}

/// The digest of each entity of a page, by the entity's byte range in the page.
type PageDigests = Vec<((usize, usize), Result<Digest, EntityError>)>;

/// One page being keyed and hashed on the blocking pool.
struct HashingPage {
    body: Bytes,
    task: tokio::task::JoinHandle<PageDigests>,
}

impl HashingPage {
    fn start(body: Bytes, spans: Vec<(usize, usize)>, set: SetSpec) -> Self {
        let shared = body.clone();
        let task = tokio::task::spawn_blocking(move || digest_all(&shared, &spans, &set));
        HashingPage { body, task }
    }
}

/// Key and hash every entity (given as byte ranges) of a page.
fn digest_all(body: &[u8], spans: &[(usize, usize)], set: &SetSpec) -> PageDigests {
    let mut hasher = Hasher::default();
    spans
        .iter()
        .map(|&(a, b)| ((a, b), hasher.digest(&body[a..b], &set.key, &set.ignore)))
        .collect()
}

/// A short label of a feed for logs (the first bytes of its id, in hex).
fn feed_label(feed: FeedId) -> String {
    feed.0[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    async fn enumerate(&mut self, index: &mut HashMap<KeyHash, IndexEntry>) -> Result<(), Error> {
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
        index: &mut HashMap<KeyHash, IndexEntry>,
        on_refusal: OnRefusal,
    ) -> Result<(), Error> {
        // A pipeline: the next page is fetched while earlier ones are hashed on the blocking pool
        // (off the threads that serve requests), two pages at a time so that both cores work.
        // Results are applied in page order, so that a key seen twice keeps its last state.
        let first = Prefetch::start(&self.fetcher, self.collection_url(pairs), on_refusal);
        let mut next = Some(first);
        let mut hashing: VecDeque<HashingPage> = VecDeque::new();
        loop {
            let Some(mut fetch) = next.take() else {
                break;
            };
            let body = fetch.wait().await?;
            let page = self.parse_page(&body)?;
            if let Some(link) = &page.next_link {
                let url = crate::upstream::resolve_link(&self.input.service_root, link)?;
                next = Some(Prefetch::start(&self.fetcher, url, OnRefusal::Fail));
            }
            let spans: Vec<(usize, usize)> = page
                .entities
                .iter()
                .map(|raw| {
                    // Borrowed raw values point into the body they were parsed from.
                    let start = (raw.get().as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
                    (start, start.saturating_add(raw.get().len()))
                })
                .filter(|&(_, end)| end <= body.len())
                .collect();
            if spans.len() != page.entities.len() {
                return Err(Error::Internal(
                    "a parsed entity lies outside its page".into(),
                ));
            }
            drop(page);
            hashing.push_back(HashingPage::start(body, spans, self.input.set.clone()));
            if hashing.len() >= 2 {
                self.apply_page(hashing.pop_front(), index).await?;
            }
        }
        while !hashing.is_empty() {
            self.apply_page(hashing.pop_front(), index).await?;
        }
        Ok(())
    }

    /// The pending rows as changes to write, and the index entries they become.
    fn drain_pending(&mut self) -> (Vec<RowChange>, Vec<(KeyHash, ContentHash)>) {
        let mut changes = Vec::with_capacity(self.pending.len());
        let mut index_updates = Vec::with_capacity(self.pending.len());
        for (key_hash, p) in self.pending.drain() {
            index_updates.push((key_hash, p.content));
            changes.push(RowChange::Upsert {
                key_hash,
                content: p.content,
                predicate: p.predicate,
                key_members: p.key_members,
                body: p.body,
            });
        }
        (changes, index_updates)
    }

    /// On a first load, write what is pending to the store once there is enough of it, so that
    /// memory holds a batch rather than the whole collection. The index learns the rows at once,
    /// so a key seen again later in the enumeration is compared with what was written.
    async fn stage_if_large(
        &mut self,
        index: &mut HashMap<KeyHash, IndexEntry>,
    ) -> Result<(), Error> {
        let Some(version) = self.staging_version else {
            return Ok(());
        };
        if self.pending.len() < STAGE_BATCH {
            return Ok(());
        }
        let (rows, index_updates) = self.drain_pending();
        let store = self.shared.store.clone();
        let feed = self.input.feed;
        let written = rows.len() as u64;
        tokio::task::spawn_blocking(move || store.stage(feed, version, &rows)).await??;
        for (key_hash, content) in index_updates {
            index.insert(
                key_hash,
                IndexEntry {
                    content,
                    seen: self.generation,
                },
            );
        }
        self.staged += written;
        Ok(())
    }

    /// Wait for a page's digests and note them in the diff.
    async fn apply_page(
        &mut self,
        page: Option<HashingPage>,
        index: &mut HashMap<KeyHash, IndexEntry>,
    ) -> Result<(), Error> {
        let Some(mut page) = page else { return Ok(()) };
        let digests = (&mut page.task).await?;
        for (span, digest) in digests {
            let digest = digest.map_err(|e| self.unreadable(e))?;
            self.apply(digest, &page.body[span.0..span.1], index);
        }
        self.stage_if_large(index).await
    }

    /// Parse an upstream page and count it.
    fn parse_page<'b>(&mut self, body: &'b Bytes) -> Result<Page<'b>, Error> {
        let page = Page::parse(body).map_err(|e| {
            tracing::warn!(set = %self.set_name(), error = %e, "unreadable upstream page");
            Error::upstream(
                UpstreamFailure::BadAnswer,
                format!(
                    "the upstream sent an unreadable page of {}; nothing was committed",
                    self.set_name()
                ),
            )
        })?;
        self.pages += 1;
        self.delivered += page.entities.len() as u64;
        self.reported = page.count.or(self.reported);
        self.shared.metrics.upstream_pages.inc();
        Ok(page)
    }

    /// Cross-check the enumeration with the upstream's `@odata.count`. An upstream that stops early
    /// without a nextLink (silent truncation) is read on with `$skip`/`$top`; if entities are still
    /// missing beyond what concurrent writes explain, the refresh fails rather than miss changes.
    async fn check_complete(
        &mut self,
        pairs: &[(String, String)],
        index: &mut HashMap<KeyHash, IndexEntry>,
    ) -> Result<(), Error> {
        let Some(reported) = self.reported else {
            return Ok(());
        };
        if self.distinct >= reported {
            return Ok(());
        }
        tracing::warn!(
            set = %self.set_name(),
            reported,
            delivered = self.distinct,
            "the upstream delivered fewer entities than it counted; reading on with $skip"
        );
        let step = u64::from(self.shared.config.upstream.page_size);
        let mut offset = self.delivered;
        let rounds = (reported - self.distinct) / step + 3;
        for _ in 0..rounds {
            let (distinct, delivered) = (self.distinct, self.delivered);
            let mut more: Vec<(String, String)> = pairs
                .iter()
                .filter(|(n, _)| n != "$count")
                .cloned()
                .collect();
            more.push(("$skip".into(), offset.to_string()));
            more.push(("$top".into(), step.to_string()));
            self.read_collection(&more, index, OnRefusal::Fail).await?;
            if self.delivered == delivered || self.distinct == distinct {
                break;
            }
            offset += self.delivered - delivered;
        }
        let shortfall = reported.saturating_sub(self.distinct);
        if shortfall == 0 {
            return Ok(());
        }
        // Rows inserted while offset paging ran can be passed over once; a few are tolerated (the
        // next refresh sees them), a real truncation is not.
        if shortfall * 100 > reported {
            return Err(Error::upstream(
                UpstreamFailure::BadAnswer,
                format!(
                    "the upstream counted {reported} entities of {} but delivered {}; nothing was committed",
                    self.set_name(),
                    self.distinct
                ),
            ));
        }
        tracing::warn!(set = %self.set_name(), reported, delivered = self.distinct, "a few counted entities were not delivered; the next refresh will look again");
        Ok(())
    }

    /// Parse one page, observe its entities, and return its nextLink. With `found`, the key hashes
    /// of the entities seen are collected there too.
    fn read_page(
        &mut self,
        body: &Bytes,
        index: &mut HashMap<KeyHash, IndexEntry>,
        mut found: Option<&mut HashSet<KeyHash>>,
    ) -> Result<Option<String>, Error> {
        let page = self.parse_page(body)?;
        for raw in &page.entities {
            let key_hash = self.observe(raw.get().as_bytes(), index)?;
            if let Some(found) = found.as_deref_mut() {
                found.insert(key_hash);
            }
        }
        Ok(page.next_link)
    }

    /// Key and hash one upstream entity and note it in the diff. A key seen twice in one refresh
    /// counts once; its last state wins. Returns the key hash.
    fn observe(
        &mut self,
        raw: &[u8],
        index: &mut HashMap<KeyHash, IndexEntry>,
    ) -> Result<KeyHash, Error> {
        let digest = self
            .hasher
            .digest(raw, &self.input.set.key, &self.input.set.ignore)
            .map_err(|e| self.unreadable(e))?;
        let key_hash = digest.key_hash;
        self.apply(digest, raw, index);
        Ok(key_hash)
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

    /// Note one hashed entity in the diff.
    fn apply(&mut self, digest: Digest, raw: &[u8], index: &mut HashMap<KeyHash, IndexEntry>) {
        let (unchanged, first_sighting) = match index.get_mut(&digest.key_hash) {
            Some(entry) => {
                let first = entry.seen != self.generation;
                entry.seen = self.generation;
                (entry.content == digest.content, first)
            }
            None => (false, !self.pending.contains_key(&digest.key_hash)),
        };
        if first_sighting {
            self.distinct += 1;
        }
        if unchanged {
            self.pending.remove(&digest.key_hash);
        } else {
            let mut body = Vec::with_capacity(raw.len());
            crate::odata::json::write_compact(raw, &mut body);
            self.pending.insert(
                digest.key_hash,
                Pending {
                    content: digest.content,
                    predicate: digest.key.predicate,
                    key_members: digest.key.members,
                    body,
                },
            );
        }
    }
}

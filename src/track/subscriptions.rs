//! Webhook subscriptions: a client that wants to be told when a feed changes, without holding a
//! request open, registers a notification URL for a delta link it holds (`api`: the
//! `$subscriptions` resource of each route). When a background refresh finds the feed changed,
//! the gateway POSTs a small JSON notification to the URL: which subscription, the delta link to
//! follow, when — never entity data; the delta link stays the truth, so a duplicate is harmless.
//!
//! Delivery reuses the callback machinery (`callback::send_with_retries`: bounded attempts with a
//! doubling backoff). A notification given up is counted, and the next one delivered carries a
//! `missed` event first, so the client knows it may have slept through changes and reads its
//! delta link. At most one delivery per subscription runs at a time; changes that come meanwhile
//! are folded into the next one.
//!
//! Subscriptions are stored (the store's `subscriptions` table) and survive restarts; credentials
//! are not stored. A subscribed feed stays on the schedule however long no client asks for it, as
//! long as it is refreshed with credentials the upstream accepts: a `shared` feed with the route's
//! own, a per-identity feed with those of the request that created (or renewed) the
//! subscription. After a restart, a per-identity feed is back on the schedule once a request of
//! its client (a delta, or a renewal) brings credentials again.

pub(crate) mod api;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, header};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::Shared;
use crate::body;
use crate::error::Error;
use crate::odata::datetime::format_unix_ms;
use crate::store::SubscriptionRow;

use super::callback::send_with_retries;
use super::feed::{FeedDef, FeedId, Scope, Version};
use super::retention::record_issued;
use super::token::{Token, TokenKind};

/// A subscription's id: 128 random bits, written as 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SubscriptionId(pub [u8; 16]);

impl SubscriptionId {
    /// A new random id.
    fn random() -> Result<Self, Error> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| Error::Internal(format!("no randomness for a subscription id: {e}")))?;
        Ok(SubscriptionId(id))
    }

    /// The id as written in URLs and bodies.
    pub(crate) fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// An id read from a URL; `None` when it is not 32 hex digits.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(SubscriptionId(id))
    }
}

/// The subscriptions, in memory and in the store.
pub(crate) struct Subscriptions {
    entries: Mutex<HashMap<SubscriptionId, Entry>>,
}

/// One subscription and its delivery state.
struct Entry {
    /// What is stored.
    row: SubscriptionRow,
    /// A delivery of this subscription is under way.
    delivering: bool,
    /// The newest version of its feed seen by a background refresh.
    latest: Version,
    /// The version whose notification was last given up: only a newer one is tried again, so
    /// that a receiver that is down is not called on every refresh.
    gave_up: Version,
}

impl Entry {
    /// Whether the feed has changed past what the subscription was told, and not only up to a
    /// version whose notification was given up.
    fn due(&self) -> bool {
        Version(self.row.since) < self.latest && self.gave_up < self.latest
    }
}

/// Why a subscription cannot be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `notifications.max_subscriptions` are there already.
    Total,
    /// The scope has `notifications.max_subscriptions_per_scope` already.
    Scope,
}

impl Subscriptions {
    /// The stored subscriptions.
    pub(crate) fn new(stored: Vec<([u8; 16], SubscriptionRow)>) -> Self {
        let entries = stored
            .into_iter()
            .map(|(id, row)| {
                let latest = Version(row.since);
                (
                    SubscriptionId(id),
                    Entry {
                        row,
                        delivering: false,
                        latest,
                        gave_up: Version(0),
                    },
                )
            })
            .collect();
        Subscriptions {
            entries: Mutex::new(entries),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<SubscriptionId, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether one more subscription of `scope` fits (expired ones do not count).
    pub(crate) fn room(&self, shared: &Shared, scope: &Scope, now_ms: u64) -> Result<(), Full> {
        let n = &shared.config.notifications;
        let entries = self.entries();
        let live = entries.values().filter(|e| e.row.expires_ms > now_ms);
        let (mut total, mut of_scope) = (0, 0);
        for e in live {
            total += 1;
            of_scope += usize::from(e.row.scope == scope.0);
        }
        if total >= n.max_subscriptions {
            return Err(Full::Total);
        }
        if of_scope >= n.max_subscriptions_per_scope {
            return Err(Full::Scope);
        }
        Ok(())
    }

    /// Add a subscription if it still fits; the caller stores it.
    fn insert(
        &self,
        shared: &Shared,
        row: SubscriptionRow,
        now_ms: u64,
    ) -> Result<SubscriptionId, Error> {
        let id = SubscriptionId::random()?;
        let scope = Scope(row.scope.clone());
        self.room(shared, &scope, now_ms).map_err(api::full)?;
        let latest = Version(row.since);
        self.entries().insert(
            id,
            Entry {
                row,
                delivering: false,
                latest,
                gave_up: Version(0),
            },
        );
        Ok(id)
    }

    /// Take in what the store holds, written by other replicas sharing it: subscriptions created
    /// there, their renewals and delivery state, and deletions. A delivery state newer than the
    /// one held wins; one created here in the last [`CREATED_GRACE_MS`] and not stored yet stays.
    pub(crate) fn sync(&self, stored: Vec<([u8; 16], SubscriptionRow)>, now_ms: u64) {
        let mut stored: HashMap<SubscriptionId, SubscriptionRow> = stored
            .into_iter()
            .map(|(id, row)| (SubscriptionId(id), row))
            .collect();
        let mut entries = self.entries();
        entries.retain(|id, e| {
            stored.contains_key(id) || e.row.created_ms.saturating_add(CREATED_GRACE_MS) > now_ms
        });
        for (id, row) in stored.drain() {
            match entries.get_mut(&id) {
                Some(entry) => {
                    entry.row.expires_ms = row.expires_ms;
                    if row.since > entry.row.since {
                        entry.latest = entry.latest.max(Version(row.since));
                        entry.row = row;
                    }
                }
                None => {
                    let latest = Version(row.since);
                    entries.insert(
                        id,
                        Entry {
                            row,
                            delivering: false,
                            latest,
                            gave_up: Version(0),
                        },
                    );
                }
            }
        }
    }

    /// Another replica told the subscription of `version`: take its stored row, and end this
    /// delivery.
    fn told_elsewhere(&self, id: SubscriptionId, row: SubscriptionRow) {
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(&id) {
            if row.since > entry.row.since {
                entry.row = row;
            }
            entry.delivering = false;
        }
    }

    /// A delivery ends without a send: another replica has it.
    fn yield_delivery(&self, id: SubscriptionId) {
        if let Some(entry) = self.entries().get_mut(&id) {
            entry.delivering = false;
        }
    }

    /// The live subscriptions of a scope on a route, oldest first.
    pub(crate) fn of_scope(
        &self,
        route: &str,
        scope: &Scope,
        now_ms: u64,
    ) -> Vec<(SubscriptionId, SubscriptionRow)> {
        let mut out: Vec<_> = self
            .entries()
            .iter()
            .filter(|(_, e)| e.row.route == route && e.row.scope == scope.0)
            .filter(|(_, e)| e.row.expires_ms > now_ms)
            .map(|(id, e)| (*id, e.row.clone()))
            .collect();
        out.sort_by_key(|(id, row)| (row.created_ms, id.0));
        out
    }

    /// One live subscription, if it is of this scope and route.
    pub(crate) fn get(
        &self,
        id: SubscriptionId,
        route: &str,
        scope: &Scope,
        now_ms: u64,
    ) -> Option<SubscriptionRow> {
        self.entries()
            .get(&id)
            .filter(|e| e.row.route == route && e.row.scope == scope.0)
            .filter(|e| e.row.expires_ms > now_ms)
            .map(|e| e.row.clone())
    }

    /// Forget a subscription (the caller checked it is the caller's); false when it is gone.
    fn remove(&self, id: SubscriptionId) -> bool {
        self.entries().remove(&id).is_some()
    }

    /// Move a subscription's end; the row as it is now.
    fn set_expiry(&self, id: SubscriptionId, expires_ms: u64) -> Option<SubscriptionRow> {
        let mut entries = self.entries();
        let entry = entries.get_mut(&id)?;
        entry.row.expires_ms = expires_ms;
        Some(entry.row.clone())
    }

    /// The feeds live subscriptions watch: they stay on the schedule.
    pub(crate) fn watched(&self, now_ms: u64) -> HashSet<FeedId> {
        self.entries()
            .values()
            .filter(|e| e.row.expires_ms > now_ms)
            .map(|e| FeedId(e.row.feed))
            .collect()
    }

    /// How many live subscriptions watch each feed, for the status page.
    pub(crate) fn per_feed(&self, now_ms: u64) -> HashMap<FeedId, usize> {
        let mut counts = HashMap::new();
        for e in self
            .entries()
            .values()
            .filter(|e| e.row.expires_ms > now_ms)
        {
            *counts.entry(FeedId(e.row.feed)).or_insert(0) += 1;
        }
        counts
    }

    /// Take out the subscriptions that have ended.
    fn take_expired(&self, now_ms: u64) -> Vec<SubscriptionId> {
        let mut entries = self.entries();
        let ended: Vec<SubscriptionId> = entries
            .iter()
            .filter(|(_, e)| e.row.expires_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &ended {
            entries.remove(id);
        }
        ended
    }

    /// Number of subscriptions held (expired ones not yet swept included).
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }

    /// `feed` is at `version` now: notify every live subscription of it that has not been told
    /// of this version yet.
    pub(crate) fn feed_at(
        &self,
        shared: &Arc<Shared>,
        feed: FeedId,
        version: Version,
        shutdown: &CancellationToken,
    ) {
        let now_ms = shared.clock.now_ms();
        let start: Vec<SubscriptionId> = {
            let mut entries = self.entries();
            entries
                .iter_mut()
                .filter(|(_, e)| e.row.feed == feed.0 && e.row.expires_ms > now_ms)
                .filter_map(|(id, e)| {
                    e.latest = e.latest.max(version);
                    let due = e.due() && !e.delivering;
                    if due {
                        e.delivering = true;
                    }
                    due.then_some(*id)
                })
                .collect()
        };
        for id in start {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = deliver(&shared, id) => {}
                }
            });
        }
    }

    /// What the next notification of `id` is about: the row, and the version it reports.
    /// `None` (and the delivery ends) when it is gone or has nothing new.
    fn next_due(&self, id: SubscriptionId, now_ms: u64) -> Option<(SubscriptionRow, Version)> {
        let mut entries = self.entries();
        let entry = entries.get_mut(&id)?;
        if entry.row.expires_ms > now_ms && entry.due() {
            return Some((entry.row.clone(), entry.latest));
        }
        entry.delivering = false;
        None
    }

    /// Record a delivery's outcome: delivered up to `version` with a new link baseline, or given
    /// up (one more missed). The row to store, if the subscription is still there.
    fn delivered(
        &self,
        id: SubscriptionId,
        outcome: Option<(Version, u64)>,
    ) -> Option<SubscriptionRow> {
        let mut entries = self.entries();
        let entry = entries.get_mut(&id)?;
        match outcome {
            Some((version, issued_at)) => {
                entry.row.since = version.0;
                entry.row.issued_at = issued_at;
                entry.row.missed = 0;
            }
            None => {
                entry.row.missed = entry.row.missed.saturating_add(1);
                entry.gave_up = entry.latest;
                entry.delivering = false;
            }
        }
        Some(entry.row.clone())
    }
}

/// The delta link a notification carries: from the version the subscription was last told of,
/// in the subscription's scope.
fn delta_link(shared: &Shared, row: &SubscriptionRow) -> String {
    let token = Token {
        feed: FeedId(row.feed),
        issued_at: row.issued_at,
        kind: TokenKind::Delta {
            since: Version(row.since),
        },
    };
    let binding = FeedDef::binding(&row.route, &row.entity_set, &Scope(row.scope.clone()));
    format!(
        "{}?$deltatoken={}",
        row.collection_url,
        token.encode(&shared.token_key, &binding)
    )
}

/// The body of a notification: a `missed` event first when notifications were given up since the
/// last one delivered, then the `changed` event.
fn notification(shared: &Shared, id: SubscriptionId, row: &SubscriptionRow, now_ms: u64) -> String {
    let at = format_unix_ms(now_ms);
    let mut value = Vec::new();
    let event = |kind: &str| {
        let mut e = json!({
            "subscriptionId": id.hex(),
            "event": kind,
            "timestamp": at,
        });
        if let Some(state) = &row.client_state {
            e["clientState"] = json!(state);
        }
        e
    };
    if row.missed > 0 {
        let mut missed = event("missed");
        missed["missedNotifications"] = json!(row.missed);
        value.push(missed);
    }
    let mut changed = event("changed");
    changed["deltaLink"] = json!(delta_link(shared, row));
    value.push(changed);
    json!({ "value": value }).to_string()
}

/// A subscription created this long ago (ms) and not in the store is taken as deleted by another
/// replica; a younger one may still be on its way into the store.
const CREATED_GRACE_MS: u64 = 10_000;

/// Re-read the subscriptions from a store that other replicas write too ([`Subscriptions::sync`]);
/// nothing to do with a store of this process alone.
pub(crate) async fn reload(shared: &Arc<Shared>) {
    if !shared.store.is_shared() {
        return;
    }
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.subscriptions()).await {
        Ok(Ok(stored)) => shared.subscriptions.sync(stored, shared.clock.now_ms()),
        Ok(Err(e)) => tracing::warn!(error = %e, "the stored subscriptions cannot be read"),
        Err(e) => tracing::warn!(error = %e, "the stored subscriptions cannot be read"),
    }
}

/// How long (ms) a replica's claim on a notification lasts: every attempt and the backoffs between
/// them, twice over. Another replica sends it only after that, if the claimant died.
fn claim_hold_ms(shared: &Shared) -> u64 {
    let n = &shared.config.notifications;
    let attempts = n.max_attempts.min(16);
    let sending = n.timeout.saturating_mul(attempts);
    let waiting = n.retry_backoff.saturating_mul(1u32 << attempts);
    u64::try_from(sending.saturating_add(waiting).as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
}

/// With several replicas on one store: whether this one sends `id`'s notification of `version`.
/// One that another replica sent already, or is sending, is left to it.
async fn claim(shared: &Arc<Shared>, id: SubscriptionId, version: Version) -> Result<bool, Error> {
    if !shared.store.is_shared() {
        return Ok(true);
    }
    let store = shared.store.clone();
    let now_ms = shared.clock.now_ms();
    let hold_ms = claim_hold_ms(shared);
    tokio::task::spawn_blocking(move || {
        let stored = store.subscriptions()?.into_iter().find(|(i, _)| *i == id.0);
        match stored {
            None => Ok(Err(None)),
            Some((_, row)) if row.since >= version.0 => Ok(Err(Some(row))),
            Some(_) => store
                .claim_notification(id.0, version, now_ms, hold_ms)
                .map(Ok),
        }
    })
    .await?
    .map_err(Error::from)
    .map(|claimed| match claimed {
        Ok(true) => true,
        Ok(false) => {
            shared.subscriptions.yield_delivery(id);
            false
        }
        Err(Some(row)) => {
            shared.subscriptions.told_elsewhere(id, row);
            false
        }
        Err(None) => {
            shared.subscriptions.remove(id);
            false
        }
    })
}

/// Deliver the notifications of one subscription until it has nothing new (one at a time).
async fn deliver(shared: &Arc<Shared>, id: SubscriptionId) {
    while let Some((row, version)) = shared.subscriptions.next_due(id, shared.clock.now_ms()) {
        let Ok(url) = Url::parse(&row.notification_url) else {
            shared.subscriptions.delivered(id, None);
            return;
        };
        match claim(shared, id, version).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                // Not sent, not given up: the next refresh that sees the feed tries again.
                tracing::warn!(error = %e, "a notification cannot be claimed");
                shared.subscriptions.yield_delivery(id);
                return;
            }
        }
        let now_ms = shared.clock.now_ms();
        // The baseline of the link the next notification will carry: covered by the retention
        // mark before it can be handed out, as every delta link is.
        let issued_at = now_ms / 1000;
        if let Err(e) = record_issued(shared, FeedId(row.feed), issued_at).await {
            tracing::warn!(error = %e, "a notification's delta link cannot be issued");
            shared.subscriptions.delivered(id, None);
            return;
        }
        let body = notification(shared, id, &row, now_ms);
        let sent = send_with_retries(shared, &url, || {
            let mut request = Request::post(url.as_str()).body(body::full(body.clone()))?;
            request.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(request)
        })
        .await;
        let outcome = sent.then_some((version, issued_at));
        if !sent {
            tracing::warn!(host = ?url.host_str(), "a webhook notification was given up; the next one carries a missed event");
        }
        let Some(updated) = shared.subscriptions.delivered(id, outcome) else {
            return;
        };
        let store = shared.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.put_subscription(id.0, &updated))
            .await
            .map_err(Error::from)
            .and_then(|r| r.map_err(Error::from));
        if let Err(e) = stored {
            tracing::warn!(error = %e, "a subscription's delivery state cannot be stored");
        }
        if !sent {
            return;
        }
    }
}

/// Remove the subscriptions that have ended, from memory and from the store.
pub(crate) async fn sweep(shared: &Arc<Shared>) {
    let ended = shared.subscriptions.take_expired(shared.clock.now_ms());
    if ended.is_empty() {
        return;
    }
    tracing::info!(count = ended.len(), "webhook subscriptions ended");
    let ids: Vec<[u8; 16]> = ended.iter().map(|id| id.0).collect();
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.delete_subscriptions(&ids)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "ended subscriptions cannot be removed from the store")
        }
        Err(e) => {
            tracing::warn!(error = %e, "ended subscriptions cannot be removed from the store")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_read_back() {
        let id = SubscriptionId::random().unwrap();
        let hex = id.hex();
        assert_eq!(hex.len(), 32);
        assert_eq!(SubscriptionId::parse(&hex), Some(id));
        for bad in [
            "",
            "xyz",
            &hex[..31],
            &format!("{hex}0"),
            &"g".repeat(32),
            &"é".repeat(16),
        ] {
            assert_eq!(SubscriptionId::parse(bad), None, "{bad}");
        }
    }
}

//! # odata-delta-gateway
//!
//! A reverse proxy that gives OData V4 collections change tracking. Clients repoint their base URL at
//! the gateway, read a collection once with `Prefer: odata.track-changes`, and follow
//! `@odata.deltaLink`s that return only what changed — changed entities and tombstones — although
//! the upstream knows nothing of deltas. Everything else passes through.
//!
//! ## Flow
//! ```text
//! client ─► server (hyper-util, tower layers) ─► router
//!              ├─ proxy:  anything not tracked ─► upstream (streamed both ways, links rewritten)
//!              └─ track:  GET collection + track-changes, $deltatoken, our $skiptoken, /$count?$deltatoken
//!                   token::decode ─► feed ─► refresh (single-flight per feed)
//!                        upstream pages ─► raw hash per entity, compared in order with the index;
//!                        key + canonical hash of the rest ─► diff against the index
//!                        ─► confirm candidate removals upstream ─► one redb commit = new version
//!                   store: live entities (initial) or the changes since the token (delta)
//!                   ─► odata::delta writes the page (4.0 or 4.01 shape) + nextLink/deltaLink
//! ```
//!
//! ## Layout
//! - [`config`]: flags, environment and `gateway.toml` → validated [`config::Config`]; its `tls`
//!   part reads and checks a route's CA bundle, system roots and client certificate at start.
//! - `ids`: the domain ids (`FeedId`, `Version`, `KeyHash`, `ContentHash`, `Scope`), at the bottom
//!   of the module graph: it imports nothing of ours.
//! - `error`: the error type by origin, and the one place it becomes a status and an OData error body.
//! - `server`: listeners, the tower stack, graceful shutdown, the admin endpoints.
//! - `decide`: the decision on a request head (bounds, dot segments, route, the tracked answer or
//!   "forward it"), the one path of a request alone (`server`) and of a `$batch` part (`batch`).
//! - `router`: classify a request (track or proxy), the public base URL, entity-set keys from `$metadata`.
//! - [`proxy`]: transparent forwarding, header hygiene, streaming link rewriting.
//! - `discovery`: the passed-through `$metadata` annotated with `Capabilities.ChangeTracking` (C35).
//! - `batch`: `$batch` (JSON and multipart) with tracked parts answered by the gateway (C34).
//! - `upstream`: the pooled HTTP clients (a shared one, one per route with TLS settings),
//!   timeouts, TLS failures named for the client, the origin guard for upstream links.
//! - [`odata`]: protocol vocabulary, pure — preferences, queries, formats (`$format`, `Accept`),
//!   `$orderby`, `$metadata`, key literals, the raw JSON scanner, upstream pages, delta payloads.
//! - [`track`]: feeds and versions, the diff index (a dense array in the upstream's order), hashing,
//!   tokens, refresh (fetch, enumerate, page parsing and hashing, diff, confirm removals, the tally
//!   against `@odata.count` and the `$skip` read-on), answering tracked requests, authorizing them
//!   upstream, admission (feed caps, refresh turns), retention of idle feeds, the in-memory history
//!   of recent refreshes, the background refresh schedule, how old an answer may be
//!   (`Cache-Control`), the callback preference, and webhook subscriptions (`$subscriptions`).
//! - `body`: the one boxed body type requests and responses travel in.
//! - `compress`: gzip of upstream pages (bounded inflating) and of tracked responses.
//! - [`store`]: the store boundary ([`store::FeedStore`]) and its two implementations:
//!   [`store::embedded`] (redb, the default, one process) and [`store::postgres`] (PostgreSQL, for
//!   several replicas); one conformance suite runs on both.
//! - [`metrics`]: Prometheus metrics.
//! - `status`: the admin listener's HTML status page, one row per feed.
//! - [`operator`]: the `feeds` commands (list, show, drop, compact) on a stopped gateway's store.
//!
//! What tests, benches and the binary need is public; the rest is `pub(crate)`.
//!
//! Outside the library: the binary (`main.rs`: flags, logging, the runtime; `demo.rs`: the `demo`
//! command, the gateway in front of the sample service) and the sample OData service itself, a
//! crate of the workspace (`crates/sample-service`) that the demo serves and the black-box tests
//! in `tests/` run the gateway against (`tests/support` adds the gateway, a client, a receiver of
//! the gateway's callbacks and notifications, the setup the tests share, and the faults that make
//! the sample service misbehave, on its `Layer`). The library knows nothing of either.
#![forbid(unsafe_code)]

pub(crate) mod batch;
pub(crate) mod body;
mod compress;
pub mod config;
pub(crate) mod decide;
pub(crate) mod discovery;
pub(crate) mod error;
pub(crate) mod ids;
pub mod metrics;
pub mod odata;
pub mod operator;
pub mod proxy;
pub(crate) mod router;
pub(crate) mod server;
mod status;
pub mod store;
pub mod track;
pub(crate) mod upstream;

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::Service;
use crate::store::{Store, StoreError};
use crate::track::admission::RefreshPermits;
use crate::track::authorize::Authorizations;
use crate::track::feed::{Feeds, Scope};
use crate::track::token::TokenKey;
use crate::upstream::Upstream;

pub use crate::server::{Running, start};

/// State shared by every request: configuration, the store, the upstream client, the feeds in
/// memory. Cheap to share behind an `Arc`.
pub struct Shared {
    /// Validated configuration.
    pub config: Config,
    /// The store.
    pub store: Store,
    /// The pooled upstream client of routes without TLS settings (and of callbacks).
    pub(crate) upstream: Upstream,
    /// Key that tags tokens.
    pub(crate) token_key: TokenKey,
    /// Key for hashing credentials into identity scopes; never leaves the process.
    pub(crate) scope_key: [u8; 32],
    /// Feeds in memory.
    pub(crate) feeds: Feeds,
    /// Recent upstream authorizations of per-identity tracked requests.
    pub(crate) authorizations: Authorizations,
    /// Turns for refreshes, across all feeds.
    pub(crate) refresh_permits: RefreshPermits,
    /// Recent refreshes per feed, for the status page and the metrics.
    pub(crate) refresh_history: crate::track::history::RefreshHistory,
    /// Feeds refreshed in the background.
    pub(crate) schedule: crate::track::schedule::Schedule,
    /// Callbacks waiting for their feed to change.
    pub(crate) callbacks: crate::track::callback::Callbacks,
    /// Webhook subscriptions.
    pub(crate) subscriptions: crate::track::subscriptions::Subscriptions,
    /// One service per route, in route order (longest prefix first).
    pub(crate) services: Vec<Service>,
    /// Metrics.
    pub metrics: Metrics,
    /// The wall clock of tokens and retention.
    pub clock: crate::track::retention::Clock,
}

impl Shared {
    /// Open the store and build the shared state.
    pub fn new(config: Config) -> Result<Self, StoreError> {
        let store = match &config.store {
            Some(url) => Store::new(std::sync::Arc::new(crate::store::postgres::PgStore::open(
                url,
                None,
                crate::store::postgres::PgLimits::default(),
            )?)),
            None => Store::open_with_cache(&config.data_dir, config.limits.store_cache_bytes)?,
        };
        let secret = store.token_secret()?;
        let scope_key = blake3::derive_key("odata-delta-gateway 2026-11 identity scope", &secret);
        let feeds = Feeds::default();
        feeds.register_stored(
            store
                .stored_feeds()?
                .into_iter()
                .map(|(feed, scope)| (feed, Scope(scope))),
        );
        let metrics = Metrics::default();
        let services = config
            .routes
            .iter()
            .cloned()
            .map(|route| {
                let own = route.tls.as_ref().map(|tls| {
                    tracing::info!(route = %route.origin, upstream = %route.upstream, trusts = %tls.summary, "route has its own upstream TLS settings");
                    Upstream::new(&config.upstream, metrics.upstream_requests.clone(), Some(tls))
                });
                let mut service = Service::new(route);
                service.upstream = own;
                service
            })
            .collect();
        Ok(Shared {
            upstream: Upstream::new(&config.upstream, metrics.upstream_requests.clone(), None),
            token_key: TokenKey::derive(&secret),
            scope_key,
            feeds,
            authorizations: Authorizations::new(config.authorization_cache),
            refresh_permits: RefreshPermits::new(
                config.limits.max_concurrent_refreshes,
                config.limits.max_refresh_waiters,
            ),
            callbacks: crate::track::callback::Callbacks::new(),
            subscriptions: crate::track::subscriptions::Subscriptions::new(store.subscriptions()?),
            schedule: crate::track::schedule::Schedule::new(config.schedule.max_scheduled_feeds),
            services,
            refresh_history: Default::default(),
            metrics,
            clock: Default::default(),
            store,
            config,
        })
    }

    /// Set the metrics' gauges of state from the gateway as it is now. The store's size is read on
    /// the blocking pool (a file's metadata, or a query); a store that cannot tell keeps the last.
    pub async fn sample_gauges(&self) {
        let m = &self.metrics;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.bytes()).await {
            Ok(Ok(bytes)) => {
                m.store_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "the store's size is unknown"),
            Err(e) => tracing::debug!(error = %e, "the store's size is unknown"),
        }
        let slots = self.feeds.slots();
        m.feeds_active.set(slots.len() as i64);
        m.feeds_stored.set(self.feeds.stored_len() as i64);
        // A slot locked by a refresh counts with its size when that refresh last finished.
        let entries: usize = slots
            .iter()
            .map(|(feed, slot)| match slot.try_lock() {
                Ok(s) => s.index.as_ref().map_or(0, |i| i.len()),
                Err(_) => self.refresh_history.index_entries(*feed),
            })
            .sum();
        m.index_memory_bytes
            .set(entries.saturating_mul(track::feed::INDEX_ENTRY_BYTES) as i64);
        m.refresh_queue_depth
            .set(self.refresh_permits.waiting() as i64);
        m.subscriptions.set(self.subscriptions.len() as i64);
    }
}

impl Shared {
    /// The upstream client of a service: its own when its route has TLS settings, else the
    /// shared one.
    pub(crate) fn upstream_of<'a>(&'a self, service: &'a Service) -> &'a Upstream {
        service.upstream.as_ref().unwrap_or(&self.upstream)
    }

    /// The upstream client of the route with this prefix (a feed's `route`).
    pub(crate) fn upstream_for(&self, prefix: &str) -> &Upstream {
        self.services
            .iter()
            .find(|s| s.route.prefix == prefix)
            .map_or(&self.upstream, |s| self.upstream_of(s))
    }
}

/// The application handle, for binaries and tests.
pub type App = Arc<Shared>;

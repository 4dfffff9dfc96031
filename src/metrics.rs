//! Prometheus metrics: one `Metrics` struct, registered once, served as text on the admin listener.
//! Counters and histograms are fed where things happen; the gauges of state (feeds, store size,
//! index memory, refresh waiters) are read when the metrics are scraped, by [`sample`].

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Outcome label of a refresh.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    outcome: OutcomeValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are written as the variant names
enum OutcomeValue {
    ok,
    failed,
}

impl Outcome {
    /// A refresh that committed (or found nothing new).
    pub fn ok() -> Self {
        Outcome {
            outcome: OutcomeValue::ok,
        }
    }

    /// A refresh that failed and committed nothing.
    pub fn failed() -> Self {
        Outcome {
            outcome: OutcomeValue::failed,
        }
    }
}

/// Kind label of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestKind {
    kind: &'static str,
}

impl RequestKind {
    /// A label for the router's classification (`proxy`, `initial`, `delta`, `page`, `count`).
    pub fn new(kind: &'static str) -> Self {
        RequestKind { kind }
    }
}

/// Route and entity set of a feed, for per-set metrics. Bounded: only sets the gateway resolved
/// from `$metadata` or the config are tracked.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetLabel {
    route: String,
    set: String,
}

impl SetLabel {
    /// The label of `set` on the route mounted at `route`.
    pub fn new(route: &str, set: &str) -> Self {
        SetLabel {
            route: route.to_owned(),
            set: set.to_owned(),
        }
    }
}

/// Status class of an upstream answer: `2xx` … `5xx`, or `failed` when there was none (refused
/// connection, timeout).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClass {
    class: &'static str,
}

impl StatusClass {
    /// The class of an answer's status, or `failed` for no answer.
    pub fn of(status: Option<http::StatusCode>) -> Self {
        let class = match status.map(|s| s.as_u16() / 100) {
            None => "failed",
            Some(1) => "1xx",
            Some(2) => "2xx",
            Some(3) => "3xx",
            Some(4) => "4xx",
            Some(_) => "5xx",
        };
        StatusClass { class }
    }
}

/// Why a delta or next link was refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are written as the variant names
pub enum RejectionReason {
    /// The tag does not match: edited, forged, or presented for another set or identity.
    forged,
    /// Older than the token lifetime, or its feed was dropped (410).
    expired,
    /// Not a token of ours at all.
    malformed,
}

/// Reason label of a token rejection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rejection {
    reason: RejectionReason,
}

/// Histograms of refresh durations, one per entity set.
pub type SetHistograms = Family<SetLabel, Histogram, fn() -> Histogram>;

fn refresh_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by kind.
    pub requests: Family<RequestKind, Counter>,
    /// Refreshes by outcome.
    pub refreshes: Family<Outcome, Counter>,
    /// Requests that reused a concurrent or recent refresh instead of enumerating.
    pub refresh_reused: Counter,
    /// Indexes brought up to another replica's version from its changes, not read again whole.
    pub index_catch_ups: Counter,
    /// Duration of refreshes, by entity set.
    pub refresh_seconds: SetHistograms,
    /// Upstream pages read by refreshes.
    pub upstream_pages: Counter,
    /// Entities received from upstreams by refreshes (every one, changed or not).
    pub entities_enumerated: Counter,
    /// New and changed entities committed.
    pub entities_changed: Counter,
    /// Tombstones committed (entities deleted upstream or out of the feed's filter).
    pub entities_removed: Counter,
    /// Every upstream request the gateway made (pass-through, enumeration, checks), by the class
    /// of its answer.
    pub upstream_requests: Family<StatusClass, Counter>,
    /// Delta and next links refused, by reason.
    pub token_rejections: Family<Rejection, Counter>,
    /// Feeds with a slot in memory (set when scraped).
    pub feeds_active: Gauge,
    /// Feeds holding entities in the store (set when scraped).
    pub feeds_stored: Gauge,
    /// Size of the store's file (set when scraped).
    pub store_bytes: Gauge,
    /// Estimated memory of the feeds' in-memory indexes (set when scraped).
    pub index_memory_bytes: Gauge,
    /// Requests waiting for a refresh turn (set when scraped).
    pub refresh_queue_depth: Gauge,
    /// Tombstones purged after the retention window.
    pub tombstones_purged: Counter,
    /// Requests being served right now.
    pub in_flight: Gauge,
    /// Feeds deleted after being unused for longer than the token lifetime.
    pub feeds_dropped: Counter,
    /// Feeds on the background refresh schedule.
    pub scheduled_feeds: Gauge,
    /// Webhook subscriptions held.
    pub subscriptions: Gauge,
    /// Change notifications delivered (a 2xx from the callback URL).
    pub notifications_sent: Counter,
    /// Change notifications given up after every attempt failed.
    pub notifications_failed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("odg");
        let m = Metrics {
            requests: Family::default(),
            refreshes: Family::default(),
            refresh_reused: Counter::default(),
            index_catch_ups: Counter::default(),
            refresh_seconds: Family::new_with_constructor(refresh_histogram),
            upstream_pages: Counter::default(),
            entities_enumerated: Counter::default(),
            entities_changed: Counter::default(),
            entities_removed: Counter::default(),
            upstream_requests: Family::default(),
            token_rejections: Family::default(),
            feeds_active: Gauge::default(),
            feeds_stored: Gauge::default(),
            store_bytes: Gauge::default(),
            index_memory_bytes: Gauge::default(),
            refresh_queue_depth: Gauge::default(),
            tombstones_purged: Counter::default(),
            in_flight: Gauge::default(),
            feeds_dropped: Counter::default(),
            scheduled_feeds: Gauge::default(),
            subscriptions: Gauge::default(),
            notifications_sent: Counter::default(),
            notifications_failed: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests by kind", m.requests.clone());
        registry.register(
            "refreshes",
            "Feed refreshes by outcome",
            m.refreshes.clone(),
        );
        registry.register(
            "refresh_reused",
            "Requests served by a concurrent or recent refresh",
            m.refresh_reused.clone(),
        );
        registry.register(
            "index_catch_ups",
            "Feed indexes brought up to another replica's version from its changes",
            m.index_catch_ups.clone(),
        );
        registry.register(
            "refresh_seconds",
            "Duration of feed refreshes, by entity set",
            m.refresh_seconds.clone(),
        );
        registry.register(
            "upstream_pages",
            "Upstream pages read by refreshes",
            m.upstream_pages.clone(),
        );
        registry.register(
            "entities_enumerated",
            "Entities received from upstreams by refreshes",
            m.entities_enumerated.clone(),
        );
        registry.register(
            "entities_changed",
            "New and changed entities committed",
            m.entities_changed.clone(),
        );
        registry.register(
            "entities_removed",
            "Tombstones committed",
            m.entities_removed.clone(),
        );
        registry.register(
            "upstream_requests",
            "Upstream requests by status class of the answer",
            m.upstream_requests.clone(),
        );
        registry.register(
            "token_rejections",
            "Delta and next links refused, by reason",
            m.token_rejections.clone(),
        );
        registry.register("feeds_active", "Feeds in memory", m.feeds_active.clone());
        registry.register(
            "feeds_stored",
            "Feeds holding entities in the store",
            m.feeds_stored.clone(),
        );
        registry.register_with_unit(
            "store",
            "Size of the store file",
            prometheus_client::registry::Unit::Bytes,
            m.store_bytes.clone(),
        );
        registry.register_with_unit(
            "index_memory",
            "Estimated memory of the in-memory feed indexes",
            prometheus_client::registry::Unit::Bytes,
            m.index_memory_bytes.clone(),
        );
        registry.register(
            "refresh_queue_depth",
            "Requests waiting for a refresh turn",
            m.refresh_queue_depth.clone(),
        );
        registry.register(
            "tombstones_purged",
            "Tombstones purged after the retention window",
            m.tombstones_purged.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being served",
            m.in_flight.clone(),
        );
        registry.register(
            "feeds_dropped",
            "Feeds dropped after the token lifetime without use",
            m.feeds_dropped.clone(),
        );
        registry.register(
            "scheduled_feeds",
            "Feeds refreshed in the background on their poll_interval",
            m.scheduled_feeds.clone(),
        );
        registry.register(
            "subscriptions",
            "Webhook subscriptions held ($subscriptions)",
            m.subscriptions.clone(),
        );
        registry.register(
            "notifications_sent",
            "Change notifications delivered",
            m.notifications_sent.clone(),
        );
        registry.register(
            "notifications_failed",
            "Change notifications given up after every attempt",
            m.notifications_failed.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Count a refused delta or next link.
    pub fn token_rejected(&self, reason: RejectionReason) {
        self.token_rejections
            .get_or_create(&Rejection { reason })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

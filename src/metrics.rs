//! Prometheus metrics: one `Metrics` struct, registered once, served as text on the admin listener.

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

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by kind.
    pub requests: Family<RequestKind, Counter>,
    /// Refreshes by outcome.
    pub refreshes: Family<Outcome, Counter>,
    /// Requests that reused a concurrent or recent refresh instead of enumerating.
    pub refresh_reused: Counter,
    /// Duration of refreshes.
    pub refresh_seconds: Histogram,
    /// Upstream pages read by refreshes.
    pub upstream_pages: Counter,
    /// Entity rows committed (changes and tombstones).
    pub entities_changed: Counter,
    /// Tombstones purged after the retention window.
    pub tombstones_purged: Counter,
    /// Requests being served right now.
    pub in_flight: Gauge,
    /// Feeds deleted after being unused for longer than the token lifetime.
    pub feeds_dropped: Counter,
    /// Feeds on the background refresh schedule.
    pub scheduled_feeds: Gauge,
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
            refresh_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            upstream_pages: Counter::default(),
            entities_changed: Counter::default(),
            tombstones_purged: Counter::default(),
            in_flight: Gauge::default(),
            feeds_dropped: Counter::default(),
            scheduled_feeds: Gauge::default(),
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
            "refresh_seconds",
            "Duration of feed refreshes",
            m.refresh_seconds.clone(),
        );
        registry.register(
            "upstream_pages",
            "Upstream pages read by refreshes",
            m.upstream_pages.clone(),
        );
        registry.register(
            "entities_changed",
            "Entity rows committed",
            m.entities_changed.clone(),
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
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

//! Recent refreshes of each feed, in memory, for the status page and the metrics that are read when
//! scraped: a bounded ring of the last refreshes (time, duration, outcome, changes) and per-minute
//! change counts for the last hour. Lost on restart, like any in-memory statistic; the store keeps
//! what matters.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::feed::{FeedDef, FeedId, Version};

/// Refreshes kept per feed for the duration chart.
pub(crate) const RECENT_REFRESHES: usize = 32;

/// Most feeds with a history; beyond it the one refreshed longest ago is forgotten, so that a
/// gateway with many short-lived feeds does not grow this without bound.
const MAX_FEEDS: usize = 10_000;

/// One finished refresh.
#[derive(Clone, Debug)]
pub(crate) struct RefreshRecord {
    /// When it finished.
    pub(crate) finished_at: SystemTime,
    /// How long it took.
    pub(crate) duration: Duration,
    /// `None` when it committed (or found nothing new); the reason when it failed.
    pub(crate) error: Option<String>,
    /// Entities it committed as new, changed or removed.
    pub(crate) changes: u64,
}

/// What the gateway knows about a feed's recent refreshes.
#[derive(Clone, Debug)]
pub(crate) struct FeedHistory {
    /// Its definition (route, set, query, scope).
    pub(crate) def: FeedDef,
    /// Live entities after the last refresh that read the store's meta.
    pub(crate) entities: u64,
    /// Its version after the last successful refresh.
    pub(crate) version: Option<Version>,
    /// Entries of its in-memory index after the last refresh.
    pub(crate) index_entries: usize,
    /// The last refreshes, oldest first.
    pub(crate) recent: VecDeque<RefreshRecord>,
    /// Changes committed per minute (unix minute, count), the last hour's only.
    minutes: VecDeque<(u64, u64)>,
}

impl FeedHistory {
    /// Changes committed in the hour before `now`.
    pub(crate) fn changes_last_hour(&self, now: SystemTime) -> u64 {
        let minute = unix_minute(now);
        self.minutes
            .iter()
            .filter(|(m, _)| minute.saturating_sub(*m) < 60)
            .map(|(_, n)| n)
            .sum()
    }
}

fn unix_minute(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

/// The histories of all feeds.
#[derive(Default)]
pub struct RefreshHistory {
    feeds: Mutex<HashMap<FeedId, FeedHistory>>,
    /// Changes committed by refreshes still running (one refresh per feed at a time).
    pending: Mutex<HashMap<FeedId, u64>>,
}

/// The outcome of a refresh as the history keeps it.
pub(crate) struct Finished<'a> {
    /// The feed's definition.
    pub(crate) def: &'a FeedDef,
    /// When it finished.
    pub(crate) finished_at: SystemTime,
    /// How long it took.
    pub(crate) duration: Duration,
    /// The version it left the feed at, or why it failed.
    pub(crate) outcome: Result<Version, String>,
    /// Live entities afterwards, when known.
    pub(crate) entities: Option<u64>,
    /// Index entries afterwards.
    pub(crate) index_entries: usize,
}

impl RefreshHistory {
    /// Note entities committed by a running refresh of `feed`.
    pub(crate) fn committed(&self, feed: FeedId, changes: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *pending.entry(feed).or_default() += changes;
    }

    /// Record a finished refresh.
    pub(crate) fn finished(&self, f: Finished<'_>) {
        let feed = f.def.id();
        let committed = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&feed)
            .unwrap_or(0);
        // A refresh that failed after noting changes committed none of them.
        let changes = if f.outcome.is_ok() { committed } else { 0 };
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if feeds.len() >= MAX_FEEDS && !feeds.contains_key(&feed) {
            let oldest = feeds
                .iter()
                .min_by_key(|(_, h)| h.recent.back().map(|r| r.finished_at))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                feeds.remove(&id);
            }
        }
        let h = feeds.entry(feed).or_insert_with(|| FeedHistory {
            def: f.def.clone(),
            entities: 0,
            version: None,
            index_entries: 0,
            recent: VecDeque::with_capacity(RECENT_REFRESHES),
            minutes: VecDeque::new(),
        });
        if let Some(n) = f.entities {
            h.entities = n;
        }
        if let Ok(v) = f.outcome {
            h.version = Some(v);
        }
        h.index_entries = f.index_entries;
        if h.recent.len() == RECENT_REFRESHES {
            h.recent.pop_front();
        }
        h.recent.push_back(RefreshRecord {
            finished_at: f.finished_at,
            duration: f.duration,
            error: f.outcome.err(),
            changes,
        });
        let minute = unix_minute(f.finished_at);
        match h.minutes.back_mut() {
            Some((m, n)) if *m == minute => *n += changes,
            _ if changes > 0 => h.minutes.push_back((minute, changes)),
            _ => {}
        }
        while h
            .minutes
            .front()
            .is_some_and(|(m, _)| minute.saturating_sub(*m) >= 60)
        {
            h.minutes.pop_front();
        }
    }

    /// Index entries of `feed` after its last refresh (0 when unknown).
    pub(crate) fn index_entries(&self, feed: FeedId) -> usize {
        self.feeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&feed)
            .map_or(0, |h| h.index_entries)
    }

    /// A copy of every feed's history.
    pub(crate) fn snapshot(&self) -> Vec<(FeedId, FeedHistory)> {
        self.feeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, h)| (*id, h.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::odata::query::DefiningQuery;
    use crate::track::feed::Scope;

    fn def() -> FeedDef {
        FeedDef {
            route: "/r".into(),
            entity_set: "Customers".into(),
            query: DefiningQuery::from_encoded("").unwrap(),
            scope: Scope("shared".into()),
        }
    }

    fn finish(h: &RefreshHistory, d: &FeedDef, at: SystemTime, ok: bool) {
        h.finished(Finished {
            def: d,
            finished_at: at,
            duration: Duration::from_millis(5),
            outcome: if ok { Ok(Version(1)) } else { Err("x".into()) },
            entities: Some(3),
            index_entries: 3,
        });
    }

    #[test]
    fn the_ring_is_bounded_and_changes_count_for_an_hour() {
        let h = RefreshHistory::default();
        let d = def();
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000 * 60);
        for i in 0..(RECENT_REFRESHES as u64 + 5) {
            h.committed(d.id(), 2);
            finish(&h, &d, start + Duration::from_secs(i * 60), true);
        }
        let (_, f) = h.snapshot().pop().unwrap();
        assert_eq!(f.recent.len(), RECENT_REFRESHES);
        let last = f.recent.back().unwrap().finished_at;
        assert_eq!(f.changes_last_hour(last), 2 * (RECENT_REFRESHES as u64 + 5));
        assert_eq!(f.changes_last_hour(last + Duration::from_secs(3600)), 0);
        // A failure keeps the last version and counts no changes.
        finish(&h, &d, last, false);
        let (_, f) = h.snapshot().pop().unwrap();
        assert_eq!(f.version, Some(Version(1)));
        assert_eq!(f.recent.back().unwrap().error.as_deref(), Some("x"));
        assert_eq!(h.index_entries(d.id()), 3);
    }
}

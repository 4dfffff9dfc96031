//! Retention beyond tombstones (DESIGN "Retention"): a periodic sweep that records when feeds were
//! last used, drops the in-memory index of feeds nobody asked about for a while (the store has it),
//! deletes feeds unused for longer than the token lifetime — no valid token can name them — and
//! frees the in-memory slots of idle feeds nobody holds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::refresh::unix_ms;
use crate::Shared;

/// An index unused this long leaves memory.
const INDEX_IDLE: Duration = Duration::from_secs(600);

/// Sweep until `shutdown`.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    // Often enough that a short token lifetime is honoured, never more than once a minute.
    let every =
        (shared.config.token_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                sweep(&shared).await;
                return;
            }
            _ = tick.tick() => sweep(&shared).await,
        }
    }
}

/// One sweep; failures are logged and retried next time.
pub async fn sweep(shared: &Arc<Shared>) {
    let used = shared.feeds.take_used();
    if !used.is_empty() {
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.touch(&used)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record feed use"),
            Err(e) => tracing::warn!(error = %e, "cannot record feed use"),
        }
    }

    for (_, slot) in shared.feeds.slots() {
        if let Ok(mut slot) = slot.try_lock()
            && slot.index.is_some()
            && slot.last_used.is_some_and(|t| t.elapsed() > INDEX_IDLE)
        {
            slot.index = None;
            slot.meta = None;
        }
    }

    // Token ages are counted in whole seconds: a margin keeps a token that is still (just) valid
    // from outliving its feed.
    let unused_for = shared.config.token_ttl + Duration::from_secs(2);
    let cutoff = unix_ms(SystemTime::now()).saturating_sub(unused_for.as_millis() as u64);
    let store = shared.store.clone();
    let idle = match tokio::task::spawn_blocking(move || store.idle_feeds(cutoff)).await {
        Ok(Ok(idle)) => idle,
        _ => return,
    };
    for feed in idle {
        let slot = shared.feeds.slot(feed);
        // A feed being refreshed, or used since start, is in use; it is looked at again next time.
        let Ok(mut guard) = slot.try_lock() else {
            continue;
        };
        if guard.last_used.is_some_and(|t| t.elapsed() < unused_for) {
            continue;
        }
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.drop_feed(feed, cutoff)).await {
            Ok(Ok(true)) => {
                guard.forget();
                shared.feeds.unregister(feed);
                shared.metrics.feeds_dropped.inc();
                tracing::info!(feed = ?feed.0, "dropped a feed unused for longer than the token lifetime");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot drop an idle feed"),
            Err(e) => tracing::warn!(error = %e, "cannot drop an idle feed"),
        }
    }
    // Last, so that the slots the drops above looked at are freed too.
    let freed = shared.feeds.free_idle(INDEX_IDLE);
    if freed > 0 {
        tracing::debug!(freed, "freed the memory of idle feeds");
    }
}

//! Always fresh under load (issue 9's P5): a gateway with `poll_interval` on, N clients each
//! following its own delta link of one feed once per interval (open loop: every request is sent
//! at its scheduled time, and its latency counts from then, so a slow answer cannot hide the ones
//! queued behind it), while the upstream changes a fixed number of entities per interval. Reports
//! the latency percentiles, the upstream enumerations per interval, and then the closed-loop
//! throughput of stored deltas.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{self, HttpClient};
use crate::gateway::Gateway;
use crate::tracked::secs;
use crate::upstream::{Collection, SERVICE, Upstream};

/// How to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The gateway binary.
    pub gateway: std::path::PathBuf,
    /// Entities in the feed.
    pub entities: u32,
    /// Clients, each with its own delta link.
    pub clients: u32,
    /// The gateway's `poll_interval`, which is also each client's request interval and the
    /// interval of the upstream's changes.
    pub interval: Duration,
    /// Entities updated upstream per interval.
    pub changes_per_interval: u32,
    /// Length of the open-loop measurement (after one interval of warm-up).
    pub measure: Duration,
    /// Concurrent clients of the closed-loop run.
    pub closed_clients: u32,
    /// Length of the closed-loop run.
    pub closed_measure: Duration,
    /// Longest wait for one whole HTTP answer.
    pub timeout: Duration,
}

/// What was measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Entities in the feed.
    pub entities: u64,
    /// Clients of the open loop.
    pub clients: u32,
    /// The interval.
    pub interval: Duration,
    /// Entities updated per interval.
    pub changes_per_interval: u32,
    /// Requests (delta reads, every page) answered in the open loop, and failed.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Latencies of the open loop from each request's scheduled time, sorted, seconds.
    pub latencies: Vec<f64>,
    /// Length of the open loop.
    pub measured: Duration,
    /// Upstream enumerations started during the open loop.
    pub enumerations: u64,
    /// Entries (changed entities) the clients received.
    pub entries: u64,
    /// Requests answered in the closed loop, and its length.
    pub closed_requests: u64,
    /// Length of the closed loop.
    pub closed_measured: Duration,
    /// Requests of the closed loop that failed.
    pub closed_errors: u64,
}

impl Report {
    /// The `p`-th percentile latency (0 < p ≤ 100), seconds.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    /// Upstream enumerations per interval during the open loop.
    pub fn enumerations_per_interval(&self) -> f64 {
        self.enumerations as f64 * self.interval.as_secs_f64() / self.measured.as_secs_f64()
    }
}

fn config(interval: Duration) -> String {
    format!(
        "poll_interval = \"{}ms\"\n[identity]\nmode = \"shared\"\n",
        interval.as_millis()
    )
}

/// Run the measurement.
pub async fn run(s: &Settings) -> Result<Report, String> {
    if s.clients == 0 || s.clients > 10_000 {
        return Err("--clients must be between 1 and 10000".into());
    }
    if s.interval < Duration::from_secs(1) {
        return Err("--interval-ms must be at least 1000 (the gateway's poll_interval)".into());
    }
    eprintln!("[fresh] rendering {} entities", s.entities);
    let collection = Collection::new(s.entities);
    let upstream = Upstream::start(&collection)
        .await
        .map_err(|e| format!("the upstream cannot listen: {e}"))?;
    let gateway = Gateway::start_with(
        &s.gateway,
        &upstream.service_root(),
        Duration::from_secs(30),
        Some(&config(s.interval)),
    )?;
    let http = client::client();
    let collection_url = gateway.url(&format!("{SERVICE}/Items"));
    // The feed's first read: one full enumeration, then every client takes its own delta link
    // from `$deltatoken=latest`, answered from the store.
    eprintln!("[fresh] first tracked read");
    let pages = (u64::from(s.entities) / 100).max(10);
    let first = client::read_all(&http, &collection_url, true, s.timeout, pages, |_| {}).await?;
    if first.entries != u64::from(s.entities) {
        return Err(format!(
            "the first tracked read returned {} entries, expected {}",
            first.entries, s.entities
        ));
    }
    let mut links = Vec::with_capacity(s.clients as usize);
    for _ in 0..s.clients {
        let latest = format!("{collection_url}?$deltatoken=latest");
        let read = client::read_all(&http, &latest, false, s.timeout, 10, |_| {}).await?;
        links.push(
            read.delta_link
                .ok_or("$deltatoken=latest gave no delta link")?,
        );
    }

    // The upstream changes on its own thread, once per interval, until told to stop.
    let stop_changes = Arc::new(AtomicBool::new(false));
    let changer = {
        let stop = stop_changes.clone();
        let (interval, count) = (s.interval, s.changes_per_interval);
        let mut collection = collection;
        std::thread::spawn(move || {
            let mut next = Instant::now() + interval;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(50)));
                    continue;
                }
                collection.update_some(count);
                next += interval;
            }
        })
    };

    // Warm-up: one interval, so that the schedule has the feed and the changes have begun.
    eprintln!(
        "[fresh] open loop: {} clients, one delta read each per {:?}, {} changes per interval",
        s.clients, s.interval, s.changes_per_interval
    );
    tokio::time::sleep(s.interval).await;
    let enumerations_before = upstream.counters.enumerations.load(Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    let end = started + s.measure;
    let entries = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, link) in links.into_iter().enumerate() {
        let http = http.clone();
        let entries = entries.clone();
        let timeout = s.timeout;
        let interval = s.interval;
        // Spread over the interval, so that the load is even: clients × (1 / interval) per second.
        let offset = interval.mul_f64(i as f64 / f64::from(s.clients));
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval_at(started + offset, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut link = link;
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let scheduled = ticks.tick().await;
                if scheduled >= end {
                    break;
                }
                match client::read_all(&http, &link, false, timeout, 100, |_| {}).await {
                    Ok(read) => {
                        latencies.push(scheduled.elapsed().as_secs_f64());
                        entries.fetch_add(read.entries, Ordering::Relaxed);
                        if let Some(next) = read.delta_link {
                            link = next;
                        }
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("[fresh] a delta read failed: {e}");
                        }
                        errors += 1;
                    }
                }
            }
            (latencies, errors, link)
        });
    }
    let mut report = Report {
        entities: u64::from(s.entities),
        clients: s.clients,
        interval: s.interval,
        changes_per_interval: s.changes_per_interval,
        ..Report::default()
    };
    let mut links = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (latencies, errors, link) = joined.map_err(|e| format!("a client task failed: {e}"))?;
        report.requests += latencies.len() as u64;
        report.errors += errors;
        report.latencies.extend(latencies);
        links.push(link);
    }
    report.measured = started
        .elapsed()
        .min(s.measure.max(Duration::from_millis(1)));
    report.enumerations =
        upstream.counters.enumerations.load(Ordering::Relaxed) - enumerations_before;
    report.entries = entries.load(Ordering::Relaxed);
    report.latencies.sort_by(f64::total_cmp);

    // Closed loop: as fast as answers come, each client following its own links.
    eprintln!(
        "[fresh] closed loop: {} clients for {:?}",
        s.closed_clients, s.closed_measure
    );
    let (done, failed, took) =
        closed_loop(&http, links, s.closed_clients, s.closed_measure, s.timeout).await;
    report.closed_requests = done;
    report.closed_errors = failed;
    report.closed_measured = took;
    stop_changes.store(true, Ordering::Relaxed);
    let _ = changer.join();
    drop(gateway);
    Ok(report)
}

/// `clients` tasks each reading its delta link again as soon as the last answer is in, for
/// `length`: requests answered, failed, and the time taken.
async fn closed_loop(
    http: &HttpClient,
    links: Vec<String>,
    clients: u32,
    length: Duration,
    timeout: Duration,
) -> (u64, u64, Duration) {
    let started = Instant::now();
    let end = started + length;
    let mut tasks = tokio::task::JoinSet::new();
    for link in links.into_iter().cycle().take(clients as usize) {
        let http = http.clone();
        tasks.spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut link = link;
            while Instant::now() < end {
                match client::read_all(&http, &link, false, timeout, 100, |_| {}).await {
                    Ok(read) => {
                        ok += 1;
                        if let Some(next) = read.delta_link {
                            link = next;
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(Ok((o, f))) = tasks.join_next().await {
        ok += o;
        failed += f;
    }
    (ok, failed, started.elapsed())
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    let rate = r.requests as f64 / r.measured.as_secs_f64();
    let closed = r.closed_requests as f64 / r.closed_measured.as_secs_f64();
    let p99 = r.percentile(99.0);
    let mut out = String::new();
    out.push_str(&format!(
        "always fresh: {} entities, poll_interval {:?}, {} changes per interval, {} clients\n",
        r.entities, r.interval, r.changes_per_interval, r.clients
    ));
    out.push_str("| | measured | target |\n|---|---|---|\n");
    out.push_str(&format!(
        "| open loop: delta reads | {} in {:.1} s ({rate:.0}/s), {} failed | {}/s |\n",
        r.requests,
        r.measured.as_secs_f64(),
        r.errors,
        f64::from(r.clients) / r.interval.as_secs_f64()
    ));
    out.push_str(&format!(
        "| latency p50 / p90 / p99 / max | {} / {} / {} / {} | p99 ≤ 5 ms: {} |\n",
        secs(r.percentile(50.0)),
        secs(r.percentile(90.0)),
        secs(p99),
        secs(r.latencies.last().copied().unwrap_or(f64::NAN)),
        if p99 <= 0.005 { "met" } else { "missed" }
    ));
    out.push_str(&format!(
        "| upstream enumerations per interval | {:.2} ({} in {:.1} s) | 1 |\n",
        r.enumerations_per_interval(),
        r.enumerations,
        r.measured.as_secs_f64()
    ));
    out.push_str(&format!(
        "| changed entities received by the clients | {} | |\n",
        r.entries
    ));
    out.push_str(&format!(
        "| closed loop: stored deltas | {closed:.0} req/s ({} in {:.1} s, {} failed) | |\n",
        r.closed_requests,
        r.closed_measured.as_secs_f64(),
        r.closed_errors
    ));
    out
}

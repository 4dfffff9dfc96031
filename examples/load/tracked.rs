//! One collection size, measured in one run: the direct read, the floor, the first tracked read
//! through a fresh gateway, delta polls after 1% changed and with nothing changed, the gateway's
//! peak memory, and what a delta costs in bytes.

use std::path::Path;
use std::time::Duration;

use crate::client::{self, HttpClient, Read};
use crate::gateway::{Gateway, Usage};
use crate::upstream::{Collection, PAGE, SERVICE, Upstream};

/// How to run one size.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The gateway binary.
    pub gateway: std::path::PathBuf,
    /// Entities.
    pub entities: u32,
    /// Direct reads, floors and poll pairs to take the median of.
    pub rounds: u32,
    /// Per mille of the entities updated before each "1% changed" poll.
    pub updated_per_mille: u32,
    /// Per mille of the entities removed before each such poll.
    pub removed_per_mille: u32,
    /// Longest wait for one whole HTTP answer.
    pub timeout: Duration,
    /// A config file for the gateway.
    pub config: Option<std::path::PathBuf>,
}

/// Times of a repeated measurement, sorted.
#[derive(Clone, Debug, Default)]
pub struct Times(pub Vec<f64>);

impl Times {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64());
        self.0.sort_by(f64::total_cmp);
    }

    /// The median (the lower middle one of an even count).
    pub fn median(&self) -> f64 {
        self.0
            .get(self.0.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// "1.23 s", with the range when there is more than one.
    pub fn show(&self) -> String {
        match (self.0.first(), self.0.last()) {
            (Some(lo), Some(hi)) if self.0.len() > 1 => {
                format!("{} ({}–{})", secs(self.median()), secs(*lo), secs(*hi))
            }
            _ => secs(self.median()),
        }
    }
}

/// Seconds with a precision that suits them.
pub fn secs(s: f64) -> String {
    if s < 0.1 {
        format!("{:.1} ms", s * 1000.0)
    } else if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// Everything measured at one size.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Entities at the start.
    pub entities: u64,
    /// Bytes of the whole collection as the upstream serves it.
    pub collection_bytes: u64,
    /// The client reading the upstream directly, following every link.
    pub direct: Times,
    /// Fetch + parse + hash, one thread.
    pub floor: Times,
    /// The first tracked read through the gateway, to the delta link.
    pub first_read: Read,
    /// Gateway CPU seconds during the first read.
    pub first_read_cpu: f64,
    /// Delta polls after the change.
    pub poll_changed: Times,
    /// Gateway CPU seconds per changed poll (median).
    pub poll_changed_cpu: Times,
    /// Delta polls with nothing changed.
    pub poll_unchanged: Times,
    /// Gateway CPU seconds per unchanged poll (median).
    pub poll_unchanged_cpu: Times,
    /// Gateway peak RSS over the whole run, KiB.
    pub peak_rss_kib: u64,
    /// Gateway RSS right after the first read, KiB.
    pub rss_after_first_kib: u64,
    /// Store size on disk after the first read.
    pub store_after_first: u64,
    /// Store size on disk at the end.
    pub store_at_end: u64,
    /// Body bytes of the first changed poll's delta (all pages).
    pub delta_bytes: u64,
    /// Entries in that delta.
    pub delta_entries: u64,
    /// Bytes of the updated entities as the upstream serves them, for that poll.
    pub changed_bytes: u64,
    /// Entities updated and removed for that poll.
    pub changed_entities: u64,
    /// Upstream requests the gateway made, by kind.
    pub upstream_requests: String,
}

/// Pages a walk may take before it is called endless.
fn max_pages(entities: u64) -> u64 {
    entities / 10 + 1000
}

fn progress(n: u64, what: &str) {
    eprintln!("[{n} entities] {what}");
}

/// Measure one size.
pub async fn run(s: &Settings) -> Result<Report, String> {
    let n = u64::from(s.entities);
    progress(n, "rendering the collection");
    let mut collection = Collection::new(s.entities);
    let upstream = Upstream::start(&collection)
        .await
        .map_err(|e| format!("the upstream cannot listen: {e}"))?;
    let http = client::client();
    let direct_url = format!("{}/Items", upstream.service_root());
    let mut report = Report {
        entities: n,
        ..Report::default()
    };
    let limit = max_pages(n);

    for round in 0..s.rounds.max(1) {
        progress(n, &format!("direct read and floor, round {}", round + 1));
        let direct = client::read_all(&http, &direct_url, false, s.timeout, limit, |_| {}).await?;
        expect(direct.entries, n, "the direct read")?;
        report.collection_bytes = direct.bytes;
        report.direct.push(direct.elapsed);
        let url = direct_url.clone();
        let timeout = s.timeout;
        let (floor, _) = tokio::task::spawn_blocking(move || client::floor(url, timeout, limit))
            .await
            .map_err(|e| format!("the floor did not finish: {e}"))??;
        expect(floor.entries, n, "the floor")?;
        report.floor.push(floor.elapsed);
    }

    let config = match &s.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut gateway = Gateway::start_with(
        &s.gateway,
        &upstream.service_root(),
        Duration::from_secs(30),
        config.as_deref(),
    )?;
    let tracked_url = gateway.url(&format!("{SERVICE}/Items"));
    progress(n, "first tracked read through the gateway");
    let (first, cpu_s, after) =
        timed_read(&http, &mut gateway, &tracked_url, true, s.timeout, limit).await?;
    expect(first.entries, n, "the first tracked read")?;
    report.first_read_cpu = cpu_s;
    report.rss_after_first_kib = after.rss_kib;
    report.store_after_first = gateway.store_bytes();
    let mut delta = first
        .delta_link
        .clone()
        .ok_or("the first tracked read ended without a delta link")?;
    report.first_read = first;

    for round in 0..s.rounds.max(1) {
        let changes = collection.change(s.updated_per_mille, s.removed_per_mille);
        let expected = changes.updated + changes.removed;
        progress(
            n,
            &format!(
                "round {}: {} updated, {} removed ({} pages rendered again); polling",
                round + 1,
                changes.updated,
                changes.removed,
                changes.pages_rendered
            ),
        );
        let (read, cpu) = poll(&http, &mut gateway, &delta, s.timeout, limit).await?;
        expect(read.entries, expected, "the delta after the change")?;
        if round == 0 {
            report.delta_bytes = read.bytes;
            report.delta_entries = read.entries;
            report.changed_bytes = changes.updated_bytes;
            report.changed_entities = expected;
        }
        report.poll_changed.push(read.elapsed);
        report.poll_changed_cpu.push(Duration::from_secs_f64(cpu));
        delta = read
            .delta_link
            .ok_or("a delta ended without a delta link")?;

        let (read, cpu) = poll(&http, &mut gateway, &delta, s.timeout, limit).await?;
        expect(read.entries, 0, "the delta with nothing changed")?;
        report.poll_unchanged.push(read.elapsed);
        report.poll_unchanged_cpu.push(Duration::from_secs_f64(cpu));
        delta = read
            .delta_link
            .ok_or("a delta ended without a delta link")?;
    }
    let end = gateway.usage()?;
    report.peak_rss_kib = end.peak_rss_kib;
    report.store_at_end = gateway.store_bytes();
    report.upstream_requests = upstream.counters.summary();
    progress(
        n,
        &format!("upstream answered: {}", report.upstream_requests),
    );
    Ok(report)
}

/// Follow a delta link to its end; the read and the gateway CPU seconds it cost.
pub async fn poll(
    http: &HttpClient,
    gateway: &mut Gateway,
    delta: &str,
    timeout: Duration,
    limit: u64,
) -> Result<(Read, f64), String> {
    let (read, cpu_s, _) = timed_read(http, gateway, delta, false, timeout, limit).await?;
    Ok((read, cpu_s))
}

/// Read `url` to its end through the gateway (with the track-changes preference when `track`):
/// the read, the gateway CPU seconds it cost, and the gateway's usage after it.
pub async fn timed_read(
    http: &HttpClient,
    gateway: &mut Gateway,
    url: &str,
    track: bool,
    timeout: Duration,
    limit: u64,
) -> Result<(Read, f64, Usage), String> {
    let before = gateway.usage()?;
    let read = client::read_all(http, url, track, timeout, limit, |_| {})
        .await
        .map_err(|e| failed(gateway, e))?;
    let after = gateway.usage()?;
    Ok((read, after.cpu_s - before.cpu_s, after))
}

/// `error`, with whether the gateway still runs and the end of its log.
pub fn failed(gateway: &mut Gateway, error: String) -> String {
    let state = if gateway.alive() {
        "still running"
    } else {
        "exited"
    };
    format!(
        "{error}\nthe gateway has {state}; its log ends with:\n{}",
        gateway.log_tail()
    )
}

/// An error unless `got` entries are the `want` expected.
pub fn expect(got: u64, want: u64, what: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what} returned {got} entries, expected {want}"))
    }
}

/// Issue 8's memory target for `n` entities: 64 MiB + 100 B per entity, in KiB.
pub fn rss_target_kib(n: u64) -> u64 {
    64 * 1024 + n * 100 / 1024
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn bytes(b: u64) -> String {
    if b >= 10 << 20 {
        format!("{:.0} MB", b as f64 / 1e6)
    } else if b >= 10 << 10 {
        format!("{:.0} kB", b as f64 / 1e3)
    } else {
        format!("{b} B")
    }
}

fn verdict(ok: bool, by: f64) -> String {
    if ok {
        "met".to_owned()
    } else {
        format!("missed ({by:.1}x over)")
    }
}

/// The report as a Markdown table, beside issue 8's targets.
pub fn table(r: &Report) -> String {
    let floor = r.floor.median();
    let ratio = |t: f64| format!("{:.2}x", t / floor);
    let first = r.first_read.elapsed.as_secs_f64();
    let changed = r.poll_changed.median();
    let unchanged = r.poll_unchanged.median();
    let target = rss_target_kib(r.entities);
    let mut rows = vec![
        "| | measured | ratio to floor | target | |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];
    rows.push(format!(
        "| direct full read of the upstream by the client | {} | {} | — | |",
        r.direct.show(),
        ratio(r.direct.median())
    ));
    rows.push(format!(
        "| floor: fetch + parse (`RawValue`) + blake3 per entity, one thread | {} | 1x | — | |",
        r.floor.show()
    ));
    rows.push(format!(
        "| first tracked read through the gateway (first page after {}; gateway CPU {}) | {} | {} | ≤ 5x | {} |",
        secs(r.first_read.first_page.as_secs_f64()),
        secs(r.first_read_cpu),
        secs(first),
        ratio(first),
        verdict(first <= 5.0 * floor, first / (5.0 * floor)),
    ));
    rows.push(format!(
        "| delta poll after 1% changed (gateway CPU {}) | {} | {} | ≤ 1.5x | {} |",
        secs(r.poll_changed_cpu.median()),
        r.poll_changed.show(),
        ratio(changed),
        verdict(changed <= 1.5 * floor, changed / (1.5 * floor)),
    ));
    rows.push(format!(
        "| delta poll, nothing changed (gateway CPU {}) | {} | {} | ≤ 1.3x | {} |",
        secs(r.poll_unchanged_cpu.median()),
        r.poll_unchanged.show(),
        ratio(unchanged),
        verdict(unchanged <= 1.3 * floor, unchanged / (1.3 * floor)),
    ));
    rows.push(format!(
        "| gateway peak RSS (VmHWM) over all of it (RSS after the first read {}) | {} | — | ≤ {} | {} |",
        mib(r.rss_after_first_kib),
        mib(r.peak_rss_kib),
        mib(target),
        verdict(
            r.peak_rss_kib <= target,
            r.peak_rss_kib as f64 / target as f64
        ),
    ));
    rows.push(format!(
        "| delta bytes ({} entries) against the changed entities' own bytes | {} / {} = {:.2}x | — | — | |",
        r.delta_entries,
        bytes(r.delta_bytes),
        bytes(r.changed_bytes),
        r.delta_bytes as f64 / r.changed_bytes.max(1) as f64,
    ));
    rows.push(format!(
        "| store on disk after the first read / at the end | {} / {} | — | — | |",
        bytes(r.store_after_first),
        bytes(r.store_at_end)
    ));
    format!(
        "{} entities in {} pages of {PAGE} ({} in all), {} round(s):\n\n{}\n",
        r.entities,
        r.entities.div_ceil(u64::from(PAGE)),
        bytes(r.collection_bytes),
        r.floor.0.len(),
        rows.join("\n")
    )
}

/// One summary row per size, for sweeps.
pub fn summary(reports: &[Report]) -> String {
    let mut rows = vec![
        "| entities | direct | floor | first read | 1% poll | unchanged poll | peak RSS (target) | store |".to_owned(),
        "|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    for r in reports {
        let floor = r.floor.median();
        let first = r.first_read.elapsed.as_secs_f64();
        rows.push(format!(
            "| {} | {} | {} | {} ({:.1}x) | {} ({:.2}x) | {} ({:.2}x) | {} ({}) | {} |",
            r.entities,
            secs(r.direct.median()),
            secs(floor),
            secs(first),
            first / floor,
            secs(r.poll_changed.median()),
            r.poll_changed.median() / floor,
            secs(r.poll_unchanged.median()),
            r.poll_unchanged.median() / floor,
            mib(r.peak_rss_kib),
            mib(rss_target_kib(r.entities)),
            bytes(r.store_at_end),
        ));
    }
    rows.join("\n") + "\n"
}

/// Free bytes on the file system of `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

//! The gateway in front of a real SAP CAP service (Node.js, SQLite, from npm through
//! `tests/interop/start-cap-upstream.sh`), measured in one run: the client's direct full read of
//! CAP, the first tracked read through the gateway, a delta poll after 1% of the rows were
//! patched through CAP's own API, a poll with nothing changed, and the gateway's peak RSS. The
//! times are given as ratios to the direct read, as issue 8 sets them for CAP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::client::{self, HttpClient, Read};
use crate::gateway::Gateway;
use crate::tracked::{Times, expect, poll, rss_target_kib, secs, timed_read};
use crate::upstream::mix;

/// How to run the CAP measurement.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The gateway binary.
    pub gateway: PathBuf,
    /// Rows of `Customers`.
    pub rows: u32,
    /// CAP's server-driven page size.
    pub page_size: u32,
    /// Direct reads and poll pairs to take the median of.
    pub rounds: u32,
    /// Per mille of the rows patched before each changed poll.
    pub updated_per_mille: u32,
    /// CAP's install and work folder.
    pub dir: PathBuf,
    /// Longest wait for one whole HTTP answer.
    pub timeout: Duration,
}

/// Everything measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Rows at the start.
    pub rows: u64,
    /// CAP's page size.
    pub page_size: u32,
    /// The client reading CAP directly, following every link.
    pub direct: Times,
    /// The same in the order the gateway enumerates in (`$orderby` by key). The gateway also asks
    /// for `$count=true` on the first page of each refresh, which CAP answers in a few
    /// milliseconds; it takes the option out of the nextLinks, where CAP would count every page.
    pub direct_as_gateway: Times,
    /// The first tracked read through the gateway.
    pub first_read: Read,
    /// Gateway CPU seconds during it.
    pub first_read_cpu: f64,
    /// Delta polls after rows were patched.
    pub poll_changed: Times,
    /// Delta polls with nothing changed.
    pub poll_unchanged: Times,
    /// Rows patched before each changed poll.
    pub patched: u64,
    /// Gateway peak RSS over the whole run, KiB.
    pub peak_rss_kib: u64,
}

/// Most PATCH requests in flight at once.
const PATCHES_IN_FLIGHT: usize = 16;

/// A CAP server started by the interop script, stopped when dropped.
struct Cap {
    script: PathBuf,
    dir: PathBuf,
    name: String,
    base: String,
}

impl Cap {
    fn start(s: &Settings) -> Result<Cap, String> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/start-cap-upstream.sh");
        let name = format!("load-{}", std::process::id());
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg("--dir")
            .arg(&s.dir)
            .args(["--name", &name])
            .args(["--rows", &s.rows.to_string()])
            .args(["--page-size", &s.page_size.to_string()])
            .args(["--owner-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} did not start CAP ({}); it needs node and npm",
                script.display(),
                out.status
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let base = stdout
            .lines()
            .find_map(|l| l.strip_prefix("CAP_BASE_URL="))
            .ok_or_else(|| format!("{} printed no CAP_BASE_URL", script.display()))?
            .trim()
            .to_owned();
        Ok(Cap {
            script,
            dir: s.dir.clone(),
            name,
            base,
        })
    }
}

impl Drop for Cap {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--name", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn progress(what: &str) {
    eprintln!("[cap] {what}");
}

/// Measure.
pub async fn run(s: &Settings) -> Result<Report, String> {
    progress(&format!(
        "starting CAP with {} rows, pages of {}",
        s.rows, s.page_size
    ));
    let cap = Cap::start(s)?;
    let http = client::client();
    let rows = u64::from(s.rows);
    let limit = rows / u64::from(s.page_size.max(1)) + 100;
    let direct_url = format!("{}/Customers", cap.base);
    let direct = Direct {
        plain: direct_url.clone(),
        as_gateway: format!("{direct_url}?$orderby=ID"),
        timeout: s.timeout,
        limit,
    };
    let mut report = Report {
        rows,
        page_size: s.page_size,
        ..Report::default()
    };

    // CAP's first answers warm its JIT and SQLite's cache: one read before anything is timed.
    progress("warming CAP up with one direct read");
    let warm = client::read_all(&http, &direct_url, false, s.timeout, limit, |_| {}).await?;
    expect(warm.entries, rows, "the warm-up read")?;

    let service_path = url::Url::parse(&cap.base)
        .map_err(|e| format!("{}: not a URL: {e}", cap.base))?
        .path()
        .trim_end_matches('/')
        .to_owned();
    let mut gateway = Gateway::start(&s.gateway, &cap.base, Duration::from_secs(30))?;
    let tracked_url = gateway.url(&format!("{service_path}/Customers"));

    progress("direct reads of CAP");
    direct.read(&http, &mut report).await?;

    progress("first tracked read through the gateway");
    let (first, cpu_s, _) =
        timed_read(&http, &mut gateway, &tracked_url, true, s.timeout, limit).await?;
    expect(first.entries, rows, "the first tracked read")?;
    report.first_read_cpu = cpu_s;
    let mut delta = first
        .delta_link
        .clone()
        .ok_or("the first tracked read ended without a delta link")?;
    report.first_read = first;

    for round in 0..s.rounds.max(1) {
        let ids = pick(s.rows, s.updated_per_mille, round);
        progress(&format!(
            "round {}: patching {} rows through CAP",
            round + 1,
            ids.len()
        ));
        patch_all(&http, &cap.base, &ids, round, s.timeout).await?;
        report.patched = ids.len() as u64;

        if round > 0 {
            direct.read(&http, &mut report).await?;
        }
        let (read, _) = poll(&http, &mut gateway, &delta, s.timeout, limit).await?;
        expect(
            read.entries,
            ids.len() as u64,
            "the delta after the patches",
        )?;
        report.poll_changed.push(read.elapsed);
        delta = read
            .delta_link
            .ok_or("a delta ended without a delta link")?;

        let (read, _) = poll(&http, &mut gateway, &delta, s.timeout, limit).await?;
        expect(read.entries, 0, "the delta with nothing changed")?;
        report.poll_unchanged.push(read.elapsed);
        delta = read
            .delta_link
            .ok_or("a delta ended without a delta link")?;
    }
    report.peak_rss_kib = gateway.usage()?.peak_rss_kib;
    drop(gateway);
    drop(cap);
    Ok(report)
}

/// The direct reads of CAP taken each round: one as a client would make it, one in the gateway's
/// order.
struct Direct {
    plain: String,
    as_gateway: String,
    timeout: Duration,
    limit: u64,
}

impl Direct {
    async fn read(&self, http: &HttpClient, report: &mut Report) -> Result<(), String> {
        let read =
            client::read_all(http, &self.plain, false, self.timeout, self.limit, |_| {}).await?;
        expect(read.entries, report.rows, "the direct read")?;
        report.direct.push(read.elapsed);
        let read = client::read_all(
            http,
            &self.as_gateway,
            false,
            self.timeout,
            self.limit,
            |_| {},
        )
        .await?;
        expect(
            read.entries,
            report.rows,
            "the direct read in the gateway's order",
        )?;
        report.direct_as_gateway.push(read.elapsed);
        Ok(())
    }
}

/// `per_mille`/1000 of the IDs 1..=rows, distinct, a different choice each round.
fn pick(rows: u32, per_mille: u32, round: u32) -> Vec<u32> {
    let salt = u64::from(round + 1) << 40;
    (1..=rows)
        .filter(|id| (mix(salt ^ u64::from(*id)) % 1000) < u64::from(per_mille))
        .collect()
}

/// PATCH a new name into every row of `ids`, at most [`PATCHES_IN_FLIGHT`] at a time.
async fn patch_all(
    http: &HttpClient,
    base: &str,
    ids: &[u32],
    round: u32,
    timeout: Duration,
) -> Result<(), String> {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(PATCHES_IN_FLIGHT).max(1)) {
        let chunk = chunk.to_vec();
        let http = http.clone();
        let base = base.to_owned();
        tasks.spawn(async move {
            for id in chunk {
                patch(&http, &base, id, round, timeout).await?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("a PATCH task failed: {e}"))??;
    }
    Ok(())
}

async fn patch(
    http: &HttpClient,
    base: &str,
    id: u32,
    round: u32,
    timeout: Duration,
) -> Result<(), String> {
    let url = format!("{base}/Customers({id})");
    let body = serde_json::json!({ "name": format!("Renamed in round {} ({id})", round + 1) });
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(&url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("{url}: cannot build a request: {e}"))?;
    let send = async {
        let response = http
            .request(req)
            .await
            .map_err(|e| format!("PATCH {url}: no answer: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status == StatusCode::OK || status == StatusCode::NO_CONTENT {
            Ok(())
        } else {
            Err(format!("PATCH {url}: {status}"))
        }
    };
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| format!("PATCH {url}: no answer within {timeout:?}"))?
}

fn verdict(ratio: f64, target: f64) -> String {
    if ratio <= target {
        "met".to_owned()
    } else {
        format!("missed by {:.0}%", (ratio / target - 1.0) * 100.0)
    }
}

/// The report as a Markdown table, beside issue 8's targets for CAP.
pub fn table(r: &Report) -> String {
    let direct = r.direct.median();
    let as_gateway = r.direct_as_gateway.median();
    let first = r.first_read.elapsed.as_secs_f64();
    let changed = r.poll_changed.median();
    let unchanged = r.poll_unchanged.median();
    let target = rss_target_kib(r.rows);
    let rows = [
        "| | measured | ratio to the direct read | target | |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
        format!(
            "| direct full read of CAP by the client | {} | 1x | — | |",
            r.direct.show()
        ),
        format!(
            "| direct read in the gateway's order (`$orderby=ID`) | {} | {:.2}x | — | |",
            r.direct_as_gateway.show(),
            as_gateway / direct
        ),
        format!(
            "| first tracked read through the gateway (first page after {}; gateway CPU {}) | {} | {:.2}x | ≤ 1.30x | {} |",
            secs(r.first_read.first_page.as_secs_f64()),
            secs(r.first_read_cpu),
            secs(first),
            first / direct,
            verdict(first / direct, 1.30)
        ),
        format!(
            "| delta poll after {} rows were patched | {} | {:.2}x | ≤ 1.10x | {} |",
            r.patched,
            r.poll_changed.show(),
            changed / direct,
            verdict(changed / direct, 1.10)
        ),
        format!(
            "| delta poll, nothing changed | {} | {:.2}x | — | |",
            r.poll_unchanged.show(),
            unchanged / direct
        ),
        format!(
            "| gateway peak RSS (VmHWM) | {:.0} MiB | — | ≤ {:.0} MiB | {} |",
            r.peak_rss_kib as f64 / 1024.0,
            target as f64 / 1024.0,
            if r.peak_rss_kib <= target {
                "met".to_owned()
            } else {
                "missed".to_owned()
            }
        ),
    ];
    format!(
        "SAP CAP, {} rows of Customers in pages of {}, {} round(s):\n\n{}\n",
        r.rows,
        r.page_size,
        r.poll_changed.0.len(),
        rows.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_picks_about_its_share_of_distinct_ids_and_another_round_others() {
        let a = pick(100_000, 10, 0);
        let b = pick(100_000, 10, 1);
        assert!((800..1200).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(a, b);
    }
}

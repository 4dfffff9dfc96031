//! The load tool: a fast in-process OData upstream, the real gateway binary in front of it as a
//! child process, and a client, measuring in one run what issue 8 of the project sets targets
//! for. See README, "Benchmarks", "The load tool".
//!
//! ```sh
//! cargo build --release && cargo run --release --example load -- tracked --entities 1m
//! cargo run --release --example load -- passthrough
//! cargo run --release --example load -- sweep --sizes 10k,100k,1m --chart docs/scale.svg
//! cargo run --release --example load -- fresh --entities 100k --clients 200
//! cargo run --release --example load -- cap --rows 100k
//! ```
//!
//! All traffic stays on 127.0.0.1; every loop is bounded in count and time.

mod cap;
mod chart;
mod client;
mod fresh;
mod gateway;
mod passthrough;
mod tracked;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Measure the gateway against a fast in-process upstream")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One collection size: direct read, floor, first tracked read, delta polls, peak RSS.
    Tracked {
        /// Entities (10k, 1m, or a number).
        #[arg(long, default_value = "100k", value_parser = parse_count)]
        entities: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Several sizes, a summary table and an SVG chart.
    Sweep {
        /// Sizes, comma-separated; 10m only runs when the disk has room for it.
        #[arg(long, default_value = "10k,100k,1m", value_delimiter = ',', value_parser = parse_count)]
        sizes: Vec<u32>,
        /// Where the chart goes.
        #[arg(long, default_value = "docs/scale.svg")]
        chart: PathBuf,
        /// A note for the chart's title (machine, date, code).
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        common: Common,
    },
    /// Background refresh under load (P5): clients each following its own delta link once per
    /// poll_interval (open loop) while the upstream changes, then the closed-loop throughput of
    /// stored deltas.
    Fresh {
        /// Entities in the feed.
        #[arg(long, default_value = "100k", value_parser = parse_count)]
        entities: u32,
        /// Clients, each with its own delta link.
        #[arg(long, default_value_t = 200)]
        clients: u32,
        /// The gateway's poll_interval and each client's request interval, in ms (at least 1000).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Entities updated upstream per interval.
        #[arg(long, default_value_t = 100)]
        changes: u32,
        /// Seconds of the open-loop measurement.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Concurrent clients of the closed-loop run.
        #[arg(long, default_value_t = 32)]
        closed_clients: u32,
        /// Seconds of the closed-loop run.
        #[arg(long, default_value_t = 10)]
        closed_seconds: u64,
        /// The gateway binary.
        #[arg(long, default_value_os_t = default_gateway())]
        gateway: PathBuf,
    },
    /// The gateway in front of a real SAP CAP service (started with
    /// tests/interop/start-cap-upstream.sh; needs node and npm): direct read, first tracked read,
    /// polls after 1% of the rows were patched and with nothing changed, peak RSS.
    Cap {
        /// Rows of Customers.
        #[arg(long, default_value = "100k", value_parser = parse_count)]
        rows: u32,
        /// CAP's server-driven page size.
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
        /// Direct reads and poll pairs; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Per mille of the rows patched before each changed poll.
        #[arg(long, default_value_t = 10)]
        updated_per_mille: u32,
        /// CAP's install and work folder.
        #[arg(long, default_value_os_t = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cap-upstream"))]
        dir: PathBuf,
        /// Longest wait for one whole HTTP answer, in seconds.
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
        /// The gateway binary.
        #[arg(long, default_value_os_t = default_gateway())]
        gateway: PathBuf,
    },
    /// Small entity GETs at several concurrencies: direct, through the gateway, through nginx.
    Passthrough {
        /// Concurrencies (connections), comma-separated.
        #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Most requests per measurement.
        #[arg(long, default_value_t = 2_000_000)]
        max_requests: u64,
        /// Do not use nginx even when it is installed.
        #[arg(long)]
        no_nginx: bool,
        /// The gateway binary.
        #[arg(long, default_value_os_t = default_gateway())]
        gateway: PathBuf,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// The gateway binary (build it first: cargo build --release).
    #[arg(long, default_value_os_t = default_gateway())]
    gateway: PathBuf,
    /// Direct reads, floors and pairs of polls per size; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Per mille of the entities updated before each changed poll.
    #[arg(long, default_value_t = 10)]
    updated_per_mille: u32,
    /// Per mille of the entities removed before each changed poll.
    #[arg(long, default_value_t = 0)]
    removed_per_mille: u32,
    /// Longest wait for one whole HTTP answer, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// A gateway config file (its `[[route]]`s are not needed: the upstream comes by flag), for
    /// settings without a flag, e.g. `[limits] store_cache_bytes`.
    #[arg(long)]
    gateway_config: Option<PathBuf>,
}

impl Common {
    fn settings(&self, entities: u32) -> Result<tracked::Settings, String> {
        if self.updated_per_mille + self.removed_per_mille > 1000 {
            return Err(
                "--updated-per-mille and --removed-per-mille add up to more than 1000".into(),
            );
        }
        if self.rounds == 0 || self.rounds > 100 {
            return Err("--rounds must be between 1 and 100".into());
        }
        Ok(tracked::Settings {
            gateway: self.gateway.clone(),
            entities,
            rounds: self.rounds,
            updated_per_mille: self.updated_per_mille,
            removed_per_mille: self.removed_per_mille,
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
            config: self.gateway_config.clone(),
        })
    }
}

fn default_gateway() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release").join("odata-delta-gateway")
}

/// `10k`, `1m`, `2500`.
fn parse_count(s: &str) -> Result<u32, String> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, factor) = match s.strip_suffix('k') {
        Some(d) => (d, 1_000),
        None => match s.strip_suffix('m') {
            Some(d) => (d, 1_000_000),
            None => (s.as_str(), 1),
        },
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s}: not a count (e.g. 10k, 1m, 2500)"))?;
    let n = n * factor;
    if n == 0 || n > 50_000_000 {
        return Err(format!("{s}: between 1 and 50m entities"));
    }
    Ok(n as u32)
}

/// Disk a size needs: the store (today up to ~2.3 KB per entity) and a margin.
fn disk_needed(n: u32) -> u64 {
    u64::from(n) * 3_000 + (2 << 30)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mode: Mode) -> Result<(), String> {
    match mode {
        Mode::Tracked { entities, common } => {
            let report = tracked::run(&common.settings(entities)?).await?;
            println!("{}", tracked::table(&report));
        }
        Mode::Sweep {
            sizes,
            chart,
            note,
            common,
        } => {
            let mut reports = Vec::new();
            for n in sizes {
                let free = tracked::free_bytes(&std::env::temp_dir()).unwrap_or(u64::MAX);
                if n >= 10_000_000 && free < disk_needed(n) {
                    eprintln!(
                        "skipping {n} entities: {} GB free in the temporary directory, {} GB needed",
                        free / 1_000_000_000,
                        disk_needed(n) / 1_000_000_000
                    );
                    continue;
                }
                let report = tracked::run(&common.settings(n)?).await?;
                println!("{}", tracked::table(&report));
                reports.push(report);
            }
            println!("{}", tracked::summary(&reports));
            if reports.len() >= 2 {
                chart::write(&chart, &reports, &note)?;
                eprintln!("chart written to {}", chart.display());
            }
        }
        Mode::Fresh {
            entities,
            clients,
            interval_ms,
            changes,
            seconds,
            closed_clients,
            closed_seconds,
            gateway,
        } => {
            let settings = fresh::Settings {
                gateway,
                entities,
                clients,
                interval: Duration::from_millis(interval_ms),
                changes_per_interval: changes,
                measure: Duration::from_secs(seconds.clamp(1, 3600)),
                closed_clients: closed_clients.clamp(1, 1024),
                closed_measure: Duration::from_secs(closed_seconds.clamp(1, 600)),
                timeout: Duration::from_secs(60),
            };
            let report = fresh::run(&settings).await?;
            println!("{}", fresh::table(&report));
        }
        Mode::Cap {
            rows,
            page_size,
            rounds,
            updated_per_mille,
            dir,
            timeout_secs,
            gateway,
        } => {
            if rounds == 0 || rounds > 100 || updated_per_mille > 1000 {
                return Err("--rounds takes 1 to 100, --updated-per-mille at most 1000".into());
            }
            if page_size == 0 || page_size > 100_000 {
                return Err("--page-size takes 1 to 100000".into());
            }
            let settings = cap::Settings {
                gateway,
                rows,
                page_size,
                rounds,
                updated_per_mille,
                dir,
                timeout: Duration::from_secs(timeout_secs.max(1)),
            };
            let report = cap::run(&settings).await?;
            println!("{}", cap::table(&report));
        }
        Mode::Passthrough {
            concurrency,
            seconds,
            max_requests,
            no_nginx,
            gateway,
        } => {
            if concurrency.is_empty() || concurrency.iter().any(|c| *c == 0 || *c > 1024) {
                return Err("--concurrency takes numbers between 1 and 1024".into());
            }
            let settings = passthrough::Settings {
                gateway,
                concurrency,
                duration: Duration::from_secs(seconds.clamp(1, 600)),
                max_requests: max_requests.max(1),
                warmup: Duration::from_millis(500),
                nginx: if no_nginx {
                    None
                } else {
                    passthrough::find_nginx()
                },
            };
            let (rows, note) = passthrough::run(&settings).await?;
            if let Some(note) = note {
                eprintln!("{note}");
            }
            println!("{}", passthrough::table(&rows));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_suffixes() {
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("1M"), Ok(1_000_000));
        assert_eq!(parse_count("2500"), Ok(2500));
        assert!(parse_count("0").is_err());
        assert!(parse_count("x").is_err());
    }
}

//! Pass-through: small entity GETs driven by a closed-loop client (each worker on its own
//! keep-alive connection sends the next request when the last answer is in, like wrk), straight
//! to the upstream, through the gateway and, when nginx is installed, through an nginx proxy hop
//! to the same upstream, so that the gateway's hop can be compared with nginx's in one run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::gateway::Gateway;
use crate::upstream::{Collection, SERVICE, Upstream};

/// How to run the pass-through measurement.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The gateway binary.
    pub gateway: PathBuf,
    /// Concurrencies (connections) to measure.
    pub concurrency: Vec<usize>,
    /// Length of each measurement.
    pub duration: Duration,
    /// Most requests of one measurement.
    pub max_requests: u64,
    /// Warm-up before each measurement.
    pub warmup: Duration,
    /// The nginx binary, if one is to be used.
    pub nginx: Option<PathBuf>,
}

/// One closed-loop measurement.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    /// Requests answered with 200.
    pub ok: u64,
    /// Failed requests (other statuses, broken connections).
    pub errors: u64,
    /// Requests per second.
    pub rate: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
}

/// Drive `addr` with `concurrency` connections, GET-ting `Items(k)` for rotating keys up to
/// `keys`, for `duration` or `max_requests`, whichever ends first.
pub async fn closed_loop(
    addr: SocketAddr,
    keys: u32,
    concurrency: usize,
    duration: Duration,
    max_requests: u64,
) -> Result<Load, String> {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let issued = issued.clone();
        workers.push(tokio::spawn(async move {
            worker(addr, w as u32, keys, deadline, max_requests, issued).await
        }));
    }
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, err) = w
            .await
            .map_err(|e| format!("a load worker failed: {e}"))??;
        latencies.extend(lat);
        errors += err;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|v| f64::from(*v))
            .unwrap_or(f64::NAN)
    };
    Ok(Load {
        ok: latencies.len() as u64,
        errors,
        rate: latencies.len() as f64 / elapsed,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    })
}

/// Connections in a row a worker may open again after failures before it gives up (a server may
/// close a keep-alive connection after some requests; that is not a failure of the run).
const MAX_RECONNECTS: u32 = 20;

async fn worker(
    addr: SocketAddr,
    w: u32,
    keys: u32,
    deadline: Instant,
    max_requests: u64,
    issued: Arc<AtomicU64>,
) -> Result<(Vec<u32>, u64), String> {
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut reconnects = 0;
    let mut key = w.wrapping_mul(7919) % keys.max(1);
    'connect: loop {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("no HTTP connection to {addr}: {e}"))?;
        let conn = tokio::spawn(conn);
        loop {
            if Instant::now() >= deadline || issued.fetch_add(1, Ordering::Relaxed) >= max_requests
            {
                conn.abort();
                return Ok((latencies, errors));
            }
            key = key % keys.max(1) + 1;
            let req = Request::get(format!("{SERVICE}/Items({key})"))
                .header("host", addr.to_string())
                .header("accept", "application/json")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("cannot build a request: {e}"))?;
            let sent = Instant::now();
            let answer = async {
                let response = sender.send_request(req).await?;
                let status = response.status();
                response.into_body().collect().await?;
                Ok::<_, hyper::Error>(status)
            };
            match tokio::time::timeout(Duration::from_secs(10), answer).await {
                Ok(Ok(status)) if status.is_success() => {
                    reconnects = 0;
                    latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
                Ok(Ok(_)) => errors += 1,
                Ok(Err(e)) if e.is_closed() || e.is_incomplete_message() => {
                    reconnects += 1;
                    conn.abort();
                    if reconnects > MAX_RECONNECTS {
                        return Err(format!("{addr}: connections keep closing; stopped"));
                    }
                    continue 'connect;
                }
                _ => {
                    errors += 1;
                    reconnects += 1;
                    conn.abort();
                    if reconnects > MAX_RECONNECTS {
                        return Err(format!("{addr}: connections keep failing; stopped"));
                    }
                    continue 'connect;
                }
            }
        }
    }
}

/// An nginx proxy hop in front of the upstream, with a temporary config and prefix.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Start `binary` proxying 127.0.0.1 (a free port) to `upstream`, with keep-alive to the
    /// upstream, no access log, one worker per core.
    pub fn start(binary: &Path, upstream: SocketAddr) -> Result<Nginx, String> {
        let dir = tempfile::Builder::new()
            .prefix("odg-load-nginx-")
            .tempdir()
            .map_err(|e| format!("cannot create a directory for nginx: {e}"))?;
        // nginx cannot be told to pick a port and say which; take a free one and hand it over.
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for nginx: {e}"))?
            .port();
        let p = dir.path().display();
        let config = format!(
            r#"daemon off;
master_process on;
worker_processes auto;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    upstream odata {{ server {upstream}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://odata;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
        );
        let file = dir.path().join("nginx.conf");
        std::fs::write(&file, config).map_err(|e| format!("cannot write nginx.conf: {e}"))?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&file)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut nginx = Nginx {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx._dir.path().join("error.log"))
                    .unwrap_or_default();
                return Err(format!("nginx exited at start ({status}): {log}"));
            }
            if std::net::TcpStream::connect(nginx.addr).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err("nginx did not listen within 10 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL of the master leaves its workers to notice on their own; a fast shutdown
        // (SIGTERM) lets the master take them down.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where nginx is, if it is installed.
pub fn find_nginx() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/local/sbin".into());
    dirs.into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// Results at one concurrency.
#[derive(Clone, Debug)]
pub struct Row {
    /// Connections.
    pub concurrency: usize,
    /// Straight to the upstream.
    pub direct: Load,
    /// Through the gateway.
    pub gateway: Load,
    /// Through nginx, when measured.
    pub nginx: Option<Load>,
}

/// Entities the pass-through upstream serves.
const KEYS: u32 = 10_000;

/// Measure every concurrency against the direct upstream, the gateway and nginx.
pub async fn run(s: &Settings) -> Result<(Vec<Row>, Option<String>), String> {
    let collection = Collection::new(KEYS);
    let upstream = Upstream::start(&collection)
        .await
        .map_err(|e| format!("the upstream cannot listen: {e}"))?;
    let gateway = Gateway::start(
        &s.gateway,
        &upstream.service_root(),
        Duration::from_secs(30),
    )?;
    let (nginx, nginx_note) = match &s.nginx {
        Some(bin) => match Nginx::start(bin, upstream.addr) {
            Ok(n) => (Some(n), None),
            Err(e) => (None, Some(format!("nginx not measured: {e}"))),
        },
        None => (None, Some("nginx not measured: not installed".to_owned())),
    };
    let mut rows = Vec::new();
    for &c in &s.concurrency {
        let measure = |addr: SocketAddr, what: &'static str| async move {
            eprintln!("[pass-through] -c{c} {what}");
            closed_loop(addr, KEYS, c, s.warmup, s.max_requests).await?;
            let load = closed_loop(addr, KEYS, c, s.duration, s.max_requests).await?;
            if load.ok == 0 {
                return Err(format!("{what}: no request succeeded at -c{c}"));
            }
            Ok::<_, String>(load)
        };
        let direct = measure(upstream.addr, "direct").await?;
        let through = measure(gateway.addr, "gateway").await?;
        let via_nginx = match &nginx {
            Some(n) => Some(measure(n.addr, "nginx").await?),
            None => None,
        };
        rows.push(Row {
            concurrency: c,
            direct,
            gateway: through,
            nginx: via_nginx,
        });
    }
    Ok((rows, nginx_note))
}

/// The rows as a Markdown table, with the target verdicts.
pub fn table(rows: &[Row]) -> String {
    let mut out = vec![
        "| connections | direct req/s (p50) | gateway req/s (p50, p99) | nginx req/s (p50, p99) | gateway hop adds to p50 | nginx hop adds to p50 | target |".to_owned(),
        "|---|---|---|---|---|---|---|".to_owned(),
    ];
    for r in rows {
        let cell = |l: &Load| {
            let errors = if l.errors > 0 {
                format!(", {} errors", l.errors)
            } else {
                String::new()
            };
            format!(
                "{:.0} ({:.0} µs, {:.0} µs{errors})",
                l.rate, l.p50_us, l.p99_us
            )
        };
        let gw_added = r.gateway.p50_us - r.direct.p50_us;
        let (nginx_cell, nginx_added, target) = match &r.nginx {
            Some(n) => {
                let added = n.p50_us - r.direct.p50_us;
                let target = if r.concurrency == 1 {
                    if gw_added <= added {
                        "added p50 ≤ nginx's: met".to_owned()
                    } else {
                        format!("added p50 ≤ nginx's: missed ({:.1}x)", gw_added / added)
                    }
                } else if r.gateway.rate >= n.rate {
                    "req/s ≥ nginx's: met".to_owned()
                } else {
                    format!(
                        "req/s ≥ nginx's: missed ({:.0}% of it)",
                        100.0 * r.gateway.rate / n.rate
                    )
                };
                (cell(n), format!("{added:.0} µs"), target)
            }
            None => ("—".to_owned(), "—".to_owned(), "—".to_owned()),
        };
        out.push(format!(
            "| {} | {:.0} ({:.0} µs) | {} | {} | {gw_added:.0} µs | {nginx_added} | {target} |",
            r.concurrency,
            r.direct.rate,
            r.direct.p50_us,
            cell(&r.gateway),
            nginx_cell,
        ));
    }
    out.join("\n") + "\n"
}

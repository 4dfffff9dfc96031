//! What a user of the gateway waits for: whole tracked reads through the real gateway, in process,
//! against a tiny upstream that serves a static paged collection.
//!
//! For N entities (10k and 100k; 1k under `cargo test --benches`):
//! - `initial`: the first tracked read of a fresh gateway — `$metadata`, the whole upstream
//!   enumeration, hashing, the first commit, and every page of the gateway's answer up to its delta
//!   link.
//! - `delta_unchanged`: following a delta link when nothing changed — a full enumeration and diff,
//!   no commit, an empty delta.
//! - `reread_unchanged`: a new tracked read of a feed the gateway already holds, nothing changed —
//!   the same enumeration and diff as `delta_unchanged`, plus serving all N entities from the store.
//! - `delta_1pct`: following a delta link after 1% of the entities changed upstream — enumeration,
//!   diff, a commit of N/100 rows, and a delta of N/100 entities.
//!
//! Upstream, gateway and client share this process and the machine's cores, so the figures are an
//! upper bound for a gateway whose upstream runs elsewhere. Criterion reports wall-clock time; the
//! process CPU time of the same sections is printed after each bench (`process CPU … per
//! iteration`), which on a shared machine varies less with the load. Run with `cargo bench --bench refresh`
//! (or `cargo bench --bench refresh -- 10k` for one size).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use odata_delta_gateway::config::{Config, Flags};
use odata_delta_gateway::{Running, Shared};
use rustix::time::{ClockId, clock_gettime};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// Entities per upstream page.
const UPSTREAM_PAGE: u32 = 1000;
const SERVICE: &str = "/svc";

const METADATA: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">
  <edmx:DataServices>
    <Schema Namespace="Bench" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityType Name="Item">
        <Key><PropertyRef Name="ID"/></Key>
        <Property Name="ID" Type="Edm.Int32" Nullable="false"/>
      </EntityType>
      <EntityContainer Name="Service">
        <EntitySet Name="Items" EntityType="Bench.Item"/>
      </EntityContainer>
    </Schema>
  </edmx:DataServices>
</edmx:Edmx>
"#;

/// The upstream's collection: precomputed page bodies, swapped whole between benchmark iterations.
type Pages = Arc<RwLock<Arc<Vec<Bytes>>>>;

/// The collection of `n` entities, entity `id` at revision `revision(id)`, cut into pages with
/// `@odata.count` (the gateway asks for it and checks its enumeration against it) and relative
/// `$skiptoken` next links, like a CAP service writes them.
fn pages(n: u32, revision: impl Fn(u32) -> u32 + Copy) -> Arc<Vec<Bytes>> {
    let count = n.div_ceil(UPSTREAM_PAGE);
    Arc::new(
        (0..count)
            .map(|i| {
                let ids = i * UPSTREAM_PAGE + 1..((i + 1) * UPSTREAM_PAGE).min(n) + 1;
                let next = (i + 1 < count).then(|| format!("Items?$skiptoken={}", i + 1));
                Bytes::from(support::page_body(ids, revision, Some(n), next.as_deref()))
            })
            .collect(),
    )
}

/// Serve `pages` under `/svc/Items` and a one-set `$metadata`, until `stop`.
async fn upstream(listener: TcpListener, pages: Pages, stop: CancellationToken) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let pages = pages.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let pages = pages.clone();
            async move { Ok::<_, Infallible>(answer(&req, &pages)) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(connection);
    }
}

fn answer(req: &Request<Incoming>, pages: &Pages) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("odata-version", "4.0")
            .body(Full::new(body))
            .expect("a valid response")
    };
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/svc/$metadata" => reply(StatusCode::OK, "application/xml", Bytes::from(METADATA)),
        // The bench never removes entities, so the gateway has nothing to confirm with $filter;
        // answer anything unexpected loudly so a change in that is noticed.
        "/svc/Items" if !query.contains("filter") => {
            let page = query
                .split('&')
                .find_map(|p| p.split_once("skiptoken=").map(|(_, v)| v))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            let current = pages.read().expect("not poisoned").clone();
            match current.get(page) {
                Some(body) => reply(
                    StatusCode::OK,
                    "application/json;odata.metadata=minimal",
                    body.clone(),
                ),
                None => reply(StatusCode::NOT_FOUND, "text/plain", Bytes::new()),
            }
        }
        _ => reply(
            StatusCode::NOT_IMPLEMENTED,
            "text/plain",
            Bytes::from_static(b"not served by the bench upstream"),
        ),
    }
}

/// A gateway in front of the bench upstream, with its own store.
struct Gateway {
    /// Handle to shut it down between iterations.
    running: Running,
    /// Where it listens.
    addr: SocketAddr,
    /// Its store, deleted with it.
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(upstream: SocketAddr) -> Gateway {
        let dir = tempfile::tempdir().expect("a temp dir");
        let flags = Flags {
            upstream: Some(format!("http://{upstream}{SERVICE}")),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            data_dir: Some(dir.path().to_owned()),
            ..Flags::default()
        };
        let config = Config::from_parts(&flags, None).expect("a valid config");
        let shared = Shared::new(config).expect("the store opens");
        let running = odata_delta_gateway::start(Arc::new(shared), CancellationToken::new())
            .await
            .expect("the gateway listens");
        Gateway {
            addr: running.addr,
            running,
            _dir: dir,
        }
    }

    fn collection(&self) -> String {
        format!("http://{}{SERVICE}/Items", self.addr)
    }
}

/// The parts of a tracked response the client needs.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Follow a tracked read or a delta link through all its pages, like a sync client; returns the
/// number of entries and the new delta link.
async fn read_all(client: &HttpClient, first: &str, track: bool) -> (usize, String) {
    let mut url = first.to_owned();
    let mut entries = 0;
    loop {
        let mut req = Request::get(&url);
        if track {
            req = req.header("prefer", "odata.track-changes");
        }
        let response = client
            .request(req.body(Full::new(Bytes::new())).expect("a valid request"))
            .await
            .expect("the gateway answers");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a whole body")
            .to_bytes();
        assert_eq!(
            status,
            StatusCode::OK,
            "{url}: {}",
            String::from_utf8_lossy(&body)
        );
        let page: Answer = serde_json::from_slice(&body).expect("a JSON page");
        entries += page.value.len();
        match (page.next_link, page.delta_link) {
            (Some(next), _) => url = next,
            (None, Some(delta)) => return (entries, delta),
            (None, None) => panic!("{url}: a page with neither nextLink nor deltaLink"),
        }
    }
}

/// Everything one collection size needs: the two upstream states (the second with every 100th
/// entity changed), the running upstream, and a runtime.
struct Fixture {
    /// Entities in the collection.
    n: u32,
    /// Runs upstream, gateways and client; kept for the whole size so connections are reused.
    runtime: Runtime,
    /// The sync client's connection pool.
    client: HttpClient,
    /// Where the bench upstream listens.
    upstream: SocketAddr,
    /// What the upstream serves right now: `base` or `changed`.
    current: Pages,
    /// Every entity at revision 1.
    base: Arc<Vec<Bytes>>,
    /// Every 100th entity at revision 2, the rest as in `base`.
    changed: Arc<Vec<Bytes>>,
    /// Stops the upstream when the fixture is dropped.
    stop: CancellationToken,
}

impl Fixture {
    fn new(n: u32) -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let base = pages(n, |_| 1);
        let changed = pages(n, |id| if id.is_multiple_of(100) { 2 } else { 1 });
        let current: Pages = Arc::new(RwLock::new(base.clone()));
        let stop = CancellationToken::new();
        let upstream = runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let addr = listener.local_addr().expect("an address");
            tokio::spawn(upstream(listener, current.clone(), stop.clone()));
            addr
        });
        let client = runtime.block_on(async {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http()
        });
        Fixture {
            n,
            runtime,
            client,
            upstream,
            current,
            base,
            changed,
            stop,
        }
    }

    fn serve(&self, pages: &Arc<Vec<Bytes>>) {
        *self.current.write().expect("not poisoned") = pages.clone();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Whether criterion measures (`cargo bench`) rather than smoke-tests (`cargo test --benches`).
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

fn label(n: u32) -> String {
    if n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Wall-clock time is what the benches report; the process CPU time of the same timed sections
/// (gateway, upstream and client threads together) is tallied beside it and printed after each
/// bench, because on a shared machine it shows the cost independently of the load.
#[derive(Default)]
struct CpuTally {
    /// Timed sections run, warm-up included.
    iterations: u64,
    /// Process CPU time they took together.
    cpu: Duration,
}

impl CpuTally {
    /// Run `section`, returning its wall-clock time and adding its process CPU time to the tally.
    fn time<T>(&mut self, section: impl FnOnce() -> T) -> (Duration, T) {
        let cpu = process_cpu();
        let started = Instant::now();
        let out = section();
        let wall = started.elapsed();
        self.cpu += process_cpu().saturating_sub(cpu);
        self.iterations += 1;
        (wall, out)
    }

    fn report(&self, name: &str, n: u32) {
        if self.iterations > 0 {
            println!(
                "refresh/{name}/{}: process CPU {:.1} ms per iteration ({} iterations)",
                label(n),
                self.cpu.as_secs_f64() * 1000.0 / self.iterations as f64,
                self.iterations
            );
        }
    }
}

fn process_cpu() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn refresh(c: &mut Criterion) {
    let sizes: &[u32] = if measuring() {
        &[10_000, 100_000]
    } else {
        &[1_000]
    };
    let mut group = c.benchmark_group("refresh");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    for &n in sizes {
        let mut fixture: Option<Fixture> = None;
        group.throughput(Throughput::Elements(u64::from(n)));
        // About one iteration per sample at 100k: enough to see a change, short enough for 2 cores.
        let (initial_time, delta_time) = if n >= 100_000 { (25, 12) } else { (8, 6) };
        group.measurement_time(Duration::from_secs(initial_time));

        let mut tally = CpuTally::default();
        group.bench_function(BenchmarkId::new("initial", label(n)), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(n));
            f.serve(&f.base);
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let gateway = f.runtime.block_on(Gateway::start(f.upstream));
                    let collection = gateway.collection();
                    let (wall, (entries, _)) =
                        tally.time(|| f.runtime.block_on(read_all(&f.client, &collection, true)));
                    total += wall;
                    assert_eq!(entries, f.n as usize);
                    f.runtime.block_on(gateway.running.shutdown());
                }
                total
            })
        });
        tally.report("initial", n);

        group.measurement_time(Duration::from_secs(delta_time));
        let mut tally = CpuTally::default();
        group.bench_function(BenchmarkId::new("delta_unchanged", label(n)), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(n));
            f.serve(&f.base);
            let gateway = f.runtime.block_on(Gateway::start(f.upstream));
            let (_, mut link) =
                f.runtime
                    .block_on(read_all(&f.client, &gateway.collection(), true));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (wall, (entries, next)) =
                        tally.time(|| f.runtime.block_on(read_all(&f.client, &link, false)));
                    total += wall;
                    assert_eq!(entries, 0);
                    link = next;
                }
                total
            });
            f.runtime.block_on(gateway.running.shutdown());
        });
        tally.report("delta_unchanged", n);

        let mut tally = CpuTally::default();
        group.bench_function(BenchmarkId::new("reread_unchanged", label(n)), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(n));
            f.serve(&f.base);
            let gateway = f.runtime.block_on(Gateway::start(f.upstream));
            let collection = gateway.collection();
            f.runtime.block_on(read_all(&f.client, &collection, true));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (wall, (entries, _)) =
                        tally.time(|| f.runtime.block_on(read_all(&f.client, &collection, true)));
                    total += wall;
                    assert_eq!(entries, f.n as usize);
                }
                total
            });
            f.runtime.block_on(gateway.running.shutdown());
        });
        tally.report("reread_unchanged", n);

        let mut tally = CpuTally::default();
        group.bench_function(BenchmarkId::new("delta_1pct", label(n)), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(n));
            f.serve(&f.base);
            let gateway = f.runtime.block_on(Gateway::start(f.upstream));
            let (_, mut link) =
                f.runtime
                    .block_on(read_all(&f.client, &gateway.collection(), true));
            // Alternate between the two upstream states: each step changes every 100th entity.
            let mut flip = false;
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    flip = !flip;
                    f.serve(if flip { &f.changed } else { &f.base });
                    let (wall, (entries, next)) =
                        tally.time(|| f.runtime.block_on(read_all(&f.client, &link, false)));
                    total += wall;
                    assert_eq!(entries, (f.n / 100) as usize);
                    link = next;
                }
                total
            });
            f.runtime.block_on(gateway.running.shutdown());
        });
        tally.report("delta_1pct", n);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = refresh
}
criterion_main!(benches);

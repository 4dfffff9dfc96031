//! The real gateway under test: in-process on 127.0.0.1:0 (`Gateway`), or as the real binary in a
//! child process that can be killed with SIGKILL and restarted on the same data dir
//! (`GatewayProcess`). Plus a small HTTP client and a sync-client replica that applies deltas.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use odata_delta_gateway::config::{Config, Flags};
use odata_delta_gateway::{Running, Shared};

use super::{FakeUpstream, shop};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The preference that makes a read of a collection tracked (C1).
pub const TRACK: [(&str, &str); 1] = [("Prefer", "odata.track-changes")];

/// The gateway running in this process.
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its store directory (kept alive as long as the gateway).
    pub dir: tempfile::TempDir,
    /// Its shared state (for its clock, store and feeds).
    pub shared: Arc<Shared>,
    running: Option<Running>,
}

impl Gateway {
    /// Start a gateway for `upstream` with default settings.
    pub async fn start(upstream: &str) -> Gateway {
        Self::start_with(upstream, None, |_| {}).await
    }

    /// Start with an optional gateway.toml text and a hook to adjust the flags.
    pub async fn start_with(
        upstream: &str,
        toml: Option<&str>,
        adjust: impl FnOnce(&mut Flags),
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, upstream, toml, adjust).await
    }

    /// Start on an existing data dir.
    pub async fn start_in(
        dir: tempfile::TempDir,
        upstream: &str,
        toml: Option<&str>,
        adjust: impl FnOnce(&mut Flags),
    ) -> Gateway {
        let mut flags = Flags {
            upstream: (!upstream.is_empty()).then(|| upstream.to_owned()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().to_owned()),
            ..Flags::default()
        };
        adjust(&mut flags);
        let config = match toml {
            None => Config::from_parts(&flags, None),
            Some(text) => Config::from_parts(&flags, Some((Path::new("gateway.toml"), text))),
        }
        .expect("valid test config");
        let shared = Arc::new(Shared::new(config).expect("store opens"));
        let running = odata_delta_gateway::start(shared.clone(), CancellationToken::new())
            .await
            .expect("gateway listens");
        Gateway {
            addr: running.addr,
            dir,
            shared,
            running: Some(running),
        }
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The admin listener's address, when one was configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(|r| r.admin_addr)
    }

    /// Stop gracefully and hand back the data dir (for restart tests).
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.dir
    }
}

/// An upstream with a gateway in front of it and a client of the gateway: where most black-box
/// tests start. Tests destructure it: `let BehindGateway { up, gw, client } = ...`.
pub struct BehindGateway {
    /// The upstream.
    pub up: FakeUpstream,
    /// The gateway in front of it.
    pub gw: Gateway,
    /// A client of the gateway.
    pub client: Client,
}

impl BehindGateway {
    /// The shop ([`shop::shop`]) with `customers` customers behind a gateway with default
    /// settings.
    pub async fn shop(customers: i64) -> Self {
        Self::over(shop::shop(customers).await).await
    }

    /// The shop with `customers` customers in pages of `page_size`, behind a gateway with
    /// default settings.
    pub async fn shop_paged(customers: i64, page_size: usize) -> Self {
        Self::over(shop::shop_paged(customers, page_size).await).await
    }

    /// A gateway with default settings in front of `up`.
    pub async fn over(up: FakeUpstream) -> Self {
        Self::over_with(up, None, |_| {}).await
    }

    /// A gateway in front of `up` with an optional gateway.toml text and a hook to adjust the
    /// flags, as [`Gateway::start_with`].
    pub async fn over_with(
        up: FakeUpstream,
        toml: Option<&str>,
        adjust: impl FnOnce(&mut Flags),
    ) -> Self {
        let gw = Gateway::start_with(&up.base_url(), toml, adjust).await;
        BehindGateway {
            up,
            gw,
            client: Client::default(),
        }
    }
}

/// The real binary in a child process. Every line it writes to stderr is kept, so that tests can
/// check what the gateway logs.
pub struct GatewayProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    child: std::process::Child,
    stderr: Arc<std::sync::Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Start `odata-delta-gateway --upstream U --data-dir D --listen 127.0.0.1:0 [extra…]` and wait
    /// until it listens.
    pub fn spawn(upstream: &str, data_dir: &Path, extra: &[&str]) -> GatewayProcess {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--upstream".into(),
            upstream.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data_dir.into(),
        ];
        args.extend(extra.iter().map(Into::into));
        Self::spawn_with(&args, &[])
    }

    /// Start the binary with exactly these arguments and environment variables (inherited `ODG_*`
    /// variables are removed first, so only what the test gives counts) and wait until it listens.
    pub fn spawn_with(
        args: &[impl AsRef<std::ffi::OsStr>],
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> GatewayProcess {
        use std::io::{BufRead, BufReader};
        let mut child = gateway_command(args, envs)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gateway binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = lines.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // `addr=…` in text logs, `"addr":"…"` in JSON ones.
                let found = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .or_else(|| {
                        let rest = line.split("\"addr\":\"").nth(1)?;
                        rest.split('"').next()
                    });
                if !sent && let Some(addr) = found {
                    let addr = addr.to_owned();
                    let _ = tx.send(addr);
                    sent = true;
                }
                kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let seen = lines.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                panic!("the gateway did not print its address; stderr:\n{seen}");
            }
        };
        GatewayProcess {
            addr,
            child,
            stderr: lines,
        }
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The stderr lines written so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait (up to `timeout`) until a stderr line satisfies `want`; that line, or `None`.
    pub fn wait_for_stderr(
        &self,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr_lines().into_iter().find(|l| want(l)) {
                return Some(line);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: the gateway drains and exits on its own.
    pub fn terminate(&self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM sent");
    }

    /// Wait up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway binary with these arguments and environment, `RUST_LOG=info`, and no inherited
/// `ODG_*` variables.
pub fn gateway_command(
    args: &[impl AsRef<std::ffi::OsStr>],
    envs: &[(&str, &std::ffi::OsStr)],
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_odata-delta-gateway"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ODG_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("RUST_LOG", "info")
        .envs(envs.iter().map(|(k, v)| (*k, *v)));
    command
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON (panics with the body text if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A plain HTTP client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Client {
    /// GET with headers.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    /// Any request.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        self.try_send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// A request with a JSON body (`Content-Type: application/json`).
    pub async fn send_json(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Resp {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.send(method, url, &all, body.to_string()).await
    }

    /// Any request; a broken connection or a timeout is an `Err` instead of a panic, for requests
    /// whose server may be killed under them.
    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        let mut builder = Request::builder().method(method).uri(url);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let request = builder.body(Full::new(body.into())).expect("valid request");
        let response = tokio::time::timeout(Duration::from_secs(60), self.inner.request(request))
            .await
            .map_err(|_| "no answer within 60 s".to_owned())?
            .map_err(|e| format!("transport error: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body breaks off: {e}"))?
            .to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A tracked read of `url` (with [`TRACK`]) through all its pages: the entities and the
    /// delta link of the last page.
    pub async fn read_tracked(&self, url: &str) -> (Vec<Value>, String) {
        self.read_all(url, &TRACK).await
    }

    /// One delta page (asserting 200), in the 4.01 shape when `v401`, else in the 4.0 shape.
    pub async fn delta_page(&self, link: &str, v401: bool) -> Value {
        let headers: &[(&str, &str)] = if v401 {
            &[("OData-MaxVersion", "4.01")]
        } else {
            &[]
        };
        let r = self.get(link, headers).await;
        assert_eq!(r.status, 200, "{link}: {}", r.text());
        r.json()
    }

    /// A tracked read (or a delta) followed through its `@odata.nextLink`s: every entry of every
    /// page, and the delta link of the last page. Asserts C3: never both links on one page.
    pub async fn read_all(&self, url: &str, headers: &[(&str, &str)]) -> (Vec<Value>, String) {
        let mut entries = Vec::new();
        let mut url = url.to_owned();
        loop {
            let r = self.get(&url, headers).await;
            assert_eq!(r.status, 200, "{url}: {}", r.text());
            let page = r.json();
            entries.extend(
                page["value"]
                    .as_array()
                    .expect("value array")
                    .iter()
                    .cloned(),
            );
            if let Some(next) = page["@odata.nextLink"].as_str() {
                assert!(
                    page.get("@odata.deltaLink").is_none(),
                    "C3: never both links on a page"
                );
                url = next.to_owned();
            } else {
                let delta = page["@odata.deltaLink"]
                    .as_str()
                    .expect("delta link on the last page");
                return (entries, delta.to_owned());
            }
        }
    }
}

/// Which payload shape a replica asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// OData 4.0 (`$deletedEntity`).
    V40,
    /// OData 4.01 (`@removed`).
    V401,
}

/// A sync client keeping a replica of one collection: read once with track-changes, then apply
/// every delta — upsert changed entities, drop removed ones — as a real sync client would.
pub struct Replica {
    /// Entity-id → entity (control information removed).
    pub rows: BTreeMap<String, Value>,
    /// The delta link to follow next.
    pub delta_link: Option<String>,
    /// Entity set name, for entity-ids.
    pub set: String,
    /// Key property names.
    pub key: Vec<String>,
    /// Payload shape.
    pub shape: Shape,
    /// Page size to ask for.
    pub page_size: Option<u32>,
    /// Pages read so far.
    pub pages: usize,
    /// Every next and delta link the gateway gave this replica, oldest first.
    pub issued: Vec<String>,
    /// Entity-ids of the entities in the last response followed (all its pages), in order.
    pub last_upserted: Vec<String>,
    /// (entity-id, reason) of the tombstones in the last response followed, in order.
    pub last_removed: Vec<(String, String)>,
}

impl Replica {
    /// A replica of `set` keyed by `key`.
    pub fn new(set: &str, key: &[&str], shape: Shape) -> Self {
        Replica {
            rows: BTreeMap::new(),
            delta_link: None,
            set: set.into(),
            key: key.iter().map(|k| k.to_string()).collect(),
            shape,
            page_size: None,
            pages: 0,
            issued: Vec::new(),
            last_upserted: Vec::new(),
            last_removed: Vec::new(),
        }
    }

    /// The entity-id of an entity, as the gateway writes it (ints bare, strings quoted).
    pub fn entity_id(&self, entity: &Value) -> String {
        let literal = |v: &Value| match v {
            Value::String(s) => format!("'{}'", s.replace('\'', "''")),
            other => other.to_string(),
        };
        if self.key.len() == 1 {
            format!("{}({})", self.set, literal(&entity[&self.key[0]]))
        } else {
            let parts: Vec<String> = self
                .key
                .iter()
                .map(|k| format!("{k}={}", literal(&entity[k])))
                .collect();
            format!("{}({})", self.set, parts.join(","))
        }
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::new();
        let mut prefer = vec!["odata.track-changes".to_owned()];
        if let Some(n) = self.page_size {
            prefer.push(format!("odata.maxpagesize={n}"));
        }
        h.push(("Prefer".to_owned(), prefer.join(", ")));
        if self.shape == Shape::V401 {
            h.push(("OData-MaxVersion".to_owned(), "4.01".to_owned()));
        }
        h
    }

    /// The initial tracked read of `url`. Returns the status of the first failing page, if any.
    pub async fn initial(&mut self, client: &Client, url: &str) -> Result<(), Resp> {
        self.rows.clear();
        self.follow(client, url.to_owned(), false).await
    }

    /// Follow the delta link once (all its pages).
    pub async fn sync(&mut self, client: &Client) -> Result<(), Resp> {
        let link = self.delta_link.clone().expect("a delta link to follow");
        self.follow(client, link, true).await
    }

    async fn follow(&mut self, client: &Client, mut url: String, delta: bool) -> Result<(), Resp> {
        let (context, next, delta_name, removed_ctx) = match self.shape {
            Shape::V40 => (
                "@odata.context",
                "@odata.nextLink",
                "@odata.deltaLink",
                true,
            ),
            Shape::V401 => ("@context", "@nextLink", "@deltaLink", false),
        };
        self.last_upserted.clear();
        self.last_removed.clear();
        loop {
            let headers = self.headers();
            let refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let resp = client.get(&url, &refs).await;
            if resp.status != StatusCode::OK {
                return Err(resp);
            }
            self.pages += 1;
            let page = resp.json();
            let ctx = page[context]
                .as_str()
                .unwrap_or_else(|| panic!("page without {context}: {page}"));
            assert_eq!(ctx.ends_with("/$delta"), delta, "context URL {ctx}");
            for item in page["value"].as_array().expect("value array") {
                let removed = if removed_ctx {
                    item.get("@odata.context")
                        .and_then(Value::as_str)
                        .is_some_and(|c| c.ends_with("/$deletedEntity"))
                } else {
                    item.get("@removed").is_some()
                };
                if removed {
                    assert!(delta, "tombstone in an initial response: {item}");
                    let id = if removed_ctx {
                        &item["id"]
                    } else {
                        &item["@id"]
                    };
                    let id = id.as_str().expect("tombstone id").to_owned();
                    let reason = if removed_ctx {
                        &item["reason"]
                    } else {
                        &item["@removed"]["reason"]
                    };
                    assert!(
                        matches!(reason.as_str(), Some("deleted" | "changed")),
                        "reason in {item}"
                    );
                    self.rows.remove(&id);
                    self.last_removed
                        .push((id, reason.as_str().unwrap_or_default().to_owned()));
                } else {
                    let mut entity = item.clone();
                    if let Some(obj) = entity.as_object_mut() {
                        obj.retain(|k, _| {
                            !k.starts_with('@') && !k.contains("@odata.") && !k.contains("@")
                        });
                    }
                    let id = self.entity_id(&entity);
                    self.last_upserted.push(id.clone());
                    self.rows.insert(id, entity);
                }
            }
            match (
                page.get(next).and_then(Value::as_str),
                page.get(delta_name).and_then(Value::as_str),
            ) {
                (Some(n), None) => {
                    self.issued.push(n.to_owned());
                    url = n.to_owned();
                }
                (None, Some(d)) => {
                    self.issued.push(d.to_owned());
                    self.delta_link = Some(d.to_owned());
                    return Ok(());
                }
                other => {
                    panic!("a page needs exactly one of next and delta link: {other:?} in {page}")
                }
            }
        }
    }

    /// What the upstream holds, in the replica's form, for comparison.
    pub fn expected(
        &self,
        upstream_rows: &[Value],
        keep: impl Fn(&Value) -> bool,
    ) -> BTreeMap<String, Value> {
        upstream_rows
            .iter()
            .filter(|r| keep(r))
            .map(|r| (self.entity_id(r), r.clone()))
            .collect()
    }
}

/// A directory that outlives one gateway, for restart tests.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_owned();
    (dir, path)
}

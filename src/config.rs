//! Configuration: flags and environment (clap) merged over an optional `gateway.toml`, validated once
//! into the typed [`Config`] the rest of the gateway reads. A mistake in the file fails at start with
//! the file, line and column and what was expected; runtime code never sees raw TOML or env.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use toml::Spanned;
use url::Url;

mod tls;

pub use tls::RouteTls;

/// Command line. Every flag can also come from the environment variable named in its help.
#[derive(Debug, Parser)]
#[command(
    name = "odata-delta-gateway",
    version,
    about = "Change tracking (delta links) for OData V4 services that lack it"
)]
pub struct Cli {
    /// What to run; without a command, the gateway.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Gateway options.
    #[command(flatten)]
    pub flags: Flags,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a bundled sample OData service and the gateway in front of it, and print curl commands.
    Demo(DemoFlags),
    /// Look at and maintain the feeds of a stopped gateway's store.
    Feeds(FeedsArgs),
}

/// Options of `feeds`.
#[derive(Debug, Args)]
pub struct FeedsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FeedsCommand,
    /// Directory of the store.
    #[arg(long, env = "ODG_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
}

/// The `feeds` commands. They open the store themselves, so they refuse while a gateway runs on
/// the same data dir.
#[derive(Debug, Subcommand)]
pub enum FeedsCommand {
    /// One line per feed: id, route, entity set, scope, entities, version, last use.
    List,
    /// Everything stored about one feed (an id or a unique prefix of one, at least 6 digits).
    Show {
        /// Feed id (hex) or a unique prefix.
        id: String,
    },
    /// Delete a feed's entities and changes; its delta links then answer 410 with the query to
    /// start over, and its next tracked read loads it again.
    Drop {
        /// Feed id (hex) or a unique prefix.
        id: String,
    },
    /// Give the space of deleted entities back to the file system (redb compaction).
    Compact,
}

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoFlags {
    /// Address the gateway listens on.
    #[arg(long, env = "ODG_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Store directory; a fresh temporary one when not given.
    #[arg(long, env = "ODG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Seconds between the sample service's own changes.
    #[arg(long, default_value_t = 5)]
    pub change_every_secs: u64,
}

/// Flags of the gateway; each overrides the same setting in the config file.
#[derive(Debug, Default, Args)]
pub struct Flags {
    /// Upstream OData service root, e.g. http://127.0.0.1:4004/odata/v4/shop. The gateway serves the
    /// same paths on its own address.
    #[arg(long, env = "ODG_UPSTREAM")]
    pub upstream: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ODG_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin listener (/metrics, /healthz, /readyz); off when not given.
    #[arg(long, env = "ODG_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory of the store [default: ./data].
    #[arg(long, env = "ODG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store that several replicas share (postgres://user@host:port/db) instead of
    /// the embedded one in --data-dir.
    #[arg(long, env = "ODG_STORE")]
    pub store: Option<String>,
    /// Configuration file (gateway.toml).
    #[arg(long, env = "ODG_CONFIG")]
    pub config: Option<PathBuf>,
    /// The gateway's public base URL as clients see it, e.g. https://api.example.com/gw.
    #[arg(long, env = "ODG_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Proxies (CIDRs) whose Forwarded / X-Forwarded-* headers are believed; repeatable or comma-separated.
    #[arg(
        long = "trusted-proxy",
        env = "ODG_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// How long a delta link stays valid, e.g. 12h, 30d [default: 30d].
    #[arg(long, env = "ODG_TOKEN_TTL")]
    pub token_ttl: Option<String>,
    /// Default page size of tracked responses [default: 1000].
    #[arg(long, env = "ODG_PAGE_SIZE")]
    pub page_size: Option<u32>,
    /// Log lines as `text` (for people) or `json` (one object a line, for log shippers)
    /// [default: text].
    #[arg(long, env = "ODG_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// A configuration mistake, reported at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{file}: {message}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        message: String,
    },
    /// A value in the file is wrong.
    #[error("{file}:{line}:{column}: {message}")]
    File {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A flag or environment value is wrong.
    #[error("{0}")]
    Flag(String),
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// Where the admin endpoints listen, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// Directory of the store.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL when the store is shared by several replicas; `None` for the embedded
    /// store in `data_dir`. Checked at start (scheme, host, no unsupported TLS mode).
    pub store: Option<String>,
    /// Upstreams by path prefix, longest prefix first.
    pub routes: Vec<RouteConfig>,
    /// Public base URL (scheme, host, optional path prefix) for every link we write; derived from
    /// the request when absent.
    pub public_url: Option<Url>,
    /// Peers whose forwarding headers are honoured.
    pub trusted_proxies: Vec<Cidr>,
    /// Delta-link lifetime and tombstone retention (C25).
    pub token_ttl: Duration,
    /// Default page size of tracked responses (C21).
    pub page_size: u32,
    /// Largest page a client may ask for with maxpagesize.
    pub max_page_size: u32,
    /// A refresh younger than this is reused instead of enumerating again.
    pub min_refresh_interval: Duration,
    /// Background refreshes (DESIGN "Always fresh").
    pub schedule: ScheduleConfig,
    /// Change notifications: where callbacks may go, and how hard the gateway tries.
    pub notifications: NotificationsConfig,
    /// How feeds are scoped by identity.
    pub identity: IdentityScope,
    /// How long an upstream's 2xx to the authorization check of a per-identity tracked request is
    /// reused for the same credentials and feed (`identity.authorization_cache`); zero checks
    /// every request.
    pub authorization_cache: Duration,
    /// Talking to upstreams.
    pub upstream: UpstreamConfig,
    /// Size limits.
    pub limits: Limits,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// How long in-flight requests (and the refreshes they wait for) may run on after SIGTERM;
    /// what is still running then is abandoned without committing anything.
    pub shutdown_grace: Duration,
}

/// How log lines are written (`log_format`, `--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines, for a terminal or journald.
    #[default]
    Text,
    /// One JSON object a line, with the fields of the request's span, for log shippers.
    Json,
}

impl LogFormat {
    /// Parse `text` or `json`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "'{other}' is not a log format; expected \"text\" or \"json\""
            )),
        }
    }
}

/// One upstream service and where it is mounted on the gateway.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Gateway path prefix without trailing slash (`/odata/v4/shop`; empty for the root).
    pub prefix: String,
    /// Upstream service root without trailing slash.
    pub upstream: Url,
    /// Per-entity-set settings.
    pub sets: BTreeMap<String, SetConfig>,
    /// How often feeds of this route are refreshed in the background, overriding the global
    /// `poll_interval`; `Some(ZERO)` turns it off for the route.
    pub poll_interval: Option<Duration>,
    /// The gateway's own upstream credentials for this route (`[route.headers]`): background
    /// refreshes of `shared`-scope feeds send these, since no client request is there to lend its own.
    pub headers: http::HeaderMap,
    /// TLS towards this route's upstream (`[route.tls]`): its own roots and client certificate,
    /// and so its own connection pool; `None` uses the gateway's default client (web PKI roots).
    pub tls: Option<RouteTls>,
    /// Where this route was defined, for log messages that tell how to fix something.
    pub origin: String,
}

/// Settings of one entity set.
#[derive(Clone, Debug, Default)]
pub struct SetConfig {
    /// Key property names (optionally `Name:Edm.Type`), overriding `$metadata`.
    pub key: Option<Vec<String>>,
    /// Properties that do not count as changes (volatile timestamps and the like).
    pub ignore: Vec<String>,
    /// How often feeds of this set are refreshed in the background, overriding the route's;
    /// `Some(ZERO)` turns it off for the set.
    pub poll_interval: Option<Duration>,
}

/// Background refresh settings: which feeds are refreshed on a schedule, and for how long after
/// a client last asked.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    /// The global `poll_interval`; `None` (the default) refreshes only when a client asks.
    pub poll_interval: Option<Duration>,
    /// A feed no client asked for during this long leaves the schedule.
    pub feed_idle_ttl: Duration,
    /// Most feeds on the schedule at once; further feeds refresh when asked.
    pub max_scheduled_feeds: usize,
}

/// Change notification settings (`[notifications]`).
#[derive(Clone, Debug)]
pub struct NotificationsConfig {
    /// Hosts (`name` or `name:port`, lower case) a callback URL may point at; empty (the default)
    /// refuses every callback, so that a client cannot make the gateway call into the networks it
    /// can reach (SSRF).
    pub allowed_hosts: Vec<String>,
    /// Most callbacks waiting for a change at once, across all feeds.
    pub max_pending: usize,
    /// Attempts to deliver one notification, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub retry_backoff: Duration,
    /// Time one attempt may take.
    pub timeout: Duration,
    /// Most webhook subscriptions at once, across all identities.
    pub max_subscriptions: usize,
    /// Most webhook subscriptions of one identity scope.
    pub max_subscriptions_per_scope: usize,
    /// Longest lifetime of a webhook subscription; also the lifetime of one created without an
    /// expiry. A client renews before it ends.
    pub max_subscription_lifetime: Duration,
}

impl NotificationsConfig {
    /// Whether a callback URL's host (and port) is allowed.
    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let with_port = url.port_or_known_default().map(|p| format!("{host}:{p}"));
        self.allowed_hosts
            .iter()
            .any(|a| *a == host || Some(a) == with_port.as_ref())
    }
}

impl Config {
    /// The background refresh interval of a feed of `set` on the route with `prefix`, if it has
    /// one: the set's setting, else the route's, else the global one; zero at any level is off.
    pub fn poll_interval(&self, prefix: &str, set: &str) -> Option<Duration> {
        let route = self.routes.iter().find(|r| r.prefix == prefix);
        route
            .and_then(|r| r.sets.get(set).and_then(|s| s.poll_interval))
            .or_else(|| route.and_then(|r| r.poll_interval))
            .or(self.schedule.poll_interval)
            .filter(|d| !d.is_zero())
    }
}

/// How feeds are scoped by the caller's identity (DESIGN "Identity and security").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityScope {
    /// The default: a keyed hash of the credentials a request carries — `Authorization` and API-key
    /// headers, or, only when it has none of those, its cookies (cookie sessions change, so they
    /// count only where nothing else identifies the caller). A bearer JWT that carries every one of
    /// `jwt_claims` counts by those claims instead of its whole value, so that a renewed access
    /// token keeps its scope; an empty list hashes every credential whole.
    Credentials {
        /// Claims of a bearer JWT that identify the caller, e.g. `iss` and `sub`.
        jwt_claims: Vec<String>,
    },
    /// A keyed hash of exactly these request headers.
    Headers(Vec<String>),
    /// One scope for everyone: the gateway uses its own upstream credentials.
    Shared,
}

/// Upstream client settings.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Page size asked of the upstream with `Prefer: odata.maxpagesize`.
    pub page_size: u32,
    /// Time allowed for one upstream request, headers and body.
    pub timeout: Duration,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Retries of 429/503 answers (with `Retry-After`) during one refresh.
    pub max_retries: u32,
    /// Longest `Retry-After` we are willing to wait.
    pub max_retry_wait: Duration,
    /// How long a fetched `$metadata` is trusted before a set it does not know (or cannot key)
    /// makes the gateway fetch it again.
    pub metadata_recheck_interval: Duration,
}

/// A longer grace would keep a stopping gateway (and its deployment) waiting for too long.
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);

/// The longest request target hyper parses (`u16::MAX - 1`); `limits.max_uri_bytes` stays below.
pub(crate) const MAX_URI_BYTES: usize = 65_534;

/// Size and time limits; exceeding one is a clear error and nothing is committed.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body forwarded upstream.
    pub max_request_body_bytes: u64,
    /// Largest upstream page read during a refresh.
    pub max_page_bytes: usize,
    /// Most entities one feed may hold.
    pub max_entities_per_feed: u64,
    /// Largest total request header size.
    pub max_header_bytes: usize,
    /// Most client connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Longest URI (the request target) accepted; a longer one is answered 414.
    pub max_uri_bytes: usize,
    /// Time a client has to send a request head, from its first byte (and, on a new
    /// connection, from the connect); a connection past it is closed.
    pub header_read_timeout: Duration,
    /// Time a client has to send a whole request body, from the end of its head.
    pub body_read_timeout: Duration,
    /// Time a tracked request (initial read, delta, next page, count) may take before it is
    /// answered 504; a refresh it started runs on for the requests that share it.
    pub tracked_request_timeout: Duration,
    /// Most feeds stored at once, all scopes together; a request that would create one more gets 503.
    pub max_feeds: usize,
    /// Most feeds one identity scope may have (the `shared` scope is bound by `max_feeds` alone); a
    /// request that would create one more gets 429.
    pub max_feeds_per_scope: usize,
    /// Most refreshes running at once, across all feeds.
    pub max_concurrent_refreshes: usize,
    /// Most refreshes waiting for one of `max_concurrent_refreshes`; one more gets 503.
    pub max_refresh_waiters: usize,
    /// Most upstream pages (of the enumeration, the `$skip` read-on, and removal checks continued
    /// by a nextLink) one refresh may read; an upstream whose nextLinks never end fails the refresh
    /// instead of holding the feed's lock for good.
    pub max_pages_per_refresh: u64,
    /// Longest one refresh may read the upstream before it fails with 504 and commits nothing.
    pub refresh_timeout: Duration,
    /// Most requests one `$batch` may hold, change set members included; more is 413.
    pub max_batch_parts: usize,
    /// Largest `$batch` request body; the gateway reads a batch whole to find its tracked parts,
    /// so this bounds the memory one batch holds (its answer is bounded by `max_page_bytes`).
    pub max_batch_bytes: usize,
    /// Memory the store may use to cache its pages (redb's cache). Reads of feeds that do not fit
    /// go to the file (and the OS page cache), so this trades a little speed for a bounded RSS.
    pub store_cache_bytes: usize,
}

/// The default of `limits.store_cache_bytes`: enough for the B-tree's branch pages of a
/// million-entity feed, far below redb's own default of 1 GiB.
pub const DEFAULT_STORE_CACHE_BYTES: usize = 32 << 20;

/// The JWT claims that identify a caller unless configured otherwise.
pub const DEFAULT_JWT_CLAIMS: &[&str] = &["iss", "sub"];

/// An IP network, for trusted proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `10.0.0.0/8`, `::1/128` or a bare address.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    format!("'{s}' has an invalid prefix length; expected 0-{max}")
                })?,
            };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parse a readable duration: `500ms`, `2s`, `5m`, `12h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a duration; expected e.g. 500ms, 2s, 5m, 12h, 30d"))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    };
    d.ok_or_else(|| {
        format!(
            "'{s}' is not a duration; expected a number with a unit: ms, s, m, h or d (e.g. 30d)"
        )
    })
}

// ---------------------------------------------------------------- the file

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<Spanned<String>>,
    admin_listen: Option<Spanned<String>>,
    data_dir: Option<PathBuf>,
    store: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
    token_ttl: Option<Spanned<String>>,
    page_size: Option<Spanned<u32>>,
    max_page_size: Option<Spanned<u32>>,
    min_refresh_interval: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
    feed_idle_ttl: Option<Spanned<String>>,
    max_scheduled_feeds: Option<Spanned<usize>>,
    notifications: Option<FileNotifications>,
    identity: Option<Spanned<FileIdentity>>,
    upstream: Option<FileUpstream>,
    limits: Option<FileLimits>,
    #[serde(default)]
    route: Vec<Spanned<FileRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    mode: Option<Spanned<String>>,
    #[serde(default)]
    headers: Vec<String>,
    jwt_claims: Option<Spanned<Vec<String>>>,
    authorization_cache: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNotifications {
    #[serde(default)]
    allowed_hosts: Vec<Spanned<String>>,
    max_pending: Option<Spanned<usize>>,
    max_attempts: Option<Spanned<usize>>,
    retry_backoff: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    max_subscriptions: Option<Spanned<usize>>,
    max_subscriptions_per_scope: Option<Spanned<usize>>,
    max_subscription_lifetime: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    page_size: Option<Spanned<u32>>,
    timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    max_retries: Option<u32>,
    max_retry_wait: Option<Spanned<String>>,
    metadata_recheck_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_request_body_bytes: Option<u64>,
    max_page_bytes: Option<usize>,
    max_entities_per_feed: Option<u64>,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_uri_bytes: Option<Spanned<usize>>,
    header_read_timeout: Option<Spanned<String>>,
    body_read_timeout: Option<Spanned<String>>,
    tracked_request_timeout: Option<Spanned<String>>,
    max_feeds: Option<Spanned<usize>>,
    max_feeds_per_scope: Option<Spanned<usize>>,
    max_concurrent_refreshes: Option<Spanned<usize>>,
    max_refresh_waiters: Option<usize>,
    max_pages_per_refresh: Option<Spanned<u64>>,
    refresh_timeout: Option<Spanned<String>>,
    max_batch_parts: Option<Spanned<usize>>,
    max_batch_bytes: Option<Spanned<usize>>,
    store_cache_bytes: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: Option<Spanned<String>>,
    upstream: Spanned<String>,
    poll_interval: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    tls: Option<Spanned<tls::FileTls>>,
    #[serde(default)]
    sets: BTreeMap<String, Spanned<FileSet>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSet {
    key: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    ignore: Vec<String>,
    poll_interval: Option<Spanned<String>>,
}

/// Turns byte spans of the file into `file:line:column` errors.
struct Source<'a> {
    name: String,
    text: &'a str,
}

impl Source<'_> {
    fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        let at = span.map(|s| s.start).unwrap_or(0).min(self.text.len());
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map(|i| at - i).unwrap_or(at + 1);
        ConfigError::File {
            file: self.name.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    fn at<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error(Some(spanned.span()), message)
    }

    fn line_of<T>(&self, spanned: &Spanned<T>) -> usize {
        self.text[..spanned.span().start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
}

impl Config {
    /// Build the configuration from flags (already merged with the environment) and, if named,
    /// the config file.
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        match &flags.config {
            None => Self::from_parts(flags, None),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
                    file: path.display().to_string(),
                    message: e.to_string(),
                })?;
                Self::from_parts(flags, Some((path, &text)))
            }
        }
    }

    /// Build from flags and an optional file (path, contents).
    pub fn from_parts(flags: &Flags, file: Option<(&Path, &str)>) -> Result<Self, ConfigError> {
        let source = Source {
            name: file
                .map(|(p, _)| p.display().to_string())
                .unwrap_or_default(),
            text: file.map(|(_, t)| t).unwrap_or(""),
        };
        let parsed: File = match file {
            None => File::default(),
            Some((_, text)) => {
                toml::from_str(text).map_err(|e| source.error(e.span(), e.message().to_owned()))?
            }
        };
        let flag = |name: &str, e: String| ConfigError::Flag(format!("--{name}: {e}"));
        // Files the config names (TLS certificates) are read relative to the config file.
        let base_dir = file
            .and_then(|(p, _)| p.parent())
            .unwrap_or_else(|| Path::new(""));

        let listen = match (flags.listen, &parsed.listen) {
            (Some(l), _) => l,
            (None, Some(l)) => l.get_ref().parse().map_err(|_| {
                source.at(l, "expected a socket address such as \"127.0.0.1:8080\"")
            })?,
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let admin_listen = match (flags.admin_listen, &parsed.admin_listen) {
            (Some(l), _) => Some(l),
            (None, Some(l)) => Some(l.get_ref().parse().map_err(|_| {
                source.at(l, "expected a socket address such as \"127.0.0.1:9090\"")
            })?),
            (None, None) => None,
        };
        let data_dir = flags
            .data_dir
            .clone()
            .or(parsed.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));

        let store = match (&flags.store, &parsed.store) {
            (Some(u), _) => Some(parse_store_url(u).map_err(|e| flag("store", e))?),
            (None, Some(u)) => Some(parse_store_url(u.get_ref()).map_err(|e| source.at(u, e))?),
            (None, None) => None,
        };
        let public_url = match (&flags.public_url, &parsed.public_url) {
            (Some(u), _) => Some(parse_public_url(u).map_err(|e| flag("public-url", e))?),
            (None, Some(u)) => Some(parse_public_url(u.get_ref()).map_err(|e| source.at(u, e))?),
            (None, None) => None,
        };
        let trusted_proxies = if !flags.trusted_proxies.is_empty() {
            flags
                .trusted_proxies
                .iter()
                .map(|c| Cidr::parse(c).map_err(|e| flag("trusted-proxy", e)))
                .collect::<Result<_, _>>()?
        } else {
            parsed
                .trusted_proxies
                .iter()
                .flatten()
                .map(|c| Cidr::parse(c.get_ref()).map_err(|e| source.at(c, e)))
                .collect::<Result<_, _>>()?
        };
        let duration = |flag_value: Option<&String>,
                        name: &str,
                        file_value: &Option<Spanned<String>>,
                        default: Duration| {
            match (flag_value, file_value) {
                (Some(v), _) => parse_duration(v).map_err(|e| flag(name, e)),
                (None, Some(v)) => parse_duration(v.get_ref()).map_err(|e| source.at(v, e)),
                (None, None) => Ok(default),
            }
        };
        let token_ttl = duration(
            flags.token_ttl.as_ref(),
            "token-ttl",
            &parsed.token_ttl,
            Duration::from_secs(30 * 86_400),
        )?;
        if token_ttl < Duration::from_secs(1) {
            return Err(match &parsed.token_ttl {
                Some(v) if flags.token_ttl.is_none() => {
                    source.at(v, "token_ttl must be at least 1s")
                }
                _ => flag("token-ttl", "must be at least 1s".into()),
            });
        }
        let min_refresh_interval =
            duration(None, "", &parsed.min_refresh_interval, Duration::ZERO)?;
        let schedule = ScheduleConfig {
            poll_interval: poll_interval(&source, &parsed.poll_interval)?,
            feed_idle_ttl: {
                let d = duration(None, "", &parsed.feed_idle_ttl, Duration::from_secs(3600))?;
                match &parsed.feed_idle_ttl {
                    Some(v) if d < Duration::from_secs(1) => {
                        return Err(source.at(v, "feed_idle_ttl must be at least 1s"));
                    }
                    _ => d,
                }
            },
            max_scheduled_feeds: at_least_one(
                &source,
                &parsed.max_scheduled_feeds,
                "max_scheduled_feeds",
                1000,
            )?,
        };

        let positive =
            |v: &Option<Spanned<u32>>, what: &str, default: u32| -> Result<u32, ConfigError> {
                match v {
                    Some(n) if *n.get_ref() == 0 => {
                        Err(source.at(n, format!("{what} must be at least 1")))
                    }
                    Some(n) => Ok(*n.get_ref()),
                    None => Ok(default),
                }
            };
        let page_size = match flags.page_size {
            Some(0) => return Err(flag("page-size", "must be at least 1".into())),
            Some(n) => n,
            None => positive(&parsed.page_size, "page_size", 1000)?,
        };
        let max_page_size =
            positive(&parsed.max_page_size, "max_page_size", 10_000)?.max(page_size);

        let (identity, authorization_cache) = identity(&source, parsed.identity.as_ref())?;
        let log_format = match (&flags.log_format, &parsed.log_format) {
            (Some(f), _) => LogFormat::parse(f).map_err(|e| flag("log-format", e))?,
            (None, Some(f)) => LogFormat::parse(f.get_ref()).map_err(|e| source.at(f, e))?,
            (None, None) => LogFormat::Text,
        };
        let shutdown_grace = duration(None, "", &parsed.shutdown_grace, Duration::from_secs(30))?;
        if let Some(v) = &parsed.shutdown_grace
            && shutdown_grace > MAX_SHUTDOWN_GRACE
        {
            return Err(source.at(v, "shutdown_grace must be at most 1h"));
        }
        let notifications = {
            let n = parsed.notifications.unwrap_or_default();
            let mut allowed_hosts = Vec::new();
            for h in &n.allowed_hosts {
                let v = h.get_ref().trim().to_ascii_lowercase();
                let valid = !v.is_empty()
                    && !v.contains(['/', '@', '?', '#', ' '])
                    && Url::parse(&format!("http://{v}/")).is_ok_and(|u| u.host().is_some());
                if !valid {
                    return Err(source.at(
                        h,
                        "allowed_hosts lists host names or addresses, optionally with a port, e.g. \"hooks.example.com\" or \"127.0.0.1:9000\"",
                    ));
                }
                allowed_hosts.push(v);
            }
            NotificationsConfig {
                allowed_hosts,
                max_pending: at_least_one(
                    &source,
                    &n.max_pending,
                    "notifications.max_pending",
                    1000,
                )?,
                max_attempts: at_least_one(
                    &source,
                    &n.max_attempts,
                    "notifications.max_attempts",
                    4,
                )?
                .min(20) as u32,
                retry_backoff: duration(None, "", &n.retry_backoff, Duration::from_secs(1))?,
                timeout: {
                    let d = duration(None, "", &n.timeout, Duration::from_secs(5))?;
                    match &n.timeout {
                        Some(v) if d.is_zero() => {
                            return Err(source.at(v, "notifications.timeout must be more than 0"));
                        }
                        _ => d,
                    }
                },
                max_subscriptions: at_least_one(
                    &source,
                    &n.max_subscriptions,
                    "notifications.max_subscriptions",
                    1000,
                )?,
                max_subscriptions_per_scope: at_least_one(
                    &source,
                    &n.max_subscriptions_per_scope,
                    "notifications.max_subscriptions_per_scope",
                    20,
                )?,
                max_subscription_lifetime: {
                    let d = duration(
                        None,
                        "",
                        &n.max_subscription_lifetime,
                        Duration::from_secs(3 * 86_400),
                    )?;
                    match &n.max_subscription_lifetime {
                        Some(v) if d < Duration::from_secs(1) => {
                            return Err(source.at(
                                v,
                                "notifications.max_subscription_lifetime must be at least 1s",
                            ));
                        }
                        _ => d,
                    }
                },
            }
        };

        let up = parsed.upstream.unwrap_or_default();
        let upstream = UpstreamConfig {
            page_size: positive(&up.page_size, "upstream.page_size", 1000)?,
            timeout: duration(None, "", &up.timeout, Duration::from_secs(60))?,
            connect_timeout: duration(None, "", &up.connect_timeout, Duration::from_secs(5))?,
            max_retries: up.max_retries.unwrap_or(3),
            max_retry_wait: duration(None, "", &up.max_retry_wait, Duration::from_secs(10))?,
            metadata_recheck_interval: duration(
                None,
                "",
                &up.metadata_recheck_interval,
                Duration::from_secs(60),
            )?,
        };
        let lim = parsed.limits.unwrap_or_default();
        // A zero timeout would close every connection or time out every request at once.
        let timeout = |value: &Option<Spanned<String>>, what: &str, default: Duration| {
            let d = duration(None, "", value, default)?;
            match value {
                Some(v) if d.is_zero() => Err(source.at(v, format!("{what} must be more than 0"))),
                _ => Ok(d),
            }
        };
        let max_uri_bytes = match &lim.max_uri_bytes {
            // hyper refuses longer request targets itself, before the gateway sees them.
            Some(n) if !(256..=MAX_URI_BYTES).contains(n.get_ref()) => {
                return Err(source.at(
                    n,
                    format!("limits.max_uri_bytes must be between 256 and {MAX_URI_BYTES}"),
                ));
            }
            Some(n) => *n.get_ref(),
            None => 32 << 10,
        };
        let limits = Limits {
            max_request_body_bytes: lim.max_request_body_bytes.unwrap_or(64 << 20),
            max_page_bytes: lim.max_page_bytes.unwrap_or(256 << 20),
            max_entities_per_feed: lim.max_entities_per_feed.unwrap_or(50_000_000),
            max_header_bytes: lim.max_header_bytes.unwrap_or(64 << 10),
            max_connections: lim.max_connections.unwrap_or(4096).max(1),
            max_uri_bytes,
            header_read_timeout: timeout(
                &lim.header_read_timeout,
                "limits.header_read_timeout",
                Duration::from_secs(10),
            )?,
            body_read_timeout: timeout(
                &lim.body_read_timeout,
                "limits.body_read_timeout",
                Duration::from_secs(60),
            )?,
            tracked_request_timeout: timeout(
                &lim.tracked_request_timeout,
                "limits.tracked_request_timeout",
                Duration::from_secs(300),
            )?,
            max_feeds: at_least_one(&source, &lim.max_feeds, "limits.max_feeds", 10_000)?,
            max_feeds_per_scope: at_least_one(
                &source,
                &lim.max_feeds_per_scope,
                "limits.max_feeds_per_scope",
                100,
            )?,
            max_concurrent_refreshes: at_least_one(
                &source,
                &lim.max_concurrent_refreshes,
                "limits.max_concurrent_refreshes",
                8,
            )?,
            max_refresh_waiters: lim.max_refresh_waiters.unwrap_or(64),
            max_batch_parts: at_least_one(
                &source,
                &lim.max_batch_parts,
                "limits.max_batch_parts",
                1000,
            )?,
            max_batch_bytes: at_least_one(
                &source,
                &lim.max_batch_bytes,
                "limits.max_batch_bytes",
                16 << 20,
            )?,
            store_cache_bytes: match &lim.store_cache_bytes {
                Some(n) if *n.get_ref() < 1 << 20 => {
                    return Err(source.at(
                        n,
                        "limits.store_cache_bytes must be at least 1048576 (1 MiB)",
                    ));
                }
                Some(n) => *n.get_ref(),
                None => DEFAULT_STORE_CACHE_BYTES,
            },
            max_pages_per_refresh: match &lim.max_pages_per_refresh {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(source.at(n, "limits.max_pages_per_refresh must be at least 1"));
                }
                Some(n) => *n.get_ref(),
                None => 100_000,
            },
            refresh_timeout: duration(
                None,
                "",
                &lim.refresh_timeout,
                Duration::from_secs(15 * 60),
            )?,
        };
        if limits.refresh_timeout < Duration::from_secs(1)
            && let Some(v) = &lim.refresh_timeout
        {
            return Err(source.at(v, "limits.refresh_timeout must be at least 1s"));
        }

        let mut routes = Vec::new();
        if let Some(upstream) = &flags.upstream {
            let url = parse_upstream(upstream).map_err(|e| flag("upstream", e))?;
            routes.push(RouteConfig {
                prefix: url.path().trim_end_matches('/').to_owned(),
                upstream: url,
                sets: BTreeMap::new(),
                poll_interval: None,
                headers: http::HeaderMap::new(),
                tls: None,
                origin: "--upstream".into(),
            });
        }
        for spanned in &parsed.route {
            let r = spanned.get_ref();
            let url =
                parse_upstream(r.upstream.get_ref()).map_err(|e| source.at(&r.upstream, e))?;
            let prefix = match &r.prefix {
                None => url.path().trim_end_matches('/').to_owned(),
                Some(p) => {
                    let v = p.get_ref();
                    if !v.starts_with('/') || v.contains(['?', '#']) {
                        return Err(
                            source.at(p, "prefix must be a path starting with '/', e.g. \"/crm\"")
                        );
                    }
                    v.trim_end_matches('/').to_owned()
                }
            };
            let duplicate = routes.iter().position(|x: &RouteConfig| x.prefix == prefix);
            if let Some(i) = duplicate
                && routes[i].origin != "--upstream"
            {
                return Err(source.at(
                    spanned,
                    format!("another route already uses the prefix '{prefix}'"),
                ));
            }
            let mut sets = BTreeMap::new();
            for (name, set) in &r.sets {
                let s = set.get_ref();
                if let Some(key) = &s.key {
                    if key.get_ref().is_empty() || key.get_ref().iter().any(|k| k.trim().is_empty())
                    {
                        return Err(source.at(
                            key,
                            "key must list the key property names, e.g. key = [\"ID\"]",
                        ));
                    }
                    for k in key.get_ref() {
                        if let Some((_, ty)) = k.split_once(':')
                            && crate::odata::entity_id::KeyType::from_edm(ty.trim()).is_none()
                        {
                            return Err(source.at(key, format!("'{ty}' is not a key type; expected Edm.Int32, Edm.Int64, Edm.String, Edm.Guid, …")));
                        }
                    }
                }
                sets.insert(
                    name.clone(),
                    SetConfig {
                        key: s.key.as_ref().map(|k| k.get_ref().clone()),
                        ignore: s.ignore.clone(),
                        poll_interval: poll_interval(&source, &s.poll_interval)?,
                    },
                );
            }
            let origin = format!("{}:{}", source.name, source.line_of(spanned));
            let route_poll = poll_interval(&source, &r.poll_interval)?;
            let headers = route_headers(&source, &r.headers)?;
            // The flag's upstream, when it names this route, is the one TLS is for.
            let target = duplicate.map_or(&url, |i| &routes[i].upstream);
            let tls = match &r.tls {
                None => None,
                Some(t) => tls::route_tls(&source, base_dir, t, target)?,
            };
            match duplicate {
                // The flag (or its environment variable) names the upstream of this route; the file
                // adds its per-set settings.
                Some(i) => {
                    routes[i].sets = sets;
                    routes[i].origin = origin;
                    routes[i].poll_interval = route_poll;
                    routes[i].headers = headers;
                    routes[i].tls = tls;
                }
                None => routes.push(RouteConfig {
                    prefix,
                    upstream: url,
                    sets,
                    poll_interval: route_poll,
                    headers,
                    tls,
                    origin,
                }),
            }
        }
        if routes.is_empty() {
            return Err(ConfigError::Flag(
                "no upstream: pass --upstream URL (or ODG_UPSTREAM), or add a [[route]] to the config file".into(),
            ));
        }
        // Longest prefix first, so that /a/b wins over /a.
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

        Ok(Config {
            listen,
            admin_listen,
            data_dir,
            store,
            routes,
            public_url,
            trusted_proxies,
            token_ttl,
            page_size,
            max_page_size,
            min_refresh_interval,
            schedule,
            notifications,
            identity,
            authorization_cache,
            upstream,
            limits,
            log_format,
            shutdown_grace,
        })
    }
}

/// A `poll_interval`: `"0s"` is off, anything else at least one second, so that a typo such as
/// `"10ms"` cannot turn the schedule into a stream of enumerations.
fn poll_interval(
    source: &Source<'_>,
    value: &Option<Spanned<String>>,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let d = parse_duration(v.get_ref()).map_err(|e| source.at(v, e))?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err(source.at(v, "poll_interval must be \"0s\" (off) or at least 1s"));
    }
    Ok(Some(d))
}

/// `[route.headers]`: valid header names and values, none of them hop-by-hop.
fn route_headers(
    source: &Source<'_>,
    table: &BTreeMap<String, Spanned<String>>,
) -> Result<http::HeaderMap, ConfigError> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in table {
        let parsed_name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| source.at(value, format!("'{name}' is not a header name")))?;
        if matches!(
            parsed_name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "te" | "upgrade"
        ) {
            return Err(source.at(
                value,
                format!("{name} is set by the gateway; route headers are for credentials such as authorization"),
            ));
        }
        let parsed_value = http::HeaderValue::from_str(value.get_ref()).map_err(|_| {
            source.at(
                value,
                format!("the value of {name} is not a valid header value"),
            )
        })?;
        headers.insert(parsed_name, parsed_value);
    }
    Ok(headers)
}

/// A count limit that must be at least 1.
fn at_least_one(
    source: &Source<'_>,
    value: &Option<Spanned<usize>>,
    what: &str,
    default: usize,
) -> Result<usize, ConfigError> {
    match value {
        Some(n) if *n.get_ref() == 0 => Err(source.at(n, format!("{what} must be at least 1"))),
        Some(n) => Ok(*n.get_ref()),
        None => Ok(default),
    }
}

/// The `[identity]` table: the scope mode and the authorization check's cache time.
fn identity(
    source: &Source<'_>,
    table: Option<&Spanned<FileIdentity>>,
) -> Result<(IdentityScope, Duration), ConfigError> {
    let default_claims = || DEFAULT_JWT_CLAIMS.iter().map(|c| (*c).to_owned()).collect();
    let Some(spanned) = table else {
        return Ok((
            IdentityScope::Credentials {
                jwt_claims: default_claims(),
            },
            Duration::from_secs(30),
        ));
    };
    let id = spanned.get_ref();
    let mode = id
        .mode
        .as_ref()
        .map_or("credentials", |m| m.get_ref().as_str());
    if let Some(claims) = &id.jwt_claims {
        if mode != "credentials" {
            return Err(source.at(
                claims,
                "jwt_claims applies to identity mode \"credentials\" only",
            ));
        }
        if claims.get_ref().iter().any(|c| c.trim().is_empty()) {
            return Err(source.at(
                claims,
                "jwt_claims must list claim names, e.g. [\"iss\", \"sub\"], or be [] to hash bearer tokens whole",
            ));
        }
    }
    let scope = match mode {
        "shared" => IdentityScope::Shared,
        "credentials" => IdentityScope::Credentials {
            jwt_claims: id
                .jwt_claims
                .as_ref()
                .map_or_else(default_claims, |c| c.get_ref().clone()),
        },
        "headers" => {
            let headers: Vec<String> = id.headers.iter().map(|h| h.to_ascii_lowercase()).collect();
            if headers.is_empty() {
                return Err(source.at(
                    spanned,
                    "identity mode \"headers\" needs headers = [\"authorization\", …]",
                ));
            }
            IdentityScope::Headers(headers)
        }
        other => {
            let at = id
                .mode
                .as_ref()
                .map_or_else(|| spanned.span(), |m| m.span());
            return Err(source.error(
                Some(at),
                format!(
                    "unknown identity mode '{other}'; expected \"credentials\", \"headers\" or \"shared\""
                ),
            ));
        }
    };
    let cache = match &id.authorization_cache {
        None => Duration::from_secs(30),
        Some(v) => parse_duration(v.get_ref()).map_err(|e| source.at(v, e))?,
    };
    if cache > Duration::from_secs(3600)
        && let Some(v) = &id.authorization_cache
    {
        return Err(source.at(
            v,
            "authorization_cache is at most 1h: a revoked credential keeps reading for that long",
        ));
    }
    Ok((scope, cache))
}

fn parse_upstream(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| {
        format!("'{s}' is not a URL ({e}); expected e.g. http://127.0.0.1:4004/odata/v4/shop")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("'{s}' must be an http or https URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "'{s}' must be a service root without query or fragment"
        ));
    }
    let mut url = url;
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
    Ok(url)
}

/// A shared store's URL, as given, once it is known to name a PostgreSQL database we can use.
fn parse_store_url(s: &str) -> Result<String, String> {
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err(format!(
            "expected a PostgreSQL URL such as \"postgres://gateway@db.internal:5432/gateway\", got {s:?}"
        ));
    }
    crate::store::postgres::parse_url(s)?;
    Ok(s.to_owned())
}

fn parse_public_url(s: &str) -> Result<Url, String> {
    let mut url = parse_upstream(s).map_err(|e| e.replace("service root", "base URL"))?;
    if url.path() == "/" {
        url.set_path("");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_parts(&Flags::default(), Some((Path::new("gateway.toml"), text)))
    }

    #[test]
    fn durations_are_readable() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "s", "10", "10x", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_mistakes_name_file_line_and_expectation() {
        let err = load("listen = \"127.0.0.1:1\"\n[[route]]\nupstream = \"ftp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("gateway.toml:3:"), "{err}");
        assert!(err.contains("http or https"), "{err}");
        let err = load("[[route]]\nupstream = \"http://a/x\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("gateway.toml:3:"), "{err}");
        let err = load("token_ttl = \"soon\"\n[[route]]\nupstream = \"http://a\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("gateway.toml:1:") && err.contains("30d"),
            "{err}"
        );
    }

    #[test]
    fn request_limits_are_checked_with_file_line_and_column() {
        let route = "[[route]]\nupstream = \"http://a\"\n";
        for (limits, expected) in [
            ("header_read_timeout = \"0s\"", "more than 0"),
            ("body_read_timeout = \"0ms\"", "more than 0"),
            ("tracked_request_timeout = \"0s\"", "more than 0"),
            ("tracked_request_timeout = \"soon\"", "30d"),
            ("max_uri_bytes = 70000", "65534"),
            ("max_uri_bytes = 10", "256"),
        ] {
            let err = load(&format!("{route}[limits]\n{limits}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("gateway.toml:4:"), "{err}");
            assert!(err.contains(expected), "{limits}: {err}");
        }
        let c = load(&format!(
            "{route}[limits]\nheader_read_timeout = \"2s\"\nmax_uri_bytes = 4096\n"
        ))
        .unwrap();
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_uri_bytes, 4096);
        assert_eq!(c.limits.tracked_request_timeout, Duration::from_secs(300));
    }

    #[test]
    fn the_store_cache_is_small_by_default_and_at_least_one_mebibyte() {
        let route = "[[route]]\nupstream = \"http://a\"\n";
        let c = load(route).unwrap();
        assert_eq!(c.limits.store_cache_bytes, DEFAULT_STORE_CACHE_BYTES);
        let c = load(&format!("{route}[limits]\nstore_cache_bytes = 8388608\n")).unwrap();
        assert_eq!(c.limits.store_cache_bytes, 8 << 20);
        let err = load(&format!("{route}[limits]\nstore_cache_bytes = 4096\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("gateway.toml:4:"), "{err}");
        assert!(err.contains("at least 1048576"), "{err}");
    }

    #[test]
    fn routes_come_from_flag_and_file_longest_prefix_first() {
        let flags = Flags {
            upstream: Some("http://up:4004/odata/v4/shop/".into()),
            ..Flags::default()
        };
        let text = "[[route]]\nprefix = \"/odata/v4/shop/x\"\nupstream = \"https://b/svc\"\n[route.sets.Customers]\nkey = [\"ID\"]\nignore = [\"modifiedAt\"]\n";
        let c = Config::from_parts(&flags, Some((Path::new("g.toml"), text))).unwrap();
        assert_eq!(c.routes[0].prefix, "/odata/v4/shop/x");
        assert_eq!(c.routes[0].origin, "g.toml:1");
        assert_eq!(c.routes[1].prefix, "/odata/v4/shop");
        assert_eq!(
            c.routes[1].upstream.as_str(),
            "http://up:4004/odata/v4/shop"
        );
        assert_eq!(
            c.routes[0].sets["Customers"].ignore,
            vec!["modifiedAt".to_owned()]
        );
        assert_eq!(c.token_ttl, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn the_upstream_flag_overrides_the_file_route_with_the_same_prefix() {
        let flags = Flags {
            upstream: Some("http://flag:1/svc".into()),
            ..Flags::default()
        };
        let text = "[[route]]\nupstream = \"http://file:2/svc\"\n[route.sets.C]\nkey = [\"K\"]\n";
        let c = Config::from_parts(&flags, Some((Path::new("g.toml"), text))).unwrap();
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].upstream.as_str(), "http://flag:1/svc");
        assert_eq!(c.routes[0].sets["C"].key, Some(vec!["K".to_owned()]));
    }

    #[test]
    fn refresh_bounds_have_safe_defaults_and_are_validated_with_their_place() {
        let route = "[[route]]\nupstream = \"http://up:1/svc\"\n";
        let c = load(route).unwrap();
        assert_eq!(c.limits.max_pages_per_refresh, 100_000);
        assert_eq!(c.limits.refresh_timeout, Duration::from_secs(900));
        let c = load(&format!(
            "[limits]\nmax_pages_per_refresh = 7\nrefresh_timeout = \"90s\"\n{route}"
        ))
        .unwrap();
        assert_eq!(c.limits.max_pages_per_refresh, 7);
        assert_eq!(c.limits.refresh_timeout, Duration::from_secs(90));
        for (bad, column, says) in [
            ("max_pages_per_refresh = 0", 25, "at least 1"),
            ("refresh_timeout = \"500ms\"", 19, "at least 1s"),
            ("refresh_timeout = \"soon\"", 19, "not a duration"),
        ] {
            let err = load(&format!("[limits]\n{bad}\n{route}")).unwrap_err();
            match err {
                ConfigError::File {
                    line: 2,
                    column: c,
                    ref message,
                    ..
                } if c == column && message.contains(says) => {}
                other => panic!("{bad}: {other}"),
            }
        }
    }

    #[test]
    fn no_upstream_is_an_error() {
        assert!(Config::from_parts(&Flags::default(), None).is_err());
    }

    #[test]
    fn cidrs_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn identity_and_admission_settings_have_safe_defaults() {
        let c = load("[[route]]\nupstream = \"http://a/x\"\n").unwrap();
        assert_eq!(
            c.identity,
            IdentityScope::Credentials {
                jwt_claims: vec!["iss".into(), "sub".into()]
            }
        );
        assert_eq!(c.authorization_cache, Duration::from_secs(30));
        assert_eq!(c.limits.max_feeds, 10_000);
        assert_eq!(c.limits.max_feeds_per_scope, 100);
        assert_eq!(c.limits.max_concurrent_refreshes, 8);
        assert_eq!(c.limits.max_refresh_waiters, 64);
        let c = load("[identity]\njwt_claims = [\"oid\", \"tid\"]\nauthorization_cache = \"0s\"\n[limits]\nmax_feeds = 5\nmax_refresh_waiters = 0\n[[route]]\nupstream = \"http://a/x\"\n").unwrap();
        assert_eq!(
            c.identity,
            IdentityScope::Credentials {
                jwt_claims: vec!["oid".into(), "tid".into()]
            }
        );
        assert_eq!(c.authorization_cache, Duration::ZERO);
        assert_eq!(c.limits.max_feeds, 5);
        assert_eq!(c.limits.max_refresh_waiters, 0);
    }

    #[test]
    fn background_refresh_is_off_by_default_and_set_per_route_and_set() {
        let c = load("[[route]]\nupstream = \"http://a/x\"\n").unwrap();
        assert_eq!(c.schedule.poll_interval, None);
        assert_eq!(c.schedule.feed_idle_ttl, Duration::from_secs(3600));
        assert_eq!(c.schedule.max_scheduled_feeds, 1000);
        assert_eq!(c.poll_interval("/x", "S"), None);
        let c = load("poll_interval = \"1m\"\n[[route]]\nupstream = \"http://a/x\"\npoll_interval = \"10s\"\n[route.headers]\nAuthorization = \"Basic eDp5\"\n[route.sets.Off]\npoll_interval = \"0s\"\n[route.sets.Slow]\npoll_interval = \"5m\"\n[[route]]\nprefix = \"/b\"\nupstream = \"http://b/y\"\n").unwrap();
        assert_eq!(c.poll_interval("/x", "S"), Some(Duration::from_secs(10)));
        assert_eq!(c.poll_interval("/x", "Off"), None);
        assert_eq!(
            c.poll_interval("/x", "Slow"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(c.poll_interval("/b", "S"), Some(Duration::from_secs(60)));
        let x = c.routes.iter().find(|r| r.prefix == "/x").unwrap();
        assert_eq!(x.headers["authorization"], "Basic eDp5");
    }

    #[test]
    fn callbacks_are_refused_unless_their_host_is_allowed() {
        let c = load("[[route]]\nupstream = \"http://a/x\"\n").unwrap();
        assert!(c.notifications.allowed_hosts.is_empty());
        assert_eq!(c.notifications.max_subscriptions, 1000);
        assert_eq!(c.notifications.max_subscriptions_per_scope, 20);
        assert_eq!(
            c.notifications.max_subscription_lifetime,
            Duration::from_secs(3 * 86_400)
        );
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(!c.notifications.allows(&u("http://127.0.0.1/cb")));
        let c = load("[notifications]\nallowed_hosts = [\"Hooks.example.com\", \"127.0.0.1:9000\"]\nmax_attempts = 2\n[[route]]\nupstream = \"http://a/x\"\n").unwrap();
        let n = &c.notifications;
        assert!(n.allows(&u("https://hooks.example.com/x")));
        assert!(n.allows(&u("http://127.0.0.1:9000/x")));
        assert!(!n.allows(&u("http://127.0.0.1:9001/x")));
        assert!(!n.allows(&u("http://a/x")));
        assert_eq!(n.max_attempts, 2);
        for bad in ["\"\"", "\"http://h/\"", "\"h/x\"", "\"u@h\""] {
            let err = load(&format!(
                "[notifications]\nallowed_hosts = [{bad}]\n[[route]]\nupstream = \"http://a/x\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("gateway.toml:2:") && err.contains("allowed_hosts"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_background_refresh_settings_name_file_line_and_column() {
        let route = "[[route]]\nupstream = \"http://a/x\"\n";
        for (text, at, says) in [
            ("poll_interval = \"10ms\"\n", "1:", "at least 1s"),
            ("poll_interval = \"often\"\n", "1:", "duration"),
            ("feed_idle_ttl = \"0s\"\n", "1:", "at least 1s"),
            ("max_scheduled_feeds = 0\n", "1:", "at least 1"),
            (
                "[notifications]\nmax_subscriptions = 0\n",
                "2:",
                "max_subscriptions must be at least 1",
            ),
            (
                "[notifications]\nmax_subscriptions_per_scope = 0\n",
                "2:",
                "at least 1",
            ),
            (
                "[notifications]\nmax_subscription_lifetime = \"0s\"\n",
                "2:",
                "at least 1s",
            ),
            (
                "[notifications]\nmax_subscription_lifetime = \"a while\"\n",
                "2:",
                "duration",
            ),
        ] {
            let err = load(&format!("{text}{route}")).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("gateway.toml:{at}")),
                "{text}: {err}"
            );
            assert!(err.contains(says), "{text}: {err}");
        }
        for (table, says) in [
            ("poll_interval = \"500ms\"\n", "at least 1s"),
            ("[route.headers]\nhost = \"evil\"\n", "set by the gateway"),
            (
                "[route.headers]\n\"bad name\" = \"x\"\n",
                "not a header name",
            ),
            (
                "[route.headers]\nauthorization = \"a\\nb\"\n",
                "not a valid header value",
            ),
            ("[route.sets.S]\npoll_interval = \"1ms\"\n", "at least 1s"),
        ] {
            let err = load(&format!("{route}{table}")).unwrap_err().to_string();
            assert!(err.starts_with("gateway.toml:"), "{table}: {err}");
            assert!(err.contains(says), "{table}: {err}");
        }
    }

    #[test]
    fn bad_identity_and_admission_settings_name_file_line_and_column() {
        let route = "[[route]]\nupstream = \"http://a/x\"\n";
        let cases = [
            (
                "[identity]\nmode = \"shared\"\njwt_claims = [\"sub\"]\n",
                "3:",
                "credentials",
            ),
            ("[identity]\njwt_claims = [\"\"]\n", "2:", "claim names"),
            (
                "[identity]\nauthorization_cache = \"soon\"\n",
                "2:",
                "duration",
            ),
            (
                "[identity]\nauthorization_cache = \"2h\"\n",
                "2:",
                "at most 1h",
            ),
            (
                "[identity]\nmode = \"jwt\"\n",
                "2:",
                "unknown identity mode",
            ),
            ("[limits]\nmax_feeds = 0\n", "2:", "at least 1"),
            ("log_format = \"yaml\"\n", "1:", "not a log format"),
            ("shutdown_grace = \"2h\"\n", "1:", "at most 1h"),
            ("shutdown_grace = \"soon\"\n", "1:", "duration"),
            ("[limits]\nmax_feeds_per_scope = 0\n", "2:", "at least 1"),
            (
                "[limits]\nmax_concurrent_refreshes = 0\n",
                "2:",
                "at least 1",
            ),
        ];
        for (text, line, says) in cases {
            let err = load(&format!("{text}{route}")).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("gateway.toml:{line}")),
                "{text}: {err}"
            );
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}

//! The PostgreSQL store, for several replicas on one database (`--store postgres://…`).
//!
//! The same model as the embedded store, in tables (all prefixed `odg_`): `feeds` (meta as JSON,
//! with the version, retention mark and dropped flag as columns, so that the marks grow in one
//! `UPDATE` and reads take the published version in the same statement), `entities` (feed, row,
//! version → state, as encoded by [`EntityRow`], with its removed flag), `changes` and `stale`
//! (feed, version, row), `pending` (feed → version being written), `versions` (feed, version →
//! commit time), `meta` (the token secret) and `subscriptions`.
//!
//! Schema migrations are numbered and applied at start, each once, under an advisory lock so that
//! replicas starting together do not race. Every statement is bounded in time twice: the server
//! cancels it after `statement_timeout`, and the client gives up after the same time plus the
//! pool's wait for a connection, so a partitioned database answers 503 instead of hanging. TCP
//! keepalive on every connection notices a server gone without closing its sockets. The pool hands
//! out no connection whose session ended (its recycling checks that first), so once a restarted
//! server is back the next call opens a new connection and service resumes by itself.
//! Every write that must be all-or-nothing (a batch, a publish, a drop) is one transaction.
//!
//! The trait is synchronous (its callers run in `spawn_blocking`); this store owns a small tokio
//! runtime of its own on which the pool and its connections live, and each call hands its future
//! to it and waits. That works from any thread, and the connections do not depend on the runtime
//! of whoever opened the store.
//!
//! Unlike the embedded store, opening does not discard what unfinished refreshes wrote: on a shared
//! database such a refresh may be running on another replica. The next settle of the feed discards
//! it instead.

use std::collections::HashMap;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::*;

/// The migrations, in order; each runs once, in one transaction, and is never edited afterwards.
const MIGRATIONS: &[&str] = &["
CREATE TABLE odg_meta (name text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE odg_feeds (feed bytea PRIMARY KEY, version bigint NOT NULL, last_used_ms bigint NOT NULL,
    dropped boolean NOT NULL, meta bytea NOT NULL);
CREATE TABLE odg_entities (feed bytea NOT NULL, row_no bigint NOT NULL, version bigint NOT NULL,
    removed boolean NOT NULL, state bytea NOT NULL, PRIMARY KEY (feed, row_no, version));
CREATE TABLE odg_changes (feed bytea NOT NULL, version bigint NOT NULL, row_no bigint NOT NULL,
    PRIMARY KEY (feed, version, row_no));
CREATE TABLE odg_stale (feed bytea NOT NULL, version bigint NOT NULL, row_no bigint NOT NULL,
    PRIMARY KEY (feed, version, row_no));
CREATE TABLE odg_pending (feed bytea PRIMARY KEY, version bigint NOT NULL);
CREATE TABLE odg_versions (feed bytea NOT NULL, version bigint NOT NULL, committed_ms bigint NOT NULL,
    PRIMARY KEY (feed, version));
CREATE TABLE odg_subscriptions (id bytea PRIMARY KEY, body bytea NOT NULL);
", "
ALTER TABLE odg_feeds ADD COLUMN refreshes bigint NOT NULL DEFAULT 0,
    ADD COLUMN refreshed_ms bigint NOT NULL DEFAULT 0;
CREATE TABLE odg_deliveries (id bytea PRIMARY KEY, version bigint NOT NULL, until_ms bigint NOT NULL);
"];

/// Stale marks (superseded states) removed per statement of [`PgStore::compact_superseded`], and
/// at most this many statements per call (the rest waits for the next publish).
const COMPACTION_BATCH: i64 = 5_000;
const MAX_COMPACTION_BATCHES: usize = 10_000;

/// Key of the advisory lock that serializes migrations across replicas ("odg" in ASCII).
const MIGRATION_LOCK: i64 = 0x6f6467;

/// Time limits of a PostgreSQL store.
#[derive(Clone, Copy, Debug)]
pub struct PgLimits {
    /// Longest a statement may run (the server's `statement_timeout`).
    pub statement: Duration,
    /// Longest a call waits for a pooled connection (or to open one).
    pub pool_wait: Duration,
    /// Connections in the pool.
    pub connections: usize,
}

impl Default for PgLimits {
    fn default() -> Self {
        PgLimits {
            statement: Duration::from_secs(10),
            pool_wait: Duration::from_secs(5),
            connections: 16,
        }
    }
}

/// A store on a PostgreSQL database.
pub struct PgStore {
    pool: Pool,
    runtime: Option<tokio::runtime::Runtime>,
    limits: PgLimits,
    held: Held,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused on an async thread; nothing waits on it.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn pg_error(e: tokio_postgres::Error) -> StoreError {
    // The server's message says what went wrong; the driver's Display alone is often just "db error".
    match e.as_db_error() {
        Some(db) => StoreError(format!("postgres: {}: {}", db.code().code(), db.message())),
        None => StoreError(format!("postgres: {e}")),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        e => StoreError(format!("postgres: no connection: {e}")),
    }
}

/// Check a store URL without connecting: what `--store` accepts.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| {
        format!("not a PostgreSQL URL ({e}); expected postgres://user@host:port/database")
    })?;
    if config.get_hosts().is_empty() {
        return Err(
            "the PostgreSQL URL names no host; expected postgres://user@host:port/database".into(),
        );
    }
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(
            "sslmode=require is not supported: connect over a trusted network or a unix socket"
                .into(),
        );
    }
    Ok(config)
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn feed_meta(row: &tokio_postgres::Row) -> Result<FeedMeta, StoreError> {
    let bytes: &[u8] = row.get("meta");
    let mut meta: FeedMeta = serde_json::from_slice(bytes).map_err(StoreError::new)?;
    meta.version = u(row.get("version"));
    meta.last_used_ms = u(row.get("last_used_ms"));
    meta.dropped = row.get("dropped");
    Ok(meta)
}

const FEED_COLUMNS: &str = "version, last_used_ms, dropped, meta";

async fn read_feed(
    client: &impl tokio_postgres::GenericClient,
    feed: FeedId,
    lock: bool,
) -> Result<Option<FeedMeta>, StoreError> {
    let sql = format!(
        "SELECT {FEED_COLUMNS} FROM odg_feeds WHERE feed = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match client
        .query_opt(&sql, &[&&feed.0[..]])
        .await
        .map_err(pg_error)?
    {
        None => Ok(None),
        Some(row) => feed_meta(&row).map(Some),
    }
}

async fn write_feed(
    client: &impl tokio_postgres::GenericClient,
    feed: FeedId,
    meta: &FeedMeta,
) -> Result<(), StoreError> {
    let encoded = serde_json::to_vec(meta).map_err(StoreError::new)?;
    client
        .execute(
            "INSERT INTO odg_feeds (feed, version, last_used_ms, dropped, meta) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (feed) DO UPDATE SET version = excluded.version, last_used_ms = excluded.last_used_ms,
             dropped = excluded.dropped, meta = excluded.meta",
            &[&&feed.0[..], &i(meta.version), &i(meta.last_used_ms), &meta.dropped, &encoded],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// The newest state per row at or below the published version (or `$2` when given), rows from `$3`.
const LATEST: &str = "SELECT DISTINCT ON (row_no) row_no, version, removed, state FROM odg_entities
    WHERE feed = $1 AND row_no >= $3
    AND version <= COALESCE($2, (SELECT version FROM odg_feeds WHERE feed = $1), 0)
    ORDER BY row_no, version DESC";

impl PgStore {
    /// Connect to the database at `url`, apply the migrations it lacks and create the token secret
    /// if there is none. With `schema`, the store's tables live in that schema (created if need be).
    pub fn open(url: &str, schema: Option<&str>, limits: PgLimits) -> Result<Self, StoreError> {
        let mut config = parse_url(url).map_err(StoreError)?;
        let mut options = config.get_options().unwrap_or_default().to_string();
        options.push_str(&format!(
            " -c statement_timeout={}",
            limits.statement.as_millis()
        ));
        if let Some(schema) = schema {
            options.push_str(&format!(" -c search_path={schema}"));
        }
        config.options(options.trim());
        config.connect_timeout(limits.pool_wait);
        // This side notices a server gone without a word (a lost machine, a cut network) in the
        // same time as the server notices a lock holder gone (see `AdvisoryLock`).
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_COUNT);
        config.application_name("odata-delta-gateway");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError(format!("cannot start the PostgreSQL worker: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(limits.connections)
                .wait_timeout(Some(limits.pool_wait))
                .create_timeout(Some(limits.pool_wait))
                .recycle_timeout(Some(limits.pool_wait))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError(format!("postgres: {e}")))?
        };
        let store = PgStore {
            pool,
            runtime: Some(runtime),
            limits,
            held: Held::default(),
        };
        let schema = schema.map(str::to_string);
        store.run(move |pool| async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            if let Some(schema) = schema {
                client
                    .execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""), &[])
                    .await
                    .map_err(pg_error)?;
            }
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(pg_error)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS odg_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(pg_error)?;
            let applied: i32 = tx
                .query_one("SELECT COALESCE(max(version), 0) FROM odg_migrations", &[])
                .await
                .map_err(pg_error)?
                .get(0);
            if applied as usize > MIGRATIONS.len() {
                return Err(StoreError(format!(
                    "the database has schema version {applied}, this gateway knows {}: run the newer gateway release",
                    MIGRATIONS.len()
                )));
            }
            for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
                tx.batch_execute(sql).await.map_err(pg_error)?;
                tx.execute("INSERT INTO odg_migrations (version) VALUES ($1)", &[&(n as i32 + 1)])
                    .await
                    .map_err(pg_error)?;
            }
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|e| StoreError(format!("no randomness for the token secret: {e}")))?;
            // Created once: the first replica's insert wins, every other keeps it.
            tx.execute(
                "INSERT INTO odg_meta (name, value) VALUES ('token_secret', $1) ON CONFLICT (name) DO NOTHING",
                &[&&secret[..]],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Run `op` on the store's runtime and wait for it, bounded by the statement and pool limits.
    fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::new("the PostgreSQL worker stopped"))?;
        let bound = self.limits.statement * 3 + self.limits.pool_wait;
        let fut = op(self.pool.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let out = match tokio::time::timeout(bound, fut).await {
                Ok(out) => out,
                Err(_) => Err(StoreError::new("postgres: no answer in time")),
            };
            let _ = tx.send(out);
        });
        rx.recv()
            .map_err(|_| StoreError::new("the PostgreSQL worker stopped"))?
    }

    /// Run a streaming query on the store's runtime, handing its rows to `visit` on this thread a
    /// chunk at a time, so that memory stays bounded whatever the feed's size.
    fn stream<T, F, Fut>(&self, op: F, mut visit: impl FnMut(T)) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Pool, tokio::sync::mpsc::Sender<Vec<T>>) -> Fut,
        Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let done = {
            let runtime = self
                .runtime
                .as_ref()
                .ok_or_else(|| StoreError::new("the PostgreSQL worker stopped"))?;
            runtime.spawn(op(self.pool.clone(), tx))
        };
        while let Some(chunk) = rx.blocking_recv() {
            for item in chunk {
                visit(item);
            }
        }
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::new("the PostgreSQL worker stopped"))?;
        let (send, recv) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = send.send(done.await);
        });
        recv.recv()
            .map_err(|_| StoreError::new("the PostgreSQL worker stopped"))?
            .map_err(|e| StoreError(format!("postgres: {e}")))?
    }
}

/// Rows per chunk of a streamed scan.
const CHUNK: usize = 4096;

async fn stream_rows<T: Send + 'static>(
    client: &impl tokio_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    out: &tokio::sync::mpsc::Sender<Vec<T>>,
    mut each: impl FnMut(&tokio_postgres::Row) -> Option<T>,
) -> Result<(), StoreError> {
    use futures_util::TryStreamExt;
    let rows = client
        .query_raw(sql, params.iter().copied())
        .await
        .map_err(pg_error)?;
    futures_util::pin_mut!(rows);
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(row) = rows.try_next().await.map_err(pg_error)? {
        if let Some(item) = each(&row) {
            chunk.push(item);
        }
        if chunk.len() >= CHUNK && out.send(std::mem::take(&mut chunk)).await.is_err() {
            return Ok(());
        }
    }
    if !chunk.is_empty() {
        let _ = out.send(chunk).await;
    }
    Ok(())
}

// DESIGN: one refresh per feed across replicas is a session-level advisory lock
// (`pg_advisory_lock`) held on a connection of its own for as long as the refresh runs, not a lease
// row with a holder and an expiry.
// - PostgreSQL releases it by itself when the holder's session ends: a replica killed mid-refresh
//   (its kernel closes the socket) frees the feed at once, and the next replica that asks takes
//   over; a lease would stay taken until it expired. There is no expiry to choose, no renewal task
//   whose stall would hand a live refresh's feed to another, and no clock to trust across
//   machines.
// - A holder that vanishes without closing its socket (a lost machine, a cut network) is noticed by
//   TCP keepalive: the lock's session asks the server to probe after KEEPALIVE_IDLE of silence,
//   every KEEPALIVE_INTERVAL, and to drop the session after KEEPALIVE_COUNT unanswered probes, so
//   the lock goes at most KEEPALIVE_IDLE + KEEPALIVE_INTERVAL × KEEPALIVE_COUNT (7 s) after the
//   holder's last packet; that is below the default statement timeout (10 s) that bounds another
//   replica's wait for it, so a waiting request is mostly served rather than answered 503. (The
//   kernel answers probes for a process that is merely stopped, so a frozen replica keeps its
//   lock until it is killed.)
// - A session can end while its refresh goes on reading the upstream (the server restarted, the
//   network broke), and another replica may then take the lock and settle the feed. So the
//   refresh's writes — settle, its batches and its publish — run on the lock's own connection
//   ([`PgStore::fenced`]): once its session is gone they fail, and the refresh commits nothing,
//   instead of publishing over the other replica's work. That is the fence a lease would need a
//   token column and a check in every write for.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(3);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_COUNT: u32 = 4;

/// The connections holding this store's feed locks, by feed.
type Held = Arc<Mutex<HashMap<FeedId, Arc<tokio::sync::Mutex<ClientWrapper>>>>>;

/// A feed's refresh lock: the connection that holds it, taken out of the pool (never returned
/// holding the lock) and closed when this is dropped, which ends the session and so the lock.
struct AdvisoryLock {
    feed: FeedId,
    connection: Arc<tokio::sync::Mutex<ClientWrapper>>,
    held: Held,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held
            .get(&self.feed)
            .is_some_and(|c| Arc::ptr_eq(c, &self.connection))
        {
            held.remove(&self.feed);
        }
    }
}

/// A connection for one store call: from the pool, or the one holding a feed's lock.
enum Conn {
    /// Boxed: a pooled object is large beside a guard, and one allocation is nothing beside the
    /// round trip it serves.
    Pooled(Box<deadpool_postgres::Object>),
    Lock(tokio::sync::OwnedMutexGuard<ClientWrapper>),
}

impl Deref for Conn {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        match self {
            Conn::Pooled(object) => object,
            Conn::Lock(guard) => guard,
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        match self {
            Conn::Pooled(object) => object,
            Conn::Lock(guard) => guard,
        }
    }
}

/// The connection `fenced` chose: the lock's, which must still be open, or one from the pool.
async fn connection(
    pool: &Pool,
    lock: Option<Arc<tokio::sync::Mutex<ClientWrapper>>>,
) -> Result<Conn, StoreError> {
    let Some(lock) = lock else {
        return pool
            .get()
            .await
            .map(|object| Conn::Pooled(Box::new(object)))
            .map_err(pool_error);
    };
    let guard = lock.lock_owned().await;
    if guard.is_closed() {
        return Err(StoreError::new(
            "postgres: the session holding the feed's refresh lock ended (the server restarted \
             or the connection broke); this refresh commits nothing",
        ));
    }
    Ok(Conn::Lock(guard))
}

impl PgStore {
    /// The connection holding `feed`'s lock, when this store holds it: a refresh's writes go
    /// through it, so that they fail rather than land once the lock is lost (see the DESIGN note
    /// above). Without a lock (the conformance suite, maintenance) a pooled connection is used.
    fn fenced(&self, feed: FeedId) -> Option<Arc<tokio::sync::Mutex<ClientWrapper>>> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&feed)
            .cloned()
    }
}

/// The advisory lock key of a feed: its id's first 8 bytes.
fn lock_key(feed: FeedId) -> i64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&feed.0[..8]);
    i64::from_be_bytes(word)
}

impl FeedStore for PgStore {
    fn is_shared(&self) -> bool {
        true
    }

    fn lock_feed(&self, feed: FeedId) -> Result<Option<FeedLock>, StoreError> {
        let key = lock_key(feed);
        let client = self.run(move |pool| async move {
            let object = pool.get().await.map_err(pool_error)?;
            // Out of the pool before anything is set on it: this session is closed, not reused.
            let client = deadpool_postgres::Object::take(object);
            // The server probes this session's peer, so that the lock of a holder gone without
            // closing its socket goes in bounded time (see the DESIGN note above).
            client
                .batch_execute(&format!(
                    "SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {}; \
                     SET tcp_keepalives_count = {}",
                    KEEPALIVE_IDLE.as_secs(),
                    KEEPALIVE_INTERVAL.as_secs(),
                    KEEPALIVE_COUNT
                ))
                .await
                .map_err(pg_error)?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .map_err(pg_error)?;
            Ok(client)
        })?;
        let connection = Arc::new(tokio::sync::Mutex::new(client));
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(feed, connection.clone());
        Ok(Some(FeedLock::new(AdvisoryLock {
            feed,
            connection,
            held: self.held.clone(),
        })))
    }

    fn token_secret(&self) -> Result<Vec<u8>, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "SELECT value FROM odg_meta WHERE name = 'token_secret'",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .ok_or_else(|| StoreError::new("the token secret is missing"))?;
            Ok(row.get::<_, Vec<u8>>(0))
        })
    }

    fn bytes(&self) -> Result<u64, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            // The store's own tables, in the schema its connections use.
            let row = client
                .query_one(
                    "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.relkind = 'r' AND c.relname LIKE 'odg\\_%' AND n.nspname = current_schema()",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            Ok(u(row.get(0)))
        })
    }

    fn sizes(&self) -> Result<StoreSizes, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM odg_feeds), (SELECT count(*) FROM odg_entities),
                     (SELECT count(*) FROM odg_changes), (SELECT count(*) FROM odg_stale),
                     (SELECT count(*) FROM odg_pending)",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            Ok(StoreSizes {
                feeds: u(row.get(0)),
                entity_states: u(row.get(1)),
                changes: u(row.get(2)),
                stale: u(row.get(3)),
                pending: u(row.get(4)),
            })
        })
    }

    fn feed(&self, feed: FeedId) -> Result<Option<FeedMeta>, StoreError> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            read_feed(&**client, feed, false).await
        })
    }

    fn feed_and_refreshes(
        &self,
        feed: FeedId,
    ) -> Result<(Option<FeedMeta>, RefreshMark), StoreError> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {FEED_COLUMNS}, refreshes, refreshed_ms FROM odg_feeds WHERE feed = $1"
                    ),
                    &[&&feed.0[..]],
                )
                .await
                .map_err(pg_error)?;
            match row {
                None => Ok((None, RefreshMark::default())),
                Some(row) => Ok((
                    Some(feed_meta(&row)?),
                    RefreshMark {
                        count: u(row.get("refreshes")),
                        at_ms: u(row.get("refreshed_ms")),
                    },
                )),
            }
        })
    }

    fn count_unchanged_refresh(&self, feed: FeedId, now_ms: u64) -> Result<(), StoreError> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "UPDATE odg_feeds SET refreshes = refreshes + 1, refreshed_ms = $2 WHERE feed = $1",
                    &[&&feed.0[..], &i(now_ms)],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn claim_notification(
        &self,
        id: [u8; 16],
        version: Version,
        now_ms: u64,
        hold_ms: u64,
    ) -> Result<bool, StoreError> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let until = i(now_ms.saturating_add(hold_ms));
            let claimed = client
                .query_opt(
                    "INSERT INTO odg_deliveries (id, version, until_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version, until_ms = excluded.until_ms
                     WHERE odg_deliveries.version < excluded.version OR odg_deliveries.until_ms < $4
                     RETURNING 1",
                    &[&&id[..], &i(version.0), &until, &i(now_ms)],
                )
                .await
                .map_err(pg_error)?;
            Ok(claimed.is_some())
        })
    }

    fn feeds(&self) -> Result<Vec<(FeedId, FeedMeta)>, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    &format!("SELECT feed, {FEED_COLUMNS} FROM odg_feeds ORDER BY feed"),
                    &[],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|row| Ok((feed_id(row.get(0))?, feed_meta(row)?)))
                .collect()
        })
    }

    fn settle(&self, feed: FeedId, purge_before_ms: u64) -> Result<Settled, StoreError> {
        let lock = self.fenced(feed);
        self.run(move |pool| async move {
            let client = connection(&pool, lock).await?;
            let f = &feed.0[..];
            // Each statement is atomic and safe to repeat; together they need not be one. Rows
            // above the published version exist only when a refresh wrote and did not publish
            // (its pending row says so): the scan for them reads every row of the feed, so it
            // runs only then.
            let burned = client
                .query_opt("SELECT version FROM odg_pending WHERE feed = $1", &[&f])
                .await
                .map_err(pg_error)?
                .map(|row| u(row.get(0)));
            let discarded: i64 = match burned {
                None => 0,
                Some(_) => client
                    .query_one(
                        "WITH p AS (SELECT COALESCE((SELECT version FROM odg_feeds WHERE feed = $1), 0) AS v),
                         e AS (DELETE FROM odg_entities WHERE feed = $1 AND version > (SELECT v FROM p) RETURNING 1),
                         c AS (DELETE FROM odg_changes WHERE feed = $1 AND version > (SELECT v FROM p)),
                         s AS (DELETE FROM odg_stale WHERE feed = $1 AND version > (SELECT v FROM p))
                         SELECT count(*) FROM e",
                        &[&f],
                    )
                    .await
                    .map_err(pg_error)?
                    .get(0),
            };
            let purged = client
                .query(
                    "WITH v AS (DELETE FROM odg_versions WHERE feed = $1 AND committed_ms < $2 RETURNING version),
                     e AS (DELETE FROM odg_entities e USING v WHERE e.feed = $1 AND e.version = v.version
                         AND e.removed AND NOT EXISTS (SELECT 1 FROM odg_entities n WHERE n.feed = $1
                         AND n.row_no = e.row_no AND n.version > e.version)
                         RETURNING e.row_no, e.version, substring(e.state FROM 2 FOR 16) AS key),
                     c AS (DELETE FROM odg_changes c USING e WHERE c.feed = $1 AND c.row_no = e.row_no
                         AND c.version = e.version)
                     SELECT key FROM e ORDER BY version, row_no",
                    &[&f, &i(purge_before_ms)],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(|row| KeyHash(fixed(row.get::<_, &[u8]>(0), 0)))
                .collect();
            Ok(Settled {
                discarded: u(discarded),
                compacted: 0,
                purged,
                burned: burned.unwrap_or(0),
            })
        })
    }

    fn compact_superseded(&self, feed: FeedId) -> Result<u64, StoreError> {
        let mut compacted = 0;
        // In batches, each one statement well inside the statement timeout, however many rows the
        // last publish superseded; the count of stale marks bounds the loop.
        for _ in 0..MAX_COMPACTION_BATCHES {
            let (marks, states) = self.run(move |pool| async move {
                let client = pool.get().await.map_err(pool_error)?;
                // Only states at or below the published version: safe beside the next refresh,
                // which writes above it.
                let row = client
                    .query_one(
                        "WITH s AS (DELETE FROM odg_stale WHERE (feed, version, row_no) IN
                             (SELECT feed, version, row_no FROM odg_stale WHERE feed = $1
                              AND version <= COALESCE((SELECT version FROM odg_feeds WHERE feed = $1), 0)
                              LIMIT $2)
                             RETURNING row_no, version),
                         e AS (DELETE FROM odg_entities e USING s WHERE e.feed = $1 AND e.row_no = s.row_no
                             AND e.version < s.version RETURNING e.row_no, e.version),
                         c AS (DELETE FROM odg_changes c USING e WHERE c.feed = $1 AND c.row_no = e.row_no
                             AND c.version = e.version)
                         SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM e)",
                        &[&&feed.0[..], &COMPACTION_BATCH],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok((u(row.get(0)), u(row.get(1))))
            })?;
            compacted += states;
            if marks < COMPACTION_BATCH as u64 {
                break;
            }
        }
        Ok(compacted)
    }

    fn visit_index(
        &self,
        feed: FeedId,
        visit: &mut dyn FnMut(IndexRow),
    ) -> Result<Option<FeedMeta>, StoreError> {
        let mut meta = None;
        self.stream(
            move |pool, out| async move {
                let mut client = pool.get().await.map_err(pool_error)?;
                // One snapshot for the meta and the rows.
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(pg_error)?;
                let meta = read_feed(&*tx, feed, false).await?;
                let published = i(meta.as_ref().map_or(0, |m| m.version));
                if out.send(vec![Err(meta)]).await.is_err() {
                    return Ok(());
                }
                stream_rows(
                    &*tx,
                    "SELECT DISTINCT ON (row_no) row_no, substring(state FROM 1 FOR 34) FROM odg_entities
                     WHERE feed = $1 AND version <= $2 ORDER BY row_no, version DESC",
                    &[&&feed.0[..], &published],
                    &out,
                    |row| {
                        let head: &[u8] = row.get(1);
                        Some(Ok(IndexRow {
                            row: u(row.get(0)),
                            key_hash: KeyHash(fixed(head, KEY_AT)),
                            content: removed_flag(head)
                                .is_none()
                                .then(|| ContentHash(fixed(head, CONTENT_AT))),
                        }))
                    },
                )
                .await?;
                tx.commit().await.map_err(pg_error)
            },
            |item: Result<IndexRow, Option<FeedMeta>>| match item {
                Ok(row) => visit(row),
                Err(m) => meta = m,
            },
        )?;
        Ok(meta)
    }

    fn write_pending(
        &self,
        feed: FeedId,
        version: Version,
        rows: &[PendingRow],
    ) -> Result<(), StoreError> {
        let nums: Vec<i64> = rows.iter().map(|p| i(p.row)).collect();
        let removed: Vec<bool> = rows
            .iter()
            .map(|p| p.state.removed_reason().is_some())
            .collect();
        let states: Vec<Vec<u8>> = rows.iter().map(|p| p.state.as_bytes().to_vec()).collect();
        let existed: Vec<i64> = rows
            .iter()
            .filter(|p| p.existed)
            .map(|p| i(p.row))
            .collect();
        let lock = self.fenced(feed);
        self.run(move |pool| async move {
            let mut client = connection(&pool, lock).await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let f = &feed.0[..];
            let v = i(version.0);
            tx.execute(
                "INSERT INTO odg_pending (feed, version) VALUES ($1, $2)
                 ON CONFLICT (feed) DO UPDATE SET version = excluded.version",
                &[&f, &v],
            )
            .await
            .map_err(pg_error)?;
            tx.execute(
                "INSERT INTO odg_entities (feed, row_no, version, removed, state)
                 SELECT $1, r, $2, rm, s FROM unnest($3::bigint[], $4::boolean[], $5::bytea[]) AS t(r, rm, s)
                 ON CONFLICT (feed, row_no, version) DO UPDATE SET removed = excluded.removed, state = excluded.state",
                &[&f, &v, &nums, &removed, &states],
            )
            .await
            .map_err(pg_error)?;
            tx.execute(
                "INSERT INTO odg_changes (feed, version, row_no) SELECT $1, $2, r FROM unnest($3::bigint[]) AS t(r)
                 ON CONFLICT DO NOTHING",
                &[&f, &v, &nums],
            )
            .await
            .map_err(pg_error)?;
            tx.execute(
                "INSERT INTO odg_stale (feed, version, row_no) SELECT $1, $2, r FROM unnest($3::bigint[]) AS t(r)
                 ON CONFLICT DO NOTHING",
                &[&f, &v, &existed],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
    }

    fn publish(&self, feed: FeedId, meta: &FeedMeta, now_ms: u64) -> Result<(), StoreError> {
        let mut meta = meta.clone();
        let lock = self.fenced(feed);
        self.run(move |pool| async move {
            let mut client = connection(&pool, lock).await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let previous = read_feed(&*tx, feed, true).await?;
            meta.last_used_ms = meta
                .last_used_ms
                .max(now_ms)
                .max(previous.as_ref().map_or(0, |m| m.last_used_ms));
            write_feed(&*tx, feed, &meta).await?;
            tx.execute(
                "UPDATE odg_feeds SET refreshes = refreshes + 1, refreshed_ms = $2 WHERE feed = $1",
                &[&&feed.0[..], &i(now_ms)],
            )
            .await
            .map_err(pg_error)?;
            if previous.is_none_or(|p| p.version != meta.version) {
                tx.execute(
                    "INSERT INTO odg_versions (feed, version, committed_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (feed, version) DO UPDATE SET committed_ms = excluded.committed_ms",
                    &[&&feed.0[..], &i(meta.version), &i(now_ms)],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.execute("DELETE FROM odg_pending WHERE feed = $1", &[&&feed.0[..]])
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
    }

    fn keys_of(&self, feed: FeedId, rows: &[u64]) -> Result<Vec<RowKey>, StoreError> {
        Ok(self
            .rows(feed, rows)?
            .into_iter()
            .map(|(row, state)| RowKey {
                row,
                key_hash: state.key_hash(),
                predicate: state.predicate().to_string(),
                key_members: state.key_members().to_vec(),
            })
            .collect())
    }

    fn was_published(&self, feed: FeedId, version: Version) -> Result<bool, StoreError> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            Ok(client
                .query_opt(
                    "SELECT 1 FROM odg_versions WHERE feed = $1 AND version = $2",
                    &[&&feed.0[..], &i(version.0)],
                )
                .await
                .map_err(pg_error)?
                .is_some())
        })
    }

    fn rows(&self, feed: FeedId, rows: &[u64]) -> Result<Vec<(u64, EntityRow)>, StoreError> {
        let wanted: Vec<i64> = rows.iter().map(|&r| i(r)).collect();
        let found = self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT DISTINCT ON (row_no) row_no, state FROM odg_entities
                     WHERE feed = $1 AND row_no = ANY($2)
                     AND version <= COALESCE((SELECT version FROM odg_feeds WHERE feed = $1), 0)
                     ORDER BY row_no, version DESC",
                    &[&&feed.0[..], &wanted],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|row| Ok((u(row.get(0)), EntityRow::decode(row.get(1))?)))
                .collect::<Result<std::collections::HashMap<u64, EntityRow>, StoreError>>()
        })?;
        // In the order asked, as the embedded store answers.
        let mut found = found;
        Ok(rows
            .iter()
            .filter_map(|r| found.remove(r).map(|state| (*r, state)))
            .collect())
    }

    fn touch(&self, used: &[(FeedId, u64)]) -> Result<(), StoreError> {
        let feeds: Vec<Vec<u8>> = used.iter().map(|(f, _)| f.0.to_vec()).collect();
        let marks: Vec<i64> = used.iter().map(|(_, at)| i(*at)).collect();
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "UPDATE odg_feeds f SET last_used_ms = t.at FROM unnest($1::bytea[], $2::bigint[]) AS t(feed, at)
                     WHERE f.feed = t.feed AND f.last_used_ms < t.at",
                    &[&feeds, &marks],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn cover_issued(&self, feed: FeedId, issued_ms: u64, until_ms: u64) -> Result<u64, StoreError> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "WITH up AS (UPDATE odg_feeds SET last_used_ms = $3 WHERE feed = $1 AND last_used_ms < $2
                         RETURNING last_used_ms)
                     SELECT COALESCE((SELECT last_used_ms FROM up), (SELECT last_used_ms FROM odg_feeds WHERE feed = $1))",
                    &[&&feed.0[..], &i(issued_ms), &i(until_ms.max(issued_ms))],
                )
                .await
                .map_err(pg_error)?;
            Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)).map_or(0, u))
        })
    }

    fn idle_feeds(&self, before_ms: u64) -> Result<Vec<FeedId>, StoreError> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .query(
                    "SELECT feed FROM odg_feeds WHERE NOT dropped AND last_used_ms < $1 ORDER BY feed",
                    &[&i(before_ms)],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(|row| feed_id(row.get(0)))
                .collect()
        })
    }

    fn stored_feeds(&self) -> Result<Vec<(FeedId, String)>, StoreError> {
        Ok(self
            .feeds()?
            .into_iter()
            .filter(|(_, m)| !m.dropped)
            .map(|(f, m)| (f, m.scope))
            .collect())
    }

    fn drop_feed(&self, feed: FeedId, before_ms: u64) -> Result<bool, StoreError> {
        self.run(move |pool| async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let Some(mut meta) = read_feed(&*tx, feed, true).await? else {
                return Ok(false);
            };
            if meta.dropped || meta.last_used_ms >= before_ms {
                return Ok(false);
            }
            meta.dropped = true;
            meta.live = 0;
            write_feed(&*tx, feed, &meta).await?;
            tx.execute(
                "UPDATE odg_feeds SET refreshes = refreshes + 1 WHERE feed = $1",
                &[&&feed.0[..]],
            )
            .await
            .map_err(pg_error)?;
            for table in ["odg_entities", "odg_changes", "odg_stale", "odg_versions"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE feed = $1"),
                    &[&&feed.0[..]],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(true)
        })
    }

    fn visit_live(
        &self,
        feed: FeedId,
        visit: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(), StoreError> {
        self.stream(
            move |pool, out| async move {
                let client = pool.get().await.map_err(pool_error)?;
                stream_rows(
                    &**client,
                    &format!(
                        "SELECT row_no, state FROM ({LATEST}) s WHERE NOT removed ORDER BY row_no"
                    ),
                    &[&&feed.0[..], &None::<i64>, &0i64],
                    &out,
                    |row| Some((u(row.get(0)), row.get::<_, Vec<u8>>(1))),
                )
                .await
            },
            |(row, state): (u64, Vec<u8>)| {
                if let Ok(state) = EntityRow::decode(state) {
                    visit(row, state.body());
                }
            },
        )
    }

    fn live_page_at(
        &self,
        feed: FeedId,
        after: Option<u64>,
        skip: u64,
        limit: usize,
        visible: Option<Version>,
    ) -> Result<Vec<(u64, EntityRow)>, StoreError> {
        let first_row = match after {
            Some(row) if row >= i64::MAX as u64 => return Ok(Vec::new()),
            Some(row) => row + 1,
            None => 0,
        };
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    &format!("SELECT row_no, state FROM ({LATEST}) s WHERE NOT removed ORDER BY row_no OFFSET $4 LIMIT $5"),
                    &[&&feed.0[..], &visible.map(|v| i(v.0)), &i(first_row), &i(skip), &(limit as i64)],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|row| Ok((u(row.get(0)), EntityRow::decode(row.get(1))?)))
                .collect()
        })
    }

    fn delta_page(
        &self,
        feed: FeedId,
        since: Version,
        upto: Version,
        after: Option<(Version, u64)>,
        limit: usize,
    ) -> Result<Vec<(Version, u64, EntityRow)>, StoreError> {
        if upto <= since {
            return Ok(Vec::new());
        }
        let (from_version, from_row) = match after {
            Some((v, row)) => (i(v.0), i(row)),
            None => (i(since.0 + 1), -1),
        };
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    &format!("SELECT version, row_no, state FROM ({DELTA}) d ORDER BY version, row_no LIMIT $5"),
                    &[&&feed.0[..], &from_version, &from_row, &i(upto.0), &(limit as i64)],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|row| {
                    Ok((
                        Version(u(row.get(0))),
                        u(row.get(1)),
                        EntityRow::decode(row.get(2))?,
                    ))
                })
                .collect()
        })
    }

    fn delta_count(&self, feed: FeedId, since: Version, upto: Version) -> Result<u64, StoreError> {
        if upto <= since {
            return Ok(0);
        }
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let n: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM ({DELTA}) d"),
                    &[&&feed.0[..], &i(since.0 + 1), &-1i64, &i(upto.0)],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            Ok(u(n))
        })
    }

    fn subscriptions(&self) -> Result<Vec<([u8; 16], SubscriptionRow)>, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .query("SELECT id, body FROM odg_subscriptions ORDER BY id", &[])
                .await
                .map_err(pg_error)?
                .iter()
                .map(|row| {
                    let id = feed_id(row.get(0))?.0;
                    let body: &[u8] = row.get(1);
                    Ok((id, serde_json::from_slice(body).map_err(StoreError::new)?))
                })
                .collect()
        })
    }

    fn put_subscription(&self, id: [u8; 16], row: &SubscriptionRow) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(row).map_err(StoreError::new)?;
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "INSERT INTO odg_subscriptions (id, body) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                    &[&&id[..], &encoded],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn delete_subscriptions(&self, ids: &[[u8; 16]]) -> Result<(), StoreError> {
        let ids: Vec<Vec<u8>> = ids.iter().map(|id| id.to_vec()).collect();
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "WITH d AS (DELETE FROM odg_deliveries WHERE id = ANY($1))
                     DELETE FROM odg_subscriptions WHERE id = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }
}

/// The entries of a delta from (`$2`, `$3`) exclusive up to version `$4` (capped at the
/// published one), whose state at their version is still the row's newest published state.
const DELTA: &str = "SELECT c.version, c.row_no, e.state FROM odg_changes c
    JOIN odg_entities e ON e.feed = c.feed AND e.row_no = c.row_no AND e.version = c.version
    WHERE c.feed = $1 AND (c.version, c.row_no) > ($2, $3)
    AND c.version <= LEAST($4, COALESCE((SELECT version FROM odg_feeds WHERE feed = $1), 0))
    AND NOT EXISTS (SELECT 1 FROM odg_entities n WHERE n.feed = c.feed AND n.row_no = c.row_no
        AND n.version > c.version
        AND n.version <= COALESCE((SELECT version FROM odg_feeds WHERE feed = $1), 0))";

fn feed_id(bytes: &[u8]) -> Result<FeedId, StoreError> {
    bytes
        .try_into()
        .map(FeedId)
        .map_err(|_| StoreError::new("a stored feed id is corrupt"))
}

#[cfg(test)]
mod tests {
    use super::super::conformance::{live, meta};
    use super::*;

    /// A store on a fresh schema of the test database.
    fn store() -> PgStore {
        let url =
            std::env::var("ODG_TEST_POSTGRES").expect("ODG_TEST_POSTGRES names the test database");
        let mut salt = [0u8; 4];
        getrandom::fill(&mut salt).unwrap();
        let schema = format!("t_lock_{:08x}", u32::from_be_bytes(salt));
        PgStore::open(&url, Some(&schema), PgLimits::default()).unwrap()
    }

    /// Runs `sql` (one row, one text column) on the connection holding `feed`'s lock.
    fn on_lock(store: &PgStore, feed: FeedId, sql: &'static str) -> String {
        let held = store.fenced(feed).expect("the lock's connection");
        store
            .run(move |_| async move {
                let client = held.lock().await;
                let row = client.query_one(sql, &[]).await.map_err(pg_error)?;
                Ok(row.get::<_, String>(0))
            })
            .unwrap()
    }

    /// Whether another session can take `feed`'s lock now (and lets it go again).
    fn free(store: &PgStore, feed: FeedId) -> bool {
        let key = lock_key(feed);
        store
            .run(move |pool| async move {
                let client = pool.get().await.map_err(pool_error)?;
                let row = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .await
                    .map_err(pg_error)?;
                let taken: bool = row.get(0);
                if taken {
                    client
                        .execute("SELECT pg_advisory_unlock($1)", &[&key])
                        .await
                        .map_err(pg_error)?;
                }
                Ok(taken)
            })
            .unwrap()
    }

    fn eventually(what: &str, test: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !test() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    #[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
    fn a_feed_lock_is_a_session_of_its_own_that_the_server_probes_and_drops_with_it() {
        let store = store();
        let feed = FeedId([0x51; 16]);
        let lock = store.lock_feed(feed).unwrap();
        assert!(!free(&store, feed), "held");
        // Over TCP the server probes the holder (a Unix socket would show 0: no keepalive there).
        assert_eq!(on_lock(&store, feed, "SHOW tcp_keepalives_idle"), "3");
        assert_eq!(on_lock(&store, feed, "SHOW tcp_keepalives_interval"), "1");
        assert_eq!(on_lock(&store, feed, "SHOW tcp_keepalives_count"), "4");
        drop(lock);
        assert!(store.fenced(feed).is_none());
        eventually("the lock goes with its session", || free(&store, feed));
    }

    #[test]
    #[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
    fn a_refresh_whose_lock_session_ended_can_write_nothing() {
        let store = store();
        let feed = FeedId([0x52; 16]);
        let lock = store.lock_feed(feed).unwrap();
        let rows = [PendingRow {
            row: 0,
            existed: false,
            state: live(1, "one"),
        }];
        store.write_pending(feed, Version(1), &rows).unwrap();
        // The session ends under the refresh, as in a server restart; nobody else holds the lock.
        let pid: i32 = on_lock(&store, feed, "SELECT pg_backend_pid()::text")
            .parse()
            .unwrap();
        store
            .run(move |pool| async move {
                let client = pool.get().await.map_err(pool_error)?;
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(pg_error)?;
                Ok(())
            })
            .unwrap();
        eventually("the lock's session is gone", || free(&store, feed));
        for outcome in [
            store.write_pending(feed, Version(1), &rows),
            store.publish(feed, &meta(1, 1, 1), 1),
            store.settle(feed, 0).map(|_| ()),
        ] {
            let e = outcome.expect_err("a write without the lock");
            assert!(e.to_string().contains("refresh lock"), "{e}");
        }
        drop(lock);
        // Nothing was published; the next holder settles the batch away.
        assert!(store.feed(feed).unwrap().is_none());
        let _again = store.lock_feed(feed).unwrap();
        assert_eq!(store.settle(feed, 0).unwrap().discarded, 1);
    }
}

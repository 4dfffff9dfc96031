//! The PostgreSQL server of the replica tests: `ODG_TEST_POSTGRES` names a database whose user may
//! create databases (`.ci/run` starts a temporary cluster and sets it, with
//! `ODG_TEST_POSTGRES_BIN` and `ODG_TEST_POSTGRES_DATA` for the tests that stop and start it).
//! Each test works in a database of its own, created here.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A fresh, empty database on the test server; its URL.
pub async fn fresh_database(name: &str) -> String {
    let base = std::env::var("ODG_TEST_POSTGRES")
        .expect("ODG_TEST_POSTGRES must name a PostgreSQL database for this test");
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("connect to ODG_TEST_POSTGRES");
    tokio::spawn(connection);
    let db = format!("odg_{name}_{}", std::process::id());
    for statement in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        client
            .batch_execute(&statement)
            .await
            .expect("create a test database");
    }
    // Same server and user, another database.
    let (head, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{head}/{db}")
}

/// A connection of the test's own to a gateway's database, to watch what the gateways write.
pub async fn watch(store: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(store, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// The rows written at a version no token names yet (a refresh under way or cut short), if
/// any: (pending version, rows at it). `None` too when the database does not answer.
pub async fn pending_rows(db: &tokio_postgres::Client) -> Option<(i64, i64)> {
    let row = db
        .query_opt(
            "SELECT p.version, (SELECT count(*) FROM odg_entities e WHERE e.feed = p.feed
             AND e.version = p.version) FROM odg_pending p",
            &[],
        )
        .await
        .ok()??;
    Some((row.get(0), row.get(1)))
}

/// The test server's cluster, to stop and start it under the gateways. Dropped while stopped (a
/// test that failed in between), it starts the server again for the tests after it.
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    stopped: std::cell::Cell<bool>,
}

impl Cluster {
    /// The cluster named by `ODG_TEST_POSTGRES_BIN` (where `pg_ctl` is) and
    /// `ODG_TEST_POSTGRES_DATA` (its data directory); panics when they are missing, so that a
    /// run that asks for these tests cannot pass without them.
    pub fn from_env() -> Cluster {
        let var = |name: &str| {
            PathBuf::from(std::env::var_os(name).unwrap_or_else(|| {
                panic!("{name} must be set for this test (.ci/run sets it with ODG_TEST_POSTGRES)")
            }))
        };
        let cluster = Cluster {
            bin: var("ODG_TEST_POSTGRES_BIN"),
            data: var("ODG_TEST_POSTGRES_DATA"),
            stopped: std::cell::Cell::new(false),
        };
        assert!(
            cluster.bin.join("pg_ctl").is_file(),
            "no pg_ctl in {}",
            cluster.bin.display()
        );
        cluster
    }

    /// `pg_ctl -m fast -w stop`: the server ends every session and shuts down.
    pub fn stop_fast(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"])
            .unwrap_or_else(|e| panic!("{e}"));
        self.stopped.set(true);
    }

    /// `pg_ctl -w start` with the options the server last ran with (its `postmaster.opts`: the
    /// same port, socket directory and settings).
    pub fn start(&self) {
        self.try_start().unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_start(&self) -> Result<(), String> {
        let opts = std::fs::read_to_string(self.data.join("postmaster.opts"))
            .map_err(|e| format!("postmaster.opts in the data directory: {e}"))?;
        // `/path/to/postgres "-D" "…" "-p" "…" …`: the server's arguments after its path, each
        // quoted, less the data directory that pg_ctl passes itself.
        let mut args: Vec<&str> = opts.trim().split('"').skip(1).step_by(2).collect();
        while let Some(at) = args.iter().position(|a| *a == "-D") {
            args.drain(at..(at + 2).min(args.len()));
        }
        let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
        self.pg_ctl(&["-w", "-o", &args.join(" "), "start"])?;
        self.stopped.set(false);
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let pg_ctl = self.bin.join("pg_ctl");
        // PostgreSQL refuses to run as root: there the cluster belongs to the `postgres` user.
        let mut command = if rustix::process::getuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        // Not piped: the server started inherits these, and a pipe would stay open as long as it
        // runs.
        let status = command
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("pg_ctl does not run: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl {args:?}: {status}"))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.stopped.get() {
            let _ = self.try_start();
        }
    }
}

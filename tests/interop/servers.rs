//! The real OData V4 servers besides CAP, each started for one test from a small script beside
//! this file, on a free loopback port, with N deterministic `Customers` rows and server-driven
//! paging, and stopped when the test ends (also when it panics, after printing the requests it
//! served). Each script prints `NAME_BASE_URL=…` when it listens and one JSON line per request it
//! serves on stderr (method, URL, `Prefer`), which tests read to see what the gateway sent.
//!
//! - JayStack `odata-v4-server` 0.2.13 (npm), `node/jaystack-server.js`: key `Id`, absolute
//!   `@odata.id` / `@odata.editLink` / `Location`, a 500 for `$filter=… in (…)`.
//! - odatapy 5.3.0 (PyPI), `python/odatapy_server.py`: key `ID`, WSGI on HTTP/1.0, its own
//!   `$skiptoken` paging, and change tracking of its own.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{Api, Dialect};
use crate::deps;

/// Requests printed when a test fails.
const LOG_TAIL_LINES: usize = 60;
/// At most this many request lines are kept.
const MAX_LOG_LINES: usize = 200_000;

/// A running server; stopped on drop.
pub struct ScriptServer {
    /// The service root, e.g. `http://127.0.0.1:PORT/odata`.
    pub base: String,
    /// Which server this is.
    pub dialect: Dialect,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ScriptServer {
    /// JayStack's `odata-v4-server` with `rows` Customers (Id 1..rows), pages of `page_size`.
    pub fn jaystack(test: &str, rows: u32, page_size: u32) -> ScriptServer {
        let command = deps::node("jaystack-server.js")
            .unwrap_or_else(|why| deps::unavailable(test, "JayStack's odata-v4-server", &why));
        Self::launch(test, command, Dialect::JayStack, rows, page_size)
    }

    /// odatapy's in-memory server with `rows` Customers (ID 1..rows), pages of `page_size`.
    pub fn odatapy(test: &str, rows: u32, page_size: u32) -> ScriptServer {
        let command = deps::python("odatapy_server.py")
            .unwrap_or_else(|why| deps::unavailable(test, "odatapy's server", &why));
        Self::launch(test, command, Dialect::Odatapy, rows, page_size)
    }

    fn launch(
        test: &str,
        mut command: Command,
        dialect: Dialect,
        rows: u32,
        page_size: u32,
    ) -> ScriptServer {
        let started = std::time::Instant::now();
        let mut child = command
            .args(["--rows", &rows.to_string()])
            .args(["--page-size", &page_size.to_string()])
            .args(["--owner-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| deps::unavailable(test, dialect.name(), &e.to_string()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = kept.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() < MAX_LOG_LINES {
                    log.push(line);
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, url)) = line.split_once("_BASE_URL=") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                let seen = log.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                deps::unavailable(
                    test,
                    dialect.name(),
                    &format!("the server printed no address within 30 s; stderr:\n{seen}"),
                );
            }
        };
        eprintln!(
            "{test}: {} at {base} ({rows} rows, pages of {page_size}) in {} ms",
            dialect.name(),
            started.elapsed().as_millis()
        );
        ScriptServer {
            base,
            dialect,
            child,
            log,
        }
    }

    /// The server's own API.
    pub fn api(&self) -> Api {
        Api::new(&self.base, self.dialect)
    }

    /// The request lines (JSON: method, url, prefer) served so far that contain `needle`.
    pub fn requests_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "---- last {LOG_TAIL_LINES} lines of {}'s log ----\n{}\n----",
                self.dialect.name(),
                log[log.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

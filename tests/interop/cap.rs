//! A real SAP CAP server for one test: started by `start-cap-upstream.sh` on a free loopback port
//! with a pristine N-row database, stopped when the test ends (also when it panics, after printing
//! the tail of CAP's log). `CapApi` is CAP's own OData API (`api::Api`), used to write behind the
//! gateway's back and as the ground truth that replicas are compared with.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::api::{Api, Dialect};

/// CAP's own OData API.
pub type CapApi = Api;

/// The start script, beside this file.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/start-cap-upstream.sh"
);

/// The service path CAP serves; the gateway serves the same path.
pub const ROOT: &str = "/odata/v4/customers";

/// Lines of CAP's log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// A running CAP server; stopped on drop.
pub struct Cap {
    /// The service root, `http://127.0.0.1:PORT/odata/v4/customers`.
    pub base: String,
    /// CAP's log, for failure reports.
    pub log: PathBuf,
    /// The install/work folder of the start script.
    dir: PathBuf,
    /// The instance name the script knows it by.
    name: String,
}

/// Where the script installs Node, `@sap/cds` and the template databases: `$CAP_UPSTREAM_DIR`, else
/// a folder in the target directory, so that `cargo clean` removes it and warm runs reuse it.
fn work_dir() -> PathBuf {
    match std::env::var_os("CAP_UPSTREAM_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_TARGET_TMPDIR")).join("cap-upstream"),
    }
}

/// CAP is not available. The CAP tests are `#[ignore]`d in a plain `cargo test`, so a run that
/// reaches here asked for them (`--ignored`, as `.ci/run` does): fail, saying why.
fn unavailable(test: &str, why: &str) -> Option<Cap> {
    panic!(
        "SAP CAP must start for {test}, but: {why}. It needs node and npm and, on the first run, \
         the npm registry."
    );
}

impl Cap {
    /// Start CAP with `rows` deterministic Customers (ID 1..rows) and server-driven offset paging
    /// of `page_size`. `None` (after a note) when CAP cannot run here and `CI` is not set.
    pub fn start(test: &str, rows: u32, page_size: u32) -> Option<Cap> {
        Self::launch(test, rows, page_size, false)
    }

    /// Like `start`, but CAP pages by key (its "reliable paging": base64 JSON `$skiptoken`s).
    pub fn start_keyset_paged(test: &str, rows: u32, page_size: u32) -> Option<Cap> {
        Self::launch(test, rows, page_size, true)
    }

    fn launch(test: &str, rows: u32, page_size: u32, keyset: bool) -> Option<Cap> {
        let npm = Command::new("npm").arg("--version").output();
        if !npm.is_ok_and(|o| o.status.success()) {
            return unavailable(test, "npm is not on PATH");
        }
        let dir = work_dir();
        let name = format!("{test}-{}", std::process::id());
        let started = std::time::Instant::now();
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg("--dir")
            .arg(&dir)
            .args(["--name", &name])
            .args(["--rows", &rows.to_string()])
            .args(["--page-size", &page_size.to_string()])
            .args(["--owner-pid", &std::process::id().to_string()])
            .args(keyset.then_some("--reliable-paging"))
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) => return unavailable(test, &format!("bash {SCRIPT}: {e}")),
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return unavailable(
                test,
                &format!("{SCRIPT} failed ({}):\n{stderr}", out.status),
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let (Some(base), Some(log)) = (var("CAP_BASE_URL"), var("CAP_LOG")) else {
            return unavailable(
                test,
                &format!("unexpected script output:\n{stdout}{stderr}"),
            );
        };
        eprintln!(
            "{test}: CAP at {base} ({rows} rows, {} pages of {page_size}) in {} ms",
            if keyset { "keyset" } else { "offset" },
            started.elapsed().as_millis()
        );
        Some(Cap {
            base,
            log: PathBuf::from(log),
            dir,
            name,
        })
    }

    /// CAP's own API.
    pub fn api(&self) -> CapApi {
        Api::new(&self.base, Dialect::Cap)
    }

    /// The lines of CAP's log (one per request it served) that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// The last lines of CAP's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cap {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- last {LOG_TAIL_LINES} lines of CAP's log {} ----\n{}\n----",
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--name", &self.name])
            .output();
    }
}

/// The `ID` of a Customers entity.
pub fn id_of(entity: &Value) -> i64 {
    entity["ID"]
        .as_i64()
        .unwrap_or_else(|| panic!("an entity without an integer ID: {entity}"))
}

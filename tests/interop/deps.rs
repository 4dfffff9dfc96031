//! The real OData software the interop tests install for themselves, once, into a cache folder
//! (`$INTEROP_CACHE_DIR`, else `interop-cache` in the target's temporary directory, so that
//! `cargo clean` removes it and reruns reuse it):
//!
//! - `node/`: the npm packages pinned by `tests/interop/node/package.json` and its lock file
//!   (JayStack's `odata-v4-server`, `odata-v4-inmemory`, `@odata/client`), installed with `npm ci`;
//! - `python/`: a virtual environment with the PyPI packages pinned by
//!   `tests/interop/python/requirements.txt` (`odatapy[client]`).
//!
//! An install is redone only when its pin files change (a stamp holds their contents), and is
//! serialised across threads and processes by a lock file. When a dependency cannot be had, the
//! tests that need it fail with the reason: they are `#[ignore]`d in a plain `cargo test` and run
//! by `.ci/run` with `-- --ignored`, where a missing dependency must be a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The `tests/interop` folder.
pub fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// How long an install may take before it is given up (seconds, enforced by `timeout`).
const INSTALL_TIMEOUT_SECS: &str = "600";

fn cache_dir() -> PathBuf {
    match std::env::var_os("INTEROP_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-cache"),
    }
}

/// Panic with why a dependency is missing; the test that needed it fails.
pub fn unavailable(test: &str, what: &str, why: &str) -> ! {
    panic!(
        "{test} needs {what}, which could not be installed or started: {why}\n\
         (the interop tests install their npm and PyPI packages themselves; they need node and npm, \
         python3 with venv, and on the first run the package registries)"
    );
}

/// Installs per folder name, each done once per process.
fn once(name: &'static str) -> &'static Mutex<Option<Result<PathBuf, String>>> {
    static NODE: OnceLock<Mutex<Option<Result<PathBuf, String>>>> = OnceLock::new();
    static PYTHON: OnceLock<Mutex<Option<Result<PathBuf, String>>>> = OnceLock::new();
    match name {
        "node" => NODE.get_or_init(Default::default),
        _ => PYTHON.get_or_init(Default::default),
    }
}

/// Run `install` in `cache/name` unless the stamp there matches `pins`; the folder, or why not.
fn cached(
    name: &'static str,
    pins: &[PathBuf],
    install: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let mut slot = once(name).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(done) = &*slot {
        return done.clone();
    }
    let result = (|| {
        let dir = cache_dir().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let lock = std::fs::File::create(dir.join(".lock"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        lock.lock()
            .map_err(|e| format!("lock {}: {e}", dir.display()))?;
        let mut stamp = String::new();
        for pin in pins {
            let text =
                std::fs::read_to_string(pin).map_err(|e| format!("{}: {e}", pin.display()))?;
            stamp.push_str(&text);
        }
        let stamp_file = dir.join(".installed");
        if std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
            return Ok(dir);
        }
        let _ = std::fs::remove_file(&stamp_file);
        let started = std::time::Instant::now();
        install(&dir)?;
        std::fs::write(&stamp_file, stamp).map_err(|e| format!("{}: {e}", stamp_file.display()))?;
        eprintln!(
            "interop: installed {name} packages into {} in {} ms",
            dir.display(),
            started.elapsed().as_millis()
        );
        Ok(dir)
    })();
    *slot = Some(result.clone());
    result
}

/// Run a command (under `timeout`), failing with its output.
fn run(what: &str, command: &mut Command) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let tail = |b: &[u8]| {
        let text = String::from_utf8_lossy(b);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    Err(format!(
        "{what} failed ({}):\n{}\n{}",
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    ))
}

fn timeout() -> Command {
    let mut c = Command::new("timeout");
    c.arg(INSTALL_TIMEOUT_SECS);
    c
}

/// The `node_modules` folder with the pinned npm packages; needs node and npm.
pub fn node_modules() -> Result<PathBuf, String> {
    let src = here().join("node");
    let pins = [src.join("package.json"), src.join("package-lock.json")];
    let dir = cached("node", &pins, |dir| {
        for pin in &pins {
            let to = dir.join(pin.file_name().expect("a file name"));
            std::fs::copy(pin, &to).map_err(|e| format!("{}: {e}", to.display()))?;
        }
        run(
            "npm ci",
            timeout()
                .args(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"])
                .current_dir(dir),
        )
    })?;
    Ok(dir.join("node_modules"))
}

/// `node SCRIPT` from `tests/interop/node`, resolving packages in the installed `node_modules`.
pub fn node(script: &str) -> Result<Command, String> {
    let modules = node_modules()?;
    let mut c = Command::new("node");
    c.arg(here().join("node").join(script))
        .env("NODE_PATH", modules)
        .env_remove("NODE_OPTIONS");
    Ok(c)
}

/// The virtual environment's python with the pinned PyPI packages; needs python3 with venv.
pub fn python_bin() -> Result<PathBuf, String> {
    let requirements = here().join("python/requirements.txt");
    let dir = cached("python", std::slice::from_ref(&requirements), |dir| {
        let venv = dir.join("venv");
        let _ = std::fs::remove_dir_all(&venv);
        run(
            "python3 -m venv",
            timeout().args(["python3", "-m", "venv"]).arg(&venv),
        )?;
        run(
            "pip install",
            timeout()
                .arg(venv.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements),
        )
    })?;
    Ok(dir.join("venv/bin/python"))
}

/// `python SCRIPT` from `tests/interop/python`, in the virtual environment.
pub fn python(script: &str) -> Result<Command, String> {
    let bin = python_bin()?;
    let mut c = Command::new(bin);
    c.arg("-u")
        .arg(here().join("python").join(script))
        .env_remove("PYTHONPATH")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Ok(c)
}

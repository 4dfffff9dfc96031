//! The real gateway binary as a child process, so that its memory and CPU can be read from /proc
//! without counting the load tool. Its store lives in a temporary directory removed with it.

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running gateway process.
pub struct Gateway {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// Memory and CPU of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Peak resident set (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Resident set now (VmRSS), KiB.
    pub rss_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
}

impl Gateway {
    /// Start `binary` in front of `upstream` (a service root URL) with a fresh data directory, and
    /// wait (at most `startup`) until it listens.
    pub fn start(binary: &Path, upstream: &str, startup: Duration) -> Result<Gateway, String> {
        Self::start_with(binary, upstream, startup, None)
    }

    /// [`Gateway::start`] with a `gateway.toml` text (written beside the data directory).
    pub fn start_with(
        binary: &Path,
        upstream: &str,
        startup: Duration,
        config: Option<&str>,
    ) -> Result<Gateway, String> {
        if !binary.is_file() {
            return Err(format!(
                "no gateway binary at {}: build it first (cargo build --release) or pass --gateway PATH",
                binary.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("odg-load-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary data directory: {e}"))?;
        let log = fs::File::create(dir.path().join("gateway.log"))
            .map_err(|e| format!("cannot create the gateway's log file: {e}"))?;
        let mut command = Command::new(binary);
        if let Some(text) = config {
            let path = dir.path().join("gateway.toml");
            fs::write(&path, text)
                .map_err(|e| format!("cannot write the gateway's config: {e}"))?;
            command.arg("--config").arg(path);
        }
        let child = command
            .arg("--upstream")
            .arg(upstream)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("ODG_CONFIG")
            .env_remove("ODG_ADMIN_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut gateway = Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        let deadline = Instant::now() + startup;
        loop {
            if let Ok(Some(status)) = gateway.child.try_wait() {
                return Err(format!(
                    "the gateway exited at start ({status}):\n{}",
                    gateway.log_tail()
                ));
            }
            if let Some(addr) = listening_port(gateway.child.id()) {
                gateway.addr = addr;
                return Ok(gateway);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the gateway did not listen within {startup:?}:\n{}",
                    gateway.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gateway's URL of the upstream path `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its memory and CPU so far.
    pub fn usage(&self) -> Result<Usage, String> {
        usage(self.child.id())
    }

    /// Bytes of its data directory (the store) on disk.
    pub fn store_bytes(&self) -> u64 {
        dir_bytes(&self.dir.path().join("data"))
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Memory and CPU of process `pid`.
pub fn usage(pid: u32) -> Result<Usage, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may hold spaces, inside parentheses): utime is the
    // 14th field of the line, stime the 15th, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        peak_rss_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
        cpu_s: (ticks(11) + ticks(12)) as f64 / 100.0,
    })
}

/// The loopback TCP port process `pid` listens on, from its socket descriptors and
/// /proc/PID/net/tcp — independent of how (and whether) it logs its address.
fn listening_port(pid: u32) -> Option<SocketAddr> {
    let mut inodes = HashSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        let target: PathBuf = target;
        let t = target.to_string_lossy();
        if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            inodes.insert(inode.to_owned());
        }
    }
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address is f[1] ("0100007F:1F90"), st is f[3] ("0A" = LISTEN), inode is f[9].
        if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
            let (ip, port) = f[1].split_once(':')?;
            if ip != "0100007F" {
                continue;
            }
            let port = u16::from_str_radix(port, 16).ok()?;
            return Some(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    None
}

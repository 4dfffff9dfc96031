//! A real nginx in front of gateways, for the tests that `.ci/run` runs with `--ignored` after
//! installing it: one gateway (reverse proxy tests) or several in turn (replica tests).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nginx binary, if installed.
pub fn nginx_binary() -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(
            [
                "/usr/sbin/nginx",
                "/usr/local/sbin/nginx",
                "/usr/local/nginx/sbin/nginx",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

/// nginx in a child process, with everything it writes in its own temp dir.
pub struct Nginx {
    /// Where it listens.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Nginx {
    /// Start nginx on a free loopback port, proxying `/gw/` to the gateway at `gateway_port`.
    pub fn start(binary: &Path, gateway_port: u16) -> Nginx {
        Self::round_robin(binary, &[gateway_port])
    }

    /// Start nginx on a free loopback port, proxying `/gw/` to the gateways at `gateway_ports`
    /// in turn (an `upstream` block, nginx's default round-robin).
    pub fn round_robin(binary: &Path, gateway_ports: &[u16]) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // `nginx -V` tells which modules (and so which temp path directives) the build has, and
        // its version whether `-e` (startup error log) exists.
        let about = Command::new(binary)
            .arg("-V")
            .output()
            .expect("nginx -V runs");
        let about = String::from_utf8_lossy(&about.stderr).into_owned();
        let mut temp_paths = String::new();
        for (directive, module) in [
            ("client_body_temp_path", None),
            ("proxy_temp_path", None),
            ("fastcgi_temp_path", Some("fastcgi")),
            ("uwsgi_temp_path", Some("uwsgi")),
            ("scgi_temp_path", Some("scgi")),
        ] {
            if module.is_some_and(|m| about.contains(&format!("--without-http_{m}_module"))) {
                continue;
            }
            temp_paths.push_str(&format!("    {directive} {d}/{directive};\n"));
        }
        let servers: String = gateway_ports
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p};\n"))
            .collect();
        let conf = format!(
            r#"# One process, no daemon, every file in {d}.
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {d}/access.log;
{temp_paths}
    upstream gateways {{
{servers}    }}
    server {{
        listen 127.0.0.1:{port};
        location /gw/ {{
            proxy_pass http://gateways/;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host:$server_port;
            proxy_set_header X-Forwarded-Prefix /gw;
        }}
    }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf written");
        let mut command = Command::new(binary);
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"]);
        if supports_startup_error_log(&about) {
            command.arg("-e").arg(dir.path().join("error.log"));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx { port, dir, child };
        nginx.wait_until_listening();
        nginx
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited with {status}:\n{}", self.error_log());
            }
            if Instant::now() > deadline {
                panic!("nginx does not listen:\n{}", self.error_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What nginx logged.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT/gw` — what clients see as the gateway.
    pub fn public_base(&self) -> String {
        format!("http://127.0.0.1:{}/gw", self.port)
    }
}

/// `-e` came with nginx 1.19.5.
fn supports_startup_error_log(about: &str) -> bool {
    let version = about
        .split("nginx/")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("");
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    parts.as_slice() >= [1, 19, 5].as_slice()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The README's first command: `odata-delta-gateway demo` starts the sample upstream and the gateway,
//! prints how to try it, and a tracked read and a delta work against it.

mod support;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use support::gateway::Client;

#[tokio::test]
async fn the_demo_serves_a_tracked_read_and_deltas_of_a_changing_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_odata-delta-gateway"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--change-every-secs",
            "1",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("ODG_LISTEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.trim().strip_prefix("gateway:") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the demo prints the gateway's address");
    let client = Client::default();
    let r = client
        .get(
            &format!("{base}/Products"),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert!(page["value"].as_array().unwrap().len() >= 100);
    let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();
    // The sample changes every second; within a few seconds a delta has something.
    let mut seen = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let delta = client.get(&link, &[]).await;
        assert_eq!(delta.status, 200);
        seen += delta.json()["value"].as_array().unwrap().len();
        if seen > 0 {
            break;
        }
    }
    assert!(seen > 0, "the sample changed but no delta showed it");
    let _ = child.kill();
    let _ = child.wait();
}

/// Without `--data-dir` the demo's store is temporary: there while it runs, removed when it is
/// stopped (SIGTERM, like Ctrl-C); and the metadata command its step 4 mentions is printed and works.
#[tokio::test]
async fn the_demo_removes_its_temporary_store_when_it_stops_and_prints_the_metadata_command() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_odata-delta-gateway"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env_remove("ODG_LISTEN")
        .env_remove("ODG_DATA_DIR")
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("Ctrl-C")) {
        lines.push(
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the demo prints its instructions"),
        );
    }
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            .unwrap_or_else(|| panic!("no {name} line in {lines:#?}"))
    };
    let base = field("gateway:");
    let store = std::path::PathBuf::from(field("store:"));
    assert!(store.starts_with(tmp.path()), "{}", store.display());
    let metadata_command = format!("curl -s '{base}/$metadata'");
    assert!(
        lines.iter().any(|l| l.contains(&metadata_command)),
        "{lines:#?}"
    );
    let client = Client::default();
    let r = client.get(&format!("{base}/$metadata"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("EntitySet"), "{}", r.text());
    let r = client
        .get(
            &format!("{base}/Products"),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(store.exists(), "the store is there while the demo runs");

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!store.exists(), "{} is left behind", store.display());
}

#[tokio::test]
async fn the_admin_listener_serves_health_readiness_and_metrics() {
    let up = support::FakeUpstream::start().await;
    up.define_set(support::EntitySetDef::new("Customers", "Customer").key("ID", "Edm.Int32"));
    let gw = support::gateway::Gateway::start_with(&up.base_url(), None, |f| {
        f.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = Client::default();
    let admin = gw.admin_addr().unwrap();
    assert_eq!(
        client
            .get(&format!("http://{admin}/healthz"), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        client
            .get(&format!("http://{admin}/readyz"), &[])
            .await
            .status,
        200
    );
    client
        .get(
            &gw.url("/odata/v4/shop/Customers"),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    let metrics = client
        .get(&format!("http://{admin}/metrics"), &[])
        .await
        .text();
    assert!(
        metrics.contains("odg_requests_total{kind=\"initial\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("odg_refreshes_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        client
            .get(&format!("http://{admin}/nope"), &[])
            .await
            .status,
        404
    );
}

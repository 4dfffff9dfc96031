//! Log lines of the real binary: `--log-format json` (or `ODG_LOG_FORMAT`, or `log_format` in the
//! file) writes one JSON object a line for log shippers, with the request id of the request a
//! line belongs to.

mod support;

use std::ffi::OsStr;
use std::time::Duration;

use serde_json::Value;
use support::gateway::{Client, GatewayProcess, data_dir, gateway_command};
use support::shop::{ROOT, shop};

fn json_lines(gw: &GatewayProcess) -> Vec<Value> {
    gw.stderr_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The request id of a log line: a field of one of the spans it was written in.
fn request_id(line: &Value) -> Option<&str> {
    line["spans"]
        .as_array()?
        .iter()
        .find_map(|s| s["id"].as_str())
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_carrying_the_request_id() {
    let up = shop(12).await;
    let (_dir, path) = data_dir();
    let upstream = up.base_url();
    for (args, envs) in [
        (vec!["--log-format", "json"], vec![]),
        (vec![], vec![("ODG_LOG_FORMAT", OsStr::new("json"))]),
    ] {
        let mut all = vec![
            "--upstream",
            upstream.as_str(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            path.to_str().unwrap(),
        ];
        all.extend(args);
        let gw = GatewayProcess::spawn_with(&all, &envs);
        let r = Client::default()
            .get(
                &gw.url(&format!("{ROOT}/Customers")),
                &[
                    ("Prefer", "odata.track-changes"),
                    ("x-request-id", "log-me-1"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let answered = gw.wait_for_stderr(Duration::from_secs(10), |l| l.contains("answered"));
        assert!(answered.is_some(), "{:?}", gw.stderr_lines());
        let lines = json_lines(&gw);
        let answered = lines
            .iter()
            .find(|l| l["message"] == "answered")
            .expect("an answered line");
        assert_eq!(answered["status"], 200);
        assert_eq!(answered["level"], "INFO");
        assert_eq!(request_id(answered), Some("log-me-1"));
        // The refresh runs in a task of its own and still logs under the request that started it.
        let refreshed = lines
            .iter()
            .find(|l| l["message"] == "refreshed")
            .expect("a refreshed line");
        assert_eq!(request_id(refreshed), Some("log-me-1"));
        gw.kill9();
    }
}

#[test]
fn an_unknown_log_format_stops_the_start_with_a_clear_message() {
    let (_dir, path) = data_dir();
    let out = gateway_command(
        &[
            "--upstream",
            "http://127.0.0.1:9/x",
            "--data-dir",
            path.to_str().unwrap(),
            "--log-format",
            "yaml",
        ],
        &[],
    )
    .output()
    .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--log-format") && stderr.contains("\"json\""),
        "{stderr}"
    );
}

//! Black-box tests of configuration: several `[[route]]`s in `gateway.toml`, validation at start
//! (the real binary with a bad file), and flags and `ODG_*` environment variables with their
//! precedence. Test names say the behaviour; comments cite CONFORMANCE.md rules.

mod support;

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::gateway::{Client, Gateway, GatewayProcess, gateway_command};
use support::{EntitySetDef, FakeUpstream, LinkStyle};

const ROOT: &str = "/odata/v4/shop";

fn track() -> [(&'static str, &'static str); 1] {
    [("Prefer", "odata.track-changes")]
}

/// A fake upstream whose customers' names start with `tag`, so answers show where they came from.
async fn customers(tag: &str, n: i64) -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("score", "Edm.Int32"),
    );
    up.insert_many(
        "Customers",
        (1..=n).map(|i| json!({"ID": i, "name": format!("{tag} {i}"), "score": 0})),
    );
    up
}

/// First page of a tracked read.
async fn first_page(client: &Client, url: &str) -> Value {
    let r = client.get(url, &track()).await;
    assert_eq!(r.status, 200, "{url}: {}", r.text());
    r.json()
}

/// Every entity of a tracked read (following next links) and its delta link.
async fn read_tracked(client: &Client, url: &str) -> (Vec<Value>, String) {
    let mut entities = Vec::new();
    let mut url = url.to_owned();
    loop {
        let page = first_page(client, &url).await;
        entities.extend(page["value"].as_array().expect("value").iter().cloned());
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_owned(),
            None => {
                let link = page["@odata.deltaLink"].as_str().expect("delta link");
                return (entities, link.to_owned());
            }
        }
    }
}

/// The names of the entities, sorted (a tracked read need not keep the upstream's order).
fn names(entities: &[Value]) -> Vec<&str> {
    let mut names: Vec<&str> = entities
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    names.sort();
    names
}

fn assert_odata_error(status: u16, body: &Value, expected_status: u16) {
    assert_eq!(status, expected_status, "{body}");
    assert!(
        !body["error"]["code"].as_str().unwrap_or("").is_empty(),
        "C26: {body}"
    );
    assert!(
        !body["error"]["message"].as_str().unwrap_or("").is_empty(),
        "C26: {body}"
    );
}

// ------------------------------------------------------------------ several routes

fn two_routes(crm: &FakeUpstream, erp: &FakeUpstream) -> String {
    format!(
        r#"# two services behind one gateway
[[route]]
prefix = "/crm"
upstream = "{}"

[[route]]
prefix = "/erp"
upstream = "{}"
"#,
        crm.base_url(),
        erp.base_url()
    )
}

#[tokio::test]
async fn each_route_serves_and_tracks_its_own_upstream_under_its_prefix() {
    let crm = customers("crm", 5).await;
    let erp = customers("erp", 3).await;
    crm.set_link_style(LinkStyle::Absolute);
    let gw = Gateway::start_with("", Some(&two_routes(&crm, &erp)), |_| {}).await;
    let client = Client::default();

    let (c, crm_link) = read_tracked(&client, &gw.url("/crm/Customers")).await;
    let (e, erp_link) = read_tracked(&client, &gw.url("/erp/Customers")).await;
    assert_eq!(names(&c), ["crm 1", "crm 2", "crm 3", "crm 4", "crm 5"]);
    assert_eq!(names(&e), ["erp 1", "erp 2", "erp 3"]);
    // C9: each delta link is on the gateway, under its route's prefix.
    assert!(
        crm_link.starts_with(&gw.url("/crm/Customers?$deltatoken=")),
        "{crm_link}"
    );
    assert!(
        erp_link.starts_with(&gw.url("/erp/Customers?$deltatoken=")),
        "{erp_link}"
    );
    let page = first_page(&client, &gw.url("/erp/Customers")).await;
    assert_eq!(
        page["@odata.context"],
        json!(gw.url("/erp/$metadata#Customers"))
    );

    // Changes upstream show only in the delta of their own route.
    crm.update("Customers", json!(1), json!({"score": 9}));
    crm.delete("Customers", json!(2));
    erp.insert("Customers", json!({"ID": 99, "name": "erp 99", "score": 0}));
    let crm_delta = client.get(&crm_link, &[]).await.json();
    let erp_delta = client.get(&erp_link, &[]).await.json();
    let crm_values = crm_delta["value"].as_array().unwrap();
    assert_eq!(crm_values.len(), 2, "{crm_delta}");
    assert!(crm_values.iter().any(|v| v["ID"] == 1 && v["score"] == 9));
    assert!(crm_values.iter().any(|v| v["id"] == "Customers(2)"));
    assert_eq!(
        erp_delta["value"],
        json!([{"ID": 99, "name": "erp 99", "score": 0}])
    );

    // Pass-through goes to the route's upstream, and its links are rewritten onto the route.
    let one = client.get(&gw.url("/crm/Customers(1)"), &[]).await;
    assert_eq!(one.status, 200);
    let one = one.json();
    assert_eq!(one["name"], "crm 1");
    assert_eq!(
        one["@odata.context"],
        json!(gw.url("/crm/$metadata#Customers/$entity"))
    );
    let one = client.get(&gw.url("/erp/Customers(1)"), &[]).await.json();
    assert_eq!(one["name"], "erp 1");

    // A path under no route is an OData 404, not a guess.
    let r = client.get(&gw.url("/hr/Customers"), &track()).await;
    assert_odata_error(r.status.as_u16(), &r.json(), 404);
}

#[tokio::test]
async fn root_relative_upstream_links_are_rewritten_onto_the_route_prefix() {
    let crm = customers("crm", 25).await;
    crm.set_page_size(Some(10));
    crm.set_link_style(LinkStyle::RootRelative);
    let erp = customers("erp", 1).await;
    let gw = Gateway::start_with("", Some(&two_routes(&crm, &erp)), |_| {}).await;
    let client = Client::default();
    // Follow the pages as a client does: each link resolved against the URL that returned it.
    let mut url = url::Url::parse(&gw.url("/crm/Customers")).unwrap();
    let mut seen = 0;
    loop {
        let r = client.get(url.as_str(), &[]).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let page = r.json();
        let context = url.join(page["@odata.context"].as_str().unwrap()).unwrap();
        assert_eq!(context.as_str(), gw.url("/crm/$metadata#Customers"));
        seen += page["value"].as_array().unwrap().len();
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = url.join(next).unwrap(),
            None => break,
        }
    }
    assert_eq!(seen, 25);
}

#[tokio::test]
async fn a_delta_or_next_link_of_one_route_is_refused_on_another_c10() {
    let crm = customers("crm", 5).await;
    let erp = customers("erp", 5).await;
    let gw = Gateway::start_with("", Some(&two_routes(&crm, &erp)), |_| {}).await;
    let client = Client::default();

    let (_, crm_link) = read_tracked(&client, &gw.url("/crm/Customers")).await;
    let token = crm_link.split("$deltatoken=").nth(1).unwrap();
    for url in [
        gw.url(&format!("/erp/Customers?$deltatoken={token}")),
        gw.url(&format!("/erp/Customers/$count?$deltatoken={token}")),
    ] {
        let r = client.get(&url, &[]).await;
        assert_odata_error(r.status.as_u16(), &r.json(), 400);
    }
    // The paging token of a tracked response is bound to its route too (C22).
    let page = client
        .get(
            &gw.url("/crm/Customers"),
            &[("Prefer", "odata.track-changes, odata.maxpagesize=2")],
        )
        .await
        .json();
    let next = page["@odata.nextLink"].as_str().expect("a next link");
    let foreign = next.replacen("/crm/", "/erp/", 1);
    let r = client.get(&foreign, &[]).await;
    assert_odata_error(r.status.as_u16(), &r.json(), 400);

    // Where it was issued, the link works.
    assert_eq!(client.get(&crm_link, &[]).await.status, 200);
    assert_eq!(client.get(next, &[]).await.status, 200);
}

// ------------------------------------------------------------------ validation at start

/// Run the binary with `config_text` as its config file; it must exit by itself, non-zero.
/// Returns the file's path and what the binary wrote to stderr.
fn start_with_bad_config(config_text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config_text).unwrap();
    let data = dir.path().join("data");
    let stderr = exit_failure(&[
        "--config".as_ref(),
        file.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    (file.display().to_string(), stderr)
}

/// Run the binary with `args`; it must exit by itself within a few seconds, non-zero. Its stderr.
fn exit_failure(args: &[&OsStr]) -> String {
    let mut child = gateway_command(args, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gateway binary starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway accepted the configuration and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "exit status {status}; stderr: {stderr}");
    stderr
}

/// The 1-based (line, column) where `needle` first occurs in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle in text");
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The binary refuses `text` and says `file:line:column:` where `at` occurs in it, plus every one
/// of `expected`.
fn assert_refused_at(text: &str, at: &str, expected: &[&str]) {
    let (file, stderr) = start_with_bad_config(text);
    let (line, column) = position(text, at);
    let place = format!("{file}:{line}:{column}:");
    assert!(
        stderr.contains(&place),
        "stderr should name {place}:\n{stderr}"
    );
    for e in expected {
        assert!(stderr.contains(e), "stderr should say {e:?}:\n{stderr}");
    }
}

#[test]
fn an_unknown_key_in_the_file_stops_the_start_with_file_line_and_column() {
    let text = "listen = \"127.0.0.1:0\"\n\n[[route]]\nprefix = \"/crm\"\nupstream = \"http://127.0.0.1:9/odata\"\ntimeout_ms = 500\n";
    assert_refused_at(text, "timeout_ms", &["timeout_ms", "expected", "upstream"]);
}

#[test]
fn a_bad_upstream_url_stops_the_start_with_file_line_and_column() {
    let text = "[[route]]\nprefix = \"/crm\"\nupstream = \"http//crm.internal/odata\"\n";
    assert_refused_at(
        text,
        "\"http//",
        &[
            "http//crm.internal/odata",
            "not a URL",
            "expected e.g. http://",
        ],
    );
    let text = "[[route]]\nupstream = \"ftp://crm.internal/odata\"\n";
    assert_refused_at(text, "\"ftp:", &["http or https"]);
}

#[test]
fn a_bad_duration_stops_the_start_with_file_line_and_column() {
    let text = "# retention of delta links\ntoken_ttl = \"soon\"\n\n[[route]]\nupstream = \"http://127.0.0.1:9/odata\"\n";
    assert_refused_at(text, "\"soon\"", &["soon", "30d"]);
}

#[test]
fn a_bad_trusted_proxy_stops_the_start_with_file_line_and_column() {
    let text = "trusted_proxies = [\"10.0.0.0/8\", \"proxy.internal\"]\n[[route]]\nupstream = \"http://127.0.0.1:9/odata\"\n";
    assert_refused_at(
        text,
        "\"proxy.internal\"",
        &["proxy.internal", "IP address or CIDR"],
    );
}

#[test]
fn a_trusted_proxy_with_a_too_long_prefix_names_the_allowed_range() {
    let text = "trusted_proxies = [\"10.0.0.0/8\", \"192.168.1.0/33\"]\n[[route]]\nupstream = \"http://127.0.0.1:9/odata\"\n";
    assert_refused_at(text, "\"192.168.1.0/33\"", &["192.168.1.0/33", "32"]);
}

#[test]
fn a_duplicate_route_prefix_stops_the_start_with_file_line_and_column() {
    let text = "[[route]]\nprefix = \"/crm\"\nupstream = \"http://127.0.0.1:9/a\"\n\n[[route]]\nprefix = \"/crm/\"\nupstream = \"http://127.0.0.1:9/b\"\n";
    // The second route, from its header on.
    let second = "[[route]]\nprefix = \"/crm/\"";
    assert_refused_at(text, second, &["another route", "prefix '/crm'"]);
}

#[test]
fn an_invalid_key_type_stops_the_start_with_file_line_and_column() {
    let text = "[[route]]\nupstream = \"http://127.0.0.1:9/odata\"\n\n[route.sets.Things]\nkey = [\"Code:Edm.Strng\"]\n";
    assert_refused_at(text, "[\"Code", &["Edm.Strng", "expected", "Edm.String"]);
}

#[test]
fn a_missing_config_file_stops_the_start_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nope.toml");
    let stderr = exit_failure(&["--config".as_ref(), file.as_os_str()]);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
}

#[test]
fn bad_flag_and_environment_values_stop_the_start_and_name_the_setting() {
    let stderr = exit_failure(&[
        "--upstream".as_ref(),
        "http://127.0.0.1:9/odata".as_ref(),
        "--token-ttl".as_ref(),
        "soon".as_ref(),
    ]);
    assert!(
        stderr.contains("token-ttl") && stderr.contains("30d"),
        "{stderr}"
    );
    let stderr = exit_failure(&["--upstream".as_ref(), "not a url".as_ref()]);
    assert!(stderr.contains("upstream"), "{stderr}");

    let mut child = gateway_command(&[] as &[&str], &[("ODG_UPSTREAM", "mailto:x@y".as_ref())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!child.wait().unwrap().success(), "{stderr}");
    assert!(stderr.contains("http or https"), "{stderr}");
}

// ------------------------------------------------------------------ flags and environment

/// Whether the gateway created its store in `dir`.
fn has_store(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

#[tokio::test]
async fn environment_variables_alone_configure_the_gateway() {
    let up = customers("env", 12).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("env-data");
    let upstream = up.base_url();
    let gw = GatewayProcess::spawn_with(
        &[] as &[&str],
        &[
            ("ODG_UPSTREAM", upstream.as_ref()),
            ("ODG_LISTEN", "127.0.0.1:0".as_ref()),
            ("ODG_DATA_DIR", data.as_os_str()),
            ("ODG_PAGE_SIZE", "5".as_ref()),
        ],
    );
    assert!(gw.addr.ip().is_loopback());
    let client = Client::default();
    let page = first_page(&client, &gw.url(&format!("{ROOT}/Customers"))).await;
    assert_eq!(page["value"].as_array().unwrap().len(), 5, "{page}");
    let (all, _) = read_tracked(&client, &gw.url(&format!("{ROOT}/Customers"))).await;
    assert_eq!(all.len(), 12);
    assert!(names(&all).iter().all(|n| n.starts_with("env")));
    assert!(has_store(&data), "the store is in ODG_DATA_DIR");
}

#[tokio::test]
async fn the_config_file_can_be_named_by_the_environment() {
    let up = customers("file", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let data = dir.path().join("file-data");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[[route]]\nprefix = \"/crm\"\nupstream = \"{}\"\n",
            data.display(),
            up.base_url()
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn_with(&[] as &[&str], &[("ODG_CONFIG", file.as_os_str())]);
    let (all, _) = read_tracked(&Client::default(), &gw.url("/crm/Customers")).await;
    assert_eq!(names(&all), ["file 1", "file 2", "file 3"]);
    assert!(has_store(&data), "the store is in the file's data_dir");
}

#[tokio::test]
async fn flags_override_environment_variables() {
    let by_flag = customers("flag", 12).await;
    let by_env = customers("env", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (flag_data, env_data) = (dir.path().join("flag"), dir.path().join("env"));
    let (flag_up, env_up) = (by_flag.base_url(), by_env.base_url());
    // ODG_LISTEN names a taken address, so the gateway can only start if the flag wins.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let args: Vec<&OsStr> = vec![
        "--upstream".as_ref(),
        flag_up.as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        flag_data.as_os_str(),
        "--page-size".as_ref(),
        "7".as_ref(),
    ];
    let gw = GatewayProcess::spawn_with(
        &args,
        &[
            ("ODG_UPSTREAM", env_up.as_ref()),
            ("ODG_LISTEN", taken_addr.as_ref()),
            ("ODG_DATA_DIR", env_data.as_os_str()),
            ("ODG_PAGE_SIZE", "3".as_ref()),
        ],
    );
    assert_ne!(gw.addr.to_string(), taken_addr);
    let client = Client::default();
    let page = first_page(&client, &gw.url(&format!("{ROOT}/Customers"))).await;
    let value = page["value"].as_array().unwrap();
    assert_eq!(value.len(), 7, "{page}");
    assert!(names(value).iter().all(|n| n.starts_with("flag")), "{page}");
    assert!(has_store(&flag_data));
    assert!(!env_data.exists(), "ODG_DATA_DIR was overridden");
}

#[tokio::test]
async fn flags_override_the_config_file() {
    let by_flag = customers("flag", 12).await;
    let by_file = customers("file", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (flag_data, file_data) = (dir.path().join("flag"), dir.path().join("file"));
    // The file's listen address is taken, so the gateway can only start if the flag wins.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            r#"listen = "{}"
data_dir = "{}"
page_size = 3

[[route]]
prefix = "/file"
upstream = "{}"
"#,
            taken.local_addr().unwrap(),
            file_data.display(),
            by_file.base_url()
        ),
    )
    .unwrap();
    let flag_up = by_flag.base_url();
    let args: Vec<&OsStr> = vec![
        "--config".as_ref(),
        file.as_os_str(),
        "--upstream".as_ref(),
        flag_up.as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        flag_data.as_os_str(),
        "--page-size".as_ref(),
        "7".as_ref(),
    ];
    let gw = GatewayProcess::spawn_with(&args, &[]);
    assert_ne!(gw.addr, taken.local_addr().unwrap());
    let client = Client::default();
    let page = first_page(&client, &gw.url(&format!("{ROOT}/Customers"))).await;
    let value = page["value"].as_array().unwrap();
    assert_eq!(value.len(), 7, "{page}");
    assert!(names(value).iter().all(|n| n.starts_with("flag")), "{page}");
    assert!(has_store(&flag_data));
    assert!(!file_data.exists(), "the file's data_dir was overridden");
    // The route of --upstream comes in addition to the file's routes.
    let (all, _) = read_tracked(&client, &gw.url("/file/Customers")).await;
    assert_eq!(names(&all), ["file 1", "file 2"]);
}

#[tokio::test]
async fn the_upstream_flag_replaces_the_file_route_with_its_prefix_and_keeps_its_set_settings() {
    let by_flag = customers("flag", 4).await;
    let by_file = customers("file", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[[route]]\nupstream = \"{}\"\n\n[route.sets.Customers]\nignore = [\"score\"]\n",
            by_file.base_url()
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(
        &by_flag.base_url(),
        &dir.path().join("data"),
        &["--config", file.to_str().unwrap()],
    );
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers"));
    let (all, link) = read_tracked(&client, &url).await;
    assert_eq!(names(&all), ["flag 1", "flag 2", "flag 3", "flag 4"]);
    // The file's settings for the set apply to the flag's upstream.
    by_flag.update("Customers", json!(1), json!({"score": 50}));
    by_flag.update("Customers", json!(2), json!({"name": "renamed"}));
    let delta = client.get(&link, &[]).await.json();
    let ids: Vec<&Value> = delta["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["ID"])
        .collect();
    assert_eq!(ids, [&json!(2)], "{delta}");
}

#[test]
fn a_store_that_is_not_a_postgresql_url_stops_the_start_with_file_line_and_column() {
    let text = "store = \"mysql://gw@db.internal/gateway\"\n[[route]]\nupstream = \"http://127.0.0.1:9/odata\"\n";
    assert_refused_at(
        text,
        "\"mysql:",
        &[
            "mysql://gw@db.internal/gateway",
            "expected a PostgreSQL URL",
        ],
    );
    // A flag gets the same check, naming the flag.
    let stderr = exit_failure(&[
        "--store".as_ref(),
        "postgres://".as_ref(),
        "--upstream".as_ref(),
        "http://127.0.0.1:9/odata".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ]);
    assert!(stderr.contains("--store"), "{stderr}");
}

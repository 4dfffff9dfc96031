//! The example gateway.toml at the repository root is valid, says what the README says it says, and
//! its optional settings are valid once uncommented.

use std::path::{Path, PathBuf};
use std::time::Duration;

use odata_delta_gateway::config::{Config, Flags, IdentityScope, LogFormat};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml")
}

#[test]
fn example_config_loads_with_the_documented_route() {
    let flags = Flags {
        config: Some(example()),
        ..Flags::default()
    };
    let config = Config::load(&flags).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        config.admin_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9090")
    );
    assert_eq!(config.limits.max_connections, 4096);
    assert_eq!(config.limits.max_uri_bytes, 32 << 10);
    assert_eq!(config.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(config.limits.body_read_timeout, Duration::from_secs(60));
    assert_eq!(
        config.limits.tracked_request_timeout,
        Duration::from_secs(300)
    );
    assert_eq!(
        config.upstream.metadata_recheck_interval,
        Duration::from_secs(60)
    );
    assert_eq!(config.limits.max_pages_per_refresh, 100_000);
    assert_eq!(config.limits.refresh_timeout, Duration::from_secs(15 * 60));
    assert_eq!(config.limits.max_batch_parts, 1000);
    assert_eq!(config.limits.max_batch_bytes, 16 << 20);
    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert_eq!(route.prefix, "/odata/v4/catalog");
    assert_eq!(
        route.upstream.as_str(),
        "http://127.0.0.1:4004/odata/v4/catalog"
    );
    let products = &route.sets["Products"];
    assert_eq!(products.key.as_deref(), Some(&["ID".to_owned()][..]));
    assert_eq!(products.ignore, vec!["modifiedAt".to_owned()]);
    assert_eq!(config.token_ttl, Duration::from_secs(30 * 86_400));
    assert_eq!(
        config.identity,
        IdentityScope::Credentials {
            jwt_claims: vec!["iss".into(), "sub".into()]
        }
    );
    assert_eq!(config.authorization_cache, Duration::from_secs(30));
    assert_eq!(config.limits.max_feeds, 10_000);
    assert_eq!(config.limits.max_feeds_per_scope, 100);
    assert_eq!(config.limits.max_concurrent_refreshes, 8);
    assert_eq!(config.limits.max_refresh_waiters, 64);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));
}

/// What gateway.toml's header comment tells to do to put it in front of the demo's sample service.
#[test]
fn flags_override_the_example_config_as_its_comment_says() {
    let flags = Flags {
        config: Some(example()),
        listen: Some("127.0.0.1:8081".parse().unwrap()),
        upstream: Some("http://127.0.0.1:41835/odata/v4/catalog".into()),
        token_ttl: Some("12h".into()),
        ..Flags::default()
    };
    let config = Config::load(&flags).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listen.to_string(), "127.0.0.1:8081");
    assert_eq!(config.token_ttl, Duration::from_secs(12 * 3600));
    assert_eq!(config.routes.len(), 1);
    assert_eq!(
        config.routes[0].upstream.as_str(),
        "http://127.0.0.1:41835/odata/v4/catalog"
    );
    assert_eq!(
        config.routes[0].sets["Products"].ignore,
        vec!["modifiedAt".to_owned()]
    );
}

/// Lines like `#public_url = "…"` (a `#` directly before a key) are settings left out; prose
/// comments have a space after the `#`.
#[test]
fn optional_settings_of_the_example_are_valid_when_uncommented() {
    let text = std::fs::read_to_string(example()).expect("gateway.toml is readable");
    let mut uncommented = 0;
    let enabled: String = text
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => {
                uncommented += 1;
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(uncommented >= 2, "the example shows its optional settings");
    let config = Config::from_parts(&Flags::default(), Some((&example(), &enabled)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.public_url.as_ref().map(|u| u.to_string()).as_deref(),
        Some("https://api.example.com/gw")
    );
    assert_eq!(config.trusted_proxies.len(), 2);
    assert_eq!(config.schedule.poll_interval, Some(Duration::from_secs(30)));
    assert_eq!(config.schedule.feed_idle_ttl, Duration::from_secs(3600));
    assert_eq!(config.schedule.max_scheduled_feeds, 1000);
    assert_eq!(
        config.notifications.allowed_hosts,
        vec!["hooks.example.com".to_owned(), "127.0.0.1:9000".to_owned()]
    );
    assert_eq!(config.notifications.max_attempts, 4);
    let route = &config.routes[0];
    assert_eq!(route.poll_interval, Some(Duration::from_secs(10)));
    assert_eq!(
        route.headers.get("authorization").unwrap(),
        "Basic Z2F0ZXdheTpzZWNyZXQ="
    );
    assert_eq!(
        config.poll_interval(&route.prefix, "Products"),
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        config.poll_interval(&route.prefix, "Orders"),
        Some(Duration::from_secs(10))
    );
}

#[test]
fn every_file_key_appears_in_the_example() {
    let text = std::fs::read_to_string(example()).expect("gateway.toml is readable");
    for key in [
        "listen",
        "admin_listen",
        "data_dir",
        "public_url",
        "trusted_proxies",
        "token_ttl",
        "page_size",
        "max_page_size",
        "min_refresh_interval",
        "log_format",
        "shutdown_grace",
        "poll_interval",
        "feed_idle_ttl",
        "max_scheduled_feeds",
        "[route.headers]",
        "[notifications]",
        "allowed_hosts",
        "max_pending",
        "max_attempts",
        "retry_backoff",
        "[identity]",
        "mode",
        "headers",
        "jwt_claims",
        "authorization_cache",
        "[upstream]",
        "timeout",
        "connect_timeout",
        "max_retries",
        "max_retry_wait",
        "metadata_recheck_interval",
        "[limits]",
        "max_request_body_bytes",
        "max_page_bytes",
        "max_entities_per_feed",
        "max_header_bytes",
        "max_connections",
        "max_uri_bytes",
        "header_read_timeout",
        "body_read_timeout",
        "tracked_request_timeout",
        "max_feeds",
        "max_feeds_per_scope",
        "max_concurrent_refreshes",
        "max_refresh_waiters",
        "max_pages_per_refresh",
        "refresh_timeout",
        "max_batch_parts",
        "max_batch_bytes",
        "[[route]]",
        "upstream",
        "prefix",
        "[route.sets.",
        "key",
        "ignore",
    ] {
        let as_setting = |line: &str| {
            let line = line.trim_start_matches('#');
            if key.starts_with('[') {
                line.starts_with(key)
            } else {
                line.split('=').next().is_some_and(|k| k.trim() == key)
            }
        };
        assert!(
            text.lines().any(as_setting),
            "gateway.toml does not show {key}"
        );
    }
}

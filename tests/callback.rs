//! The callback preference (C33): a delta request with no changes and `Prefer: callback; url=…`
//! (4.01) or `odata.callback; url=…` (4.0) is answered 202 with the delta link in `Location`, and
//! the URL is called (GET) once a background refresh finds changes. Only allowed hosts are called.
//! Paused time: these tests are about schedules and retries.

mod support;

use std::time::Duration;

use serde_json::json;
use support::gateway::{Client, Gateway, Resp};
use support::receiver::{Answer, Call, Receiver};
use support::shop::names_only;

const ROOT: &str = "/odata/v4/shop";

fn config(extra: &str) -> String {
    format!("poll_interval = \"10s\"\n{extra}")
}

async fn delta_link(client: &Client, gw: &Gateway) -> String {
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["@odata.deltaLink"].as_str().unwrap().to_owned()
}

async fn with_callback(client: &Client, link: &str, prefer: &str, version: &str) -> Resp {
    client
        .get(link, &[("Prefer", prefer), ("OData-MaxVersion", version)])
        .await
}

#[tokio::test(start_paused = true)]
async fn a_delta_without_changes_is_accepted_and_the_callback_called_once_changes_exist_c33() {
    let up = names_only(5).await;
    let mut cb = Receiver::start().await;
    let toml = config("[notifications]\nallowed_hosts = [\"127.0.0.1\"]\n");
    let gw = Gateway::start_with(&up.base_url(), Some(&toml), |_| {}).await;
    let client = Client::default();
    let link = delta_link(&client, &gw).await;
    let url = format!("http://{}/hooks/customers?k=1", cb.addr);
    let r = with_callback(&client, &link, &format!("callback; url=\"{url}\""), "4.01").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("preference-applied"), Some("callback"));
    assert_eq!(r.header("odata-version"), Some("4.01"));
    let location = r
        .header("location")
        .expect("Location is the delta link")
        .to_owned();
    assert!(location.contains("$deltatoken="), "{location}");
    // Refreshes that find nothing call nobody.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(cb.next_call().is_none(), "called without a change");
    up.update("Customers", json!(4), json!({"name": "changed"}));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let call = cb.next_call().expect("called after the change").line();
    assert_eq!(call, "GET /hooks/customers?k=1");
    assert!(cb.next_call().is_none(), "called once");
    // The link in Location has the change.
    let r = client.get(&location, &[("OData-MaxVersion", "4.01")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"][0]["name"], "changed");
    // Further refreshes do not call again.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(cb.next_call().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_4_0_spelling_odata_callback_is_accepted_too_c33() {
    let up = names_only(5).await;
    let mut cb = Receiver::start().await;
    // A host with a port allows that port only: another one is refused.
    let toml = config("[notifications]\nallowed_hosts = [\"127.0.0.1:1\"]\n");
    let gw = Gateway::start_with(&up.base_url(), Some(&toml), |_| {}).await;
    let client = Client::default();
    let link = delta_link(&client, &gw).await;
    let prefer = format!("odata.callback; url=\"http://{}/cb\"", cb.addr);
    let r = with_callback(&client, &link, &prefer, "4.0").await;
    assert_eq!(r.status, 400, "{}", r.text());
    drop(gw);
    let toml = config(&format!(
        "[notifications]\nallowed_hosts = [\"127.0.0.1:{}\"]\n",
        cb.addr.port()
    ));
    let gw = Gateway::start_with(&up.base_url(), Some(&toml), |_| {}).await;
    let link = delta_link(&client, &gw).await;
    let r = with_callback(&client, &link, &prefer, "4.0").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("preference-applied"), Some("odata.callback"));
    up.delete("Customers", json!(2));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(cb.next_call().unwrap().line(), "GET /cb");
}

#[tokio::test(start_paused = true)]
async fn callbacks_to_hosts_not_allowed_are_refused_with_400() {
    let up = names_only(5).await;
    let cb = Receiver::start().await;
    // Nothing is allowed by default.
    let gw = Gateway::start_with(&up.base_url(), Some(&config("")), |_| {}).await;
    let client = Client::default();
    let link = delta_link(&client, &gw).await;
    for url in [
        format!("http://{}/cb", cb.addr),
        up.url("Customers"),
        "ftp://127.0.0.1/x".into(),
        "/relative".into(),
    ] {
        let r = with_callback(&client, &link, &format!("callback; url=\"{url}\""), "4.01").await;
        assert_eq!(r.status, 400, "{url}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "CallbackRefused");
    }
    // Credentials in the URL are refused even to an allowed host.
    let toml = config("[notifications]\nallowed_hosts = [\"127.0.0.1\"]\n");
    let gw2 = Gateway::start_with(&up.base_url(), Some(&toml), |_| {}).await;
    let link = delta_link(&client, &gw2).await;
    let url = format!("http://u:p@{}/cb", cb.addr);
    let r = with_callback(&client, &link, &format!("callback; url=\"{url}\""), "4.01").await;
    assert_eq!(r.status, 400, "{}", r.text());
    drop(gw);
}

#[tokio::test(start_paused = true)]
async fn a_delta_with_changes_is_answered_at_once_despite_the_callback() {
    let up = names_only(5).await;
    let mut cb = Receiver::start().await;
    let toml = config("[notifications]\nallowed_hosts = [\"127.0.0.1\"]\n");
    let gw = Gateway::start_with(&up.base_url(), Some(&toml), |_| {}).await;
    let client = Client::default();
    let link = delta_link(&client, &gw).await;
    up.update("Customers", json!(1), json!({"name": "changed"}));
    tokio::time::sleep(Duration::from_secs(11)).await;
    let prefer = format!("callback; url=\"http://{}/cb\"", cb.addr);
    let r = with_callback(&client, &link, &prefer, "4.01").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"][0]["name"], "changed");
    assert!(
        r.header("preference-applied")
            .is_none_or(|p| !p.contains("callback"))
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(cb.next_call().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failing_callback_is_retried_with_a_doubling_backoff_then_given_up() {
    let up = names_only(5).await;
    let mut cb = Receiver::start().await;
    cb.answer(Answer::Fail);
    let toml = config(
        "[notifications]\nallowed_hosts = [\"127.0.0.1\"]\nmax_attempts = 3\nretry_backoff = \"2s\"\n",
    );
    let gw = Gateway::start_with(&up.base_url(), Some(&toml), |_| {}).await;
    let client = Client::default();
    let link = delta_link(&client, &gw).await;
    let prefer = format!("callback; url=\"http://{}/cb\"", cb.addr);
    assert_eq!(
        with_callback(&client, &link, &prefer, "4.01").await.status,
        202
    );
    up.update("Customers", json!(1), json!({"name": "changed"}));
    tokio::time::sleep(Duration::from_secs(120)).await;
    let mut at = Vec::new();
    while let Some(Call { at: when, .. }) = cb.next_call() {
        at.push(when);
    }
    assert_eq!(at.len(), 3, "three attempts, then given up");
    let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps, vec![2, 4]);
    assert!(
        gw.shared
            .metrics
            .encode()
            .contains("odg_notifications_failed_total 1")
    );
}

/// A callback waits while its feed is on the schedule: once nobody asked for the feed during
/// `feed_idle_ttl`, it is forgotten (its client polls again) and makes room for others.
#[tokio::test(start_paused = true)]
async fn callbacks_of_feeds_that_leave_the_schedule_are_forgotten() {
    let up = names_only(5).await;
    let mut cb = Receiver::start().await;
    let toml = config(
        "feed_idle_ttl = \"30s\"\n[notifications]\nallowed_hosts = [\"127.0.0.1\"]\nmax_pending = 1\n",
    );
    let gw = Gateway::start_with(&up.base_url(), Some(&toml), |_| {}).await;
    let client = Client::default();
    let link = delta_link(&client, &gw).await;
    let addr = cb.addr;
    let prefer = |path: &str| format!("callback; url=\"http://{addr}/{path}\"");
    let r = with_callback(&client, &link, &prefer("first"), "4.01").await;
    assert_eq!(r.status, 202);
    // The one place is taken: another callback is not applied, the delta is answered normally.
    let r = with_callback(&client, &link, &prefer("second"), "4.01").await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_secs(60)).await;
    up.update("Customers", json!(1), json!({"name": "changed"}));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        cb.next_call().is_none(),
        "an idle feed's callback is not called"
    );
    let r = with_callback(&client, &link, &prefer("third"), "4.01").await;
    // The request refreshed the feed: it has the change, so no callback is needed...
    assert_eq!(r.status, 200, "{}", r.text());
    let location = r.json()["@deltaLink"].as_str().unwrap().to_owned();
    // ...and the forgotten callback made room for the next one.
    let r = with_callback(&client, &location, &prefer("third"), "4.01").await;
    assert_eq!(r.status, 202, "{}", r.text());
}

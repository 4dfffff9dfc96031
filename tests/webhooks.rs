//! Webhook subscriptions (`$subscriptions` on each route): created for a delta link after a
//! validation handshake with the notification URL, notified (POST, no entity data) when a
//! background refresh finds the feed changed, listed and deleted by their own identity only,
//! ended at their expiry, retried and then followed by a `missed` event, kept across restarts.
//! Paused time: these tests are about schedules and retries.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use odata_delta_gateway::odata::datetime::{format_unix_ms, parse_unix_ms};
use serde_json::{Value, json};
use support::FakeUpstream;
use support::gateway::{Client, Gateway, Resp};
use support::receiver::{Answer, Receiver};
use support::shop::names_only;
use tokio::time::Instant;

const ROOT: &str = "/odata/v4/shop";
const POLL: Duration = Duration::from_secs(10);

fn config(extra: &str) -> String {
    format!(
        "poll_interval = \"10s\"\n[notifications]\nallowed_hosts = [\"127.0.0.1\"]\nmax_attempts = 2\nretry_backoff = \"1s\"\n{extra}"
    )
}

async fn start(up: &FakeUpstream, extra: &str) -> Gateway {
    Gateway::start_with(&up.base_url(), Some(&config(extra)), |_| {}).await
}

/// What most tests start from: the sample service, a receiver, a gateway with default
/// notification settings, and Alice's delta link of Customers.
struct Scene {
    up: FakeUpstream,
    hook: Receiver,
    gw: Gateway,
    client: Client,
    link: String,
}

impl Scene {
    async fn start() -> Scene {
        let up = names_only(5).await;
        let hook = Receiver::start().await;
        let gw = start(&up, "").await;
        let client = Client::default();
        let link = delta_link(&client, &gw, ALICE).await;
        Scene {
            up,
            hook,
            gw,
            client,
            link,
        }
    }
}

/// Alice subscribes `hook`'s `/h` to `link`; the new subscription's id.
async fn subscribe(client: &Client, gw: &Gateway, link: &str, hook: &Receiver) -> String {
    let r = create(
        client,
        gw,
        ALICE,
        &json!({"deltaLink": link, "notificationUrl": hook.url("/h")}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

fn subscriptions(gw: &Gateway) -> String {
    gw.url(&format!("{ROOT}/$subscriptions"))
}

/// The delta link of a tracked read of Customers, as `who`.
async fn delta_link(client: &Client, gw: &Gateway, who: &str) -> String {
    let r = client
        .get(
            &gw.url(&format!("{ROOT}/Customers")),
            &[("Prefer", "odata.track-changes"), ("Authorization", who)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["@odata.deltaLink"].as_str().unwrap().to_owned()
}

async fn create(client: &Client, gw: &Gateway, who: &str, body: &Value) -> Resp {
    client
        .send_json(
            Method::POST,
            &subscriptions(gw),
            &[("Authorization", who)],
            body,
        )
        .await
}

async fn as_who(client: &Client, method: Method, url: &str, who: &str) -> Resp {
    client
        .send(method, url, &[("Authorization", who)], Bytes::new())
        .await
}

const ALICE: &str = "Basic YWxpY2U6MQ==";
const BOB: &str = "Basic Ym9iOjE=";

#[tokio::test(start_paused = true)]
async fn a_change_reaches_a_validated_subscription_within_the_poll_interval_without_entity_data() {
    let Scene {
        up,
        mut hook,
        gw,
        client,
        link,
    } = Scene::start().await;
    let r = create(
        &client,
        &gw,
        ALICE,
        &json!({"deltaLink": link, "notificationUrl": hook.url("/hooks/c?x=1"), "clientState": "s3cret"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let sub = r.json();
    let id = sub["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(
        r.header("location"),
        Some(format!("{}/{id}", subscriptions(&gw)).as_str())
    );
    assert_eq!(sub["notificationUrl"], hook.url("/hooks/c?x=1"));
    assert_eq!(sub["clientState"], "s3cret");
    // The handshake came before the answer: a POST with a validation token, nothing else.
    let calls = hook.drain();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, Method::POST);
    assert!(
        calls[0]
            .path_and_query
            .starts_with("/hooks/c?x=1&validationToken="),
        "{}",
        calls[0].path_and_query
    );
    // Refreshes that find nothing notify nobody.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(hook.notifications().is_empty());
    up.update("Customers", json!(3), json!({"name": "Very Secret Name"}));
    let changed_at = Instant::now();
    tokio::time::sleep(POLL + Duration::from_secs(1)).await;
    let notes = hook.notifications();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let (note, at) = &notes[0];
    assert!(
        *at - changed_at <= POLL + Duration::from_secs(1),
        "{:?}",
        *at - changed_at
    );
    let events = note["value"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{note}");
    let e = &events[0];
    assert_eq!(e["subscriptionId"], id.as_str());
    assert_eq!(e["event"], "changed");
    assert_eq!(e["clientState"], "s3cret");
    assert!(parse_unix_ms(e["timestamp"].as_str().unwrap()).is_some());
    // Never entity data: only the subscription, the event, the link, the time, the state.
    let text = note.to_string();
    assert!(
        !text.contains("Very Secret Name") && !text.contains("\"C1\""),
        "{text}"
    );
    let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "clientState",
            "deltaLink",
            "event",
            "subscriptionId",
            "timestamp"
        ]
    );
    // The delta link of the notification has the change.
    let delta = client
        .get(
            e["deltaLink"].as_str().unwrap(),
            &[("Authorization", ALICE)],
        )
        .await;
    assert_eq!(delta.status, 200, "{}", delta.text());
    assert_eq!(delta.json()["value"][0]["name"], "Very Secret Name");
    // Told once; the next refreshes find nothing new.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(hook.notifications().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_fails_the_handshake_is_refused() {
    let Scene {
        up: _up,
        hook,
        gw,
        client,
        link,
    } = Scene::start().await;
    for mode in [Answer::WrongToken, Answer::Fail] {
        hook.answer(mode);
        let r = create(
            &client,
            &gw,
            ALICE,
            &json!({"deltaLink": link, "notificationUrl": hook.url("/h")}),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "SubscriptionValidationFailed");
    }
    // Nothing listens there at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let r = create(
        &client,
        &gw,
        ALICE,
        &json!({"deltaLink": link, "notificationUrl": format!("http://{closed}/h")}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let list = as_who(&client, Method::GET, &subscriptions(&gw), ALICE).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["value"], json!([]));
}

#[tokio::test(start_paused = true)]
async fn subscriptions_are_listed_and_deleted_by_their_own_identity_only() {
    let Scene {
        up: _up,
        hook,
        gw,
        client,
        link,
    } = Scene::start().await;
    let body = json!({"deltaLink": link, "notificationUrl": hook.url("/h")});
    // Bob cannot subscribe to Alice's link: it is bound to her identity.
    let r = create(&client, &gw, BOB, &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "InvalidDeltaToken");
    let r = create(&client, &gw, ALICE, &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let item = format!("{}/{id}", subscriptions(&gw));
    let list = as_who(&client, Method::GET, &subscriptions(&gw), ALICE).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let listed = list.json()["value"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    let r = as_who(&client, Method::GET, &item, ALICE).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], id.as_str());
    // Bob sees none of it, and cannot delete it.
    let list = as_who(&client, Method::GET, &subscriptions(&gw), BOB).await;
    assert_eq!(list.json()["value"], json!([]));
    for method in [Method::GET, Method::DELETE] {
        let r = as_who(&client, method, &item, BOB).await;
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "NotFound");
    }
    // Alice deletes it; then it is gone for her too.
    let r = as_who(&client, Method::DELETE, &item, ALICE).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = as_who(&client, Method::GET, &item, ALICE).await;
    assert_eq!(r.status, 404);
    let list = as_who(&client, Method::GET, &subscriptions(&gw), ALICE).await;
    assert_eq!(list.json()["value"], json!([]));
    let r = as_who(&client, Method::DELETE, &item, ALICE).await;
    assert_eq!(r.status, 404);
    // Methods the resource does not serve.
    let r = as_who(&client, Method::PUT, &subscriptions(&gw), ALICE).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
}

#[tokio::test(start_paused = true)]
async fn bad_subscriptions_and_disallowed_hosts_are_refused_with_400() {
    let Scene {
        up,
        hook,
        gw,
        client,
        link,
    } = Scene::start().await;
    let refused = |r: &Resp, code: &str| {
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], code, "{}", r.text());
    };
    for url in [
        "http://10.0.0.1/h".to_owned(),
        "http://localhost:1/h".to_owned(),
        "ftp://127.0.0.1/h".to_owned(),
        format!("http://u:p@{}/h", hook.addr),
        "not a url".to_owned(),
    ] {
        let r = create(
            &client,
            &gw,
            ALICE,
            &json!({"deltaLink": link, "notificationUrl": url}),
        )
        .await;
        refused(&r, "CallbackRefused");
    }
    let ok_url = hook.url("/h");
    for body in [
        json!({"notificationUrl": ok_url}),
        json!({"deltaLink": link}),
        json!({"deltaLink": link, "notificationUrl": ok_url, "bogus": 1}),
        json!({"deltaLink": link, "notificationUrl": ok_url, "expirationDateTime": "soon"}),
        json!({"deltaLink": link, "notificationUrl": ok_url, "expirationDateTime": "2001-01-01T00:00:00Z"}),
        json!({"deltaLink": link, "notificationUrl": ok_url, "clientState": "x".repeat(300)}),
        json!({"deltaLink": gw.url(&format!("{ROOT}/Customers")), "notificationUrl": ok_url}),
        json!([1, 2]),
    ] {
        let r = create(&client, &gw, ALICE, &body).await;
        refused(&r, "InvalidSubscription");
    }
    let r = client
        .send(
            Method::POST,
            &subscriptions(&gw),
            &[("Authorization", ALICE)],
            "{not json",
        )
        .await;
    refused(&r, "InvalidSubscription");
    let forged = format!("{}x", link);
    let r = create(
        &client,
        &gw,
        ALICE,
        &json!({"deltaLink": forged, "notificationUrl": ok_url}),
    )
    .await;
    refused(&r, "InvalidDeltaToken");
    let r = as_who(
        &client,
        Method::GET,
        &format!("{}/not-an-id", subscriptions(&gw)),
        ALICE,
    )
    .await;
    assert_eq!(r.status, 404);
    // A set without background refresh: nothing would notice its changes.
    let quiet = Gateway::start_with(
        &up.base_url(),
        Some("[notifications]\nallowed_hosts = [\"127.0.0.1\"]\n"),
        |_| {},
    )
    .await;
    let link = delta_link(&client, &quiet, ALICE).await;
    let r = create(
        &client,
        &quiet,
        ALICE,
        &json!({"deltaLink": link, "notificationUrl": ok_url}),
    )
    .await;
    refused(&r, "SubscriptionRefused");
}

#[tokio::test(start_paused = true)]
async fn a_subscription_ends_at_its_expiry_which_is_capped_by_config() {
    let up = names_only(5).await;
    let mut hook = Receiver::start().await;
    let gw = start(&up, "max_subscription_lifetime = \"1h\"\n").await;
    let client = Client::default();
    let now = gw.shared.clock.now_ms();
    gw.shared.clock.pin_ms(now);
    let link = delta_link(&client, &gw, ALICE).await;
    // Ten days are asked for, one hour is given.
    let r = create(
        &client,
        &gw,
        ALICE,
        &json!({"deltaLink": link, "notificationUrl": hook.url("/long"),
                "expirationDateTime": format_unix_ms(now + 10 * 86_400_000)}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let capped = parse_unix_ms(r.json()["expirationDateTime"].as_str().unwrap()).unwrap();
    assert_eq!(capped, now + 3_600_000);
    let r = create(
        &client,
        &gw,
        ALICE,
        &json!({"deltaLink": link, "notificationUrl": hook.url("/short"),
                "expirationDateTime": format_unix_ms(now + 120_000)}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let short = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        parse_unix_ms(r.json()["expirationDateTime"].as_str().unwrap()),
        Some(now + 120_000)
    );
    hook.drain();
    // Past the short one's end: it is gone, and only the long one is notified.
    gw.shared.clock.pin_ms(now + 121_000);
    let r = as_who(
        &client,
        Method::GET,
        &format!("{}/{short}", subscriptions(&gw)),
        ALICE,
    )
    .await;
    assert_eq!(r.status, 404);
    let list = as_who(&client, Method::GET, &subscriptions(&gw), ALICE).await;
    assert_eq!(list.json()["value"].as_array().unwrap().len(), 1);
    up.update("Customers", json!(1), json!({"name": "changed"}));
    tokio::time::sleep(POLL + Duration::from_secs(1)).await;
    let calls: Vec<String> = hook.drain().into_iter().map(|c| c.path_and_query).collect();
    assert_eq!(calls, ["/long"]);
    // Past the long one's end too: nobody is notified.
    gw.shared.clock.pin_ms(now + 3_601_000);
    up.update("Customers", json!(2), json!({"name": "changed"}));
    tokio::time::sleep(POLL * 3).await;
    assert!(hook.drain().is_empty());
    let list = as_who(&client, Method::GET, &subscriptions(&gw), ALICE).await;
    assert_eq!(list.json()["value"], json!([]));
    assert_eq!(
        gw.shared.store.subscriptions().unwrap().len(),
        0,
        "swept from the store"
    );
}

#[tokio::test(start_paused = true)]
async fn given_up_notifications_are_retried_then_followed_by_a_missed_event() {
    let Scene {
        up,
        mut hook,
        gw,
        client,
        link,
    } = Scene::start().await;
    let id = subscribe(&client, &gw, &link, &hook).await;
    hook.drain();
    hook.answer(Answer::Fail);
    up.update("Customers", json!(1), json!({"name": "first"}));
    tokio::time::sleep(POLL + Duration::from_secs(5)).await;
    let failed = hook.notifications();
    assert_eq!(failed.len(), 2, "max_attempts = 2");
    assert_eq!(
        failed[1].1 - failed[0].1,
        Duration::from_secs(1),
        "retry_backoff"
    );
    // Given up: refreshes that find nothing new do not call the receiver again.
    tokio::time::sleep(POLL * 3).await;
    assert!(hook.notifications().is_empty());
    let r = as_who(
        &client,
        Method::GET,
        &format!("{}/{id}", subscriptions(&gw)),
        ALICE,
    )
    .await;
    assert_eq!(r.json()["missedNotifications"], 1);
    hook.answer(Answer::Ok);
    up.update("Customers", json!(2), json!({"name": "second"}));
    tokio::time::sleep(POLL + Duration::from_secs(1)).await;
    let notes = hook.notifications();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let events = notes[0].0["value"].as_array().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["event"], "missed");
    assert_eq!(events[0]["missedNotifications"], 1);
    assert_eq!(events[0]["subscriptionId"], id.as_str());
    assert_eq!(events[1]["event"], "changed");
    // Its link starts before the missed change: both are there.
    let delta = client
        .get(
            events[1]["deltaLink"].as_str().unwrap(),
            &[("Authorization", ALICE)],
        )
        .await;
    let mut names: Vec<String> = delta.json()["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["first", "second"]);
    assert!(
        gw.shared
            .metrics
            .encode()
            .contains("odg_notifications_failed_total 1")
    );
}

#[tokio::test(start_paused = true)]
async fn subscriptions_are_limited_per_identity_and_in_all() {
    let up = names_only(5).await;
    let hook = Receiver::start().await;
    let gw = start(
        &up,
        "max_subscriptions = 2\nmax_subscriptions_per_scope = 1\n",
    )
    .await;
    let client = Client::default();
    let carol = "Basic Y2Fyb2w6MQ==";
    let mut statuses = Vec::new();
    for who in [ALICE, ALICE, BOB, carol] {
        let link = delta_link(&client, &gw, who).await;
        let r = create(
            &client,
            &gw,
            who,
            &json!({"deltaLink": link, "notificationUrl": hook.url("/h")}),
        )
        .await;
        if r.status == 429 {
            assert_eq!(r.json()["error"]["code"], "TooManySubscriptions");
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [201, 429, 201, 429]);
}

#[tokio::test(start_paused = true)]
async fn subscriptions_are_kept_across_a_restart_and_resume_once_renewed() {
    let Scene {
        up,
        mut hook,
        gw,
        client,
        link,
    } = Scene::start().await;
    let id = subscribe(&client, &gw, &link, &hook).await;
    let dir = gw.stop().await;
    let gw = Gateway::start_in(dir, &up.base_url(), Some(&config("")), |_| {}).await;
    let item = format!("{}/{id}", subscriptions(&gw));
    let r = as_who(&client, Method::GET, &item, ALICE).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A renewal brings the credentials that the feed's background refresh needs again.
    let until = format_unix_ms(gw.shared.clock.now_ms() + 3_600_000);
    let r = client
        .send_json(
            Method::PATCH,
            &item,
            &[("Authorization", ALICE)],
            &json!({"expirationDateTime": until}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["expirationDateTime"], until.as_str());
    hook.drain();
    up.update("Customers", json!(5), json!({"name": "after restart"}));
    tokio::time::sleep(POLL + Duration::from_secs(1)).await;
    let notes = hook.notifications();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].0["value"][0]["subscriptionId"], id.as_str());
}

#[tokio::test]
async fn the_status_page_counts_the_subscriptions_watching_each_feed() {
    let up = names_only(5).await;
    let hook = Receiver::start().await;
    let gw = Gateway::start_with(&up.base_url(), Some(&config("")), |f| {
        f.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = Client::default();
    let link = delta_link(&client, &gw, ALICE).await;
    let status = format!("http://{}/", gw.admin_addr().expect("admin listener"));
    let html = client.get(&status, &[]).await.text();
    assert!(html.contains("<th>Subscriptions</th>"), "{html}");
    assert!(
        html.contains("<td class=\"n subscriptions\">0</td>"),
        "{html}"
    );
    for _ in 0..2 {
        subscribe(&client, &gw, &link, &hook).await;
    }
    let html = client.get(&status, &[]).await.text();
    assert!(
        html.contains("<td class=\"n subscriptions\">2</td>"),
        "{html}"
    );
}

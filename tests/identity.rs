//! Identity and authorization: every tracked request of a per-identity feed is authorized by the
//! upstream with the request's own credentials before it is answered from the store (next links
//! included), and bearer JWTs are scoped by their identifying claims, so that a renewed access
//! token keeps its delta links (C10 for the refusals).

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use support::Faults;
use support::gateway::{Client, Gateway, Resp};
use support::shop::{ROOT, shop};

const TRACK: &str = "odata.track-changes";

/// A JWT with this payload and signature; nothing checks the signature but the upstream.
fn jwt(payload: &str, signature: &str) -> String {
    format!(
        "Bearer {}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

async fn get(client: &Client, url: &str, authorization: &str, prefer: Option<&str>) -> Resp {
    let mut headers = vec![("Authorization", authorization)];
    if let Some(p) = prefer {
        headers.push(("Prefer", p));
    }
    client.get(url, &headers).await
}

/// The delta link at the end of a tracked read under `authorization`.
async fn delta_link(client: &Client, gw: &Gateway, authorization: &str) -> String {
    let url = gw.url(&format!("{ROOT}/Customers"));
    let mut page = get(client, &url, authorization, Some(TRACK)).await;
    loop {
        assert_eq!(page.status, 200, "{}", page.text());
        let body = page.json();
        if let Some(d) = body["@odata.deltaLink"].as_str() {
            return d.to_owned();
        }
        let next = body["@odata.nextLink"].as_str().unwrap().to_owned();
        page = get(client, &next, authorization, None).await;
    }
}

fn error_code(r: &Resp) -> Value {
    r.json()["error"]["code"].clone()
}

/// Item: a credential the upstream stopped accepting no longer reads the pages of an earlier
/// tracked read, although they are served from the store; another credential's read goes on.
#[tokio::test]
async fn a_revoked_credential_cannot_follow_an_earlier_next_link() {
    let up = shop(10).await;
    let toml = "[identity]\nauthorization_cache = \"200ms\"\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers"));
    let prefer = "odata.track-changes, odata.maxpagesize=3";
    let (alice, bob) = ("Bearer alice-opaque", "Bearer bob-opaque");
    let first_of = |r: Resp| r.json()["@odata.nextLink"].as_str().unwrap().to_owned();
    let alice_next = first_of(get(&client, &url, alice, Some(prefer)).await);
    let bob_next = first_of(get(&client, &url, bob, Some(prefer)).await);

    up.revoke_credential(alice);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(&client, &alice_next, alice, None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_eq!(r.header("odata-version"), Some("4.0"));
    assert_eq!(error_code(&r), "401");
    assert!(r.json()["error"]["message"].as_str().is_some());

    let r = get(&client, &bob_next, bob, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 3);
}

/// Item: within the cache time, the pages after a refresh this credential ran cost the upstream
/// nothing; the authorization asked of the upstream is an empty page of the feed's own query.
#[tokio::test]
async fn authorization_checks_are_cached_per_credential_and_ask_for_an_empty_page() {
    let up = shop(10).await;
    let toml = "[identity]\nauthorization_cache = \"2s\"\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let url = gw.url(&format!("{ROOT}/Customers?$filter=ID%20gt%202"));
    let prefer = "odata.track-changes, odata.maxpagesize=2";
    let auth = "Bearer cached";
    let r = get(&client, &url, auth, Some(prefer)).await;
    let next = r.json()["@odata.nextLink"].as_str().unwrap().to_owned();
    up.clear_requests();
    let r = get(&client, &next, auth, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.collection_requests("Customers"), 0, "the refresh counts");

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let next = r.json()["@odata.nextLink"].as_str().unwrap().to_owned();
    let r = get(&client, &next, auth, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let checks: Vec<String> = up
        .requests()
        .iter()
        .filter(|r| r.collection_set.as_deref() == Some("Customers"))
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert!(
        checks[0].contains("%24top=0") || checks[0].contains("$top=0"),
        "{checks:?}"
    );
    assert!(checks[0].contains("filter"), "{checks:?}");
    let forwarded = up.requests().last().unwrap().headers.clone();
    assert_eq!(forwarded["authorization"], auth);
}

/// Item: `"0s"` checks every request; `shared` feeds are the gateway's own and need no check.
#[tokio::test]
async fn shared_feeds_are_not_checked_and_zero_cache_checks_every_page() {
    let up = shop(10).await;
    let client = Client::default();
    let prefer = "odata.track-changes, odata.maxpagesize=3";
    for (toml, checks) in [
        ("[identity]\nmode = \"shared\"\n", 0),
        ("[identity]\nauthorization_cache = \"0s\"\n", 1),
    ] {
        let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
        let url = gw.url(&format!("{ROOT}/Customers"));
        let r = get(&client, &url, "Bearer x", Some(prefer)).await;
        let next = r.json()["@odata.nextLink"].as_str().unwrap().to_owned();
        up.clear_requests();
        let r = get(&client, &next, "Bearer x", None).await;
        assert_eq!(r.status, 200, "{toml}: {}", r.text());
        assert_eq!(up.collection_requests("Customers"), checks, "{toml}");
    }
}

/// Item: a delta link issued under one access token works under the renewed token of the same
/// caller (same `iss` and `sub`, another `exp` and signature), without a second feed.
#[tokio::test]
async fn a_delta_link_survives_a_renewed_jwt_of_the_same_subject() {
    let up = shop(10).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let first = jwt(
        r#"{"iss":"https://idp.example","sub":"alice","exp":1700000000}"#,
        "sig-one",
    );
    let renewed = jwt(
        r#"{"iss":"https://idp.example","sub":"alice","exp":1700003600,"iat":1700000000}"#,
        "sig-two",
    );
    let link = delta_link(&client, &gw, &first).await;
    up.delete("Customers", serde_json::json!(4));
    let r = get(&client, &link, &renewed, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let value = r.json()["value"].as_array().unwrap().clone();
    assert_eq!(value.len(), 1, "{value:?}");
    // A tombstone (C11), not the whole collection again: the same feed went on.
    assert!(
        value[0]["id"].as_str().unwrap().contains("Customers(4)"),
        "{value:?}"
    );
}

/// Item: a JWT of another subject gets exactly the refusal a foreign opaque token gets (C10), and
/// opaque tokens are scoped by their whole value as before.
#[tokio::test]
async fn another_subject_gets_the_refusal_of_a_foreign_token() {
    let up = shop(10).await;
    let gw = Gateway::start(&up.base_url()).await;
    let client = Client::default();
    let alice = jwt(r#"{"iss":"https://idp.example","sub":"alice"}"#, "a");
    let bob = jwt(r#"{"iss":"https://idp.example","sub":"bob"}"#, "a");
    let link = delta_link(&client, &gw, &alice).await;
    let by_bob = get(&client, &link, &bob, None).await;
    let by_foreign = get(&client, &link, "Bearer someone-else", None).await;
    assert_eq!(by_bob.status, 400, "{}", by_bob.text());
    assert_eq!(by_foreign.status, 400, "{}", by_foreign.text());
    assert_eq!(by_bob.json(), by_foreign.json());
    assert_eq!(error_code(&by_bob), "InvalidDeltaToken");

    let opaque = delta_link(&client, &gw, "Bearer opaque-1").await;
    let r = get(&client, &opaque, "Bearer opaque-2", None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json(), by_foreign.json());
    let r = get(&client, &opaque, "Bearer opaque-1", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Item: claims are read without checking the signature, so a forged token with someone's claims
/// lands in their scope — and is refused by the upstream, even when the answer would come from a
/// refresh the real token ran a moment ago.
#[tokio::test]
async fn a_forged_jwt_with_the_same_claims_is_refused_by_the_upstream() {
    let up = shop(10).await;
    let toml = "min_refresh_interval = \"1h\"\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let claims = r#"{"iss":"https://idp.example","sub":"alice"}"#;
    let real = jwt(claims, "signed-by-the-idp");
    let forged = jwt(claims, "forged");
    let link = delta_link(&client, &gw, &real).await;
    up.revoke_credential(&forged);
    let r = get(&client, &link, &real, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&client, &link, &forged, None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let url = gw.url(&format!("{ROOT}/Customers"));
    let r = get(&client, &url, &forged, Some(TRACK)).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

/// Item: with claim scoping off (`jwt_claims = []`) a renewed token is another caller, as before.
#[tokio::test]
async fn claim_scoping_can_be_turned_off() {
    let up = shop(10).await;
    let toml = "[identity]\njwt_claims = []\n";
    let gw = Gateway::start_with(&up.base_url(), Some(toml), |_| {}).await;
    let client = Client::default();
    let claims = r#"{"iss":"https://idp.example","sub":"alice"}"#;
    let link = delta_link(&client, &gw, &jwt(claims, "one")).await;
    let r = get(&client, &link, &jwt(claims, "two"), None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(error_code(&r), "InvalidDeltaToken");
}

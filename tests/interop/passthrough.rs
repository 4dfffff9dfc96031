//! What the gateway passes through to a real server, checked the same way on each: writes
//! (POST, PATCH, DELETE) reach the server with its answers intact — its status, its error, a
//! `Location` pointing at the gateway — and show in the next delta, which the gateway counts
//! itself (C11, C16, C23, C28); a request the gateway does not track goes up without the
//! track-changes preference and comes back without a delta link (C2, C36); and no `$deltatoken`
//! and no track-changes preference ever reach the server.

use http::Method;
use serde_json::{Value, json};

use crate::api::Upstream;
use crate::check::check_the_delta_after_the_writes;
use crate::support::gateway::{Client, Gateway, Replica, Resp, Shape};

async fn write(client: &Client, method: Method, url: &str, body: Option<Value>) -> Resp {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    client
        .send(method, url, &[("Content-Type", "application/json")], body)
        .await
}

/// Writes through the gateway to `upstream` (which holds Customers 1..=100 at least), then the
/// next deltas; and an untracked read with the track-changes preference.
pub async fn writes_and_untracked_reads(upstream: &dyn Upstream) {
    let api = upstream.api();
    let dialect = api.dialect;
    let key = dialect.key();
    let gw = Gateway::start(&api.base).await;
    let client = Client::default();
    let root = upstream.root_path();
    let set = gw.url(&format!("{root}/Customers"));
    let entity = |id: i64| gw.url(&format!("{root}/Customers({id})"));
    let mut replica = Replica::new("Customers", &[key], Shape::V40);
    replica
        .initial(&client, &set)
        .await
        .unwrap_or_else(|r| panic!("initial read: {} {}", r.status, r.text()));
    let mut rng = crate::rng::Rng::from_env("passthrough");

    for id in [5001, 5002] {
        let body = dialect.new_entity(&mut rng, id);
        let r = write(&client, Method::POST, &set, Some(body.clone())).await;
        assert_eq!(r.status, 201, "POST {id}: {}", r.text());
        assert_eq!(
            r.header("location"),
            Some(entity(id).as_str()),
            "{}'s absolute Location points at the gateway",
            dialect.name()
        );
        let created = r.json();
        assert_eq!(created[key], id, "{created}");
        for (name, value) in body.as_object().expect("an object") {
            let same = match (created[name].as_f64(), value.as_f64()) {
                // `5.0` may come back as `5` or `5.00`.
                (Some(a), Some(b)) => a == b,
                _ => &created[name] == value,
            };
            assert!(same, "{name}: sent {value}, answered {created}");
        }
    }
    let mut patch = dialect.random_patch(&mut rng);
    let name = dialect.name_property();
    patch[name] = json!("Patched through the gateway");
    for id in [10, 5002] {
        let r = write(&client, Method::PATCH, &entity(id), Some(patch.clone())).await;
        assert!(
            matches!(r.status.as_u16(), 200 | 204),
            "PATCH {id}: {} {}",
            r.status,
            r.text()
        );
    }
    for id in [20, 21] {
        let r = write(&client, Method::DELETE, &entity(id), None).await;
        assert_eq!(r.status, 204, "DELETE {id}: {}", r.text());
    }
    // The server's own errors come back as it sent them.
    for (method, body) in [(Method::DELETE, None), (Method::PATCH, Some(patch.clone()))] {
        let r = write(&client, method.clone(), &entity(20), body).await;
        assert_eq!(r.status, 404, "{method} a deleted entity: {}", r.text());
        let error = r.json();
        assert!(
            error["error"]["message"].is_string(),
            "{}'s error passes through: {error}",
            dialect.name()
        );
    }
    assert_eq!(
        api.get(10).await.expect("row 10")[name],
        "Patched through the gateway"
    );

    // A single entity is not tracked: read normally, without a delta link (C2), and the server is
    // not asked for one (C36).
    let r = client
        .get(&entity(11), &[("Prefer", "odata.track-changes")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !r.header("preference-applied")
            .is_some_and(|p| p.contains("track-changes")),
        "C2: {:?}",
        r.headers
    );
    let one = r.json();
    assert_eq!(one[key], 11, "{one}");
    assert!(
        one.get("@odata.deltaLink").is_none() && one.get("@deltaLink").is_none(),
        "C2: {one}"
    );
    for link in ["@odata.id", "@odata.editLink", "@odata.context"] {
        if let Some(l) = one[link].as_str().filter(|l| l.starts_with("http")) {
            assert!(
                l.starts_with(&gw.url("")),
                "{link} of a passed-through answer points at the gateway: {l}"
            );
        }
    }

    check_the_delta_after_the_writes(&mut replica, &client, &api).await;

    for needle in ["deltatoken", "track-changes"] {
        let leaked = upstream.requests_with(needle);
        assert!(
            leaked.is_empty(),
            "{needle} reached {}: {leaked:?}",
            dialect.name()
        );
    }
}

//! Writes through the gateway (the real binary): POST, PATCH and DELETE pass through to CAP with
//! CAP's answers untouched — a relative `Location` stays relative, CAP's errors stay CAP's — and the
//! next delta shows exactly those writes (C11, C16, C28).

use http::Method;
use serde_json::{Value, json};

use crate::cap::{Cap, ROOT};
use crate::check::check_the_delta_after_the_writes;
use crate::support::gateway::{Client, GatewayProcess, Replica, Resp, Shape, data_dir};

const JSON: [(&str, &str); 1] = [("Content-Type", "application/json")];

async fn write(client: &Client, method: Method, url: &str, body: Option<Value>) -> Resp {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    client.send(method, url, &JSON, body).await
}

#[tokio::test]
#[ignore = "needs SAP CAP from npm (node and npm); run by .ci/run"]
async fn writes_through_the_gateway_reach_cap_and_show_in_the_next_delta() {
    let Some(cap) = Cap::start("writes", 1000, 100) else {
        return;
    };
    let api = cap.api();
    let (_dir, path) = data_dir();
    let gw = GatewayProcess::spawn(&cap.base, &path, &[]);
    let client = Client::default();
    let mut replica = Replica::new("Customers", &["ID"], Shape::V40);
    let set = gw.url(&format!("{ROOT}/Customers"));
    replica
        .initial(&client, &set)
        .await
        .unwrap_or_else(|r| panic!("initial read: {} {}", r.status, r.text()));

    for id in [5001, 5002] {
        let body = json!({"ID": id, "name": format!("Posted {id}"), "city": "Oslo", "balance": "10.50", "score": 7});
        let r = write(&client, Method::POST, &set, Some(body)).await;
        assert_eq!(r.status, 201, "POST {id}: {}", r.text());
        assert_eq!(
            r.header("location"),
            Some(format!("Customers({id})").as_str()),
            "CAP's relative Location passes through as it is"
        );
        let created = r.json();
        assert_eq!(created["ID"], id, "{created}");
        assert_eq!(created["balance"], "10.50", "{created}");
        assert_eq!(created["@odata.context"], "$metadata#Customers/$entity");
    }
    let patch = |id: i64| gw.url(&format!("{ROOT}/Customers({id})"));
    let r = write(
        &client,
        Method::PATCH,
        &patch(10),
        Some(json!({"name": "Patched", "balance": 1.5})),
    )
    .await;
    assert!(
        matches!(r.status.as_u16(), 200 | 204),
        "PATCH: {} {}",
        r.status,
        r.text()
    );
    let r = write(
        &client,
        Method::PATCH,
        &patch(5002),
        Some(json!({"score": 8})),
    )
    .await;
    assert!(
        matches!(r.status.as_u16(), 200 | 204),
        "PATCH: {} {}",
        r.status,
        r.text()
    );
    for id in [20, 21] {
        let r = write(&client, Method::DELETE, &patch(id), None).await;
        assert_eq!(r.status, 204, "DELETE {id}: {}", r.text());
    }
    // CAP's own errors come back as CAP sent them.
    let r = write(&client, Method::DELETE, &patch(20), None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "404", "{}", r.text());
    let r = write(
        &client,
        Method::PATCH,
        &patch(21),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(api.get(10).await.expect("row 10")["name"], "Patched");

    check_the_delta_after_the_writes(&mut replica, &client, &api).await;
}

//! Graceful shutdown: in-flight requests finish, then the listener is gone.

mod support;

use std::time::Duration;

use serde_json::json;
use support::gateway::{Client, Gateway};
use support::{EntitySetDef, FakeUpstream, Fault};

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_stops_listening() {
    let up = FakeUpstream::start().await;
    up.define_set(EntitySetDef::new("Customers", "Customer").key("ID", "Edm.Int32"));
    up.insert_many("Customers", (1..=10).map(|i| json!({ "ID": i })));
    let gw = Gateway::start(&up.base_url()).await;
    let url = gw.url("/odata/v4/shop/Customers");
    up.push_fault(Fault::Delay { page: 0, ms: 700 });
    let client = Client::default();
    let in_flight = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url, &[("Prefer", "odata.track-changes")]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.addr;
    let _dir = gw.stop().await;
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 10);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

//! The gateway in front of odatapy's in-memory server 5.3.0 (PyPI), which tracks changes itself:
//! the random CRUD replica test in both payload shapes, and the pass-through checks — above all
//! that the gateway never asks odatapy for delta links of its own (requests it does not track go
//! up without the track-changes preference), and that a delta link of odatapy's that reaches a
//! client anyway is left pointing at odatapy, where its token is valid (C36).
//!
//! `#[ignore]`d in a plain `cargo test` (they install PyPI packages); `.ci/run` runs them with
//! `cargo test --test interop -- --ignored`.

use http::Method;
use serde_json::{Value, json};

use crate::servers::ScriptServer;
use crate::support::gateway::{Client, Gateway, Shape};

#[tokio::test]
#[ignore = "installs odatapy from PyPI; run by .ci/run"]
async fn a_4_0_replica_follows_random_crud_made_through_odatapys_own_api() {
    let server = ScriptServer::odatapy("odatapy-crud-v40", 1200, 200);
    crate::crud::crud_rounds("odatapy-crud-v40", &server, Shape::V40).await;
}

#[tokio::test]
#[ignore = "installs odatapy from PyPI; run by .ci/run"]
async fn a_4_01_replica_follows_random_crud_made_through_odatapys_own_api() {
    let server = ScriptServer::odatapy("odatapy-crud-v401", 1200, 200);
    crate::crud::crud_rounds("odatapy-crud-v401", &server, Shape::V401).await;
}

#[tokio::test]
#[ignore = "installs odatapy from PyPI; run by .ci/run"]
async fn writes_and_untracked_reads_pass_through_to_odatapy() {
    let server = ScriptServer::odatapy("odatapy-passthrough", 300, 70);
    crate::passthrough::writes_and_untracked_reads(&server).await;
}

/// C2, C36 with a server that tracks changes itself: reads the gateway does not track — `$apply`,
/// alone or inside a JSON batch beside a tracked read — reach odatapy without the track-changes
/// preference, so odatapy hands out no delta link of its own (one would point at odatapy and be
/// refused by the gateway if rewritten), and the client gets no `Preference-Applied` for it.
#[tokio::test]
#[ignore = "installs odatapy from PyPI; run by .ci/run"]
async fn odatapy_is_never_asked_for_delta_links_of_its_own_c2_c36() {
    let server = ScriptServer::odatapy("odatapy-c36", 40, 15);
    let gw = Gateway::start(&server.base).await;
    let client = Client::default();
    let apply = "Customers?$apply=filter(city%20eq%20'Oslo')";
    let untracked = |applied: Option<&str>, body: &Value, what: &str| {
        assert!(
            !applied.is_some_and(|p| p.contains("track-changes")),
            "C2 {what}: {applied:?}"
        );
        assert!(
            body.get("@odata.deltaLink").is_none() && body.get("@deltaLink").is_none(),
            "C36 {what}: {body}"
        );
        assert_eq!(
            body["value"].as_array().map(Vec::len),
            Some(8),
            "{what}: odatapy's answer {body}"
        );
    };

    let r = client
        .get(
            &gw.url(&format!("/{apply}")),
            &[("Prefer", "odata.track-changes")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    untracked(r.header("preference-applied"), &r.json(), "alone");

    let batch = json!({"requests": [
        {"id": "t", "method": "GET", "url": "Customers", "headers": {"Prefer": "odata.track-changes"}},
        {"id": "a", "method": "GET", "url": apply, "headers": {"Prefer": "odata.track-changes"}},
    ]});
    let r = client
        .send_json(Method::POST, &gw.url("/$batch"), &[], &batch)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answers = r.json();
    let tracked = &answers["responses"][0];
    assert_eq!(tracked["id"], "t", "{answers}");
    let ours = tracked["body"]["@odata.nextLink"]
        .as_str()
        .or(tracked["body"]["@odata.deltaLink"].as_str())
        .unwrap_or_else(|| panic!("the gateway's tracked answer: {tracked}"));
    assert!(ours.starts_with(&gw.url("")), "{ours}");
    let forwarded = &answers["responses"][1];
    assert_eq!(forwarded["id"], "a", "{answers}");
    untracked(
        forwarded["headers"]["preference-applied"].as_str(),
        &forwarded["body"],
        "in a batch",
    );

    let asked = server.requests_with("track-changes");
    assert!(asked.is_empty(), "odatapy was asked to track: {asked:?}");
}

//! The gateway in front of odatapy's in-memory server 5.3.0 (PyPI), which tracks changes itself:
//! the random CRUD replica test in both payload shapes, and the pass-through checks — above all
//! that the gateway never asks odatapy for delta links of its own (requests it does not track go
//! up without the track-changes preference), and that a delta link of odatapy's that reaches a
//! client anyway is left pointing at odatapy, where its token is valid (C36).
//!
//! `#[ignore]`d in a plain `cargo test` (they install PyPI packages); `.ci/run` runs them with
//! `cargo test --test interop -- --ignored`.

use crate::servers::ScriptServer;
use crate::support::gateway::Shape;

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

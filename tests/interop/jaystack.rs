//! The gateway in front of JayStack's `odata-v4-server` 0.2.13 (npm), which has no change
//! tracking: the random CRUD replica test in both payload shapes, and the pass-through checks.
//! JayStack answers `$filter=Id in (…)` with a 500, so the gateway confirms removals with
//! `or`-chains of `eq` instead; its answers carry absolute `@odata.id`, `@odata.editLink` and
//! `Location`, which the gateway rewrites onto itself.
//!
//! `#[ignore]`d in a plain `cargo test` (they install npm packages); `.ci/run` runs them with
//! `cargo test --test interop -- --ignored`.

use crate::servers::ScriptServer;
use crate::support::gateway::Shape;

#[tokio::test]
#[ignore = "installs JayStack's odata-v4-server from npm; run by .ci/run"]
async fn a_4_0_replica_follows_random_crud_made_through_jaystacks_own_api() {
    let server = ScriptServer::jaystack("jaystack-crud-v40", 1200, 200);
    crate::crud::crud_rounds("jaystack-crud-v40", &server, Shape::V40).await;
    let confirmations = server.requests_with("%20or%20");
    assert!(
        !confirmations.is_empty(),
        "removals were confirmed with or-chains after JayStack's 500 for `in`"
    );
}

#[tokio::test]
#[ignore = "installs JayStack's odata-v4-server from npm; run by .ci/run"]
async fn a_4_01_replica_follows_random_crud_made_through_jaystacks_own_api() {
    let server = ScriptServer::jaystack("jaystack-crud-v401", 1200, 200);
    crate::crud::crud_rounds("jaystack-crud-v401", &server, Shape::V401).await;
}

#[tokio::test]
#[ignore = "installs JayStack's odata-v4-server from npm; run by .ci/run"]
async fn writes_and_untracked_reads_pass_through_to_jaystack() {
    let server = ScriptServer::jaystack("jaystack-passthrough", 300, 70);
    crate::passthrough::writes_and_untracked_reads(&server).await;
}

//! Interop: the gateway with real OData software nobody here wrote.
//!
//! In front of a real SAP CAP server (Node.js, `@sap/cds` from npm), an OData V4 service without
//! change tracking — the kind of upstream the gateway exists for. Each CAP test starts its own CAP
//! instance (`start-cap-upstream.sh`: a free loopback port, a pristine database, offset paging with
//! a small page size) and stops it afterwards. The CAP tests are `#[ignore]`d in a plain `cargo
//! test` (they need node and npm); run with `--ignored`, a CAP that cannot start fails them.
//!
//! In front of JayStack's `odata-v4-server` (npm) and odatapy's server (PyPI), and with odatapy's
//! client and `@odata/client` (npm) reading through the gateway: `servers.rs`, `clients.rs`. These
//! install their pinned packages into a cache folder (`deps.rs`); they are `#[ignore]`d in a plain
//! `cargo test`, and `.ci/run` runs them with `cargo test --test interop -- --ignored`, where a
//! dependency that cannot be installed fails the test with the reason.
//!
//! CAP's ways met here: Decimal values as strings, a relative `@odata.context`, `+` not read as a
//! space in queries, `$deltatoken` accepted and echoed into nextLinks, relative nextLinks with an
//! offset `$skiptoken`, an empty extra page after a full last page, a relative `Location` on POST,
//! and a server-maintained `modifiedAt` that changes on every write (a normal property here).
//!
//! `INTEROP_SEED=N` replays the random workloads of a failed run (each test prints its seed).

#[path = "../support/mod.rs"]
mod support;

mod api;
mod cap;
mod check;
mod deps;
mod rng;
mod servers;

mod clients;
mod crud;
mod enumeration;
mod jaystack;
mod odatapy;
mod passthrough;
mod query_feeds;
mod writes;

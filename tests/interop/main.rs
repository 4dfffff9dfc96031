//! Interop: the gateway in front of a real SAP CAP server (Node.js, `@sap/cds` from npm), an OData
//! V4 service without change tracking — the kind of upstream the gateway exists for. Each test starts
//! its own CAP instance (`start-cap-upstream.sh`: a free loopback port, a pristine database, offset
//! paging with a small page size) and stops it afterwards. Without node and npm the tests print a
//! note and pass, unless `CI` is set: then CAP must start.
//!
//! CAP's ways met here: Decimal values as strings, a relative `@odata.context`, `+` not read as a
//! space in queries, `$deltatoken` accepted and echoed into nextLinks, relative nextLinks with an
//! offset `$skiptoken`, an empty extra page after a full last page, a relative `Location` on POST,
//! and a server-maintained `modifiedAt` that changes on every write (a normal property here).
//!
//! `INTEROP_SEED=N` replays the random workloads of a failed run (each test prints its seed).

#[path = "../support/mod.rs"]
mod support;

mod cap;
mod check;
mod rng;

mod crud;
mod enumeration;
mod query_feeds;
mod writes;

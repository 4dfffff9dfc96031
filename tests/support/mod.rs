//! Test support shared by integration tests.
//!
//! The origin behind the gateway is the sample OData service (`crates/sample-service`), reached
//! through the names the tests have always used: [`FakeUpstream`] is a running
//! `odata_sample_service::Server`, [`Upstream`] its data, settings and request log. What an honest
//! service does not do is layered on top of it here: `faults` makes it misbehave (failing pages,
//! delays, truncation, reordering, duplicate or missing keys, cycles, revoked credentials) and
//! `hooks` runs test code on each page it is asked for, both in the one `layer` the service
//! holds. `gateway` runs the gateway in front of it; `shop` is the `Customers` service most tests
//! use; `receiver` takes the callbacks and webhook notifications the gateway sends; `nginx` runs a real nginx in
//! front of gateways; `postgres` is the server of the replica tests.

// Each test binary that does `mod support;` uses a different subset of the
// items; what one binary leaves unused is not dead.
#![allow(dead_code)]

pub mod faults;
pub mod gateway;
pub mod hooks;
pub mod layer;
pub mod nginx;
pub mod postgres;
pub mod receiver;
pub mod shop;

// Same reason for the re-exports: not every binary names every type.
#[allow(unused_imports)]
pub use faults::{Fault, Faults};
#[allow(unused_imports)]
pub use hooks::{Hook, PageHooks, PageRequest};
#[allow(unused_imports)]
pub use odata_sample_service::{
    CountMode, EntitySetDef, LinkStyle, NavDef, PropDef, RecordedRequest, Server as FakeUpstream,
    Service as Upstream,
};

//! Test support shared by integration tests.
//!
//! `upstream` is an in-process fake OData V4 service with paging, filtering,
//! writes, knobs and fault injection, used as the origin behind the gateway.

// Each test binary that does `mod support;` uses a different subset of the
// items; what one binary leaves unused is not dead.
#![allow(dead_code)]

mod batch;
mod collection;
mod csdl;
mod entity;
mod filter;
pub mod gateway;
mod handler;
mod knobs;
mod model;
mod query;
mod render;
mod reply;
mod request;
mod server;
pub mod shop;
mod upstream;
mod value;

// Same reason for the re-exports: not every binary names every type.
#[allow(unused_imports)]
pub use knobs::{CountMode, Fault, LinkStyle};
#[allow(unused_imports)]
pub use model::{EntitySetDef, NavDef, PropDef};
#[allow(unused_imports)]
pub use request::{Hook, PageRequest, RecordedRequest};
#[allow(unused_imports)]
pub use upstream::{FakeUpstream, Upstream};

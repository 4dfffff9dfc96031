//! # odata-sample-service
//!
//! A small OData V4 service held in memory: the upstream of `odata-delta-gateway demo` and the
//! origin behind the gateway's black-box tests. It knows nothing of change tracking, as most
//! upstreams the gateway fronts do not.
//!
//! What it serves: entity sets defined at run time ([`EntitySetDef`]) with single or composite
//! keys of the common Edm types; the service document and a generated `$metadata`; collections
//! with server-driven paging (`$skiptoken` next links, offset-based) and `Prefer:
//! odata.maxpagesize`; `$filter` (comparisons, `and`/`or`/`not`, `in`, string functions),
//! `$select`, `$expand` (nested options), `$orderby`, `$top`, `$skip`, `$count`, `$search`;
//! single entities, properties and `$value`; writes (POST, PATCH, PUT, DELETE, ETags and
//! `If-Match`); JSON and multipart `$batch`. [`catalog`] adds a product catalog and the random
//! changes that keep it moving.
//!
//! Settings change how it answers (page size, link style, count placement, ETags, gzip, ...);
//! [`Fault`]s make single answers misbehave (status, delay, reset, malformed or truncated
//! bodies, duplicate or missing keys), for the tests of a client's failure handling.
//!
//! ## Layout
//! - [`service`](Service): the handle: data, settings, faults, the request log; [`Server`] runs it
//!   on a local port, [`serve`] on a listener until cancelled.
//! - `model`: entity-set definitions, the row store in key order, key predicates and ETags.
//! - `value`: Edm-typed comparison of JSON values. `filter`: the `$filter` parser and evaluator.
//! - `query`: system query options, parsed and applied (filter, order, skip, top, select,
//!   expand), and next-link queries.
//! - `render`: JSON with member order kept; `csdl`: the generated `$metadata`.
//! - `handler`: routing; `collection`, `entity`, `batch`: the answers; `reply`: headers, errors,
//!   gzip.
//! - `knobs`: the settings and faults. `request`: the recorded requests and page hooks.
//! - `server`: the accept loop and the body type (which can break on purpose).
//! - [`catalog`]: the demo's product catalog and its change generator.
#![forbid(unsafe_code)]

mod batch;
pub mod catalog;
mod collection;
mod csdl;
mod entity;
mod filter;
mod handler;
mod knobs;
mod model;
mod query;
mod render;
mod reply;
mod request;
mod server;
mod service;
mod value;

pub use knobs::{CountMode, Fault, LinkStyle};
pub use model::{EntitySetDef, NavDef, PropDef};
pub use request::{Hook, PageRequest, RecordedRequest};
pub use server::serve;
pub use service::{DEFAULT_ROOT, Server, Service};

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
//! bodies, duplicate or missing keys), for the tests of a client's failure handling. A
//! [`Layer`] runs code in front of its answers; the tests' page hooks (`tests/support/hooks.rs`)
//! are one, built outside the service.
//!
//! ## Layout
//! Each module imports only modules listed before it (no import circles): the model at the
//! bottom, the accept loop at the top.
//! - `knobs`: the settings and faults. `model`: entity-set definitions, the row store in key
//!   order, key predicates and ETags.
//! - `value`: Edm-typed comparison of JSON values. `filter`: the `$filter` parser and evaluator.
//! - `query`: system query options, parsed and applied (filter, order, skip, top, select,
//!   expand), and next-link queries built from the request's own encoded options.
//! - `render`: JSON with member order kept; `csdl`: the generated `$metadata`.
//! - `request`: a request as the service reads and records it. `reply`: the body type (which can
//!   break on purpose), headers, errors, gzip.
//! - [`service`](Service): the handle: data, settings, faults, the [`Layer`] in front of its
//!   answers, the request log.
//! - `route`: what a path addresses. `collection`, `entity`, `batch`: the answers; a batch is
//!   handed the dispatch it answers its parts with, so it does not import the handler.
//! - `handler`: records a request, dispatches it by route and method, adds the common headers.
//! - `server`: the accept loop ([`serve`]) and [`Server`], the service on a local port.
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
mod route;
mod server;
mod service;
mod value;

pub use knobs::{CountMode, LinkStyle};
pub use model::{EntitySetDef, NavDef, PropDef};
pub use reply::{Reply, ReplyBody};
pub use request::RecordedRequest;
pub use server::{Server, serve};
pub use service::{DEFAULT_ROOT, Layer, LayerFuture, Next, Service};

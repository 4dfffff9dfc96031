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
//! Settings change how it answers, each within what a correct service may do (page size, link
//! style, count placement, ETags, gzip, `OData-Version`, HTTP/1.0, filter capabilities, ...).
//! Misbehaviour is not the service's: a [`Layer`] in front of its answers sees every request
//! (and every part of a `$batch`), and may answer itself, after a wait if it likes, ask the
//! service through [`Next`] (the request as it came or altered), and rewrite or break off the
//! [`Reply`]. The gateway's tests build their failing, slow, truncating, looping upstreams and
//! their page hooks on it (`tests/support/faults.rs`, `hooks.rs`).
//!
//! ## Layout
//! Each module imports only modules listed before it (no import circles): the model at the
//! bottom, the accept loop at the top.
//! - `knobs`: the settings. `model`: entity-set definitions, the row store in key
//!   order, key predicates and ETags.
//! - `value`: Edm-typed comparison of JSON values. `filter`: the `$filter` parser and evaluator.
//! - `query`: system query options, parsed and applied (filter, order, skip, top, select,
//!   expand), and next-link queries built from the request's own encoded options.
//! - `render`: JSON with member order kept; `csdl`: the generated `$metadata`.
//! - `request`: a request as the service reads and records it. `reply`: [`Reply`] and its body
//!   type (which a layer can make break off), headers, errors, gzip.
//! - [`service`](Service): the handle: data, settings, the [`Layer`] in front of its answers and
//!   the [`Next`] it answers through, the request log.
//! - `route`: what a path addresses. `collection`, `entity`, `batch`: the answers; a batch is
//!   handed the dispatch it answers its parts with, so it does not import the handler.
//! - `handler`: records a request, hands it to the layer (if any) or dispatches it by route and
//!   method, adds the common headers.
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
pub use reply::{Reply, ReplyBody, error_reply, json_reply};
pub use request::RecordedRequest;
pub use server::{Server, serve};
pub use service::{DEFAULT_ROOT, Layer, LayerFuture, Next, Service};

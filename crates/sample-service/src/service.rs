//! The service's public face: starting it, seeding data, turning knobs, the [`Layer`] in front
//! of its answers, and inspecting the requests it received.

use super::knobs::{CountMode, Knobs, LinkStyle};
use super::model::{EntitySetDef, SetStore, etag, find_set, find_set_mut};
use super::reply::Reply;
use super::request::RecordedRequest;
use serde_json::Value;
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The service root path [`Server::start`](crate::Server::start) serves.
pub const DEFAULT_ROOT: &str = "/odata/v4/shop";

/// Everything mutable; guarded by one mutex that is never held across an await.
#[derive(Default)]
pub(crate) struct State {
    /// Entity sets in definition order (the service document's order).
    pub sets: Vec<SetStore>,
    /// Current settings.
    pub knobs: Knobs,
    /// `$metadata` override.
    pub metadata: Option<String>,
    /// Answer `$metadata` with 404, like a service that does not publish it.
    pub metadata_missing: bool,
    /// Send this `ETag` with `$metadata`.
    pub metadata_etag: Option<String>,
    /// The layer, if set.
    pub layer: Option<Arc<dyn Layer>>,
    /// Every request received.
    pub requests: Vec<RecordedRequest>,
}

/// Immutable addressing plus the state.
pub(crate) struct Shared {
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    /// Service root path without trailing slash; empty for `/`.
    pub root: String,
    /// Data, knobs and records.
    pub state: Mutex<State>,
}

/// Cloneable handle to the service's data and knobs. Obtained by dereferencing
/// a [`Server`](crate::Server), via [`Server::handle`](crate::Server::handle), or from [`Service::new`] for a service
/// served with [`crate::serve`]; it does not keep a server alive.
#[derive(Clone)]
pub struct Service {
    /// Shared with the server task.
    pub(crate) shared: Arc<Shared>,
}

impl Service {
    /// A service reachable at `origin` (`http://host:port`, what its absolute links start with)
    /// under the service root path `root` (`/` allowed), with no entity sets yet.
    pub fn new(origin: &str, root: &str) -> Service {
        let trimmed = root.trim_matches('/');
        let root = if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        };
        Service {
            shared: Arc::new(Shared {
                origin: origin.trim_end_matches('/').to_string(),
                root,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Locks the state; a layer that panicked must not wedge later tests, so
    /// a poisoned lock is taken over as is.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `http://127.0.0.1:PORT/odata/v4/shop` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("{}{}", self.shared.origin, self.shared.root)
    }

    /// `base_url() + "/" + rel`, e.g. `url("Customers?$top=1")`.
    pub fn url(&self, rel: &str) -> String {
        format!("{}/{}", self.base_url(), rel.trim_start_matches('/'))
    }

    /// The service root path, e.g. `/odata/v4/shop` (empty for `/`).
    pub fn root(&self) -> String {
        self.shared.root.clone()
    }

    /// Defines (or redefines, dropping its rows) an entity set.
    pub fn define_set(&self, def: EntitySetDef) {
        let mut st = self.lock();
        st.sets.retain(|s| s.def.name != def.name);
        st.sets.push(SetStore::new(def));
    }

    /// Inserts a row. Panics if the set is unknown, the row is not an
    /// object, lacks a key or duplicates one: these are test bugs.
    pub fn insert(&self, set: &str, row: Value) {
        let mut st = self.lock();
        let store = find_set_mut(&mut st.sets, set)
            .unwrap_or_else(|| panic!("insert: entity set {set} is not defined"));
        if let Err(e) = store.insert(row) {
            panic!("insert into {set}: {e}");
        }
    }

    /// Inserts several rows, see [`Service::insert`].
    pub fn insert_many(&self, set: &str, rows: impl IntoIterator<Item = Value>) {
        for row in rows {
            self.insert(set, row);
        }
    }

    /// Merges `patch` into the row with `key` (a scalar for single keys or
    /// an object naming every key property). Returns whether it existed.
    pub fn update(&self, set: &str, key: Value, patch: Value) -> bool {
        let mut st = self.lock();
        let Some(store) = find_set_mut(&mut st.sets, set) else {
            return false;
        };
        let (Some(index), Value::Object(patch)) = (store.find_json(&key), patch) else {
            return false;
        };
        store.merge(index, &patch);
        true
    }

    /// Deletes the row with `key`; returns whether it existed.
    pub fn delete(&self, set: &str, key: Value) -> bool {
        let mut st = self.lock();
        let Some(store) = find_set_mut(&mut st.sets, set) else {
            return false;
        };
        match store.find_json(&key) {
            Some(index) => {
                store.rows.remove(index);
                true
            }
            None => false,
        }
    }

    /// The definition of a set, if it is defined.
    pub fn definition(&self, set: &str) -> Option<EntitySetDef> {
        find_set(&self.lock().sets, set).map(|s| s.def.clone())
    }

    /// All rows of a set in key order (empty if the set is unknown).
    pub fn rows(&self, set: &str) -> Vec<Value> {
        let st = self.lock();
        find_set(&st.sets, set).map_or_else(Vec::new, |s| {
            s.rows.iter().cloned().map(Value::Object).collect()
        })
    }

    /// The row with `key`, if any.
    pub fn row(&self, set: &str, key: Value) -> Option<Value> {
        let st = self.lock();
        let store = find_set(&st.sets, set)?;
        let index = store.find_json(&key)?;
        store.rows.get(index).cloned().map(Value::Object)
    }

    /// The ETag the service currently reports for the row with `key`.
    pub fn etag(&self, set: &str, key: Value) -> Option<String> {
        let st = self.lock();
        let store = find_set(&st.sets, set)?;
        store.rows.get(store.find_json(&key)?).map(etag)
    }

    /// Removes all rows of a set.
    pub fn clear(&self, set: &str) {
        if let Some(store) = find_set_mut(&mut self.lock().sets, set) {
            store.rows.clear();
        }
    }

    /// Serves `xml` as `$metadata` instead of the generated document.
    pub fn set_metadata(&self, xml: String) {
        self.lock().metadata = Some(xml);
    }

    /// Goes back to the generated `$metadata`.
    pub fn reset_metadata(&self) {
        self.lock().metadata = None;
    }

    /// Answer `$metadata` with 404 (`true`) or serve it again (`false`).
    pub fn set_metadata_missing(&self, missing: bool) {
        self.lock().metadata_missing = missing;
    }

    /// Send `etag` (a quoted entity tag, `None` for none) with every `$metadata` answer.
    pub fn set_metadata_etag(&self, etag: Option<&str>) {
        self.lock().metadata_etag = etag.map(str::to_owned);
    }

    /// Recorded `$metadata` requests.
    pub fn metadata_requests(&self) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path_and_query.ends_with("/$metadata"))
            .count()
    }

    /// Namespace of the generated schema (default `ShopService`).
    pub fn set_namespace(&self, namespace: &str) {
        self.lock().knobs.namespace = namespace.to_string();
    }

    /// Server-driven page size; `None` (or 0) disables paging. Default 50.
    pub fn set_page_size(&self, size: Option<usize>) {
        self.lock().knobs.page_size = size;
    }

    /// Style of nextLink and context URLs. Default [`LinkStyle::Relative`].
    pub fn set_link_style(&self, style: LinkStyle) {
        self.lock().knobs.link_style = style;
    }

    /// Pretty-print JSON responses.
    pub fn set_pretty(&self, on: bool) {
        self.lock().knobs.pretty = on;
    }

    /// When `@odata.count` is emitted. Default [`CountMode::EveryPage`].
    pub fn set_count_mode(&self, mode: CountMode) {
        self.lock().knobs.count_mode = mode;
    }

    /// `OData-Version` response header value; `None` omits the header.
    pub fn set_odata_version(&self, version: Option<&str>) {
        self.lock().knobs.odata_version = version.map(str::to_string);
    }

    /// Emit `@odata.etag` (and `ETag` on single entities); enforce `If-Match`.
    pub fn set_etags(&self, on: bool) {
        self.lock().knobs.etags = on;
    }

    /// Answer 400 to any `$filter` that uses `in`, as a service that implements OData 4.0's
    /// `$filter`, which has no `in` (4.01 added it), does.
    pub fn set_reject_in(&self, on: bool) {
        self.lock().knobs.reject_in = on;
    }

    /// Answer 400 to any `$filter` that uses `or`, as a service whose filter restrictions allow
    /// only conjunctions does.
    pub fn set_reject_or(&self, on: bool) {
        self.lock().knobs.reject_or = on;
    }

    /// gzip every successful answer (`Content-Encoding: gzip`) to a request
    /// whose `Accept-Encoding` takes it, as most servers do. Off by default.
    pub fn set_gzip(&self, on: bool) {
        self.lock().knobs.gzip = on;
    }

    /// Recorded requests that asked for gzip.
    pub fn gzip_requests(&self) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.accepts_gzip())
            .count()
    }

    /// Answer every request in HTTP/1.0, as old servers and some proxies in front of them do.
    pub fn set_http10(&self, on: bool) {
        self.lock().knobs.http10 = on;
    }

    /// Puts `layer` in front of the service's answers, replacing any layer set before; see
    /// [`Layer`] for what it sees.
    pub fn set_layer(&self, layer: Arc<dyn Layer>) {
        self.lock().layer = Some(layer);
    }

    /// The layer in front of the service if it is an `L`; otherwise puts `make()` there
    /// (replacing any other layer) and returns it. One lock for both, so that two callers
    /// racing to install the same kind of layer end up sharing one.
    pub fn layer_or_set<L: Layer>(&self, make: impl FnOnce() -> L) -> Arc<L> {
        let mut st = self.lock();
        if let Some(current) = st.layer.clone() {
            let current: Arc<dyn Any + Send + Sync> = current;
            if let Ok(layer) = current.downcast::<L>() {
                return layer;
            }
        }
        let layer = Arc::new(make());
        st.layer = Some(layer.clone());
        layer
    }

    /// Removes the layer.
    pub fn clear_layer(&self) {
        self.lock().layer = None;
    }

    /// The layer, if one is set.
    pub(crate) fn layer(&self) -> Option<Arc<dyn Layer>> {
        self.lock().layer.clone()
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Forgets recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Recorded GET collection requests for `set`.
    pub fn collection_requests(&self, set: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.collection_set.as_deref() == Some(set))
            .count()
    }

    /// A URL for `rel` (relative to the service root) in the given style.
    pub(crate) fn link(&self, style: LinkStyle, rel: &str) -> String {
        match style {
            LinkStyle::Relative => rel.to_string(),
            LinkStyle::RootRelative => format!("{}/{rel}", self.shared.root),
            LinkStyle::Absolute => format!("{}/{rel}", self.base_url()),
        }
    }
}

/// The future a [`Layer`] answers with.
pub type LayerFuture<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

/// How the service answers a request by itself, without its layer; [`Next`] carries it so that
/// this module need not import the dispatcher (which imports it).
pub(crate) type Answer = for<'r> fn(&'r Service, &'r RecordedRequest) -> LayerFuture<'r>;

/// Code run in front of the service's answers, for what a plain OData service does not do: the
/// tests build their misbehaving upstreams on it (`tests/support`), so the service itself stays
/// an honest one.
///
/// The layer sees every request the service receives, and every part of a `$batch` as a request
/// of its own, after it was recorded (so [`Service::requests`] shows what the client sent) and
/// before the service's common headers (`OData-Version`, gzip) are added. It runs without the
/// service's lock held, so it may call any method of the service, for example to change data in
/// the middle of an enumeration. A panic inside it only kills that connection (the client sees a
/// transport error).
pub trait Layer: Any + Send + Sync {
    /// Answers `request`: by passing it, or an altered copy, to [`Next::run`] and returning the
    /// service's answer, as it is or rewritten; or by answering itself, after any wait. An
    /// implementation returns `Box::pin(async move { ... })`.
    fn answer<'a>(&'a self, request: &'a RecordedRequest, next: Next<'a>) -> LayerFuture<'a>;
}

/// The service behind a [`Layer`], for one request.
pub struct Next<'a> {
    /// The service.
    pub(crate) service: &'a Service,
    /// Its own answer.
    pub(crate) answer: Answer,
}

impl<'a> Next<'a> {
    /// The service, to read or change its data and settings.
    pub fn service(&self) -> &'a Service {
        self.service
    }

    /// The service's own answer to `request`, which may differ from the request the layer was
    /// given (another query, other headers); it is not recorded again.
    pub async fn run(self, request: &RecordedRequest) -> Reply {
        (self.answer)(self.service, request).await
    }
}

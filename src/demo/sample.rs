//! A small in-process OData V4 service for `odata-delta-gateway demo`.
//!
//! It plays the part of an upstream without change tracking, shaped like a
//! SAP CAP service: one entity set `Products` under [`SERVICE_PATH`],
//! server-driven paging with relative `$skiptoken` next links, decimals as
//! JSON strings, and data that keeps changing in the background so the
//! gateway's delta links have something to report.

mod data;
mod filter;
mod query;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value as Json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use data::{Catalog, Product, Prop, json_key, now_millis};
use query::QueryOptions;

/// Path of the service root; every resource lives below it.
pub const SERVICE_PATH: &str = "/odata/v4/catalog";

/// The only entity set.
const ENTITY_SET: &str = "Products";
/// Qualified name of the entity type in `$metadata`.
const ENTITY_TYPE: &str = "CatalogService.Product";

const JSON_CONTENT_TYPE: &str = "application/json;odata.metadata=minimal";
/// Request bodies are single small entities; anything bigger is a mistake.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long open connections get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Options of the sample service.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Number of products generated at start (IDs `1..=products`).
    pub products: usize,
    /// Server-driven page size; a client's `Prefer: odata.maxpagesize` can
    /// only lower it. Values below 1 count as 1.
    pub page_size: usize,
    /// Pause between rounds of random inserts, updates and deletes; zero
    /// keeps the data static.
    pub change_interval: Duration,
    /// Seed of the generated data and of the random changes.
    pub seed: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            products: 300,
            page_size: 100,
            change_interval: Duration::from_secs(3),
            seed: 2024,
        }
    }
}

/// State shared by all connections and the change task.
struct Shared {
    catalog: Mutex<Catalog>,
    page_size: usize,
}

impl Shared {
    fn new(options: &SampleOptions) -> Shared {
        Shared {
            catalog: Mutex::new(Catalog::generate(options.products, options.seed)),
            page_size: options.page_size.max(1),
        }
    }

    /// Locks the catalog. Every critical section leaves the catalog
    /// consistent, so a panic elsewhere must not take the service down with
    /// a poisoned lock.
    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serve the sample service on `listener` until `shutdown` is cancelled.
/// Service root path: [`SERVICE_PATH`].
///
/// Data changes every `options.change_interval` while serving. On shutdown
/// the listener is closed and open connections get a few seconds to finish.
pub async fn serve(
    listener: TcpListener,
    options: SampleOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let shared = Arc::new(Shared::new(&options));
    let changes = tokio::spawn(change_data(
        Arc::clone(&shared),
        options.change_interval,
        shutdown.clone(),
    ));
    tracing::info!(
        "sample upstream: {} products at http://{address}{SERVICE_PATH}/",
        options.products
    );

    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => serve_connection(&builder, &graceful, stream, &shared),
                Err(err) => {
                    tracing::warn!("sample upstream: accept failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }

    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("sample upstream: connections still open after shutdown grace period");
    }
    if let Err(err) = changes.await {
        tracing::warn!("sample upstream: change task failed: {err}");
    }
    Ok(())
}

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    shared: &Arc<Shared>,
) {
    let shared = Arc::clone(shared);
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!("sample upstream: connection ended with error: {err}");
        }
    });
}

/// Applies a round of random changes every `interval` until shutdown.
async fn change_data(shared: Arc<Shared>, interval: Duration, shutdown: CancellationToken) {
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let summary = shared.catalog().random_changes(now_millis());
        tracing::info!("sample upstream: {summary}");
    }
}

/// A resource addressed below [`SERVICE_PATH`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    ServiceDocument,
    Metadata,
    Collection,
    Count,
    Entity(i32),
}

impl Route {
    fn parse(path: &str) -> Result<Route, ODataError> {
        let not_found = || ODataError::not_found(format!("no resource at {path}"));
        let rest = path.strip_prefix(SERVICE_PATH).ok_or_else(not_found)?;
        if rest.is_empty() || rest == "/" {
            return Ok(Route::ServiceDocument);
        }
        let rest = rest.strip_prefix('/').ok_or_else(not_found)?;
        // Clients may percent-encode the parentheses or quotes of a key.
        let rest = percent_decode_str(rest)
            .decode_utf8()
            .map_err(|_| ODataError::bad_request("the path is not valid UTF-8"))?;
        match rest.as_ref() {
            "$metadata" => Ok(Route::Metadata),
            "Products" => Ok(Route::Collection),
            "Products/$count" => Ok(Route::Count),
            other => match other
                .strip_prefix("Products(")
                .and_then(|key| key.strip_suffix(')'))
            {
                Some(key) => parse_key(key).map(Route::Entity),
                None => Err(not_found()),
            },
        }
    }

    /// Methods the resource supports, for `405` responses.
    fn allowed_methods(self) -> &'static str {
        match self {
            Route::ServiceDocument | Route::Metadata | Route::Count => "GET",
            Route::Collection => "GET, POST",
            Route::Entity(_) => "GET, PATCH, DELETE",
        }
    }
}

/// Parses `5` or `ID=5`.
fn parse_key(key: &str) -> Result<i32, ODataError> {
    let key = key.trim();
    let value = key.strip_prefix("ID=").unwrap_or(key).trim();
    value
        .parse()
        .map_err(|_| ODataError::bad_request(format!("invalid key '{key}': expected an Edm.Int32")))
}

/// An error answered with an OData JSON error body.
#[derive(Debug)]
struct ODataError {
    status: StatusCode,
    message: String,
}

impl ODataError {
    fn new(status: StatusCode, message: impl Into<String>) -> ODataError {
        ODataError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ODataError {
        ODataError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ODataError {
        ODataError::new(StatusCode::NOT_FOUND, message)
    }

    fn product_not_found(id: i32) -> ODataError {
        ODataError::not_found(format!("product {id} does not exist"))
    }

    /// The error code: the status' reason phrase in PascalCase, e.g.
    /// `BadRequest`, `NotFound`.
    fn code(&self) -> String {
        self.status
            .canonical_reason()
            .unwrap_or("Error")
            .split(|c: char| !c.is_ascii_alphanumeric())
            .collect()
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.message }
        });
        json_response(self.status, body.to_string())
    }
}

type HandlerResult = Result<Response<Full<Bytes>>, ODataError>;

/// Answers one request; every response carries `OData-Version: 4.0`.
async fn handle<B>(shared: &Shared, request: Request<B>) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = request.method().clone();
    let uri = request.uri().clone();
    let mut response = route(shared, request)
        .await
        .unwrap_or_else(ODataError::into_response);
    response
        .headers_mut()
        .insert("odata-version", HeaderValue::from_static("4.0"));
    tracing::debug!("sample upstream: {method} {uri} -> {}", response.status());
    response
}

async fn route<B>(shared: &Shared, request: Request<B>) -> HandlerResult
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let route = Route::parse(request.uri().path())?;
    let query = request.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match (request.method(), route) {
        (&Method::GET, Route::ServiceDocument) => Ok(service_document()),
        (&Method::GET, Route::Metadata) => Ok(metadata()),
        (&Method::GET, Route::Collection) => list_products(shared, query, request.headers()),
        (&Method::GET, Route::Count) => count_products(shared, query),
        (&Method::GET, Route::Entity(id)) => get_product(shared, id, query),
        (&Method::POST, Route::Collection) => {
            create_product(shared, read_json_object(request.into_body()).await?)
        }
        (&Method::PATCH, Route::Entity(id)) => {
            update_product(shared, id, read_json_object(request.into_body()).await?)
        }
        (&Method::DELETE, Route::Entity(id)) => delete_product(shared, id),
        (method, route) => Err(method_not_allowed(method, route)),
    }
}

fn method_not_allowed(method: &Method, route: Route) -> ODataError {
    ODataError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not supported here; allowed: {}",
            route.allowed_methods()
        ),
    )
}

fn service_document() -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "@odata.context": "$metadata",
        "value": [{ "name": ENTITY_SET, "url": ENTITY_SET, "kind": "EntitySet" }]
    });
    json_response(StatusCode::OK, body.to_string())
}

fn metadata() -> Response<Full<Bytes>> {
    let mut properties = String::new();
    for prop in Prop::ALL {
        let nullable = if prop.nullable() {
            ""
        } else {
            r#" Nullable="false""#
        };
        let facets = match prop {
            Prop::Price => r#" Precision="9" Scale="2""#,
            Prop::ModifiedAt => r#" Precision="3""#,
            _ => "",
        };
        properties.push_str(&format!(
            "        <Property Name=\"{}\" Type=\"{}\"{nullable}{facets}/>\n",
            prop.name(),
            prop.edm_type().qualified_name(),
        ));
    }
    let (namespace, type_name) = ENTITY_TYPE.rsplit_once('.').unwrap_or(("", ENTITY_TYPE));
    let xml = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">
  <edmx:DataServices>
    <Schema Namespace="{namespace}" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityContainer Name="EntityContainer">
        <EntitySet Name="{ENTITY_SET}" EntityType="{ENTITY_TYPE}"/>
      </EntityContainer>
      <EntityType Name="{type_name}">
        <Key>
          <PropertyRef Name="ID"/>
        </Key>
{properties}      </EntityType>
    </Schema>
  </edmx:DataServices>
</edmx:Edmx>
"#
    );
    response(StatusCode::OK, "application/xml", xml)
}

fn list_products(shared: &Shared, query: Option<&str>, headers: &HeaderMap) -> HandlerResult {
    let options = QueryOptions::parse(query).map_err(ODataError::bad_request)?;
    let max_page_size = preferred_page_size(headers);
    let page_size = max_page_size.map_or(shared.page_size, |max| max.clamp(1, shared.page_size));

    // Copy the matching rows so the lock is held only for the scan.
    let mut rows: Vec<Product> = {
        let catalog = shared.catalog();
        catalog
            .products
            .values()
            .filter(|product| options.matches(product))
            .cloned()
            .collect()
    };
    options.sort(&mut rows);
    let page = options.page(rows.len(), page_size);

    let mut body = String::from(r#"{"@odata.context":"$metadata#Products""#);
    if options.count {
        body.push_str(&format!(r#","@odata.count":{}"#, rows.len()));
    }
    body.push_str(r#","value":["#);
    let entities: Vec<String> = rows
        .get(page.start..page.end)
        .unwrap_or_default()
        .iter()
        .map(|product| entity_json(product, options.selected(), None))
        .collect();
    body.push_str(&entities.join(","));
    body.push(']');
    if let Some(skiptoken) = page.next_skiptoken {
        let link = options.next_link(ENTITY_SET, skiptoken);
        body.push_str(&format!(r#","@odata.nextLink":{}"#, Json::String(link)));
    }
    body.push('}');

    let mut response = json_response(StatusCode::OK, body);
    if let Some(applied) = max_page_size
        .and_then(|max| HeaderValue::from_str(&format!("odata.maxpagesize={}", max.max(1))).ok())
    {
        response.headers_mut().insert("preference-applied", applied);
    }
    Ok(response)
}

/// The `odata.maxpagesize` (or OData 4.01 `maxpagesize`) preference.
fn preferred_page_size(headers: &HeaderMap) -> Option<usize> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|preference| preference.split_once('='))
        .find(|(name, _)| {
            let name = name.trim();
            name.eq_ignore_ascii_case("odata.maxpagesize")
                || name.eq_ignore_ascii_case("maxpagesize")
        })
        .and_then(|(_, value)| value.trim().trim_matches('"').parse().ok())
}

fn count_products(shared: &Shared, query: Option<&str>) -> HandlerResult {
    let options = QueryOptions::parse(query).map_err(ODataError::bad_request)?;
    let count = shared
        .catalog()
        .products
        .values()
        .filter(|product| options.matches(product))
        .count();
    Ok(response(StatusCode::OK, "text/plain", count.to_string()))
}

fn get_product(shared: &Shared, id: i32, query: Option<&str>) -> HandlerResult {
    let options = QueryOptions::parse(query).map_err(ODataError::bad_request)?;
    let product = shared.catalog().products.get(&id).cloned();
    let product = product.ok_or_else(|| ODataError::product_not_found(id))?;
    Ok(entity_response(
        StatusCode::OK,
        &product,
        options.selected(),
    ))
}

fn create_product(shared: &Shared, body: Map<String, Json>) -> HandlerResult {
    let requested_id = json_key(&body).map_err(ODataError::bad_request)?;
    let mut product = Product::empty(0, 0);
    product
        .apply_json(&body, now_millis())
        .map_err(ODataError::bad_request)?;

    {
        let mut catalog = shared.catalog();
        product.id = match requested_id {
            Some(id) if catalog.products.contains_key(&id) => {
                return Err(ODataError::new(
                    StatusCode::CONFLICT,
                    format!("product {id} already exists"),
                ));
            }
            Some(id) => id,
            None => catalog
                .next_id()
                .ok_or_else(|| ODataError::new(StatusCode::CONFLICT, "no product IDs left"))?,
        };
        catalog.products.insert(product.id, product.clone());
    }

    let mut response = entity_response(StatusCode::CREATED, &product, &Prop::ALL);
    let location = format!("{ENTITY_SET}({})", product.id);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn update_product(shared: &Shared, id: i32, body: Map<String, Json>) -> HandlerResult {
    if json_key(&body)
        .map_err(ODataError::bad_request)?
        .is_some_and(|key| key != id)
    {
        return Err(ODataError::bad_request(
            "the key property ID cannot be changed",
        ));
    }
    let mut catalog = shared.catalog();
    let product = catalog
        .products
        .get_mut(&id)
        .ok_or_else(|| ODataError::product_not_found(id))?;
    // Patch a copy so an invalid member leaves the stored row untouched.
    let mut updated = product.clone();
    updated
        .apply_json(&body, now_millis())
        .map_err(ODataError::bad_request)?;
    *product = updated;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

fn delete_product(shared: &Shared, id: i32) -> HandlerResult {
    match shared.catalog().products.remove(&id) {
        Some(_) => Ok(empty_response(StatusCode::NO_CONTENT)),
        None => Err(ODataError::product_not_found(id)),
    }
}

/// Reads a request body that must be a JSON object.
async fn read_json_object<B>(body: B) -> Result<Map<String, Json>, ODataError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ODataError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
            ));
        }
        Err(err) => {
            return Err(ODataError::bad_request(format!(
                "could not read the body: {err}"
            )));
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(Json::Object(object)) => Ok(object),
        Ok(_) => Err(ODataError::bad_request("the body must be a JSON object")),
        Err(err) => Err(ODataError::bad_request(format!("invalid JSON: {err}"))),
    }
}

/// Serializes `product` with the given properties in declaration order,
/// optionally preceded by an `@odata.context`.
///
/// Written by hand rather than through a `serde_json::Map` so members come
/// out in schema order, which reads better in curl output.
fn entity_json(product: &Product, props: &[Prop], context: Option<&str>) -> String {
    let mut members = Vec::with_capacity(props.len() + 1);
    if let Some(context) = context {
        members.push(format!(r#""@odata.context":{}"#, Json::from(context)));
    }
    for prop in Prop::ALL.iter().filter(|prop| props.contains(prop)) {
        members.push(format!(
            "{}:{}",
            Json::from(prop.name()),
            product.json(*prop)
        ));
    }
    format!("{{{}}}", members.join(","))
}

fn entity_response(status: StatusCode, product: &Product, props: &[Prop]) -> Response<Full<Bytes>> {
    let context = format!("$metadata#{ENTITY_SET}/$entity");
    json_response(status, entity_json(product, props, Some(&context)))
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, JSON_CONTENT_TYPE, body)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;

    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;

    fn shared(products: usize) -> Shared {
        Shared::new(&SampleOptions {
            products,
            page_size: 10,
            change_interval: Duration::ZERO,
            seed: 1,
        })
    }

    /// Sends one in-memory request through the handler.
    async fn call(
        shared: &Shared,
        method: Method,
        uri: &str,
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("valid request");
        let response = handle(shared, request).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("in-memory body").to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8 body");
        (parts.status, parts.headers, text)
    }

    fn json(text: &str) -> Json {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn path(rest: &str) -> String {
        format!("{SERVICE_PATH}{rest}")
    }

    #[test]
    fn routes() {
        assert_eq!(Route::parse(&path("")).ok(), Some(Route::ServiceDocument));
        assert_eq!(Route::parse(&path("/")).ok(), Some(Route::ServiceDocument));
        assert_eq!(
            Route::parse(&path("/$metadata")).ok(),
            Some(Route::Metadata)
        );
        assert_eq!(
            Route::parse(&path("/Products")).ok(),
            Some(Route::Collection)
        );
        assert_eq!(
            Route::parse(&path("/Products/$count")).ok(),
            Some(Route::Count)
        );
        assert_eq!(
            Route::parse(&path("/Products(5)")).ok(),
            Some(Route::Entity(5))
        );
        assert_eq!(
            Route::parse(&path("/Products(ID=7)")).ok(),
            Some(Route::Entity(7))
        );
        assert_eq!(
            Route::parse(&path("/Products%28-3%29")).ok(),
            Some(Route::Entity(-3))
        );
        let not_found = ["/other", "/Products(5)/name", "/Orders", "x"].map(path);
        for bad in not_found
            .iter()
            .map(String::as_str)
            .chain(["/", "/odata/v4/catalogue"])
        {
            let status = Route::parse(bad).err().map(|err| err.status);
            assert_eq!(status, Some(StatusCode::NOT_FOUND), "{bad}");
        }
        let status = Route::parse(&path("/Products(abc)"))
            .err()
            .map(|err| err.status);
        assert_eq!(status, Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn error_codes_are_pascal_case() {
        assert_eq!(ODataError::bad_request("x").code(), "BadRequest");
        assert_eq!(ODataError::not_found("x").code(), "NotFound");
        assert_eq!(
            method_not_allowed(&Method::PUT, Route::Count).code(),
            "MethodNotAllowed"
        );
    }

    #[test]
    fn page_size_preference() {
        let mut headers = HeaderMap::new();
        assert_eq!(preferred_page_size(&headers), None);
        headers.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, odata.maxpagesize=25"),
        );
        assert_eq!(preferred_page_size(&headers), Some(25));
        headers.insert("prefer", HeaderValue::from_static("odata.track-changes"));
        assert_eq!(preferred_page_size(&headers), None);
    }

    #[tokio::test]
    async fn documents() {
        let shared = shared(3);
        let (status, headers, body) = call(&shared, Method::GET, &path("/"), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers.get("odata-version").and_then(|v| v.to_str().ok()),
            Some("4.0")
        );
        assert_eq!(json(&body)["value"][0]["url"], "Products");

        let (status, headers, xml) = call(&shared, Method::GET, &path("/$metadata"), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/xml")
        );
        for expected in [
            r#"<Schema Namespace="CatalogService""#,
            r#"<EntityType Name="Product">"#,
            r#"<PropertyRef Name="ID"/>"#,
            r#"<Property Name="price" Type="Edm.Decimal" Precision="9" Scale="2"/>"#,
            r#"<Property Name="modifiedAt" Type="Edm.DateTimeOffset" Nullable="false" Precision="3"/>"#,
            r#"<EntityContainer Name="EntityContainer">"#,
            r#"<EntitySet Name="Products" EntityType="CatalogService.Product"/>"#,
        ] {
            assert!(xml.contains(expected), "{expected} missing from\n{xml}");
        }
    }

    #[tokio::test]
    async fn collection_paging_select_and_count() {
        let shared = shared(25);
        let uri = path("/Products?$select=ID,price&$count=true&$orderby=ID%20desc&$deltatoken=old");
        let (status, headers, body) = call(&shared, Method::GET, &uri, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some(JSON_CONTENT_TYPE)
        );
        let page = json(&body);
        assert_eq!(page["@odata.context"], "$metadata#Products");
        assert_eq!(page["@odata.count"], 25);
        assert_eq!(page["value"].as_array().map(Vec::len), Some(10));
        assert_eq!(page["value"][0]["ID"], 25);
        let first = page["value"][0].as_object().cloned().unwrap_or_default();
        assert_eq!(first.keys().collect::<Vec<_>>(), ["ID", "price"]);
        assert!(first["price"].is_string());
        assert_eq!(
            page["@odata.nextLink"],
            "Products?$select=ID,price&$count=true&$orderby=ID%20desc&$skiptoken=10"
        );

        let (status, _, body) = call(
            &shared,
            Method::GET,
            &path("/Products?$filter=ID%20le%20"),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json(&body)["error"]["code"], "BadRequest");

        let (_, _, count) = call(
            &shared,
            Method::GET,
            &path("/Products/$count?$filter=ID%20gt%2020"),
            "",
        )
        .await;
        assert_eq!(count, "5");
    }

    #[tokio::test]
    async fn single_entity_reads() {
        let shared = shared(5);
        let (status, _, body) = call(&shared, Method::GET, &path("/Products(5)"), "").await;
        assert_eq!(status, StatusCode::OK);
        let entity = json(&body);
        assert_eq!(entity["@odata.context"], "$metadata#Products/$entity");
        assert_eq!(entity["ID"], 5);
        assert!(
            entity["modifiedAt"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );

        let (status, _, body) = call(&shared, Method::GET, &path("/Products(6)"), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json(&body)["error"]["code"], "NotFound");
    }

    #[tokio::test]
    async fn writes() {
        let shared = shared(5);
        let products = path("/Products");
        let (status, headers, body) = call(
            &shared,
            Method::POST,
            &products,
            r#"{"name":"Kite","price":"9.5","stock":4}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            headers.get("location").and_then(|v| v.to_str().ok()),
            Some("Products(6)")
        );
        let created = json(&body);
        assert_eq!(created["price"], "9.50");
        assert_eq!(created["category"], Json::Null);

        let (status, _, _) = call(
            &shared,
            Method::POST,
            &products,
            r#"{"ID":100,"name":"Tent"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _, _) = call(&shared, Method::POST, &products, r#"{"ID":100}"#).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, _, _) = call(&shared, Method::POST, &products, r#"{"stock":"x"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = call(&shared, Method::POST, &products, "[1]").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let before = shared.catalog().products.get(&6).map(|p| p.modified_at);
        let (status, _, _) = call(
            &shared,
            Method::PATCH,
            &path("/Products(6)"),
            r#"{"stock":9}"#,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let after = shared.catalog().products.get(&6).cloned();
        assert_eq!(after.as_ref().and_then(|p| p.stock), Some(9));
        assert!(after.map(|p| p.modified_at) >= before);
        let (status, _, _) =
            call(&shared, Method::PATCH, &path("/Products(6)"), r#"{"ID":7}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = call(
            &shared,
            Method::PATCH,
            &path("/Products(6)"),
            r#"{"stock":1,"price":"x"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            shared.catalog().products.get(&6).and_then(|p| p.stock),
            Some(9)
        );
        let (status, _, _) = call(&shared, Method::PATCH, &path("/Products(99)"), "{}").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, _, _) = call(&shared, Method::DELETE, &path("/Products(6)"), "").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _, _) = call(&shared, Method::DELETE, &path("/Products(6)"), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, headers, _) = call(&shared, Method::PUT, &path("/Products(1)"), "{}").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            headers.get("odata-version").and_then(|v| v.to_str().ok()),
            Some("4.0")
        );
    }

    /// GETs `uri` over real HTTP, with an optional `Prefer` header.
    async fn get(
        client: &Client<HttpConnector, Full<Bytes>>,
        uri: &str,
        prefer: Option<&str>,
    ) -> (StatusCode, String) {
        let mut request = Request::get(uri);
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let response = client.request(request).await.expect("request succeeds");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
        )
    }

    #[tokio::test]
    async fn serves_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address: SocketAddr = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let options = SampleOptions {
            products: 230,
            page_size: 100,
            change_interval: Duration::from_secs(3600),
            seed: 9,
        };
        let server = tokio::spawn(serve(listener, options, shutdown.clone()));
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let root = format!("http://{address}{SERVICE_PATH}/");

        // Page through everything, following the relative next links.
        let mut next = Some(format!("{root}Products?$count=true"));
        let (mut ids, mut pages) = (Vec::new(), 0);
        while let Some(uri) = next.take() {
            let (status, body) = get(&client, &uri, Some("odata.maxpagesize=60")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let page = json(&body);
            assert_eq!(page["@odata.count"], 230);
            let values = page["value"].as_array().cloned().unwrap_or_default();
            ids.extend(values.iter().filter_map(|entity| entity["ID"].as_i64()));
            pages += 1;
            next = page["@odata.nextLink"]
                .as_str()
                .map(|link| format!("{root}{link}"));
        }
        assert_eq!(pages, 4);
        assert_eq!(ids, (1..=230).collect::<Vec<i64>>());

        let (status, count) = get(&client, &format!("{root}Products/$count"), None).await;
        assert_eq!((status, count.as_str()), (StatusCode::OK, "230"));

        let filtered = format!("{root}Products?$filter=ID%20in%20(3,1,2,999)&$select=ID");
        let (status, body) = get(&client, &filtered, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json(&body)["value"],
            serde_json::json!([{"ID": 1}, {"ID": 2}, {"ID": 3}])
        );

        let (status, body) = get(
            &client,
            &format!("{root}Products?$filter=price%20like%201"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json(&body)["error"]["code"], "BadRequest");

        shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), server).await;
        assert!(
            matches!(result, Ok(Ok(Ok(())))),
            "server did not stop cleanly"
        );
    }
}

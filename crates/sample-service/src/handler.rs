//! Routing: records each request, dispatches it by path and method, and
//! adds the headers every answer gets.

use super::collection::{get_collection, get_count};
use super::csdl;
use super::entity::{Write, delete_entity, get_entity, get_property, post_entity, write_entity};
use super::model::find_set;
use super::query::ODataError;
use super::render::Node;
use super::reply::{JSON, error_response, respond, set_header};
use super::request::RecordedRequest;
use super::server::ReplyBody;
use super::service::Service;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;

/// What a request path addresses.
pub(crate) enum Route {
    ServiceDoc,
    Batch,
    Metadata,
    Collection(String),
    Count(String),
    Entity {
        set: String,
        key: String,
    },
    Property {
        set: String,
        key: String,
        property: String,
        raw: bool,
    },
    Unknown,
}

/// Records the request, answers it, and adds the headers every answer gets.
pub(crate) async fn handle(upstream: Service, request: Request<Incoming>) -> Response<ReplyBody> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(), // a client that broke off gets no useful answer anyway
    };
    let route = route(&upstream.shared.root, parts.uri.path());
    let path_and_query = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let (recorded, knobs) = {
        let mut st = upstream.lock();
        let collection_set = match (&parts.method, &route) {
            (&Method::GET, Route::Collection(set)) if find_set(&st.sets, set).is_some() => {
                Some(set.clone())
            }
            _ => None,
        };
        let recorded = RecordedRequest {
            method: parts.method.clone(),
            path_and_query,
            headers: parts.headers.clone(),
            body,
            collection_set,
        };
        st.requests.push(recorded.clone());
        (recorded, st.knobs.clone())
    };
    let revoked = recorded
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| knobs.revoked_credentials.iter().any(|r| r == v));
    let mut response = if revoked {
        let error = ODataError {
            status: 401,
            message: "the access token was revoked".into(),
        };
        let mut response = error_response(&error, None);
        set_header(
            &mut response,
            "www-authenticate",
            "Bearer error=\"invalid_token\"",
        );
        response
    } else {
        dispatch(&upstream, &recorded, route).await
    };
    let already_encoded = response.headers().contains_key("content-encoding");
    if knobs.gzip
        && response.status().is_success()
        && !already_encoded
        && super::reply::accepts_gzip(&recorded)
        && let Some(body) = response.body().gzipped()
    {
        *response.body_mut() = body;
        response.headers_mut().remove("content-length");
        set_header(&mut response, "content-encoding", "gzip");
        set_header(&mut response, "vary", "Accept-Encoding");
    }
    if let Some(version) = &knobs.odata_version {
        set_header(&mut response, "odata-version", version);
    }
    if knobs.http10 {
        *response.version_mut() = http::Version::HTTP_10;
    }
    for echo in recorded.headers.get_all("x-echo") {
        response.headers_mut().append("x-echo", echo.clone());
    }
    response
}

pub(crate) async fn dispatch(
    up: &Service,
    req: &RecordedRequest,
    route: Route,
) -> Response<ReplyBody> {
    let method = &req.method;
    let result = match route {
        Route::Collection(set) if method == Method::GET => {
            return get_collection(up, req, &set).await;
        }
        Route::ServiceDoc if method == Method::GET => Ok(service_document(up)),
        Route::Batch if method == Method::POST => return super::batch::answer(up, req).await,
        Route::Metadata if method == Method::GET => {
            let delay = up.lock().metadata_delay;
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            metadata(up)
        }
        Route::Collection(set) if method == Method::POST => post_entity(up, req, &set),
        Route::Count(set) if method == Method::GET => get_count(up, req, &set),
        Route::Entity { set, key } => match *method {
            Method::GET => get_entity(up, req, &set, &key),
            Method::PATCH => write_entity(up, req, &set, &key, Write::Merge),
            Method::PUT => write_entity(up, req, &set, &key, Write::Replace),
            Method::DELETE => delete_entity(up, req, &set, &key),
            _ => Err(ODataError::not_found("resource not found")),
        },
        Route::Property {
            set,
            key,
            property,
            raw,
        } if method == Method::GET => get_property(up, &set, &key, &property, raw),
        _ => Err(ODataError::not_found("resource not found")),
    };
    result.unwrap_or_else(|e| error_response(&e, None))
}

/// Maps a request path onto a [`Route`]; segments are percent-decoded after
/// splitting so that an encoded `/` inside a string key stays in the key.
pub(crate) fn route(root: &str, path: &str) -> Route {
    let Some(rest) = path.strip_prefix(root) else {
        return Route::Unknown;
    };
    if rest.is_empty() || rest == "/" {
        return Route::ServiceDoc;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Route::Unknown;
    };
    let decoded: Option<Vec<String>> = rest
        .split('/')
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
        .collect();
    let Some(segments) = decoded else {
        return Route::Unknown;
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let resource = segments.first().and_then(|s| split_resource(s));
    match (segments.as_slice(), resource) {
        (["$metadata"], _) => Route::Metadata,
        (["$batch"], _) => Route::Batch,
        ([_], Some((set, None))) => Route::Collection(set),
        ([_], Some((set, Some(key)))) => Route::Entity { set, key },
        ([_, "$count"], Some((set, None))) => Route::Count(set),
        ([_, property], Some((set, Some(key)))) => Route::Property {
            set,
            key,
            property: property.to_string(),
            raw: false,
        },
        ([_, property, "$value"], Some((set, Some(key)))) => Route::Property {
            set,
            key,
            property: property.to_string(),
            raw: true,
        },
        _ => Route::Unknown,
    }
}

/// `Customers` → (`Customers`, None); `Customers(42)` → (`Customers`, `42`).
fn split_resource(segment: &str) -> Option<(String, Option<String>)> {
    match segment.split_once('(') {
        None if segment.is_empty() || segment.starts_with('$') => None,
        None => Some((segment.to_string(), None)),
        Some((set, rest)) => {
            let key = rest.strip_suffix(')')?;
            Some((set.to_string(), Some(key.to_string())))
        }
    }
}

fn service_document(up: &Service) -> Response<ReplyBody> {
    let st = up.lock();
    let sets = st
        .sets
        .iter()
        .map(|s| {
            Node::Object(vec![
                ("name".to_string(), Node::string(s.def.name.clone())),
                ("url".to_string(), Node::string(s.def.name.clone())),
                ("kind".to_string(), Node::string("EntitySet")),
            ])
        })
        .collect();
    let body = Node::Object(vec![
        (
            "@odata.context".to_string(),
            Node::string(up.link(st.knobs.link_style, "$metadata")),
        ),
        ("value".to_string(), Node::Array(sets)),
    ]);
    respond(
        200,
        Some(JSON),
        ReplyBody::full(body.to_json(st.knobs.pretty)),
    )
}

fn metadata(up: &Service) -> Result<Response<ReplyBody>, ODataError> {
    let st = up.lock();
    if st.metadata_missing {
        return Err(ODataError::not_found("$metadata is not published"));
    }
    let xml = st
        .metadata
        .clone()
        .unwrap_or_else(|| csdl::generate(&st.knobs.namespace, &st.sets));
    let mut response = respond(200, Some("application/xml"), ReplyBody::full(xml));
    if let Some(etag) = &st.metadata_etag {
        set_header(&mut response, "etag", etag);
    }
    Ok(response)
}

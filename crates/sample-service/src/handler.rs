//! Routing: records each request, dispatches it by path and method, and
//! adds the headers every answer gets.

use super::collection::{get_collection, get_count};
use super::csdl;
use super::entity::{Write, delete_entity, get_entity, get_property, post_entity, write_entity};
use super::model::find_set;
use super::query::ODataError;
use super::render::Node;
use super::reply::{JSON, ReplyBody, error_response, respond, set_header};
use super::request::RecordedRequest;
use super::route::{Route, route};
use super::service::Service;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;

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

/// Answers a routed request; a batch's parts come back here through [`boxed_dispatch`].
async fn dispatch(up: &Service, req: &RecordedRequest, route: Route) -> Response<ReplyBody> {
    let method = &req.method;
    let result = match route {
        Route::Collection(set) if method == Method::GET => {
            return get_collection(up, req, &set).await;
        }
        Route::ServiceDoc if method == Method::GET => Ok(service_document(up)),
        Route::Batch if method == Method::POST => {
            return super::batch::answer(up, req, boxed_dispatch).await;
        }
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

/// [`dispatch`] as the batch answerer takes it: a part is answered like a request of its own,
/// without the batch module naming this one.
fn boxed_dispatch<'a>(
    up: &'a Service,
    req: &'a RecordedRequest,
    route: Route,
) -> Pin<Box<dyn Future<Output = Response<ReplyBody>> + Send + 'a>> {
    Box::pin(dispatch(up, req, route))
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

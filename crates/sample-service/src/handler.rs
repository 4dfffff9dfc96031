//! Routing: records each request, hands it to the layer if one is set, dispatches it by path and
//! method, and adds the headers every answer gets.

use super::collection::{get_collection, get_count};
use super::csdl;
use super::entity::{Write, delete_entity, get_entity, get_property, post_entity, write_entity};
use super::model::find_set;
use super::query::ODataError;
use super::render::Node;
use super::reply::{JSON, ReplyBody, error_response, respond, set_header};
use super::request::RecordedRequest;
use super::route::{Route, route};
use super::service::{LayerFuture, Next, Service};
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
    let mut response = dispatch(&upstream, &recorded, route).await;
    let already_encoded = response.headers().contains_key("content-encoding");
    if knobs.gzip
        && response.status().is_success()
        && !already_encoded
        && recorded.accepts_gzip()
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

/// Answers a routed request, through the layer if one is set; a batch's parts come back here
/// through [`boxed_dispatch`].
async fn dispatch(up: &Service, req: &RecordedRequest, route: Route) -> Response<ReplyBody> {
    match up.layer() {
        Some(layer) => {
            let next = Next {
                service: up,
                answer: boxed_answer,
            };
            layer.answer(req, next).await
        }
        None => answer(up, req, route).await,
    }
}

/// [`answer`] as a layer's [`Next`] runs it: on a request the layer may have altered, so the
/// route is read from its path again.
fn boxed_answer<'r>(up: &'r Service, req: &'r RecordedRequest) -> LayerFuture<'r> {
    Box::pin(async move { answer(up, req, route(&up.shared.root, req.path())).await })
}

/// The service's own answer to a routed request.
async fn answer(up: &Service, req: &RecordedRequest, route: Route) -> Response<ReplyBody> {
    let method = &req.method;
    let result = match route {
        Route::Collection(set) if method == Method::GET => {
            return get_collection(up, req, &set);
        }
        Route::ServiceDoc if method == Method::GET => Ok(service_document(up)),
        Route::Batch if method == Method::POST => {
            return super::batch::answer(up, req, boxed_dispatch).await;
        }
        Route::Metadata if method == Method::GET => metadata(up),
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

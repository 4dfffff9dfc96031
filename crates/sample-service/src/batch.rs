//! `$batch` in both formats (OData 4.01 Part 1 "Batch Requests"): each request is answered by
//! the same dispatch as a request of its own, in order, and recorded like one. Change sets are
//! answered as nested multipart parts with their `Content-ID`s; there is no rollback.

use super::reply::{JSON, ReplyBody, respond};
use super::request::RecordedRequest;
use super::route::{Route, route};
use super::service::Service;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;

/// How a part is answered: the service's dispatch, handed in by its caller so that this module
/// need not name the handler that calls it.
pub(crate) type Dispatch =
    for<'a> fn(
        &'a Service,
        &'a RecordedRequest,
        Route,
    ) -> Pin<Box<dyn Future<Output = Response<ReplyBody>> + Send + 'a>>;

/// One inner request.
struct Inner {
    id: Option<String>,
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// Answers a `POST $batch`.
pub(crate) async fn answer(
    up: &Service,
    req: &RecordedRequest,
    dispatch: Dispatch,
) -> Response<ReplyBody> {
    let content_type = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if let Some(boundary) = boundary_of(&content_type) {
        return multipart(up, req, &boundary, dispatch).await;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return bad("not a batch");
    };
    let mut responses = Vec::new();
    for r in body["requests"].as_array().cloned().unwrap_or_default() {
        let headers = r["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .filter_map(|(n, v)| Some((n.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let inner = Inner {
            id: r["id"].as_str().map(str::to_owned),
            method: Method::from_bytes(
                r["method"]
                    .as_str()
                    .unwrap_or("GET")
                    .to_ascii_uppercase()
                    .as_bytes(),
            )
            .unwrap_or(Method::GET),
            url: r["url"].as_str().unwrap_or("").to_owned(),
            headers,
            body: if r["body"].is_null() {
                Bytes::new()
            } else {
                Bytes::from(r["body"].to_string())
            },
        };
        let (status, headers, body) = run(up, req, &inner, dispatch).await;
        let mut head = serde_json::Map::new();
        for (n, v) in &headers {
            if let Ok(v) = v.to_str() {
                head.insert(n.to_string(), json!(v));
            }
        }
        let body = serde_json::from_slice::<Value>(&body)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
        responses.push(json!({"id": inner.id, "status": status, "headers": head, "body": body}));
    }
    respond(
        200,
        Some(JSON),
        ReplyBody::full(json!({ "responses": responses }).to_string()),
    )
}

fn bad(message: &str) -> Response<ReplyBody> {
    respond(
        400,
        Some(JSON),
        ReplyBody::full(json!({"error": {"code": "400", "message": message}}).to_string()),
    )
}

async fn multipart(
    up: &Service,
    req: &RecordedRequest,
    boundary: &str,
    dispatch: Dispatch,
) -> Response<ReplyBody> {
    let Some(parts) = split(&req.body, boundary) else {
        return bad("not a multipart batch");
    };
    let mut out = String::new();
    for (n, part) in parts.iter().enumerate() {
        let (mime, content) = head_and_rest(part);
        out.push_str("--batchresponse_fake\r\n");
        let content_type = header(&mime, "content-type").unwrap_or_default();
        if let Some(inner_boundary) = boundary_of(&content_type) {
            let cs = format!("changesetresponse_{n}");
            out.push_str(&format!(
                "Content-Type: multipart/mixed; boundary={cs}\r\n\r\n"
            ));
            for member in split(content.as_bytes(), &inner_boundary).unwrap_or_default() {
                let (mime, content) = head_and_rest(&member);
                out.push_str(&format!("--{cs}\r\n"));
                out.push_str(&answer_part(up, req, &mime, &content, dispatch).await);
                out.push_str("\r\n");
            }
            out.push_str(&format!("--{cs}--\r\n"));
        } else {
            out.push_str(&answer_part(up, req, &mime, &content, dispatch).await);
            out.push_str("\r\n");
        }
    }
    out.push_str("--batchresponse_fake--\r\n");
    respond(
        200,
        Some("multipart/mixed; boundary=batchresponse_fake"),
        ReplyBody::full(out),
    )
}

async fn answer_part(
    up: &Service,
    req: &RecordedRequest,
    mime: &[(String, String)],
    content: &str,
    dispatch: Dispatch,
) -> String {
    let (line, rest) = content.split_once('\n').unwrap_or((content, ""));
    let mut words = line.trim_end_matches('\r').split(' ');
    let method =
        Method::from_bytes(words.next().unwrap_or("GET").as_bytes()).unwrap_or(Method::GET);
    let url = words.next().unwrap_or("").to_owned();
    let (headers, body) = head_and_rest(rest.as_bytes());
    let id = header(mime, "content-id");
    let inner = Inner {
        id: id.clone(),
        method,
        url,
        headers,
        body: Bytes::from(body.trim_end_matches("\r\n").to_owned()),
    };
    let (status, headers, body) = run(up, req, &inner, dispatch).await;
    let mut out =
        String::from("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n");
    if let Some(id) = &inner.id {
        out.push_str(&format!("Content-ID: {id}\r\n"));
    }
    out.push_str(&format!("\r\nHTTP/1.1 {status} X\r\n"));
    for (n, v) in &headers {
        if let Ok(v) = v.to_str() {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    out.push_str(&String::from_utf8_lossy(&body));
    out
}

/// Dispatches one inner request like a request of its own, and records it.
async fn run(
    up: &Service,
    outer: &RecordedRequest,
    inner: &Inner,
    dispatch: Dispatch,
) -> (u16, HeaderMap, Bytes) {
    let root = up.shared.root.clone();
    let path_and_query = if let Some(rest) = inner.url.strip_prefix(&up.base_url()) {
        format!("{root}{rest}")
    } else if inner.url.starts_with('/') {
        inner.url.clone()
    } else {
        format!("{root}/{}", inner.url)
    };
    let mut headers = outer.headers.clone();
    headers.remove("content-type");
    headers.remove("content-length");
    for (n, v) in &inner.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(n, v);
        }
    }
    let path = path_and_query.split('?').next().unwrap_or("").to_owned();
    let target = route(&root, &path);
    let collection_set = match (&inner.method, &target) {
        (&Method::GET, Route::Collection(set)) => Some(set.clone()),
        _ => None,
    };
    let recorded = RecordedRequest {
        method: inner.method.clone(),
        path_and_query,
        headers,
        body: inner.body.clone(),
        collection_set,
    };
    up.lock().requests.push(recorded.clone());
    let response = dispatch(up, &recorded, target).await;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut headers = parts.headers;
    headers.remove("content-length");
    (parts.status.as_u16(), headers, body)
}

fn boundary_of(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (n, v) = p.trim().split_once('=')?;
        n.eq_ignore_ascii_case("boundary")
            .then(|| v.trim_matches('"').to_owned())
    })
}

/// The parts between `--boundary` lines, without the line break before each delimiter.
fn split(body: &[u8], boundary: &str) -> Option<Vec<Vec<u8>>> {
    let text = std::str::from_utf8(body).ok()?;
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut pieces = text.split(delimiter.as_str());
    pieces.next()?;
    for piece in pieces {
        if piece.starts_with("--") {
            return Some(parts);
        }
        let piece = piece.split_once('\n')?.1;
        let piece = piece
            .strip_suffix("\r\n")
            .or_else(|| piece.strip_suffix('\n'))
            .unwrap_or(piece);
        parts.push(piece.as_bytes().to_vec());
    }
    None
}

fn head_and_rest(data: &[u8]) -> (Vec<(String, String)>, String) {
    let text = String::from_utf8_lossy(data).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .unwrap_or((text.as_str(), ""));
    let headers = head
        .lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    (headers, rest.to_owned())
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

//! Building responses: headers, status, OData error bodies.

use super::knobs::Knobs;
use super::query::{FilterRules, ODataError};
use super::render::Node;
use super::request::RecordedRequest;
use super::server::ReplyBody;
use http::{HeaderValue, Response, StatusCode};

/// Content type of every JSON answer.
pub(crate) const JSON: &str = "application/json;odata.metadata=minimal";

/// Sets a header, skipping values that are not valid header text.
pub(crate) fn set_header(response: &mut Response<ReplyBody>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// A response with status, optional content type and body.
pub(crate) fn respond(
    status: u16,
    content_type: Option<&str>,
    body: ReplyBody,
) -> Response<ReplyBody> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(content_type) = content_type {
        set_header(&mut response, "content-type", content_type);
    }
    response
}

/// `{"error":{"code":"<status>","message":"..."}}`, as CAP answers.
pub(crate) fn error_response(error: &ODataError, retry_after: Option<u64>) -> Response<ReplyBody> {
    let body = Node::Object(vec![(
        "error".to_string(),
        Node::Object(vec![
            ("code".to_string(), Node::string(error.status.to_string())),
            ("message".to_string(), Node::string(error.message.clone())),
        ]),
    )]);
    let mut response = respond(
        error.status,
        Some(JSON),
        ReplyBody::full(body.to_json(false)),
    );
    if let Some(seconds) = retry_after {
        set_header(&mut response, "retry-after", &seconds.to_string());
    }
    response
}

/// The filter restrictions currently switched on.
pub(crate) fn rules(knobs: &Knobs) -> FilterRules {
    FilterRules {
        reject_in: knobs.reject_in,
        reject_or: knobs.reject_or,
    }
}

/// Whether a `Prefer` header carries `token` (e.g. `return=minimal`).
pub(crate) fn prefers(req: &RecordedRequest, token: &str) -> bool {
    req.headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(token))
}

/// Whether a request's `Accept-Encoding` names gzip (weights are not read:
/// the gateway sends a plain `gzip`).
pub(crate) fn accepts_gzip(req: &RecordedRequest) -> bool {
    req.headers
        .get_all("accept-encoding")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|c| {
            c.split(';')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("gzip"))
        })
}

/// `data` gzip-compressed.
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// A 200 whose small gzip body inflates to `decoded_bytes` blanks.
pub(crate) fn gzip_bomb(decoded_bytes: usize) -> Response<ReplyBody> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let blanks = vec![b' '; 64 * 1024];
    let mut left = decoded_bytes;
    while left > 0 {
        let n = left.min(blanks.len());
        encoder.write_all(&blanks[..n]).expect("gzip into memory");
        left -= n;
    }
    let body = encoder.finish().expect("gzip into memory");
    let mut response = respond(200, Some(JSON), ReplyBody::full(body));
    set_header(&mut response, "content-encoding", "gzip");
    response
}

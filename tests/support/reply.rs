//! Building responses: headers, status, OData error bodies.

use super::knobs::Knobs;
use super::query::{FilterRules, ODataError};
use super::render::Node;
use super::request::RecordedRequest;
use super::server::FakeBody;
use http::{HeaderValue, Response, StatusCode};

/// Content type of every JSON answer.
pub(crate) const JSON: &str = "application/json;odata.metadata=minimal";

/// Sets a header, skipping values that are not valid header text.
pub(crate) fn set_header(response: &mut Response<FakeBody>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// A response with status, optional content type and body.
pub(crate) fn respond(
    status: u16,
    content_type: Option<&str>,
    body: FakeBody,
) -> Response<FakeBody> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(content_type) = content_type {
        set_header(&mut response, "content-type", content_type);
    }
    response
}

/// `{"error":{"code":"<status>","message":"..."}}`, as CAP answers.
pub(crate) fn error_response(error: &ODataError, retry_after: Option<u64>) -> Response<FakeBody> {
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
        FakeBody::full(body.to_json(false)),
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

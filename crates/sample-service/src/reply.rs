//! Building responses: the body type (which a [`Layer`](crate::Layer) can make break), headers,
//! status, OData error bodies, gzip.

use super::knobs::Knobs;
use super::query::{FilterRules, ODataError};
use super::render::Node;
use super::request::RecordedRequest;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;

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

/// A JSON answer (`application/json;odata.metadata=minimal`) with `status` and `body`, for a
/// layer that answers itself.
pub fn json_reply(status: u16, body: ReplyBody) -> Reply {
    respond(status, Some(JSON), body)
}

/// An OData error answer as the service writes its own, with `Retry-After` if given, for a
/// layer that refuses a request.
pub fn error_reply(status: u16, message: &str, retry_after: Option<u64>) -> Reply {
    let error = ODataError {
        status,
        message: message.to_owned(),
    };
    error_response(&error, retry_after)
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

/// `data` gzip-compressed.
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// An answer of the service, as a [`Layer`](crate::Layer) receives, alters or makes one.
pub type Reply = Response<ReplyBody>;

/// The body of a [`Reply`]: either complete, or a prefix followed by an error so that the
/// connection breaks off mid-body, which a layer cannot otherwise produce from outside the
/// server.
pub struct ReplyBody {
    data: Option<Bytes>,
    /// Set for a broken body; the pause lets hyper flush the prefix to the
    /// socket before the error tears the connection down.
    break_after: Option<Pin<Box<Sleep>>>,
}

impl ReplyBody {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> ReplyBody {
        let data: Bytes = data.into();
        ReplyBody {
            data: (!data.is_empty()).then_some(data),
            break_after: None,
        }
    }

    /// No body.
    pub(crate) fn empty() -> ReplyBody {
        ReplyBody::full(Bytes::new())
    }

    /// The bytes the body sends (only the prefix, for a broken one).
    pub fn bytes(&self) -> Bytes {
        self.data.clone().unwrap_or_default()
    }

    /// The same body gzip-compressed; `None` for a broken one, which is
    /// sent as it is.
    pub(crate) fn gzipped(&self) -> Option<ReplyBody> {
        if self.break_after.is_some() {
            return None;
        }
        let data = self.data.clone().unwrap_or_default();
        Some(ReplyBody::full(gzip(&data)))
    }

    /// The first half of `data`, then a connection reset. The answer's `Content-Length`, if
    /// set, is sent as it is, so the client sees a body cut short.
    pub fn broken(data: Bytes) -> ReplyBody {
        let half = data.slice(..data.len() / 2);
        ReplyBody {
            data: (!half.is_empty()).then_some(half),
            break_after: Some(Box::pin(tokio::time::sleep(Duration::from_millis(50)))),
        }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(pause) = self.break_after.as_mut() {
            ready!(pause.as_mut().poll(cx));
            self.break_after = None;
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the body was broken off mid-way",
            ))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.break_after.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.break_after) {
            (Some(data), None) => SizeHint::with_exact(data.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

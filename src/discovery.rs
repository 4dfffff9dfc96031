//! The passed-through `$metadata` answer with change tracking made discoverable (C35): a CSDL XML
//! document is read whole (bounded by `limits.max_page_bytes`, the bound of the gateway's own
//! `$metadata` fetch) and annotated by `odata::annotate`. Anything else — CSDL JSON, an error,
//! a compressed or oversized document — passes through as it came.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};

use crate::Shared;
use crate::body::{self, Body, BoxError};
use crate::odata::annotate::annotate;
use crate::router::Service;

/// Annotate a `$metadata` response of `service`, or hand it back unchanged.
pub(crate) async fn metadata_response(
    shared: &Shared,
    service: &Service,
    response: Response<Body>,
) -> Response<Body> {
    let is_xml = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("xml"));
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity");
    if response.status() != StatusCode::OK || !is_xml || encoded {
        return response;
    }
    let limit = shared.config.limits.max_page_bytes;
    let (mut parts, mut incoming) = response.into_parts();
    let mut head = BytesMut::new();
    loop {
        match incoming.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                    if head.len() > limit {
                        // Too large to hold: the client still gets the whole document, unannotated.
                        tracing::info!(
                            limit,
                            "$metadata larger than the limit; passed on unannotated"
                        );
                        let body = Prefixed {
                            head: Some(head.freeze()),
                            rest: incoming,
                        };
                        return Response::from_parts(parts, body.boxed());
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream $metadata broke off");
                let body = Prefixed {
                    head: Some(head.freeze()),
                    rest: body::empty(),
                };
                return Response::from_parts(parts, body.boxed());
            }
        }
    }
    let original = head.freeze();
    let annotated = match std::str::from_utf8(&original) {
        Ok(text) => {
            let text = text.to_owned();
            let sets = service.route.sets.clone();
            // Callbacks are made only to allowed hosts, and only for sets refreshed in the
            // background (C33): with neither, none is advertised.
            let callbacks = (!shared.config.notifications.allowed_hosts.is_empty())
                .then(|| (shared.config.clone(), service.route.prefix.clone()));
            tokio::task::spawn_blocking(move || {
                annotate(
                    &text,
                    |set| sets.get(set).is_some_and(|s| s.key.is_some()),
                    |set| {
                        callbacks
                            .as_ref()
                            .is_some_and(|(c, prefix)| c.poll_interval(prefix, set).is_some())
                    },
                )
            })
            .await
            .ok()
            .flatten()
        }
        Err(_) => None,
    };
    let Some(annotated) = annotated else {
        return Response::from_parts(parts, body::full(original));
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(annotated.len()));
    // The bytes differ from the upstream's, so a strong validator would be a lie; its weak form
    // still names the same document (the annotation is a function of it and the configuration),
    // and a conditional request forwarded upstream compares weakly (RFC 9110 §13.1.2), so 304s
    // keep working.
    if let Some(etag) = parts
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        && !etag.starts_with("W/")
        && let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}"))
    {
        parts.headers.insert(header::ETAG, weak);
    }
    Response::from_parts(parts, body::full(annotated))
}

/// Bytes already read, then the rest of the stream.
struct Prefixed {
    head: Option<Bytes>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

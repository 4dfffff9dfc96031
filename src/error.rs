//! One error type for everything a request can run into, classified by origin — the client, the
//! upstream, the store, or us — and the one function that turns it into a status and an OData error
//! body (C26). Messages never carry upstream internals; those go to the log.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::odata::{ODataVersion, names};

/// Everything that can end a request with an error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is wrong; the client can fix it.
    #[error("{message}")]
    Client {
        /// 4xx status.
        status: StatusCode,
        /// OData error code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The delta token is older than the retention window (C25).
    #[error("the delta link has expired; read {location} again with change tracking")]
    Expired {
        /// The defining query to start over from.
        location: String,
    },
    /// The upstream refused the client's own request (its query, its credentials): the upstream's
    /// status is passed on, so the client can tell its mistake from an outage.
    #[error("the upstream refused the request: {message}")]
    Rejected {
        /// The upstream's 4xx status.
        status: StatusCode,
        /// The upstream's error message, if it gave one.
        message: String,
        /// The upstream's OData error code, if it gave a usable one: the client's OData library
        /// may act on it, so it is kept rather than replaced by `UpstreamRejected`.
        code: Option<String>,
        /// The upstream's `WWW-Authenticate`, for a 401.
        challenge: Option<HeaderValue>,
    },
    /// The upstream failed us; nothing was committed.
    #[error("{message}")]
    Upstream {
        /// Unreachable, too slow, or answered badly.
        kind: UpstreamFailure,
        /// What happened, without upstream internals.
        message: String,
    },
    /// A limit of the gateway keeps it from taking on this request now (too many feeds, too many
    /// refreshes waiting): 429 or 503 with `Retry-After`.
    #[error("{message}")]
    Limited {
        /// 429 (this caller's share is used up) or 503 (the gateway's).
        status: StatusCode,
        /// OData error code.
        code: &'static str,
        /// Which limit, and what to do.
        message: String,
        /// Seconds for `Retry-After`.
        retry_after_secs: u64,
    },
    /// The store failed.
    #[error("the change store is unavailable")]
    Store(String),
    /// A bug.
    #[error("internal error")]
    Internal(String),
}

/// How the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Could not connect or the connection broke.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// Answered with an error status or a payload we cannot use.
    BadAnswer,
    /// The TLS connection failed: a certificate the route does not trust, an expired one, a host
    /// name it is not for, or a client certificate the upstream refused. Nothing a retry fixes.
    Tls,
}

impl Error {
    /// A 400 with code `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::Client {
            status: StatusCode::BAD_REQUEST,
            code: "BadRequest",
            message: message.into(),
        }
    }

    /// A client error with a specific status and code.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Error::Client {
            status,
            code,
            message: message.into(),
        }
    }

    /// An upstream failure.
    pub fn upstream(kind: UpstreamFailure, message: impl Into<String>) -> Self {
        Error::Upstream {
            kind,
            message: message.into(),
        }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Client { status, .. } => *status,
            Error::Expired { .. } => StatusCode::GONE,
            Error::Rejected { status, .. } => *status,
            Error::Limited { status, .. } => *status,
            Error::Upstream {
                kind: UpstreamFailure::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            Error::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Error::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OData error code.
    pub fn code(&self) -> &str {
        match self {
            Error::Rejected {
                code: Some(code), ..
            } => code,
            Error::Client { code, .. } => code,
            Error::Expired { .. } => "DeltaTokenExpired",
            Error::Rejected { .. } => "UpstreamRejected",
            Error::Limited { code, .. } => code,
            Error::Upstream {
                kind: UpstreamFailure::Unreachable,
                ..
            } => "UpstreamUnreachable",
            Error::Upstream {
                kind: UpstreamFailure::Timeout,
                ..
            } => "UpstreamTimeout",
            Error::Upstream {
                kind: UpstreamFailure::Tls,
                ..
            } => "UpstreamTlsError",
            Error::Upstream { .. } => "UpstreamError",
            Error::Store(_) => "StoreUnavailable",
            Error::Internal(_) => "InternalError",
        }
    }

    /// The response: status, OData error JSON, `Location` for an expired token, and `Retry-After`
    /// for a limit or a store failure.
    pub fn into_response(self, version: ODataVersion) -> Response<Body> {
        if let Error::Store(detail) | Error::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let body =
            serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = Response::new(body::full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            names::ODATA_VERSION,
            HeaderValue::from_static(version.header_value()),
        );
        if let Error::Rejected {
            challenge: Some(challenge),
            ..
        } = &self
        {
            headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
        }
        if let Error::Limited {
            retry_after_secs, ..
        } = &self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if let Error::Store(_) = &self {
            // A store that fails is mostly one restarting or failing over (a PostgreSQL restart
            // takes seconds), and the next request opens a new connection: worth a retry soon.
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(STORE_RETRY_AFTER_SECS),
            );
        }
        if let Error::Expired { location } = &self
            && let Ok(v) = HeaderValue::from_str(location)
        {
            headers.insert(header::LOCATION, v);
        }
        response
    }
}

/// `Retry-After` of a 503 for a store failure.
const STORE_RETRY_AFTER_SECS: u64 = 2;

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        Error::Store(e.to_string())
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("a background task failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_error_is_odata_json_with_code_and_message_c26() {
        let cases = [
            (Error::bad_request("bad token"), 400, "BadRequest"),
            (
                Error::Expired {
                    location: "http://gw/S".into(),
                },
                410,
                "DeltaTokenExpired",
            ),
            (
                Error::upstream(UpstreamFailure::Timeout, "slow"),
                504,
                "UpstreamTimeout",
            ),
            (
                Error::upstream(UpstreamFailure::BadAnswer, "500"),
                502,
                "UpstreamError",
            ),
            (
                Error::upstream(UpstreamFailure::Tls, "upstream certificate expired"),
                502,
                "UpstreamTlsError",
            ),
            (Error::Store("disk".into()), 503, "StoreUnavailable"),
            (Error::Internal("bug".into()), 500, "InternalError"),
        ];
        for (error, status, code) in cases {
            let expired = matches!(error, Error::Expired { .. });
            let response = error.into_response(ODataVersion::V40);
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()["odata-version"], "4.0");
            if expired {
                assert_eq!(response.headers()["location"], "http://gw/S");
            }
            if status == 503 {
                assert_eq!(response.headers()["retry-after"], "2");
            }
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert!(!v["error"]["message"].as_str().unwrap().is_empty());
            assert!(!v["error"]["message"].as_str().unwrap().contains("disk"));
        }
    }
}

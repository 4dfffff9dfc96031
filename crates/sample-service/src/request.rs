//! A request as the service reads and records it.

use super::query::replace_option;
use bytes::Bytes;
use http::{HeaderMap, Method};
use percent_encoding::percent_decode_str;
use serde_json::Value;

/// A request as the service received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query exactly as received (still percent-encoded).
    pub path_and_query: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// `Some(set)` when this is a GET of an entity set's collection (of a defined set, for a
    /// whole request; of any set, for a part of a `$batch`).
    pub collection_set: Option<String>,
}

impl RecordedRequest {
    /// The path, without query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }

    /// The raw query string (empty when absent).
    pub fn query(&self) -> &str {
        self.path_and_query.split_once('?').map_or("", |(_, q)| q)
    }

    /// Query options, percent-decoded (lossily), `+` kept as a plus.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        self.query()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (n, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(n), decode(v))
            })
            .collect()
    }

    /// The decoded value of one query option.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// A copy whose query has option `name` removed, or set to `value` (text as it goes in a
    /// URL) at its end: what a [`Layer`](crate::Layer) asks the service instead.
    pub fn with_option(&self, name: &str, value: Option<&str>) -> RecordedRequest {
        let query = replace_option(self.query(), name, value);
        let path_and_query = if query.is_empty() {
            self.path().to_owned()
        } else {
            format!("{}?{query}", self.path())
        };
        RecordedRequest {
            path_and_query,
            ..self.clone()
        }
    }

    /// A header value, if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether `Accept-Encoding` names gzip (weights are not read: the gateway sends a plain
    /// `gzip`).
    pub fn accepts_gzip(&self) -> bool {
        self.headers
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

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

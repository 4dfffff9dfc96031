//! Transparent forwarding of everything that is not tracked: any method, path and query, headers
//! minus hop-by-hop ones, bodies streamed both ways. Absolute links to the upstream in `Location` /
//! `Content-Location` and in JSON bodies (`@odata.nextLink`, `@odata.context`, …) are rewritten to
//! the gateway's public base while the body streams, so a client never leaves the gateway.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming};

use crate::Shared;
use crate::body::{Body, BoxError};
use crate::error::{Error, UpstreamFailure};
use crate::upstream::Upstream;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Forward a request to `upstream_url` (path and query already mapped) with the route's client
/// and stream the answer back, rewriting links from `upstream_root` to `public_root`.
pub async fn forward(
    shared: &Shared,
    upstream: &Upstream,
    request: Request<Incoming>,
    upstream_url: &str,
    upstream_root: &str,
    public_root: &str,
) -> Result<Response<Body>, Error> {
    let (mut parts, incoming) = request.into_parts();
    // The answer goes back in the client's HTTP version, whatever the upstream spoke: an HTTP/1.0
    // upstream's version copied onto the answer would end an HTTP/1.1 client's keep-alive.
    let client_version = parts.version;
    let limit = shared.config.limits.max_request_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    // Bodies come back uncompressed so that links in them can be rewritten.
    parts.headers.remove(header::ACCEPT_ENCODING);
    parts.uri = upstream_url
        .parse()
        .map_err(|_| Error::bad_request("the request path cannot be forwarded upstream"))?;
    parts.version = http::Version::HTTP_11;
    let timeout = shared.config.limits.body_read_timeout;
    // Most pass-throughs are GETs without a body: no limit, no timer.
    let (body, timed_out) = if incoming.is_end_stream() {
        (crate::body::empty(), Arc::new(AtomicBool::new(false)))
    } else {
        let body = TimedBody::new(Limited::new(incoming, limit as usize).boxed(), timeout);
        let timed_out = body.timed_out.clone();
        (body.boxed(), timed_out)
    };
    let response = match upstream.send(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(_) if timed_out.load(Ordering::Relaxed) => {
            return Err(Error::client(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                format!(
                    "the request body did not arrive within the limit of {} ms",
                    timeout.as_millis()
                ),
            ));
        }
        Err(e) => return Err(e),
    };

    let (mut parts, body) = response.into_parts();
    parts.version = client_version;
    strip_hop_by_hop(&mut parts.headers);
    let rewriter = LinkRewriter::new(upstream_root, public_root);
    for name in [
        header::LOCATION,
        header::CONTENT_LOCATION,
        HeaderName::from_static("odata-entityid"),
    ] {
        if let Some(v) = parts.headers.get(&name).and_then(|v| v.to_str().ok())
            && let Some(rewritten) = rewriter.rewrite_str(v)
            && let Ok(v) = HeaderValue::from_str(&rewritten)
        {
            parts.headers.insert(name, v);
        }
    }
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity");
    if !is_json || encoded {
        return Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed(),
        ));
    }
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= SMALL_BODY_BYTES);
    if !small {
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = RewriteBody {
            inner: body,
            rewriter,
            done: false,
        };
        return Ok(Response::from_parts(parts, body.boxed()));
    }
    // A small body of known length is read whole: most hold no link to rewrite (an entity, a
    // count, an error), and then it goes out as it came, `Content-Length` and all, without
    // streaming it through the rewriter.
    let data = match tokio::time::timeout(shared.config.upstream.timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "upstream body failed");
            return Err(Error::upstream(
                UpstreamFailure::Unreachable,
                "the upstream connection broke while reading a response",
            ));
        }
        Err(_) => {
            return Err(Error::upstream(
                UpstreamFailure::Timeout,
                "the upstream did not send its answer in time",
            ));
        }
    };
    let data = if rewriter.may_rewrite(&data) {
        let mut rewriter = rewriter;
        let mut out = rewriter.push(&data).to_vec();
        out.extend_from_slice(&rewriter.finish());
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Bytes::from(out)
    } else {
        data
    };
    Ok(Response::from_parts(parts, crate::body::full(data)))
}

/// Bodies up to this size (with a `Content-Length`) are read whole before they are relayed, so
/// that one without links keeps its length and skips the rewriter. Larger ones stream.
const SMALL_BODY_BYTES: u64 = 64 * 1024;

/// A request body that must arrive whole within a time limit, counted from when forwarding starts:
/// a client that trickles its body would otherwise hold the connection and an upstream request.
struct TimedBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Set when the deadline ended the body, so that the client is told 408, not 502.
    timed_out: Arc<AtomicBool>,
}

impl TimedBody {
    fn new(inner: Body, limit: std::time::Duration) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            timed_out: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The body error when a request body was too slow.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyReadTimeout;

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn too_large(limit: u64) -> Error {
    Error::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// Replaces the upstream's service root with the gateway's in a byte stream, across chunk
/// boundaries, in plain and JSON-escaped (`\/`) spelling. A match must end at a URL delimiter so
/// that `…/shop` does not rewrite `…/shopping`. Root-relative links (`"/odata/v4/shop/…"`) are
/// rewritten too when the gateway serves the service under another path, so that they do not
/// resolve outside the route.
pub struct LinkRewriter {
    rules: Arc<Rules>,
    carry: BytesMut,
}

/// What a [`LinkRewriter`] looks for and what it writes instead, for one pair of roots.
struct Rules {
    patterns: Vec<(Vec<u8>, Vec<u8>)>,
    /// One substring searcher per pattern, in the same order.
    finders: Vec<memchr::memmem::Finder<'static>>,
    /// The upstream's service root path, when root-relative links need rewriting.
    root_relative: Option<String>,
    /// The gateway's service root (absolute).
    to: String,
    longest: usize,
}

/// Pairs of roots whose rules each thread keeps (a route and the public roots it is reached by).
const RECENT_RULES: usize = 8;

/// A thread's recent rules: upstream root, public root, and their rules, newest last.
type RecentRules = Vec<(Box<str>, Box<str>, Arc<Rules>)>;

thread_local! {
    /// The rules built last on this thread, newest last: every pass-through needs them, and
    /// building the substring searchers cost more than the rest of relaying a small answer.
    static RECENT: RefCell<RecentRules> = const { RefCell::new(Vec::new()) };
}

impl Rules {
    /// The rules for `from` → `to`, from this thread's recent ones when it has them.
    fn of(from: &str, to: &str) -> Arc<Rules> {
        RECENT.with(|recent| {
            let mut recent = recent.borrow_mut();
            if let Some(i) = recent
                .iter()
                .position(|(f, t, _)| **f == *from && **t == *to)
            {
                let entry = recent.remove(i);
                let rules = entry.2.clone();
                recent.push(entry);
                return rules;
            }
            let rules = Arc::new(Rules::build(from, to));
            if recent.len() >= RECENT_RULES {
                recent.remove(0);
            }
            recent.push((from.into(), to.into(), rules.clone()));
            rules
        })
    }

    fn build(from: &str, to: &str) -> Self {
        let from = from.trim_end_matches('/');
        let to = to.trim_end_matches('/');
        let escaped = |s: &str| s.replace('/', "\\/").into_bytes();
        let mut patterns = vec![
            (from.as_bytes().to_vec(), to.as_bytes().to_vec()),
            (escaped(from), escaped(to)),
        ];
        let path_of = |u: &str| url_path(u).trim_end_matches('/').to_owned();
        let (from_path, to_path) = (path_of(from), path_of(to));
        // A root-relative link is unambiguous only when the upstream's root has a path; it needs
        // rewriting only when the gateway's path differs. It is matched at the start of a JSON
        // string so that other text is left alone.
        let root_relative = (!from_path.is_empty() && from_path != to_path).then_some(from_path);
        if let Some(path) = &root_relative {
            patterns.push((
                format!("\"{path}").into_bytes(),
                format!("\"{to}").into_bytes(),
            ));
            patterns.push((
                [b"\"".as_slice(), &escaped(path)].concat(),
                [b"\"".as_slice(), &escaped(to)].concat(),
            ));
        }
        // An empty root would match everywhere and never advance.
        patterns.retain(|(p, _)| !p.is_empty());
        let longest = patterns.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        let finders = patterns
            .iter()
            .map(|(p, _)| memchr::memmem::Finder::new(p).into_owned())
            .collect();
        Rules {
            patterns,
            finders,
            root_relative,
            to: to.to_owned(),
            longest,
        }
    }
}

impl LinkRewriter {
    /// Rewrite `from` (an absolute service root, no trailing slash) to `to`.
    pub fn new(from: &str, to: &str) -> Self {
        LinkRewriter {
            rules: Rules::of(from, to),
            carry: BytesMut::new(),
        }
    }

    /// Rewrite a whole string (a header value, absolute or root-relative); `None` when it does not
    /// point at the upstream's service root.
    pub fn rewrite_str(&self, s: &str) -> Option<String> {
        if let Some(path) = &self.rules.root_relative
            && let Some(rest) = s.strip_prefix(path.as_str())
            && is_delimiter(rest.bytes().next())
        {
            return Some(format!("{}{rest}", self.rules.to));
        }
        if foreign_delta_link(s.as_bytes(), true) == Some(true) {
            return None;
        }
        let mut out = Vec::new();
        let (replaced, _) = self.scan(s.as_bytes(), true, &mut out);
        if replaced == 0 {
            return None;
        }
        String::from_utf8(out).ok()
    }

    /// Feed a chunk; returns what can be emitted now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.carry.extend_from_slice(chunk);
        let data = self.carry.split().freeze();
        let mut out = Vec::with_capacity(data.len());
        let (_, consumed) = self.scan(&data, false, &mut out);
        self.carry.extend_from_slice(&data[consumed..]);
        Bytes::from(out)
    }

    /// The end of the stream: emit what was held back.
    pub fn finish(&mut self) -> Bytes {
        let data = self.carry.split().freeze();
        let mut out = Vec::with_capacity(data.len());
        self.scan(&data, true, &mut out);
        Bytes::from(out)
    }

    /// Whether `data` holds anything this rewriter would replace; a body for which this is false
    /// can be relayed as it is.
    pub fn may_rewrite(&self, data: &[u8]) -> bool {
        self.rules.finders.iter().any(|f| f.find(data).is_some())
    }

    /// Copy `data` to `out` with replacements. Unless `last`, stop where a match could still be
    /// completed by the next chunk (the longest pattern plus its delimiter must fit). Returns the
    /// number of replacements and how many bytes were consumed.
    fn scan(&self, data: &[u8], last: bool, out: &mut Vec<u8>) -> (usize, usize) {
        // Matches may start only before `limit`; past it one could still be completed (or its
        // delimiter arrive) with the next chunk.
        let limit = if last {
            data.len()
        } else {
            data.len().saturating_sub(self.rules.longest)
        };
        // Per pattern, its next occurrence at or after `i` (`Some(None)`: none left), found with
        // a vectorized substring search instead of looking at every byte; `None` until searched.
        let mut next: Vec<Option<Option<usize>>> = vec![None; self.rules.patterns.len()];
        let mut i = 0;
        let mut replaced = 0;
        while i < limit {
            let mut candidate: Option<usize> = None;
            for (finder, slot) in self.rules.finders.iter().zip(next.iter_mut()) {
                if matches!(slot, Some(Some(at)) if *at < i) {
                    *slot = None;
                }
                let found = *slot.get_or_insert_with(|| finder.find(&data[i..]).map(|at| i + at));
                if let Some(at) = found
                    && at < limit
                    && candidate.is_none_or(|c| at < c)
                {
                    candidate = Some(at);
                }
            }
            let Some(at) = candidate else {
                out.extend_from_slice(&data[i..limit]);
                i = limit;
                break;
            };
            out.extend_from_slice(&data[i..at]);
            let matched = self.rules.patterns.iter().find(|(pattern, _)| {
                data[at..].starts_with(pattern)
                    && is_delimiter(data.get(at + pattern.len()).copied())
            });
            match matched {
                Some((pattern, replacement)) => {
                    match foreign_delta_link(&data[at + pattern.len()..], last) {
                        // Wait for the rest of the link.
                        None => {
                            i = at;
                            break;
                        }
                        // Not ours to serve: left pointing at the upstream (C36).
                        Some(true) => out.extend_from_slice(pattern),
                        Some(false) => {
                            out.extend_from_slice(replacement);
                            replaced += 1;
                        }
                    }
                    i = at + pattern.len();
                }
                None => {
                    // `…/shop` followed by `ping`: not a link to the root; look on one byte later.
                    out.push(data[at]);
                    i = at + 1;
                }
            }
        }
        (replaced, i)
    }
}

/// The path of an absolute `scheme://authority/path?query` URL (the gateway's and the upstream's
/// roots, which are built or validated as such); empty without one.
fn url_path(u: &str) -> &str {
    let Some((_, rest)) = u.split_once("://") else {
        return "";
    };
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    path.split(['?', '#']).next().unwrap_or("")
}

/// How far past a service root a link is searched for a delta token.
const LINK_LOOKAHEAD: usize = 4096;

/// Whether the link that continues with `rest` carries a `$deltatoken`: the upstream's own delta
/// link (an upstream that tracks changes itself). Rewritten onto the gateway, it would be a link
/// the gateway refuses, since only its own tokens are valid there; so it is left as the upstream
/// wrote it. `None` when the end of the link has not arrived yet and more data may follow.
fn foreign_delta_link(rest: &[u8], last: bool) -> Option<bool> {
    let window = &rest[..rest.len().min(LINK_LOOKAHEAD)];
    let end = window
        .iter()
        .position(|b| matches!(b, b'"' | b' ' | b'\t' | b'\r' | b'\n' | b'<' | b'>'));
    if end.is_none() && !last && rest.len() < LINK_LOOKAHEAD {
        return None;
    }
    let link = &window[..end.unwrap_or(window.len())];
    let has = |needle: &[u8]| {
        link.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    Some(has(b"$deltatoken=") || has(b"%24deltatoken="))
}

/// What may follow a service root in a link: the end of the string or a URL delimiter.
fn is_delimiter(b: Option<u8>) -> bool {
    match b {
        None => true,
        Some(b) => {
            !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%' | b':'))
        }
    }
}

/// A response body with upstream links rewritten as it streams.
struct RewriteBody {
    inner: Incoming,
    rewriter: LinkRewriter,
    done: bool,
}

impl HttpBody for RewriteBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    let rest = self.rewriter.finish();
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = self.rewriter.push(&data);
                        if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame.map_data(|d| d)))),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FROM: &str = "http://up:4004/odata/v4/shop";
    const TO: &str = "https://gw.example.com/api/odata/v4/shop";

    fn whole(input: &str) -> String {
        let mut r = LinkRewriter::new(FROM, TO);
        let mut out = r.push(input.as_bytes()).to_vec();
        out.extend_from_slice(&r.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn upstream_links_are_rewritten_in_plain_and_escaped_form() {
        let body = r#"{"@odata.context":"http://up:4004/odata/v4/shop/$metadata#C","@odata.nextLink":"http:\/\/up:4004\/odata\/v4\/shop\/C?$skiptoken=5","x":"http://up:4004/odata/v4/shopping"}"#;
        let out = whole(body);
        assert!(
            out.contains(r#""https://gw.example.com/api/odata/v4/shop/$metadata#C""#),
            "{out}"
        );
        assert!(
            out.contains(r#"https:\/\/gw.example.com\/api\/odata\/v4\/shop\/C?"#),
            "{out}"
        );
        assert!(out.contains("http://up:4004/odata/v4/shopping"), "{out}");
    }

    #[test]
    fn root_relative_links_follow_a_different_gateway_path() {
        let mut r = LinkRewriter::new("http://up:4004/odata/v4/shop", "http://gw/crm");
        let mut out = r.push(br#"{"a":"/odata/v4/shop/C?x=1","b":"\/odata\/v4\/shop\/C","c":"x /odata/v4/shop/C","d":"/odata/v4/shopping"}"#).to_vec();
        out.extend_from_slice(&r.finish());
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains(r#""a":"http://gw/crm/C?x=1""#), "{out}");
        assert!(out.contains(r#""b":"http:\/\/gw\/crm\/C""#), "{out}");
        assert!(out.contains(r#""c":"x /odata/v4/shop/C""#), "{out}");
        assert!(out.contains(r#""d":"/odata/v4/shopping""#), "{out}");
        assert_eq!(
            r.rewrite_str("/odata/v4/shop/C(1)").as_deref(),
            Some("http://gw/crm/C(1)")
        );
        // Same path on both sides: root-relative links already resolve on the gateway.
        let same = LinkRewriter::new(
            "http://up:4004/odata/v4/shop",
            "http://gw:8080/odata/v4/shop",
        );
        assert_eq!(same.rewrite_str("/odata/v4/shop/C(1)"), None);
    }

    #[test]
    fn upstream_delta_links_are_left_pointing_upstream_c36() {
        let body = r#"{"@odata.deltaLink":"http://up:4004/odata/v4/shop/C?$deltatoken=up1","@odata.nextLink":"http://up:4004/odata/v4/shop/C?$skiptoken=2"}"#;
        let out = whole(body);
        assert!(
            out.contains(r#""http://up:4004/odata/v4/shop/C?$deltatoken=up1""#),
            "{out}"
        );
        assert!(
            out.contains(r#""https://gw.example.com/api/odata/v4/shop/C?$skiptoken=2""#),
            "{out}"
        );
        let r = LinkRewriter::new(FROM, TO);
        assert_eq!(
            r.rewrite_str("http://up:4004/odata/v4/shop/C?%24deltatoken=x"),
            None
        );
    }

    #[test]
    fn headers_are_rewritten_only_when_they_point_upstream() {
        let r = LinkRewriter::new(FROM, TO);
        assert_eq!(
            r.rewrite_str("http://up:4004/odata/v4/shop/C(1)")
                .as_deref(),
            Some("https://gw.example.com/api/odata/v4/shop/C(1)")
        );
        assert_eq!(r.rewrite_str("C(1)"), None);
        assert_eq!(r.rewrite_str("http://up:4004/other"), None);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }

    #[test]
    fn rules_are_kept_per_pair_of_roots_and_never_mixed_up() {
        let a = LinkRewriter::new(FROM, TO);
        let b = LinkRewriter::new(FROM, "http://other/gw");
        assert!(Arc::ptr_eq(&a.rules, &LinkRewriter::new(FROM, TO).rules));
        assert!(!Arc::ptr_eq(&a.rules, &b.rules));
        assert_eq!(
            a.rewrite_str(&format!("{FROM}/X")).as_deref(),
            Some(format!("{TO}/X").as_str())
        );
        assert_eq!(
            b.rewrite_str(&format!("{FROM}/X")).as_deref(),
            Some("http://other/gw/X")
        );
        // More pairs than the thread keeps: the oldest is built again, and still right.
        for i in 0..RECENT_RULES + 2 {
            let r = LinkRewriter::new(FROM, &format!("http://gw{i}/s"));
            assert_eq!(
                r.rewrite_str(&format!("{FROM}/X")),
                Some(format!("http://gw{i}/s/X"))
            );
        }
        RECENT.with(|recent| assert_eq!(recent.borrow().len(), RECENT_RULES));
        let again = LinkRewriter::new(FROM, TO);
        assert!(!Arc::ptr_eq(&a.rules, &again.rules), "built again");
        assert_eq!(
            again.rewrite_str(&format!("{FROM}/X")).as_deref(),
            Some(format!("{TO}/X").as_str())
        );
    }

    /// The rewriter as first written, one byte at a time: the reference for the substring search.
    fn bytewise(r: &LinkRewriter, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        'outer: while i < data.len() {
            if matches!(data[i], b'h' | b'"') {
                for (pattern, replacement) in &r.rules.patterns {
                    if data[i..].starts_with(pattern)
                        && is_delimiter(data.get(i + pattern.len()).copied())
                    {
                        out.extend_from_slice(replacement);
                        i += pattern.len();
                        continue 'outer;
                    }
                }
            }
            out.push(data[i]);
            i += 1;
        }
        out
    }

    #[test]
    fn bodies_without_upstream_links_need_no_rewriting() {
        let r = LinkRewriter::new(FROM, TO);
        assert!(!r.may_rewrite(br#"{"@odata.context":"$metadata#Products/$entity","ID":1}"#));
        assert!(!r.may_rewrite(b"http://up:4004/odata/v4/sho"));
        assert!(r.may_rewrite(br#"{"a":"http://up:4004/odata/v4/shop/C"}"#));
        assert!(r.may_rewrite(br#"{"a":"http:\/\/up:4004\/odata\/v4\/shop"}"#));
        let relative = LinkRewriter::new(FROM, "http://gw/crm");
        assert!(relative.may_rewrite(br#"{"a":"/odata/v4/shop/C"}"#));
    }

    #[test]
    fn url_paths_are_read_without_parsing_the_url() {
        assert_eq!(url_path("http://h:1/a/b?x=1"), "/a/b");
        assert_eq!(url_path("https://h"), "");
        assert_eq!(url_path("http://h/"), "/");
        assert_eq!(url_path("http://h/a#f"), "/a");
        assert_eq!(url_path("no scheme"), "");
    }

    proptest! {
        /// The substring search rewrites exactly what a byte-by-byte scan does.
        #[test]
        fn search_agrees_with_the_bytewise_scan(
            parts in prop::collection::vec(prop_oneof![
                Just(FROM.to_owned()),
                Just(FROM.replace('/', "\\/")),
                Just("\"/odata/v4/shop".to_owned()),
                Just("\"\\/odata\\/v4\\/shop".to_owned()),
                Just("/C?x=1\"".to_owned()),
                Just("ping".to_owned()),
                Just("h".to_owned()),
                "[a-z/:\\\\\" ]{0,8}",
            ], 0..12),
            to in prop_oneof![Just(TO), Just("http://gw/crm")],
        ) {
            let input = parts.concat();
            let r = LinkRewriter::new(FROM, to);
            let mut out = Vec::new();
            r.scan(input.as_bytes(), true, &mut out);
            prop_assert_eq!(out, bytewise(&r, input.as_bytes()));
        }

        /// Splitting the stream anywhere gives the same output as rewriting it whole.
        #[test]
        fn chunking_never_changes_the_output(
            parts in prop::collection::vec(prop_oneof![
                Just(FROM.to_owned()),
                Just(FROM.replace('/', "\\/")),
                Just("/C?x=1\"".to_owned()),
                Just("/C?$deltatoken=1\"".to_owned()),
                Just("ping".to_owned()),
                "[a-z/:\\\\\" ]{0,8}",
            ], 0..12),
            cuts in prop::collection::vec(0usize..200, 0..6),
        ) {
            let input = parts.concat();
            let expected = whole(&input);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort();
            let mut r = LinkRewriter::new(FROM, TO);
            let mut out = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([input.len()]) {
                out.extend_from_slice(&r.push(&input.as_bytes()[last..c]));
                last = c;
            }
            out.extend_from_slice(&r.finish());
            prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}

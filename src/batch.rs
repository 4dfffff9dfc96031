//! `$batch` (C34, P "Batch Requests"): a JSON or multipart batch is read whole (bounded by
//! `limits.max_batch_bytes` and `limits.max_batch_parts`). Parts the gateway answers when they come
//! alone — tracked reads, delta links, its next links and `/$count` on a delta link — are answered
//! here by the same `server::route_head` a single request goes through; the rest go upstream as
//! one batch, in their order, change sets and `Content-ID`s as the client wrote them. The answers
//! are merged in request order into one batch answer of the same format, and upstream links in
//! every part are rewritten to the gateway.
//!
//! The gateway's parts are answered before the rest is forwarded: a tracked read does not see a
//! write later in the same batch, and the next delta reports that write (C28).

mod json;
mod multipart;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::App;
use crate::body::{self, Body};
use crate::decide::{Decided, route_head};
use crate::error::{Error, UpstreamFailure};
use crate::odata::prefer::Preferences;
use crate::odata::{ODataVersion, names};
use crate::proxy::{LinkRewriter, strip_hop_by_hop};
use crate::router::{self, Decision};

/// One request inside a batch, as the gateway needs to see it.
pub(crate) struct Part {
    /// `Content-ID` (multipart) or `id` (JSON), echoed on its answer.
    pub(crate) id: Option<String>,
    pub(crate) method: Method,
    /// The URL as written: relative to the service root, root-relative or absolute.
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    /// Inside a change set (multipart) or an atomicity group (JSON).
    pub(crate) in_change_set: bool,
}

/// Why a batch cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    /// Not a batch of either format.
    #[error("malformed $batch: {0}")]
    Malformed(String),
}

impl From<BatchError> for Error {
    fn from(e: BatchError) -> Self {
        Error::client(StatusCode::BAD_REQUEST, "MalformedBatch", e.to_string())
    }
}

/// The batch as read, in its format.
enum Parsed {
    Json(Vec<json::Request>),
    Multipart {
        boundary: String,
        items: Vec<multipart::Item>,
    },
}

/// An answer the gateway wrote for one part.
struct Own {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// Answer a `POST …/$batch` for `route`.
pub(crate) async fn answer(
    app: &App,
    parts: http::request::Parts,
    incoming: Incoming,
    peer: SocketAddr,
    route: usize,
) -> Result<Response<Body>, Error> {
    let limits = &app.config.limits;
    let version = ODataVersion::negotiate(
        parts
            .headers
            .get(names::ODATA_MAX_VERSION)
            .and_then(|v| v.to_str().ok()),
    );
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        Error::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!(
                "the $batch body is larger than the limit of {} bytes",
                limits.max_batch_bytes
            ),
        )
    };
    if declared.is_some_and(|n| n > limits.max_batch_bytes as u64) {
        return Err(too_large());
    }
    let read = Limited::new(incoming, limits.max_batch_bytes).collect();
    let body = match tokio::time::timeout(limits.body_read_timeout, read).await {
        Err(_) => {
            return Err(Error::client(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                format!(
                    "the request body did not arrive within the limit of {} ms",
                    limits.body_read_timeout.as_millis()
                ),
            ));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(_)) => return Err(Error::bad_request("the $batch body broke off")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed = if let Some(boundary) = multipart::boundary_of(content_type) {
        let items = multipart::parse_request(&body, &boundary)?;
        Parsed::Multipart { boundary, items }
    } else if content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    {
        Parsed::Json(json::parse_request(&body)?)
    } else {
        return Err(BatchError::Malformed(
            "the Content-Type must be multipart/mixed with a boundary, or application/json".into(),
        )
        .into());
    };
    let all: Vec<&Part> = match &parsed {
        Parsed::Json(requests) => requests.iter().map(|r| &r.part).collect(),
        Parsed::Multipart { items, .. } => items.iter().flat_map(|i| i.parts.iter()).collect(),
    };
    if all.len() > limits.max_batch_parts {
        return Err(Error::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TooManyBatchParts",
            format!(
                "the $batch has {} requests, more than the limit of {}",
                all.len(),
                limits.max_batch_parts
            ),
        ));
    }
    let service = &app.services[route];
    let prefix = service.route.prefix.as_str();
    // Which parts the gateway answers: those it would answer alone.
    let mut heads = Vec::with_capacity(all.len());
    for part in &all {
        let head = inner_head(&parts, prefix, part)?;
        let ours = is_ours(app, &head);
        if ours && part.in_change_set {
            return Err(Error::bad_request(
                "a tracked request, delta link or next link of the gateway cannot be inside a change set; send it outside",
            ));
        }
        heads.push((head, ours));
    }
    let mut own: Vec<Option<Own>> = Vec::with_capacity(heads.len());
    for (head, ours) in heads {
        own.push(if ours {
            answer_here(app, head, peer).await
        } else {
            None
        });
    }
    let upstream_root = service
        .route
        .upstream
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let public_root = {
        let mut probe = Request::new(());
        *probe.uri_mut() = parts.uri.clone();
        *probe.headers_mut() = parts.headers.clone();
        format!("{}{prefix}", router::public_base(app, &probe, peer))
    };
    let links = Links {
        from: &upstream_root,
        to: &public_root,
    };
    if own.iter().all(Option::is_none) {
        // Nothing for the gateway: the batch goes upstream as it came, but for the track-changes
        // preference of its requests.
        let body = match &parsed {
            Parsed::Json(requests)
                if requests
                    .iter()
                    .any(|r| json::without_track_changes(&r.raw).is_some()) =>
            {
                Bytes::from(json::join_requests(
                    requests
                        .iter()
                        .map(forwarded_json)
                        .collect::<Vec<_>>()
                        .iter()
                        .map(|r| &**r),
                ))
            }
            Parsed::Multipart { boundary, items }
                if items
                    .iter()
                    .any(|i| item_without_track_changes(i).is_some()) =>
            {
                Bytes::from(multipart::join(
                    boundary,
                    &items.iter().map(forwarded_item).collect::<Vec<_>>(),
                ))
            }
            _ => body,
        };
        let fetched = forward(app, &parts, &upstream_root, prefix, body).await?;
        return Ok(passed_through(fetched, &parsed, &links));
    }
    match parsed {
        Parsed::Json(requests) => {
            merge_json(
                app,
                &parts,
                &upstream_root,
                prefix,
                requests,
                own,
                &links,
                version,
            )
            .await
        }
        Parsed::Multipart { boundary, items } => {
            merge_multipart(
                app,
                &parts,
                &upstream_root,
                prefix,
                &boundary,
                items,
                own,
                &links,
                version,
            )
            .await
        }
    }
}

/// The service roots links are rewritten between.
struct Links<'a> {
    from: &'a str,
    to: &'a str,
}

impl Links<'_> {
    fn rewrite(&self, data: &[u8]) -> Vec<u8> {
        let mut r = LinkRewriter::new(self.from, self.to);
        let mut out = r.push(data).to_vec();
        out.extend_from_slice(&r.finish());
        out
    }
}

/// The head of a part as a request of its own: the batch's headers (credentials, `Host`,
/// `OData-MaxVersion`) with the part's own on top, the URL resolved against the service root.
fn inner_head(
    outer: &http::request::Parts,
    prefix: &str,
    part: &Part,
) -> Result<http::request::Parts, BatchError> {
    let target = part.target.as_str();
    let path_and_query = if target.starts_with("http://") || target.starts_with("https://") {
        let url = url::Url::parse(target)
            .map_err(|_| BatchError::Malformed(format!("not a URL: {target:.80}")))?;
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    } else if target.starts_with('/') {
        target.to_owned()
    } else {
        format!("{prefix}/{target}")
    };
    let (mut head, ()) = Request::builder()
        .method(part.method.clone())
        .uri(path_and_query.as_str())
        .body(())
        .map_err(|_| BatchError::Malformed(format!("not a request URL: {target:.80}")))?
        .into_parts();
    let mut headers = outer.headers.clone();
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::ACCEPT,
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
        header::EXPECT,
        HeaderName::from_static("prefer"),
    ] {
        headers.remove(name);
    }
    let mut replaced = Vec::new();
    for (name, value) in &part.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| BatchError::Malformed(format!("not a header name: {name:.40}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| BatchError::Malformed(format!("not a value for {name}")))?;
        if !replaced.contains(&name) {
            headers.remove(&name);
            replaced.push(name.clone());
        }
        headers.append(name, value);
    }
    // HTTP/2 carries the host in the URI, not in a header; links are built from it.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = outer.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    head.headers = headers;
    Ok(head)
}

/// Whether the gateway answers this request itself when it comes alone (or refuses it, which
/// also keeps a gateway token from reaching the upstream).
fn is_ours(app: &App, head: &http::request::Parts) -> bool {
    let prefs = Preferences::parse(
        head.headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    !matches!(
        router::classify(
            &app.services,
            &head.method,
            head.uri.path(),
            head.uri.query(),
            &prefs,
        ),
        Ok(Decision::Proxy { .. } | Decision::NoRoute)
    )
}

/// Answer one part as a request of its own. `None` when it is to be forwarded after all (a set
/// the gateway cannot track is read normally, C2).
async fn answer_here(app: &App, mut head: http::request::Parts, peer: SocketAddr) -> Option<Own> {
    let version = ODataVersion::negotiate(
        head.headers
            .get(names::ODATA_MAX_VERSION)
            .and_then(|v| v.to_str().ok()),
    );
    let response = match route_head(app, &mut head, peer, version).await {
        Ok(Decided::Proxy(_)) => return None,
        Ok(Decided::Answer(r)) => r,
        Ok(Decided::Subscriptions { .. }) => Error::bad_request(
            "$subscriptions is not served inside a $batch; send the request on its own",
        )
        .into_response(version),
        Err(e) => e.into_response(version),
    };
    let (mut parts, body) = response.into_parts();
    if !parts.headers.contains_key(names::ODATA_VERSION) {
        parts.headers.insert(
            names::ODATA_VERSION,
            HeaderValue::from_static(version.header_value()),
        );
    }
    let body = match collect(body, app.config.limits.max_page_bytes).await {
        Some(b) => b,
        None => {
            let (p, b) = Error::Internal("a batch answer could not be written".into())
                .into_response(version)
                .into_parts();
            parts = p;
            collect(b, usize::MAX).await.unwrap_or_default()
        }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Some(Own {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A body read whole, at most `limit` bytes; `None` when larger or broken.
async fn collect(mut body: Body, limit: usize) -> Option<Bytes> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if out.len() + data.len() > limit {
                return None;
            }
            out.extend_from_slice(&data);
        }
    }
    Some(out.freeze())
}

/// Send a batch body upstream to the route's `$batch` with the client's headers.
async fn forward(
    app: &App,
    outer: &http::request::Parts,
    upstream_root: &str,
    prefix: &str,
    body: Bytes,
) -> Result<crate::upstream::Fetched, Error> {
    let rest = outer.uri.path().strip_prefix(prefix).unwrap_or("/$batch");
    let mut url = format!("{upstream_root}{rest}");
    if let Some(q) = outer.uri.query() {
        url.push('?');
        url.push_str(q);
    }
    let mut headers = outer.headers.clone();
    strip_hop_by_hop(&mut headers);
    // The batch's own preferences apply to every request in it: none of those it forwards is
    // tracked (C2, C36).
    crate::decide::strip_track_changes(&mut headers);
    headers.remove(header::HOST);
    // Answers come back uncompressed so that links in them can be rewritten.
    headers.remove(header::ACCEPT_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut request = Request::post(url.as_str())
        .body(body::full(body))
        .map_err(|_| Error::bad_request("the request path cannot be forwarded upstream"))?;
    *request.headers_mut() = headers;
    app.upstream_for(prefix)
        .fetch(request, app.config.limits.max_page_bytes)
        .await
}

/// A JSON request as it goes upstream: without the track-changes preference, since the gateway
/// forwards only what it does not track, and an upstream that tracks changes itself would answer
/// with delta links of its own (C2, C36).
fn forwarded_json(r: &json::Request) -> Box<serde_json::value::RawValue> {
    json::without_track_changes(&r.raw).unwrap_or_else(|| r.raw.clone())
}

/// A multipart request part without the track-changes preference, when it had one; change sets
/// (writes) are left as they are.
fn item_without_track_changes(item: &multipart::Item) -> Option<Bytes> {
    match item.parts.as_slice() {
        [one] if !one.in_change_set => multipart::without_track_changes(&item.raw),
        _ => None,
    }
}

/// A multipart item as it goes upstream (see `forwarded_json`).
fn forwarded_item(item: &multipart::Item) -> Bytes {
    item_without_track_changes(item).unwrap_or_else(|| item.raw.clone())
}

/// The upstream's answer to a batch that went up as it came, links rewritten in every part.
fn passed_through(
    fetched: crate::upstream::Fetched,
    parsed: &Parsed,
    links: &Links,
) -> Response<Body> {
    let boundary = fetched
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart::boundary_of);
    let body = match (parsed, boundary) {
        (Parsed::Multipart { .. }, Some(b)) => match rewrite_multipart(&fetched.body, &b, links) {
            Some(rewritten) => rewritten,
            None => links.rewrite(&fetched.body),
        },
        _ => links.rewrite(&fetched.body),
    };
    respond(fetched.status, fetched.headers, body, links)
}

fn respond(
    status: StatusCode,
    mut headers: HeaderMap,
    body: Vec<u8>,
    links: &Links,
) -> Response<Body> {
    strip_hop_by_hop(&mut headers);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        if let Some(v) = headers.get(&name).and_then(|v| v.to_str().ok())
            && let Some(rewritten) = LinkRewriter::new(links.from, links.to).rewrite_str(v)
            && let Ok(v) = HeaderValue::from_str(&rewritten)
        {
            headers.insert(name, v);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A multipart answer with links rewritten part by part, so that each inner `Content-Length`
/// can be set to the rewritten body's. `None` when it is not readable as multipart.
fn rewrite_multipart(body: &[u8], boundary: &str, links: &Links) -> Option<Vec<u8>> {
    let parts = multipart::split(body, boundary).ok()?;
    let rewritten: Option<Vec<Bytes>> = parts.iter().map(|p| rewrite_part(p, links)).collect();
    Some(multipart::join(boundary, &rewritten?))
}

fn rewrite_part(raw: &[u8], links: &Links) -> Option<Bytes> {
    let split_at = blank_line(raw)?;
    let (mime, content) = raw.split_at(split_at);
    let mime_text = std::str::from_utf8(mime).ok()?;
    let inner_boundary = mime_text
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| v.trim())
        })
        .and_then(multipart::boundary_of);
    let mut out = mime.to_vec();
    match inner_boundary {
        Some(b) => out.extend_from_slice(&rewrite_multipart(content, &b, links)?),
        None => {
            // An HTTP response: status line and headers, then the body.
            let Some(head_end) = blank_line(content) else {
                out.extend_from_slice(&links.rewrite(content));
                return Some(Bytes::from(out));
            };
            let (head, body) = content.split_at(head_end);
            let body = links.rewrite(body);
            let head = links.rewrite(head);
            let head = String::from_utf8(head).ok()?;
            for line in head.split_inclusive('\n') {
                let is_length = line
                    .split_once(':')
                    .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"));
                if is_length {
                    let ending = if line.ends_with("\r\n") { "\r\n" } else { "\n" };
                    out.extend_from_slice(
                        format!("Content-Length: {}{ending}", body.len()).as_bytes(),
                    );
                } else {
                    out.extend_from_slice(line.as_bytes());
                }
            }
            out.extend_from_slice(&body);
        }
    }
    Some(Bytes::from(out))
}

/// Where the content after the first blank line starts.
fn blank_line(data: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(data, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(data, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[allow(clippy::too_many_arguments)]
async fn merge_json(
    app: &App,
    outer: &http::request::Parts,
    upstream_root: &str,
    prefix: &str,
    requests: Vec<json::Request>,
    own: Vec<Option<Own>>,
    links: &Links<'_>,
    version: ODataVersion,
) -> Result<Response<Body>, Error> {
    let answered: Vec<&str> = requests
        .iter()
        .zip(&own)
        .filter(|(_, o)| o.is_some())
        .filter_map(|(r, _)| r.part.id.as_deref())
        .collect();
    if let Some(r) = requests
        .iter()
        .zip(&own)
        .find(|(r, o)| o.is_none() && r.depends_on.iter().any(|d| answered.contains(&d.as_str())))
    {
        return Err(Error::bad_request(format!(
            "request {} depends on a request the gateway answers itself; send them in separate batches",
            r.0.part.id.as_deref().unwrap_or("?")
        )));
    }
    let forwarded: Vec<&json::Request> = requests
        .iter()
        .zip(&own)
        .filter(|(_, o)| o.is_none())
        .map(|(r, _)| r)
        .collect();
    let (status, mut headers, mut upstream) = if forwarded.is_empty() {
        (StatusCode::OK, HeaderMap::new(), Vec::new())
    } else {
        let forwarded: Vec<_> = forwarded.iter().map(|r| forwarded_json(r)).collect();
        let body = json::join_requests(forwarded.iter().map(|r| &**r));
        let fetched = forward(app, outer, upstream_root, prefix, Bytes::from(body)).await?;
        let rewritten = links.rewrite(&fetched.body);
        match (
            fetched.status.is_success(),
            json::parse_responses(&rewritten),
        ) {
            (true, Ok(responses)) => (fetched.status, fetched.headers, responses),
            // The upstream refused the batch as a whole: its answer is the answer.
            _ => return Ok(respond(fetched.status, fetched.headers, rewritten, links)),
        }
    };
    let mut out = Vec::new();
    for (request, own) in requests.iter().zip(own) {
        match own {
            Some(o) => out.push(json::response(
                request.part.id.as_deref(),
                o.status,
                &o.headers,
                &o.body,
            )?),
            None => {
                let at = upstream
                    .iter()
                    .position(|(id, _)| id.is_some() && *id == request.part.id)
                    .or_else(|| {
                        request
                            .part
                            .id
                            .is_none()
                            .then_some(0)
                            .filter(|_| !upstream.is_empty())
                    });
                if let Some(at) = at {
                    out.push(upstream.remove(at).1);
                }
            }
        }
    }
    out.extend(upstream.into_iter().map(|(_, raw)| raw));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if !headers.contains_key(names::ODATA_VERSION) {
        headers.insert(
            names::ODATA_VERSION,
            HeaderValue::from_static(version.header_value()),
        );
    }
    let body = json::join_responses(out.iter().map(|r| &**r));
    Ok(respond(status, headers, body, links))
}

#[allow(clippy::too_many_arguments)]
async fn merge_multipart(
    app: &App,
    outer: &http::request::Parts,
    upstream_root: &str,
    prefix: &str,
    boundary: &str,
    items: Vec<multipart::Item>,
    own: Vec<Option<Own>>,
    links: &Links<'_>,
    version: ODataVersion,
) -> Result<Response<Body>, Error> {
    // Change sets never hold the gateway's parts, so item i is answered here exactly when its one
    // request is; `own` is indexed by request, flattened.
    let mut own = own.into_iter();
    let mut answers: Vec<Option<Own>> = Vec::with_capacity(items.len());
    for item in &items {
        let mut mine = None;
        for _ in &item.parts {
            if let Some(o) = own.next().flatten() {
                mine = Some(o);
            }
        }
        answers.push(mine);
    }
    let forwarded: Vec<Bytes> = items
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.is_none())
        .map(|(i, _)| forwarded_item(i))
        .collect();
    let (status, mut headers, response_boundary, mut upstream) = if forwarded.is_empty() {
        let boundary = format!("batchresponse_{}", random_hex());
        (
            StatusCode::OK,
            HeaderMap::new(),
            boundary,
            Vec::new().into_iter(),
        )
    } else {
        let body = multipart::join(boundary, &forwarded);
        let fetched = forward(app, outer, upstream_root, prefix, Bytes::from(body)).await?;
        let answer_boundary = fetched
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(multipart::boundary_of);
        let parts = answer_boundary.as_ref().and_then(|b| {
            let rewritten = rewrite_multipart(&fetched.body, b, links)?;
            multipart::split(&rewritten, b).ok()
        });
        match (fetched.status.is_success(), answer_boundary, parts) {
            (true, Some(b), Some(parts)) => (fetched.status, fetched.headers, b, parts.into_iter()),
            _ => {
                let rewritten = links.rewrite(&fetched.body);
                return Ok(respond(fetched.status, fetched.headers, rewritten, links));
            }
        }
    };
    let mut out = Vec::new();
    for (item, answer) in items.iter().zip(answers) {
        match answer {
            Some(o) => {
                let part = multipart::response_part(
                    item.parts[0].id.as_deref(),
                    o.status,
                    &o.headers,
                    &o.body,
                );
                if memchr::memmem::find(&part, format!("--{response_boundary}").as_bytes())
                    .is_some()
                {
                    return Err(Error::upstream(
                        UpstreamFailure::BadAnswer,
                        "an answer contains the batch's boundary",
                    ));
                }
                out.push(part);
            }
            None => out.extend(upstream.next()),
        }
    }
    out.extend(upstream);
    let content_type = format!("multipart/mixed; boundary={response_boundary}");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type)
            .map_err(|_| Error::Internal("a batch boundary is not a header value".into()))?,
    );
    if !headers.contains_key(names::ODATA_VERSION) {
        headers.insert(
            names::ODATA_VERSION,
            HeaderValue::from_static(version.header_value()),
        );
    }
    Ok(respond(
        status,
        headers,
        multipart::join(&response_boundary, &out),
        links,
    ))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // The boundary only has to be absent from the parts, which are checked against it.
        return "0d0a2d2d".repeat(3);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

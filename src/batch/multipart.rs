//! The multipart `$batch` format (P "Multipart Batch Format", RFC 2046): a `multipart/mixed` body
//! whose parts are `application/http` requests or `multipart/mixed` change sets of them. Parts are
//! kept as the bytes they came in, so that what is forwarded is what the client wrote.

use bytes::Bytes;

use super::{BatchError, Part};

/// One top-level part of a multipart batch (request or answer).
pub(crate) struct Item {
    /// The part as it came: its MIME headers, blank line and content.
    pub(crate) raw: Bytes,
    /// The requests it holds: one, or the members of a change set.
    pub(crate) parts: Vec<Part>,
}

/// The `boundary` parameter of a `multipart/mixed` content type.
pub(crate) fn boundary_of(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.trim().split_once('=')?;
        let value = value.trim().trim_matches('"');
        (name.trim().eq_ignore_ascii_case("boundary") && !value.is_empty() && value.len() <= 70)
            .then(|| value.to_owned())
    })
}

/// Split a multipart body into the raw bytes of its parts (RFC 2046 §5.1.1: each delimiter line
/// starts with `--boundary`; the close delimiter ends in `--`). Bare LF line ends are accepted.
pub(crate) fn split(body: &[u8], boundary: &str) -> Result<Vec<Bytes>, BatchError> {
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let starts = |at: usize| body[at..].starts_with(d) && (at == 0 || body[at - 1] == b'\n');
    let mut at = (0..body.len())
        .find(|&i| starts(i))
        .ok_or_else(|| BatchError::Malformed(format!("no part starts with --{boundary}")))?;
    let mut parts = Vec::new();
    loop {
        let after = at + d.len();
        if body[after..].starts_with(b"--") {
            return Ok(parts);
        }
        let line_end = memchr::memchr(b'\n', &body[after..])
            .ok_or_else(|| BatchError::Malformed("a delimiter line does not end".into()))?;
        let content_start = after + line_end + 1;
        let next = (content_start..body.len())
            .find(|&i| body[i] == b'-' && starts(i))
            .ok_or_else(|| {
                BatchError::Malformed(format!("the batch does not end with --{boundary}--"))
            })?;
        // The line break before a delimiter belongs to the delimiter.
        let mut content_end = next;
        if content_end > content_start && body[content_end - 1] == b'\n' {
            content_end -= 1;
            if content_end > content_start && body[content_end - 1] == b'\r' {
                content_end -= 1;
            }
        }
        parts.push(Bytes::copy_from_slice(&body[content_start..content_end]));
        at = next;
    }
}

/// Header lines as (name, value).
pub(crate) type Headers = Vec<(String, String)>;

/// MIME or HTTP headers up to the blank line; the rest of `data` after it.
pub(crate) fn headers(data: &[u8]) -> Result<(Headers, &[u8]), BatchError> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let Some(end) = memchr::memchr(b'\n', &data[at..]) else {
            // Headers without a blank line and no content.
            let line = trim_cr(&data[at..]);
            if !line.is_empty() {
                out.push(header_line(line)?);
            }
            return Ok((out, &data[data.len()..]));
        };
        let line = trim_cr(&data[at..at + end]);
        at += end + 1;
        if line.is_empty() {
            return Ok((out, &data[at..]));
        }
        out.push(header_line(line)?);
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn header_line(line: &[u8]) -> Result<(String, String), BatchError> {
    let line = std::str::from_utf8(line)
        .map_err(|_| BatchError::Malformed("a header line is not UTF-8".into()))?;
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| BatchError::Malformed(format!("not a header line: {line:.80}")))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parse a multipart batch request into its top-level items.
pub(crate) fn parse_request(body: &[u8], boundary: &str) -> Result<Vec<Item>, BatchError> {
    let mut items = Vec::new();
    for raw in split(body, boundary)? {
        let (mime, content) = headers(&raw)?;
        let content_type = find(&mime, "content-type").unwrap_or("");
        if let Some(inner) = boundary_of(content_type) {
            let mut parts = Vec::new();
            for member in split(content, &inner)? {
                let (mime, content) = headers(&member)?;
                parts.push(request(&mime, content, true)?);
            }
            items.push(Item { raw, parts });
        } else {
            let part = request(&mime, content, false)?;
            items.push(Item {
                raw,
                parts: vec![part],
            });
        }
    }
    Ok(items)
}

/// One `application/http` request.
fn request(
    mime: &[(String, String)],
    content: &[u8],
    in_change_set: bool,
) -> Result<Part, BatchError> {
    let content_type = find(mime, "content-type").unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/http"))
    {
        return Err(BatchError::Malformed(format!(
            "a batch part has Content-Type {content_type:.80}, not application/http"
        )));
    }
    let line_end = memchr::memchr(b'\n', content)
        .ok_or_else(|| BatchError::Malformed("a batch part has no request line".into()))?;
    let line = std::str::from_utf8(trim_cr(&content[..line_end]))
        .map_err(|_| BatchError::Malformed("a request line is not UTF-8".into()))?;
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Err(BatchError::Malformed(format!(
            "not a request line: {line:.80}"
        )));
    };
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| BatchError::Malformed(format!("not a method: {method:.20}")))?;
    let (headers, _body) = headers(&content[line_end + 1..])?;
    Ok(Part {
        id: find(mime, "content-id")
            .or_else(|| find(&headers, "content-id"))
            .map(str::to_owned),
        method,
        target: target.to_owned(),
        headers,
        in_change_set,
    })
}

/// A top-level `application/http` request part without the track-changes preference in its
/// headers, for a request forwarded upstream (C2, C36); `None` when it has none (change sets hold
/// writes and are left as they are). Everything else keeps its bytes.
pub(crate) fn without_track_changes(raw: &[u8]) -> Option<Bytes> {
    let mime_end = blank_line_end(raw)?;
    let (mime, content) = raw.split_at(mime_end);
    let line_end = memchr::memchr(b'\n', content)? + 1;
    let head_end =
        line_end + blank_line_end(&content[line_end..]).unwrap_or(content.len() - line_end);
    let head = std::str::from_utf8(&content[line_end..head_end]).ok()?;
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(mime);
    out.extend_from_slice(&content[..line_end]);
    let mut changed = false;
    for line in head.split_inclusive('\n') {
        let prefer = line
            .split_once(':')
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case("prefer"));
        let Some((_, value)) = prefer else {
            out.extend_from_slice(line.as_bytes());
            continue;
        };
        let value = value.trim();
        let kept = crate::odata::prefer::without_track_changes(value);
        if kept.as_deref() == Some(value) {
            out.extend_from_slice(line.as_bytes());
            continue;
        }
        changed = true;
        if let Some(kept) = kept {
            let ending = if line.ends_with("\r\n") { "\r\n" } else { "\n" };
            out.extend_from_slice(format!("Prefer: {kept}{ending}").as_bytes());
        }
    }
    out.extend_from_slice(&content[head_end..]);
    changed.then(|| Bytes::from(out))
}

/// Where the content after the first blank line starts.
fn blank_line_end(data: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(data, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(data, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A multipart body from raw parts.
pub(crate) fn join(boundary: &str, parts: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// An answer part written by the gateway: `application/http` with the response inside.
pub(crate) fn response_part(
    id: Option<&str>,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Bytes {
    let mut out =
        String::from("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n");
    if let Some(id) = id {
        out.push_str(&format!("Content-ID: {id}\r\n"));
    }
    out.push_str(&format!(
        "\r\nHTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    ));
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "--b1\r\nContent-Type: application/http\r\nContent-ID: 1\r\n\r\nGET Customers?$top=1 HTTP/1.1\r\nPrefer: odata.track-changes\r\n\r\n\r\n--b1\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs\r\nContent-Type: application/http\r\nContent-ID: 2\r\n\r\nPOST Customers HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"ID\":9}\r\n--cs--\r\n\r\n--b1--\r\n";

    #[test]
    fn a_forwarded_part_loses_only_the_track_changes_preference() {
        let part = b"Content-Type: application/http\r\nContent-ID: 1\r\n\r\nGET Customers?$apply=x HTTP/1.1\r\nPrefer: odata.track-changes, odata.maxpagesize=5\r\nAccept: application/json\r\n\r\n";
        let out = without_track_changes(part).expect("rewritten");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "Content-Type: application/http\r\nContent-ID: 1\r\n\r\nGET Customers?$apply=x HTTP/1.1\r\nPrefer: odata.maxpagesize=5\r\nAccept: application/json\r\n\r\n"
        );
        let only = b"Content-Type: application/http\n\nGET Customers(1) HTTP/1.1\nprefer: track-changes\n\n";
        let out = without_track_changes(only).expect("rewritten");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "Content-Type: application/http\n\nGET Customers(1) HTTP/1.1\n\n"
        );
        let untouched = b"Content-Type: application/http\r\n\r\nPOST Customers HTTP/1.1\r\nPrefer: return=minimal\r\nContent-Type: application/json\r\n\r\n{\"Prefer\":\"odata.track-changes\"}";
        assert!(without_track_changes(untouched).is_none());
    }

    #[test]
    fn requests_and_change_sets_are_read_with_their_content_ids() {
        let items = parse_request(BODY.as_bytes(), "b1").unwrap();
        assert_eq!(items.len(), 2);
        assert!(!items[0].parts[0].in_change_set);
        assert_eq!(items[0].parts[0].target, "Customers?$top=1");
        assert_eq!(items[0].parts[0].id.as_deref(), Some("1"));
        assert_eq!(items[0].parts[0].headers[0].1, "odata.track-changes");
        assert!(items[1].parts[0].in_change_set);
        assert_eq!(items[1].parts[0].method, http::Method::POST);
        assert_eq!(items[1].parts[0].id.as_deref(), Some("2"));
        // Rejoined, the change set is the bytes it came as.
        let joined = join("b1", &[items[1].raw.clone()]);
        assert!(
            String::from_utf8(joined)
                .unwrap()
                .contains("{\"ID\":9}\r\n--cs--")
        );
    }

    proptest::proptest! {
        /// Whatever a client sends, reading it is an answer or an error, never a panic.
        #[test]
        fn any_body_is_read_or_refused_without_a_panic(
            pieces in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just("--b1".to_owned()),
                proptest::strategy::Just("--b1--".to_owned()),
                proptest::strategy::Just("\r\n".to_owned()),
                proptest::strategy::Just("\n".to_owned()),
                proptest::strategy::Just("Content-Type: application/http\r\n".to_owned()),
                proptest::strategy::Just("Content-Type: multipart/mixed; boundary=b1\r\n".to_owned()),
                proptest::strategy::Just("GET Customers HTTP/1.1\r\n".to_owned()),
                "[ -~]{0,12}",
            ], 0..24),
        ) {
            let body = pieces.concat();
            let _ = parse_request(body.as_bytes(), "b1");
            let _ = super::super::json::parse_request(body.as_bytes());
        }
    }

    #[test]
    fn broken_batches_are_errors() {
        for body in [
            "",
            "--b1\r\nContent-Type: application/http\r\n\r\nGET x HTTP/1.1\r\n",
            "--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1--",
            "--b1\r\nContent-Type: application/http\r\n\r\n\r\n--b1--",
        ] {
            assert!(parse_request(body.as_bytes(), "b1").is_err(), "{body:?}");
        }
        assert_eq!(
            boundary_of("multipart/mixed; boundary=\"x y\"").as_deref(),
            Some("x y")
        );
        assert_eq!(boundary_of("application/json"), None);
    }
}

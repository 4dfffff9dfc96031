//! gzip both ways, with flate2: upstream pages that a refresh reads come compressed when the
//! upstream can (decoded under the same size bound as plain ones, so a small body that inflates
//! beyond `max_page_bytes` fails the refresh), and the gateway's own tracked responses go out
//! compressed to clients that accept gzip. Pass-through responses are never touched here: the
//! proxy asks upstreams for identity bodies so that it can rewrite their links.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::{GzEncoder, MultiGzDecoder};
use http::Response;
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};

use crate::body::{Body, BoxError};

/// The `Accept-Encoding` of the gateway's own upstream reads.
pub(crate) const UPSTREAM_ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("gzip");

/// Tracked bodies of a known size below this go out uncompressed: the gzip framing and the
/// encoder's setup cost more than the bytes saved.
const MIN_COMPRESSED_BYTES: u64 = 1024;

/// Input compressed (or inflated) per step before other tasks get the thread again, so that a
/// page of hundreds of MiB does not hold a runtime thread for its whole length.
const STEP_BYTES: usize = 64 * 1024;

/// How an upstream body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// As is.
    Identity,
    /// gzip (RFC 9110 §8.4.1.3), possibly several members.
    Gzip,
}

/// The coding of an upstream response; `Err` names one the gateway did not ask for and cannot read.
pub(crate) fn coding(headers: &HeaderMap) -> Result<Coding, String> {
    let mut coding = Coding::Identity;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("?");
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token.to_ascii_lowercase().as_str() {
                "identity" => {}
                "gzip" | "x-gzip" if coding == Coding::Identity => coding = Coding::Gzip,
                _ => return Err(text.to_owned()),
            }
        }
    }
    Ok(coding)
}

/// Why inflating an upstream body stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// The decoded body outgrew the limit.
    TooLarge,
    /// Not valid gzip, or cut short.
    Corrupt,
}

/// A sink that refuses to grow beyond its limit: the decoder fails as soon as a body inflates
/// past it, with no more than the limit in memory.
struct Capped {
    out: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(data.len()) > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("decoded body over the limit"));
        }
        self.out.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Inflates a gzip body as its chunks arrive, at most `limit` decoded bytes.
pub(crate) struct Inflater {
    decoder: MultiGzDecoder<Capped>,
}

impl Inflater {
    /// A decoder whose output may not exceed `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Inflater {
            decoder: MultiGzDecoder::new(Capped {
                out: Vec::new(),
                limit,
                exceeded: false,
            }),
        }
    }

    /// Decode the next chunk of the compressed body, a step at a time.
    pub(crate) async fn push(&mut self, chunk: &[u8]) -> Result<(), InflateError> {
        for piece in chunk.chunks(STEP_BYTES) {
            self.decoder.write_all(piece).map_err(|_| self.failure())?;
            if chunk.len() > STEP_BYTES {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    /// The decoded body, once the compressed one has ended.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, InflateError> {
        self.decoder.try_finish().map_err(|_| self.failure())?;
        let capped = self.decoder.finish().map_err(|_| InflateError::Corrupt)?;
        Ok(capped.out)
    }

    fn failure(&self) -> InflateError {
        if self.decoder.get_ref().exceeded {
            InflateError::TooLarge
        } else {
            InflateError::Corrupt
        }
    }
}

/// Whether a client's `Accept-Encoding` takes gzip (RFC 9110 §12.5.3: `gzip`, `x-gzip` or `*`,
/// with a non-zero weight; an explicit `gzip;q=0` refuses it even after `*`).
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let weight = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            let accepted = weight > 0.0;
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(accepted),
                "*" => any = Some(accepted),
                _ => {}
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// The tracked response as the client asked for it: `Vary: Accept-Encoding` always (the
/// representation depends on it), and gzip-compressed when `gzip` is true and it is worth it — a
/// 2xx JSON body that is not already encoded and not known to be tiny.
pub(crate) fn negotiate(mut response: Response<Body>, gzip: bool) -> Response<Body> {
    let headers = response.headers_mut();
    // One `Vary` line: some clients read only the first.
    let vary = match headers.get(header::VARY).and_then(|v| v.to_str().ok()) {
        Some(v) if !v.trim().is_empty() => format!("{v}, Accept-Encoding"),
        _ => "Accept-Encoding".to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&vary) {
        headers.insert(header::VARY, v);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    let tiny = response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n < MIN_COMPRESSED_BYTES);
    if !gzip
        || !response.status().is_success()
        || !json
        || tiny
        || response.headers().contains_key(header::CONTENT_ENCODING)
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    let body = GzipBody {
        inner: body,
        encoder: Some(GzEncoder::new(Vec::new(), Compression::fast())),
        pending: Bytes::new(),
    };
    Response::from_parts(parts, body.boxed())
}

/// A body gzip-compressed as it streams. Each input frame is flushed (a sync flush) once it is
/// compressed, so that a streamed page reaches the client as soon as it is written.
struct GzipBody {
    inner: Body,
    /// `None` once the gzip trailer was written.
    encoder: Option<GzEncoder<Vec<u8>>>,
    /// Input of the current frame not yet compressed.
    pending: Bytes,
}

impl HttpBody for GzipBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            if !this.pending.is_empty() {
                let piece = this.pending.split_to(this.pending.len().min(STEP_BYTES));
                encoder.write_all(&piece)?;
                if this.pending.is_empty() {
                    encoder.flush()?;
                }
                let out = std::mem::take(encoder.get_mut());
                if out.is_empty() {
                    continue;
                }
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    // Trailers: nothing of ours sends them; relayed after what was compressed.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) => {
                    let Some(encoder) = this.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    let out = encoder.finish()?;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn accept_encoding_is_read_with_weights() {
        let a = |v: &'static str| accepts_gzip(&headers(header::ACCEPT_ENCODING, v));
        assert!(a("gzip"));
        assert!(a("br, gzip;q=0.5"));
        assert!(a("GZIP"));
        assert!(a("*"));
        assert!(a("x-gzip"));
        assert!(!a("gzip;q=0"));
        assert!(!a("*, gzip;q=0"));
        assert!(!a("br, deflate"));
        assert!(!a("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn only_identity_and_gzip_can_be_read_from_an_upstream() {
        let c = |v: &'static str| coding(&headers(header::CONTENT_ENCODING, v));
        assert_eq!(coding(&HeaderMap::new()), Ok(Coding::Identity));
        assert_eq!(c("identity"), Ok(Coding::Identity));
        assert_eq!(c("gzip"), Ok(Coding::Gzip));
        assert_eq!(c("X-Gzip"), Ok(Coding::Gzip));
        assert!(c("br").is_err());
        assert!(c("gzip, gzip").is_err());
    }

    #[tokio::test]
    async fn inflating_is_bounded_by_the_decoded_size() {
        let page = br#"{"value":[{"ID":1}]}"#.repeat(100);
        let packed = gzip(&page);
        let mut ok = Inflater::new(page.len());
        for chunk in packed.chunks(7) {
            ok.push(chunk).await.unwrap();
        }
        assert_eq!(ok.finish().unwrap(), page);
        // Two members decode to both.
        let mut two = Inflater::new(usize::MAX);
        two.push(&[packed.clone(), packed.clone()].concat())
            .await
            .unwrap();
        assert_eq!(two.finish().unwrap().len(), 2 * page.len());
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 4096);
        let mut small = Inflater::new(64 * 1024);
        assert_eq!(small.push(&bomb).await, Err(InflateError::TooLarge));
        let mut cut = Inflater::new(usize::MAX);
        cut.push(&packed[..packed.len() / 2]).await.unwrap();
        assert_eq!(cut.finish(), Err(InflateError::Corrupt));
        let mut junk = Inflater::new(usize::MAX);
        assert_eq!(
            junk.push(b"not gzip at all").await,
            Err(InflateError::Corrupt)
        );
    }

    #[tokio::test]
    async fn compressed_bodies_decode_to_the_original_whatever_the_framing() {
        let page = br#"{"@odata.context":"x","value":[{"ID":1,"name":"a"}]}"#.repeat(200);
        let mut response = Response::new(crate::body::full(page.clone()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let out = negotiate(response, true);
        assert_eq!(out.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(out.headers()[header::VARY], "Accept-Encoding");
        let packed = out.into_body().collect().await.unwrap().to_bytes();
        let mut back = Inflater::new(usize::MAX);
        back.push(&packed).await.unwrap();
        assert_eq!(back.finish().unwrap(), page);
        // Not asked for, tiny, or not JSON: as it was, with Vary.
        let mut plain = Response::new(crate::body::full(page.clone()));
        plain.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let out = negotiate(plain, false);
        assert!(!out.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(out.headers()[header::VARY], "Accept-Encoding");
        let tiny = negotiate(Response::new(crate::body::full("{}")), true);
        assert!(!tiny.headers().contains_key(header::CONTENT_ENCODING));
    }
}

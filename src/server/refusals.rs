//! Heads that hyper refuses before the gateway sees them — a request line over its own URI limit
//! (64 KiB) or a head beyond its buffer — are answered by hyper with a bare `414` or `431` and the
//! connection is closed. This layer sits between hyper and the socket and swaps that bare answer
//! for the gateway's OData error (C37): same status, JSON body, `OData-Version`.
//!
//! hyper writes such an answer as the only thing left on the connection, head only, with
//! `content-length: 0`; every answer the gateway writes itself for these statuses has a body, so
//! the pattern cannot match one of them.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

/// The statuses hyper answers on its own for a head it cannot take.
const REFUSALS: &[(&[u8], &str, &str)] = &[
    (
        b"HTTP/1.1 414 ",
        "414 URI Too Long",
        "URITooLong\",\"message\":\"the request URI is longer than the gateway accepts",
    ),
    (
        b"HTTP/1.1 431 ",
        "431 Request Header Fields Too Large",
        "RequestHeaderFieldsTooLarge\",\"message\":\"the request head is larger than the gateway accepts",
    ),
];

/// The gateway's own answer for a bare refusal that starts `written`, if it is one.
fn replacement(written: &[u8]) -> Option<Vec<u8>> {
    let (_, status, error) = REFUSALS
        .iter()
        .find(|(start, _, _)| written.starts_with(start))?;
    let head_end = memchr::memmem::find(written, b"\r\n\r\n")?;
    let head = written[..head_end].to_ascii_lowercase();
    memchr::memmem::find(&head, b"\r\ncontent-length: 0\r\n")
        .or_else(|| head.ends_with(b"\r\ncontent-length: 0").then_some(0))?;
    let body = format!("{{\"error\":{{\"code\":\"{error}\"}}}}");
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nodata-version: 4.0\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A connection's I/O whose bare `414`/`431` answers from hyper become OData errors.
pub(crate) struct RefusalBodies<T> {
    inner: T,
    /// An answer being written in place of hyper's, and how much of it is out.
    swapping: Option<(Vec<u8>, usize)>,
}

impl<T> RefusalBodies<T> {
    /// Wrap the I/O of one connection.
    pub(crate) fn new(inner: T) -> Self {
        RefusalBodies {
            inner,
            swapping: None,
        }
    }
}

impl<T: Write + Unpin> RefusalBodies<T> {
    /// Write the replacement out; `Ready` once all of it is, standing for hyper's `len` bytes.
    fn poll_swap(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        while let Some((bytes, done)) = self.swapping.as_mut() {
            if *done == bytes.len() {
                self.swapping = None;
                // Anything hyper writes after its refusal has no place after ours; it writes
                // nothing, as its answer has no body, and then closes.
                return Poll::Ready(Ok(len));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(len))
    }
}

impl<T: Read + Unpin> Read for RefusalBodies<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for RefusalBodies<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.swapping.is_none()
            && let Some(answer) = replacement(buf)
        {
            self.swapping = Some((answer, 0));
        }
        if self.swapping.is_some() {
            return self.poll_swap(cx, buf.len());
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // A bare refusal is a head alone: one slice (and perhaps empty ones).
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.swapping.is_none()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && first.len() == total
            && let Some(answer) = replacement(first)
        {
            self.swapping = Some((answer, 0));
        }
        if self.swapping.is_some() {
            return self.poll_swap(cx, total);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_refusals_are_replaced_c37() {
        let bare = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(replacement(bare).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(answer.contains("\r\nodata-version: 4.0\r\n"));
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "URITooLong");
        assert!(json["error"]["message"].is_string());
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(bare).is_some());
        // The gateway's own answers and other statuses pass untouched.
        for kept in [
            &b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 80\r\n\r\n{}"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n",
        ] {
            assert!(
                replacement(kept).is_none(),
                "{}",
                String::from_utf8_lossy(kept)
            );
        }
    }
}

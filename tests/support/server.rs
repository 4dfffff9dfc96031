//! Accept loop and the response body type (which can break on purpose).

use super::handler::handle;
use super::upstream::Upstream;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Sleep;

/// Accepts connections until the task is aborted. Connection tasks live in a
/// JoinSet owned by this future, so aborting it ends them all.
pub(crate) async fn serve(listener: TcpListener, upstream: Upstream) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Transient (e.g. too many open files): back off, keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let upstream = upstream.clone();
                async move { Ok::<_, Infallible>(handle(upstream, request).await) }
            });
            // Errors here are clients going away or injected resets; the
            // fake has nobody to report them to.
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Response body: either complete, or a prefix followed by an error so that
/// hyper aborts the connection mid-body (the ResetMidBody fault).
pub(crate) struct FakeBody {
    data: Option<Bytes>,
    /// Set for a broken body; the pause lets hyper flush the prefix to the
    /// socket before the error tears the connection down.
    break_after: Option<Pin<Box<Sleep>>>,
}

impl FakeBody {
    /// A complete body.
    pub(crate) fn full(data: impl Into<Bytes>) -> FakeBody {
        let data: Bytes = data.into();
        FakeBody {
            data: (!data.is_empty()).then_some(data),
            break_after: None,
        }
    }

    /// No body.
    pub(crate) fn empty() -> FakeBody {
        FakeBody::full(Bytes::new())
    }

    /// The same body gzip-compressed; `None` for a broken one, which is
    /// sent as it is.
    pub(crate) fn gzipped(&self) -> Option<FakeBody> {
        if self.break_after.is_some() {
            return None;
        }
        let data = self.data.clone().unwrap_or_default();
        Some(FakeBody::full(super::reply::gzip(&data)))
    }

    /// The first half of `data`, then a connection error.
    pub(crate) fn broken(data: Bytes) -> FakeBody {
        let half = data.slice(..data.len() / 2);
        FakeBody {
            data: (!half.is_empty()).then_some(half),
            break_after: Some(Box::pin(tokio::time::sleep(Duration::from_millis(50)))),
        }
    }
}

impl Body for FakeBody {
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
                "injected fault: connection reset mid-body",
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

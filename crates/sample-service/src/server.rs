//! Accept loop and the response body type (which can break on purpose).

use super::handler::handle;
use super::service::Service;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// How long open connections get to finish once `shutdown` is cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `service` on `listener` until `shutdown` is cancelled, then closes the listener and
/// gives open connections a few seconds to finish. Connection tasks live in a `JoinSet` owned by
/// this future, so aborting it instead ends them all at once (what dropping a
/// [`Server`](crate::Server) does).
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    let graceful = GracefulShutdown::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Transient (e.g. too many open files): back off, keep serving.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let upstream = service.clone();
        let handler = service_fn(move |request| {
            let upstream = upstream.clone();
            async move { Ok::<_, Infallible>(handle(upstream, request).await) }
        });
        let connection = Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), handler)
            .into_owned();
        let connection = graceful.watch(connection);
        // Errors here are clients going away or injected resets; nobody is there to hear of
        // them.
        connections.spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// Response body: either complete, or a prefix followed by an error so that
/// hyper aborts the connection mid-body (the ResetMidBody fault).
pub(crate) struct ReplyBody {
    data: Option<Bytes>,
    /// Set for a broken body; the pause lets hyper flush the prefix to the
    /// socket before the error tears the connection down.
    break_after: Option<Pin<Box<Sleep>>>,
}

impl ReplyBody {
    /// A complete body.
    pub(crate) fn full(data: impl Into<Bytes>) -> ReplyBody {
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

    /// The same body gzip-compressed; `None` for a broken one, which is
    /// sent as it is.
    pub(crate) fn gzipped(&self) -> Option<ReplyBody> {
        if self.break_after.is_some() {
            return None;
        }
        let data = self.data.clone().unwrap_or_default();
        Some(ReplyBody::full(super::reply::gzip(&data)))
    }

    /// The first half of `data`, then a connection error.
    pub(crate) fn broken(data: Bytes) -> ReplyBody {
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

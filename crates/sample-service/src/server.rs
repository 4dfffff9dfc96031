//! The accept loop, and [`Server`], the service running on a local port.

use super::handler::handle;
use super::service::{DEFAULT_ROOT, Service};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
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
        // Errors here are clients going away or bodies a layer broke off; nobody is there to hear of
        // them.
        connections.spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// A running service on 127.0.0.1; stops when dropped, closing its connections at once.
pub struct Server {
    upstream: Service,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts a service at [`DEFAULT_ROOT`].
    pub async fn start() -> Server {
        Server::start_at(DEFAULT_ROOT).await
    }

    /// Starts a service at the given service root path (`/` allowed).
    pub async fn start_at(root: &str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the sample service on 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of the sample service");
        let upstream = Service::new(&format!("http://{addr}"), root);
        let task = tokio::spawn({
            let upstream = upstream.clone();
            async move {
                // Never cancelled: dropping the server aborts the task instead.
                let _ = serve(listener, upstream, CancellationToken::new()).await;
            }
        });
        Server {
            upstream,
            addr,
            task,
        }
    }

    /// The socket address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle usable after moving it into closures or other tasks.
    pub fn handle(&self) -> Service {
        self.upstream.clone()
    }
}

/// Lets tests call data and knob methods directly on the server value.
impl Deref for Server {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.upstream
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task, so no test leaks a server into the next.
        self.task.abort();
    }
}

//! A receiver of the gateway's outgoing calls (callbacks, webhook notifications and their
//! validation handshakes) on 127.0.0.1:0: it reports every request and answers as told.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Answer {
    /// 200; a validation request (`validationToken` in the query) gets its token echoed.
    Ok = 0,
    /// Validation requests get a token that is not theirs.
    WrongToken = 1,
    /// Everything gets 500.
    Fail = 2,
}

/// One request the receiver got.
#[derive(Debug)]
pub struct Call {
    /// Its method.
    pub method: Method,
    /// Its path and query as sent.
    pub path_and_query: String,
    /// Its body, as text.
    pub body: String,
    /// When it came (paused time in the tests that use it).
    pub at: Instant,
}

impl Call {
    /// `GET /cb?x=1`: method and target.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path_and_query)
    }
}

/// The running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    calls: mpsc::UnboundedReceiver<Call>,
    answer: Arc<AtomicU8>,
}

impl Receiver {
    /// Start one, answering [`Answer::Ok`].
    pub async fn start() -> Receiver {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, calls) = mpsc::unbounded_channel();
        let answer = Arc::new(AtomicU8::new(Answer::Ok as u8));
        let mode = answer.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = socket.accept().await {
                let (tx, mode) = (tx.clone(), mode.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (tx, mode) = (tx.clone(), mode.clone());
                        async move { Ok::<_, Infallible>(receive(req, &tx, &mode).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            calls,
            answer,
        }
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer every later request this way.
    pub fn answer(&self, answer: Answer) {
        self.answer.store(answer as u8, Ordering::SeqCst);
    }

    /// The oldest call not yet taken, if any.
    pub fn next_call(&mut self) -> Option<Call> {
        self.calls.try_recv().ok()
    }

    /// Every call not yet taken.
    pub fn drain(&mut self) -> Vec<Call> {
        std::iter::from_fn(|| self.next_call()).collect()
    }

    /// The notifications (POSTs without a validation token) not yet taken, as JSON, with their
    /// times.
    pub fn notifications(&mut self) -> Vec<(Value, Instant)> {
        self.drain()
            .into_iter()
            .filter(|c| c.method == Method::POST && !c.path_and_query.contains("validationToken"))
            .map(|c| {
                (
                    serde_json::from_str(&c.body).expect("a JSON notification"),
                    c.at,
                )
            })
            .collect()
    }
}

/// Report one request and answer it as `mode` says.
async fn receive(
    req: Request<Incoming>,
    tx: &mpsc::UnboundedSender<Call>,
    mode: &AtomicU8,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or(String::new(), |p| p.as_str().to_owned());
    let token = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "validationToken")
        .map(|(_, v)| v.into_owned());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let _ = tx.send(Call {
        method,
        path_and_query,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    });
    let mode = mode.load(Ordering::SeqCst);
    let (status, answer) = match token {
        _ if mode == Answer::Fail as u8 => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
        Some(_) if mode == Answer::WrongToken as u8 => (StatusCode::OK, "not-it".into()),
        Some(t) => (StatusCode::OK, t),
        None => (StatusCode::OK, String::new()),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(answer)))
        .unwrap()
}

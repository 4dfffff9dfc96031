//! The client side: a sync client that follows every link of a collection or a delta, and the
//! floor (fetch + parse + hash of every entity, one thread) that the gateway is compared with.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

/// The HTTP client (one keep-alive pool).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client for loopback servers.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// What a client needs of a page: its entries and where to go next.
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

/// One read that followed every link.
#[derive(Clone, Debug, Default)]
pub struct Read {
    /// Entries (entities and tombstones) in all pages.
    pub entries: u64,
    /// Body bytes of all pages.
    pub bytes: u64,
    /// Pages read.
    pub pages: u64,
    /// Wall time from the first request to the last page's end.
    pub elapsed: Duration,
    /// Wall time until the first page had arrived.
    pub first_page: Duration,
    /// The delta link of the last page, if it had one.
    pub delta_link: Option<String>,
}

/// GET `url` and return its body; anything but 200 is an error naming the URL.
pub async fn get(
    client: &HttpClient,
    url: &str,
    track: bool,
    timeout: Duration,
) -> Result<Bytes, String> {
    let mut req = Request::get(url).header("accept", "application/json");
    if track {
        req = req.header("prefer", "odata.track-changes");
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("{url}: cannot build a request: {e}"))?;
    let fetch = async {
        let response = client
            .request(req)
            .await
            .map_err(|e| format!("{url}: no answer: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: the body broke off: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
            return Err(format!("{url}: {status}: {text}"));
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("{url}: no whole answer within {timeout:?}"))?
}

/// Follow `first` and every next link after it, handing each entity's raw bytes to `each`.
/// `max_pages` bounds the walk (a server that links in a circle is an error, not a hang).
pub async fn read_all(
    client: &HttpClient,
    first: &str,
    track: bool,
    timeout: Duration,
    max_pages: u64,
    mut each: impl FnMut(&[u8]),
) -> Result<Read, String> {
    let start = Instant::now();
    let mut url = Url::parse(first).map_err(|e| format!("{first}: not a URL: {e}"))?;
    let mut read = Read::default();
    loop {
        if read.pages >= max_pages {
            return Err(format!(
                "{first}: still more pages after {max_pages}; stopped"
            ));
        }
        let body = get(client, url.as_str(), track, timeout).await?;
        if read.pages == 0 {
            read.first_page = start.elapsed();
        }
        read.pages += 1;
        read.bytes += body.len() as u64;
        let page: Page =
            serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JSON page: {e}"))?;
        read.entries += page.value.len() as u64;
        for raw in &page.value {
            each(raw.get().as_bytes());
        }
        match (page.next_link, page.delta_link) {
            (Some(next), _) => {
                url = url
                    .join(&next)
                    .map_err(|e| format!("{url}: a bad next link {next}: {e}"))?;
            }
            (None, delta) => {
                read.delta_link = delta
                    .map(|d| url.join(&d).map(String::from))
                    .transpose()
                    .map_err(|e| format!("{url}: a bad delta link: {e}"))?;
                read.elapsed = start.elapsed();
                return Ok(read);
            }
        }
    }
}

/// The floor: read every page of `first` on one thread (its own single-threaded runtime, so the
/// fetching, parsing and hashing all share that thread), parse each with `RawValue` and hash
/// every entity's raw bytes with blake3. Returns the read and a checksum of the hashes (so the
/// hashing cannot be optimized away).
pub fn floor(first: String, timeout: Duration, max_pages: u64) -> Result<(Read, u8), String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        runtime.block_on(async {
            let client = client();
            let mut check = 0u8;
            let read = read_all(&client, &first, false, timeout, max_pages, |raw| {
                check ^= blake3::hash(raw).as_bytes()[0];
            })
            .await?;
            Ok((read, check))
        })
    })
    .join()
    .map_err(|_| "the floor's thread panicked".to_owned())?
}

//! A fast OData upstream in this process: one entity set `Items` (key `ID`), pre-rendered into
//! pages of [`PAGE`] entities that are served from memory, so that what is measured is the
//! gateway, not the upstream. It answers what the gateway sends while enumerating and confirming
//! removals (`$count`, `$orderby=ID`, server-driven paging with `$skiptoken` next links, `$skip`
//! and `$top`, `$filter=ID in (…)` / `ID eq … or …`), single entities by key, and `$metadata`.
//! Anything else gets a 501 and is counted, so a change in what the gateway asks for is noticed.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Entities per upstream page.
pub const PAGE: u32 = 1000;
/// The service root's path.
pub const SERVICE: &str = "/svc";

const METADATA: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">
  <edmx:DataServices>
    <Schema Namespace="Load" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <ComplexType Name="Supplier">
        <Property Name="ID" Type="Edm.Int32"/>
        <Property Name="city" Type="Edm.String"/>
      </ComplexType>
      <EntityType Name="Item">
        <Key><PropertyRef Name="ID"/></Key>
        <Property Name="ID" Type="Edm.Int32" Nullable="false"/>
        <Property Name="name" Type="Edm.String"/>
        <Property Name="category" Type="Edm.String"/>
        <Property Name="price" Type="Edm.Decimal" Scale="2"/>
        <Property Name="currency" Type="Edm.String"/>
        <Property Name="unit" Type="Edm.String"/>
        <Property Name="stock" Type="Edm.Int32"/>
        <Property Name="rating" Type="Edm.Double"/>
        <Property Name="active" Type="Edm.Boolean"/>
        <Property Name="modifiedAt" Type="Edm.DateTimeOffset"/>
        <Property Name="supplier" Type="Load.Supplier"/>
      </EntityType>
      <EntityContainer Name="Service">
        <EntitySet Name="Items" EntityType="Load.Item"/>
      </EntityContainer>
    </Schema>
  </edmx:DataServices>
</edmx:Edmx>
"#;

/// A small deterministic mixer, so that values vary between entities without a RNG.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const WORDS: [&str; 8] = [
    "sturdy",
    "compact",
    "cordless",
    "refurbished",
    "stainless",
    "modular",
    "quiet",
    "foldable",
];
const CATEGORIES: [&str; 5] = ["tools", "garden", "kitchen", "outdoor", "office"];
const CITIES: [&str; 6] = ["Berlin", "Lyon", "Porto", "Kraków", "Malmö", "Zürich"];

/// Entity `id` at `revision`, about 254 bytes; a new revision changes the etag, stock, price and
/// `modifiedAt` the way an update upstream does.
pub fn write_entity(out: &mut String, id: u32, revision: u16) {
    let r = mix(u64::from(id));
    let word = |n: u64| WORDS[(n % WORDS.len() as u64) as usize];
    let rev = u64::from(revision);
    let cents = 199 + (r % 90_000) + rev;
    let supplier = 1 + (r >> 8) % 400;
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        concat!(
            r#"{{"@odata.etag":"W/\"{rev}\"","ID":{id},"name":"{w1} {w2} widget {id}","#,
            r#""category":"{cat}","price":{euros}.{cents:02},"currency":"EUR","unit":"piece","stock":{stock},"#,
            r#""rating":{rating}.{tenth},"active":{active},"modifiedAt":"2026-11-{day:02}T{hour:02}:{min:02}:00Z","#,
            r#""supplier":{{"ID":{sup},"city":"{city}"}}}}"#,
        ),
        rev = rev,
        id = id,
        w1 = word(r),
        w2 = word(r >> 3),
        cat = CATEGORIES[((r >> 11) % CATEGORIES.len() as u64) as usize],
        euros = cents / 100,
        cents = cents % 100,
        stock = mix(r ^ rev) % 500,
        rating = 1 + r % 5,
        tenth = (r >> 4) % 10,
        active = !r.is_multiple_of(7),
        day = 1 + rev % 28,
        hour = rev % 24,
        min = (r >> 20) % 60,
        sup = supplier,
        city = CITIES[(supplier % CITIES.len() as u64) as usize],
    );
}

/// One rendered page: `[e1,e2,…]` and where each entity lies in it.
struct RenderedPage {
    /// The JSON array of the page's entities.
    value: Bytes,
    /// Key and byte range in `value` of each entity, in key order.
    entities: Vec<(u32, u32, u32)>,
}

/// What the server serves right now; replaced whole when the collection changes.
struct Snapshot {
    pages: Vec<Arc<RenderedPage>>,
    /// Live entities in all pages.
    count: u64,
    /// Live entities before each page (for `$skip`).
    before: Vec<u64>,
}

/// Requests the upstream answered, by kind.
#[derive(Default)]
pub struct Counters {
    /// Collection pages (first pages and next links).
    pub pages: AtomicU64,
    /// Enumerations started: first pages of the collection (no `$skiptoken`).
    pub enumerations: AtomicU64,
    /// `$filter` lookups by key (removal confirmation).
    pub filters: AtomicU64,
    /// `$skip`/`$top` reads.
    pub offsets: AtomicU64,
    /// Single entities by key.
    pub entities: AtomicU64,
    /// `$metadata`.
    pub metadata: AtomicU64,
    /// Answered 4xx/5xx because the tool does not serve the request.
    pub refused: AtomicU64,
}

impl Counters {
    /// A one-line summary, for progress output.
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "pages {}, $filter {}, $skip {}, by key {}, $metadata {}, refused {}",
            g(&self.pages),
            g(&self.filters),
            g(&self.offsets),
            g(&self.entities),
            g(&self.metadata),
            g(&self.refused)
        )
    }
}

/// The collection's state, owned by the driver: revisions and removals per entity.
pub struct Collection {
    n: u32,
    revision: Vec<u16>,
    removed: Vec<bool>,
    rounds: u32,
    pages: Vec<Arc<RenderedPage>>,
    served: Arc<RwLock<Arc<Snapshot>>>,
}

/// What one round of changes did.
pub struct Changes {
    /// Entities updated.
    pub updated: u64,
    /// Entities removed.
    pub removed: u64,
    /// Bytes of the updated entities as the upstream now serves them.
    pub updated_bytes: u64,
    /// Pages rendered again.
    pub pages_rendered: usize,
}

impl Collection {
    /// `n` entities, keys 1..=n, all at revision 1.
    pub fn new(n: u32) -> Collection {
        let page_count = n.div_ceil(PAGE) as usize;
        let mut c = Collection {
            n,
            revision: vec![1; n as usize],
            removed: vec![false; n as usize],
            rounds: 0,
            pages: Vec::with_capacity(page_count),
            served: Arc::new(RwLock::new(Arc::new(Snapshot {
                pages: Vec::new(),
                count: 0,
                before: Vec::new(),
            }))),
        };
        c.pages = (0..page_count).map(|p| Arc::new(c.render(p))).collect();
        c.publish();
        c
    }

    fn render(&self, page: usize) -> RenderedPage {
        let first = page as u32 * PAGE + 1;
        let last = ((page as u32 + 1) * PAGE).min(self.n);
        let mut out = String::with_capacity((last + 1 - first) as usize * 260 + 2);
        let mut entities = Vec::with_capacity((last + 1 - first) as usize);
        out.push('[');
        for id in first..=last {
            let i = (id - 1) as usize;
            if self.removed[i] {
                continue;
            }
            if !entities.is_empty() {
                out.push(',');
            }
            let start = out.len() as u32;
            write_entity(&mut out, id, self.revision[i]);
            entities.push((id, start, out.len() as u32));
        }
        out.push(']');
        RenderedPage {
            value: Bytes::from(out),
            entities,
        }
    }

    fn publish(&self) {
        let mut before = Vec::with_capacity(self.pages.len());
        let mut count = 0u64;
        for p in &self.pages {
            before.push(count);
            count += p.entities.len() as u64;
        }
        let snapshot = Arc::new(Snapshot {
            pages: self.pages.clone(),
            count,
            before,
        });
        // A poisoned lock means a serving task panicked; the snapshot is still whole.
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    /// Update `count` live entities (fewer when there are not that many), picked pseudo-randomly,
    /// a different choice each round; render only their pages again, and serve the result.
    pub fn update_some(&mut self, count: u32) -> Changes {
        self.rounds += 1;
        let salt = u64::from(self.rounds) << 40;
        let mut picked = std::collections::HashSet::new();
        let mut touched = vec![false; self.pages.len()];
        let mut c = Changes {
            updated: 0,
            removed: 0,
            updated_bytes: 0,
            pages_rendered: 0,
        };
        let mut scratch = String::new();
        // Bounded: a draw that hits a removed or already picked entity is not repeated forever.
        for draw in 0..u64::from(count).saturating_mul(4) {
            if c.updated >= u64::from(count) {
                break;
            }
            let id = (mix(salt ^ draw) % u64::from(self.n.max(1))) as u32 + 1;
            let i = (id - 1) as usize;
            if self.removed[i] || !picked.insert(id) {
                continue;
            }
            self.revision[i] = self.revision[i].wrapping_add(1).max(1);
            scratch.clear();
            write_entity(&mut scratch, id, self.revision[i]);
            c.updated += 1;
            c.updated_bytes += scratch.len() as u64;
            touched[i / PAGE as usize] = true;
        }
        for (p, t) in touched.iter().enumerate() {
            if *t {
                self.pages[p] = Arc::new(self.render(p));
                c.pages_rendered += 1;
            }
        }
        self.publish();
        c
    }

    /// Update `updated_per_mille`/1000 and remove `removed_per_mille`/1000 of the live entities,
    /// picked pseudo-randomly (a different choice each round), render only the pages they are on
    /// again, and serve the result.
    pub fn change(&mut self, updated_per_mille: u32, removed_per_mille: u32) -> Changes {
        self.rounds += 1;
        let salt = u64::from(self.rounds) << 40;
        let mut touched = vec![false; self.pages.len()];
        let mut c = Changes {
            updated: 0,
            removed: 0,
            updated_bytes: 0,
            pages_rendered: 0,
        };
        let mut scratch = String::new();
        for id in 1..=self.n {
            let i = (id - 1) as usize;
            if self.removed[i] {
                continue;
            }
            let pick = (mix(salt ^ u64::from(id)) % 1000) as u32;
            if pick < removed_per_mille {
                self.removed[i] = true;
                c.removed += 1;
            } else if pick < removed_per_mille + updated_per_mille {
                self.revision[i] = self.revision[i].wrapping_add(1).max(1);
                scratch.clear();
                write_entity(&mut scratch, id, self.revision[i]);
                c.updated += 1;
                c.updated_bytes += scratch.len() as u64;
            } else {
                continue;
            }
            touched[i / PAGE as usize] = true;
        }
        for (p, t) in touched.iter().enumerate() {
            if *t {
                self.pages[p] = Arc::new(self.render(p));
                c.pages_rendered += 1;
            }
        }
        self.publish();
        c
    }
}

/// The running upstream.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it answered.
    pub counters: Arc<Counters>,
    stop: CancellationToken,
}

impl Upstream {
    /// Serve `collection` on 127.0.0.1 (a free port) until dropped.
    pub async fn start(collection: &Collection) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            collection.served.clone(),
            counters.clone(),
            stop.clone(),
        ));
        Ok(Upstream {
            addr,
            counters,
            stop,
        })
    }

    /// The service root as the gateway is given it.
    pub fn service_root(&self) -> String {
        format!("http://{}{SERVICE}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    served: Arc<RwLock<Arc<Snapshot>>>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let (served, counters, stop) = (served.clone(), counters.clone(), stop.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let snapshot = served.read().unwrap_or_else(|e| e.into_inner()).clone();
                let answer = answer(&req, &snapshot, &counters);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// A response body of a few chunks sent as they are, with an exact length.
pub struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

fn reply(status: StatusCode, content_type: &'static str, chunks: Vec<Bytes>) -> Response<Chunks> {
    let mut response = Response::new(Chunks(chunks.into()));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert("odata-version", http::HeaderValue::from_static("4.0"));
    response
}

fn json(status: StatusCode, chunks: Vec<Bytes>) -> Response<Chunks> {
    reply(status, "application/json;odata.metadata=minimal", chunks)
}

fn error(status: StatusCode, message: &str, counters: &Counters) -> Response<Chunks> {
    counters.refused.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::json!({"error": {"code": status.as_str(), "message": message}});
    json(status, vec![Bytes::from(body.to_string())])
}

/// The query options of a collection request that the upstream understands.
#[derive(Default)]
struct Query {
    count: bool,
    skiptoken: Option<usize>,
    skip: Option<u64>,
    top: Option<u64>,
    filter: Option<Vec<u32>>,
}

fn parse_query(raw: &str) -> Result<Query, String> {
    let mut q = Query::default();
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        let number = || {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("{name} is not a number"))
        };
        match name.as_ref() {
            "$count" => q.count = value == "true",
            "$orderby" => {
                let v = value.trim();
                if v != "ID" && v != "ID asc" {
                    return Err(format!("$orderby={v} is not supported, only ID"));
                }
            }
            "$skiptoken" => q.skiptoken = Some(number()? as usize),
            "$skip" => q.skip = Some(number()?),
            "$top" => q.top = Some(number()?),
            "$filter" => q.filter = Some(parse_key_filter(&value)?),
            other => return Err(format!("the query option {other} is not supported")),
        }
    }
    Ok(q)
}

/// `ID in (1,2,…)`, `ID eq 1 or ID eq 2 …`, each maybe in parentheses; the keys they name.
fn parse_key_filter(filter: &str) -> Result<Vec<u32>, String> {
    let f = strip_parens(filter.trim());
    let bad = || format!("$filter={filter} is not supported, only ID in (…) or ID eq … or …");
    let number = |s: &str| {
        strip_parens(s.trim())
            .trim()
            .parse::<u32>()
            .map_err(|_| bad())
    };
    if let Some(list) = f.strip_prefix("ID in ") {
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(bad)?;
        return inner.split(',').map(number).collect();
    }
    f.split(" or ")
        .map(|part| {
            strip_parens(part.trim())
                .strip_prefix("ID eq ")
                .ok_or_else(bad)
                .and_then(number)
        })
        .collect()
}

fn strip_parens(s: &str) -> &str {
    let mut s = s;
    while let Some(inner) = s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        // Only when the parentheses enclose the whole expression: `(a) or (b)` stays as it is.
        let mut depth = 0i32;
        let encloses = inner.chars().all(|c| {
            depth += match c {
                '(' => 1,
                ')' => -1,
                _ => 0,
            };
            depth >= 0
        });
        if !encloses {
            break;
        }
        s = inner.trim();
    }
    s
}

fn answer(req: &Request<Incoming>, s: &Snapshot, counters: &Counters) -> Response<Chunks> {
    if req.method() != http::Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "read only", counters);
    }
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix(SERVICE) else {
        return error(StatusCode::NOT_FOUND, "no such service", counters);
    };
    match rest {
        "/$metadata" => {
            counters.metadata.fetch_add(1, Ordering::Relaxed);
            reply(
                StatusCode::OK,
                "application/xml",
                vec![Bytes::from_static(METADATA.as_bytes())],
            )
        }
        "/Items" => collection(req.uri().query().unwrap_or(""), s, counters),
        _ => match rest
            .strip_prefix("/Items(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|k| k.parse::<u32>().ok())
        {
            Some(id) => by_key(id, s, counters),
            None => error(StatusCode::NOT_FOUND, "no such resource", counters),
        },
    }
}

fn find(s: &Snapshot, id: u32) -> Option<Bytes> {
    let page = s.pages.get((id.checked_sub(1)? / PAGE) as usize)?;
    let i = page.entities.binary_search_by_key(&id, |e| e.0).ok()?;
    let (_, start, end) = page.entities[i];
    Some(page.value.slice(start as usize..end as usize))
}

fn by_key(id: u32, s: &Snapshot, counters: &Counters) -> Response<Chunks> {
    match find(s, id) {
        Some(entity) => {
            counters.entities.fetch_add(1, Ordering::Relaxed);
            json(
                StatusCode::OK,
                vec![
                    Bytes::from_static(br#"{"@odata.context":"$metadata#Items/$entity","#),
                    entity.slice(1..),
                ],
            )
        }
        None => error(StatusCode::NOT_FOUND, "no such entity", counters),
    }
}

fn head(count: Option<u64>) -> Bytes {
    match count {
        Some(n) => Bytes::from(format!(
            r#"{{"@odata.context":"$metadata#Items","@odata.count":{n},"value":"#
        )),
        None => Bytes::from_static(br#"{"@odata.context":"$metadata#Items","value":"#),
    }
}

/// The query string without the paging options, for next links.
fn carried(raw: &str) -> String {
    raw.split('&')
        .filter(|p| {
            !p.is_empty()
                && ![
                    "$skiptoken=",
                    "%24skiptoken=",
                    "$skip=",
                    "%24skip=",
                    "$top=",
                    "%24top=",
                ]
                .iter()
                .any(|k| p.starts_with(k))
        })
        .map(|p| format!("{p}&"))
        .collect()
}

fn collection(raw: &str, s: &Snapshot, counters: &Counters) -> Response<Chunks> {
    let q = match parse_query(raw) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::NOT_IMPLEMENTED, &message, counters),
    };
    let count = q.count.then_some(s.count);
    if let Some(keys) = &q.filter {
        counters.filters.fetch_add(1, Ordering::Relaxed);
        let mut keys = keys.clone();
        keys.sort_unstable();
        keys.dedup();
        let found: Vec<Bytes> = keys.iter().filter_map(|k| find(s, *k)).collect();
        let mut chunks = vec![head(q.count.then_some(found.len() as u64))];
        chunks.push(Bytes::from_static(b"["));
        for (i, e) in found.into_iter().enumerate() {
            if i > 0 {
                chunks.push(Bytes::from_static(b","));
            }
            chunks.push(e);
        }
        chunks.push(Bytes::from_static(b"]}"));
        return json(StatusCode::OK, chunks);
    }
    if q.skip.is_some() || q.top.is_some() {
        counters.offsets.fetch_add(1, Ordering::Relaxed);
        return offset_page(raw, &q, s, count);
    }
    counters.pages.fetch_add(1, Ordering::Relaxed);
    if q.skiptoken.is_none() {
        counters.enumerations.fetch_add(1, Ordering::Relaxed);
    }
    let index = q.skiptoken.unwrap_or(0);
    let Some(page) = s.pages.get(index) else {
        if index == 0 {
            return json(
                StatusCode::OK,
                vec![head(count), Bytes::from_static(b"[]}")],
            );
        }
        return error(StatusCode::BAD_REQUEST, "no such page", counters);
    };
    let tail = if index + 1 < s.pages.len() {
        Bytes::from(format!(
            r#","@odata.nextLink":"Items?{}$skiptoken={}"}}"#,
            carried(raw),
            index + 1
        ))
    } else {
        Bytes::from_static(b"}")
    };
    json(StatusCode::OK, vec![head(count), page.value.clone(), tail])
}

/// `$skip`/`$top`: entities by position, at most a page of them, with a next link for the rest.
fn offset_page(raw: &str, q: &Query, s: &Snapshot, count: Option<u64>) -> Response<Chunks> {
    let skip = q.skip.unwrap_or(0);
    let wanted = q.top.unwrap_or(u64::MAX);
    let take = wanted.min(u64::from(PAGE));
    let mut chunks = vec![head(count), Bytes::from_static(b"[")];
    let first_page = s.before.partition_point(|b| *b <= skip).saturating_sub(1);
    let mut taken = 0u64;
    'pages: for (p, page) in s.pages.iter().enumerate().skip(first_page) {
        for (i, (_, start, end)) in page.entities.iter().enumerate() {
            if s.before[p] + (i as u64) < skip {
                continue;
            }
            if taken == take {
                break 'pages;
            }
            if taken > 0 {
                chunks.push(Bytes::from_static(b","));
            }
            chunks.push(page.value.slice(*start as usize..*end as usize));
            taken += 1;
        }
    }
    chunks.push(Bytes::from_static(b"]"));
    let rest = wanted.saturating_sub(taken);
    if taken == take && rest > 0 && skip + taken < s.count {
        let top = if q.top.is_some() {
            format!("&$top={rest}")
        } else {
            String::new()
        };
        chunks.push(Bytes::from(format!(
            r#","@odata.nextLink":"Items?{}$skip={}{top}""#,
            carried(raw),
            skip + taken
        )));
    }
    chunks.push(Bytes::from_static(b"}"));
    json(StatusCode::OK, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_are_about_254_bytes() {
        let mut total = 0;
        for id in 1..=10_000 {
            let mut s = String::new();
            write_entity(&mut s, id, 1);
            total += s.len();
        }
        let mean = total / 10_000;
        assert!((240..=270).contains(&mean), "{mean}");
    }

    #[test]
    fn key_filters_of_every_form_are_read() {
        assert_eq!(parse_key_filter("ID in (1,2,3)").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_key_filter("(ID in (4))").unwrap(), vec![4]);
        assert_eq!(
            parse_key_filter("ID eq 1 or ID eq 22").unwrap(),
            vec![1, 22]
        );
        assert_eq!(parse_key_filter("(ID eq 7)").unwrap(), vec![7]);
        assert!(parse_key_filter("name eq 'x'").is_err());
    }
}

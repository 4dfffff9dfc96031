//! Answering tracked requests from the store: the initial response (C3, C4), deltas (C11), their
//! continuation pages (C21, C22), `$deltatoken=latest` (C13) and `/$count` on a delta link (C23).
//! Every page is built whole before a status line is written (C26).

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Response, StatusCode, header};

use crate::Shared;
use crate::body::{self, Body};
use crate::error::{Error, UpstreamFailure};
use crate::odata::delta::{Entry, PageContext, PageEnd, write_page};
use crate::odata::orderby::{OrderBy, SortKey};
use crate::odata::prefer::Preferences;
use crate::odata::query::{DefiningQuery, ODataQuery, encode_path};
use crate::odata::{ODataVersion, names};
use crate::store::EntityRow;

use super::authorize::{authorize, authorize_after_refresh};
use super::callback;
use super::feed::{FeedDef, FeedId, Scope, SetSpec, Version};
use super::fetch::forwarded_headers;
use super::freshness;
use super::refresh::{Fresh, RefreshInput, ensure_fresh};
use super::retention::{record_issued, token_is_valid};
use crate::metrics::RejectionReason;

use super::token::{Cursor, SKIPTOKEN_PREFIX, Token, TokenError, TokenKind};

/// A tracked request, classified and with everything resolved that the router knows.
pub struct TrackedRequest {
    /// Route prefix.
    pub route: String,
    /// Upstream service root of the route.
    pub service_root: url::Url,
    /// Entity set addressed.
    pub set_name: String,
    /// How to read the set: `None` when it could not be resolved (only continuation pages and
    /// expired-token answers get by without it).
    pub set: Option<SetSpec>,
    /// Public service root for links: `http://gw/odata/v4/shop`.
    pub public_root: String,
    /// Response version (C14).
    pub version: ODataVersion,
    /// The request's preferences.
    pub prefs: Preferences,
    /// The parsed query.
    pub query: ODataQuery,
    /// Request headers (credentials to forward).
    pub headers: http::HeaderMap,
    /// Identity scope of the caller.
    pub scope: Scope,
    /// The JSON asked for (C32); on a link, the feed's own decides.
    pub format: crate::odata::format::JsonFormat,
}

/// Which tracked operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// GET collection with track-changes, or `$deltatoken=latest`.
    Initial,
    /// GET collection with `$deltatoken`.
    Delta,
    /// GET collection with one of our `$skiptoken`s.
    Page,
    /// GET `Set/$count` with `$deltatoken`.
    Count,
}

/// Answer a tracked request.
pub async fn answer(
    shared: &Arc<Shared>,
    op: Operation,
    req: TrackedRequest,
) -> Result<Answer, Error> {
    let response = match op {
        Operation::Initial if req.query.deltatoken.as_deref() == Some("latest") => {
            latest(shared, req).await?
        }
        Operation::Initial if req.query.orderby.is_some() => return ordered(shared, req).await,
        Operation::Initial => initial(shared, req).await?,
        Operation::Delta => delta(shared, req).await?,
        Operation::Page => page(shared, req).await?,
        Operation::Count => count(shared, req).await?,
    };
    Ok(Answer::Response(response))
}

/// What became of a tracked request.
pub enum Answer {
    /// Answered from the store.
    Response(Response<Body>),
    /// Cannot be answered as asked with change tracking: to be answered normally (C2).
    PassThrough,
}

fn now_secs(shared: &Shared) -> u64 {
    shared.clock.now_secs()
}

impl TrackedRequest {
    /// The feed this request's own query defines (a tracked read, `latest`).
    fn requested_feed(&self) -> FeedDef {
        FeedDef {
            route: self.route.clone(),
            entity_set: self.set_name.clone(),
            query: self.query.defining().with_ieee754(self.format.ieee754),
            scope: self.scope.clone(),
        }
    }

    /// This request answered in the format its link's feed was read in: the stored bytes are
    /// what they are, whatever the link's request asks.
    fn in_format_of(self, def: &FeedDef) -> Self {
        TrackedRequest {
            format: crate::odata::format::JsonFormat {
                ieee754: def.query.ieee754(),
            },
            ..self
        }
    }

    fn binding(&self) -> Vec<u8> {
        FeedDef::binding(&self.route, &self.set_name, &self.scope)
    }

    fn page_size(&self, shared: &Shared) -> u32 {
        self.prefs
            .max_page_size
            .map(|(n, _)| n)
            .unwrap_or(shared.config.page_size)
            .min(shared.config.max_page_size)
    }

    fn set(&self) -> Result<&SetSpec, Error> {
        self.set.as_ref().ok_or_else(|| {
            Error::Internal(format!(
                "entity set {} was not resolved before a refresh",
                self.set_name
            ))
        })
    }

    fn refresh_input(&self, shared: &Shared, def: FeedDef) -> Result<RefreshInput, Error> {
        let poll = shared.config.poll_interval(&self.route, &self.set_name);
        Ok(RefreshInput {
            feed: def.id(),
            def,
            set: self.set()?.clone(),
            service_root: self.service_root.clone(),
            headers: forwarded_headers(&self.headers),
            max_age: freshness::max_age(shared.config.min_refresh_interval, poll, &self.headers),
            stale_while_refreshing: match freshness::client_max_age(&self.headers) {
                None => poll.unwrap_or_default(),
                Some(_) => std::time::Duration::ZERO,
            },
            background: false,
        })
    }

    /// Refresh the feed (or reuse a refresh young enough), then make sure the upstream accepts
    /// this request's credentials for it (the refresh may have been another request's or the
    /// schedule's). A feed with a `poll_interval` goes on the schedule only once the upstream has
    /// accepted the credentials it will be refreshed with.
    async fn fresh(&self, shared: &Arc<Shared>, def: &FeedDef) -> Result<Fresh, Error> {
        let input = self.refresh_input(shared, def.clone())?;
        let fresh = ensure_fresh(shared, input.clone()).await?;
        authorize_after_refresh(
            shared,
            &self.service_root,
            def,
            &self.headers,
            fresh.by_this_request,
        )
        .await?;
        if let Some(interval) = shared.config.poll_interval(&self.route, &self.set_name) {
            shared.schedule.asked(shared, &input, interval);
        }
        Ok(fresh)
    }

    fn collection_url(&self) -> String {
        format!("{}/{}", self.public_root, encode_path(&self.set_name))
    }

    fn delta_link(&self, shared: &Shared, feed: FeedId, since: Version, issued_at: u64) -> String {
        shared.feeds.touch(feed, shared.clock.now_ms());
        let token = Token {
            feed,
            issued_at,
            kind: TokenKind::Delta { since },
        };
        format!(
            "{}?$deltatoken={}",
            self.collection_url(),
            token.encode(&shared.token_key, &self.binding())
        )
    }

    fn next_link(
        &self,
        shared: &Shared,
        feed: FeedId,
        issued_at: u64,
        cursor: Cursor,
        page_size: u32,
        count: bool,
    ) -> String {
        let token = Token {
            feed,
            issued_at,
            kind: TokenKind::Page {
                cursor,
                page_size,
                count,
            },
        };
        format!(
            "{}?$skiptoken={SKIPTOKEN_PREFIX}{}",
            self.collection_url(),
            token.encode(&shared.token_key, &self.binding())
        )
    }

    /// Decode a token presented with this request; refused tokens are 400 (C10).
    fn token(&self, shared: &Shared, text: &str) -> Result<Token, Error> {
        Token::decode(text, &shared.token_key, &self.binding()).map_err(|e| refused(shared, e))
    }

    /// 410 for a token older than the retention window (C25), pointing at the defining query.
    fn check_age(
        &self,
        shared: &Shared,
        token: &Token,
        query: Option<&DefiningQuery>,
    ) -> Result<(), Error> {
        if token_is_valid(token.issued_at, now_secs(shared), shared.config.token_ttl) {
            shared.feeds.touch(token.feed, shared.clock.now_ms());
            return Ok(());
        }
        shared.metrics.token_rejected(RejectionReason::expired);
        Err(Error::Expired {
            location: self.location(query),
        })
    }

    /// The defining query of a feed as a gateway URL: where a client starts over.
    fn location(&self, query: Option<&DefiningQuery>) -> String {
        let mut location = self.collection_url();
        if let Some(q) = query.map(DefiningQuery::encoded).filter(|q| !q.is_empty()) {
            location.push('?');
            location.push_str(&q);
        }
        location
    }

    /// The stored definition of a token's feed, checked against this request.
    async fn feed_def(
        &self,
        shared: &Arc<Shared>,
        token: &Token,
    ) -> Result<Option<(FeedDef, bool)>, Error> {
        let store = shared.store.clone();
        let feed = token.feed;
        let Some(meta) = tokio::task::spawn_blocking(move || store.feed(feed)).await?? else {
            return Ok(None);
        };
        let query = DefiningQuery::from_encoded(&meta.query)
            .map_err(|e| Error::Store(format!("a stored feed query is unreadable: {e}")))?;
        let def = FeedDef {
            route: meta.route,
            entity_set: meta.entity_set,
            query,
            scope: Scope(meta.scope),
        };
        if def.id() != token.feed
            || def.route != self.route
            || def.entity_set != self.set_name
            || def.scope != self.scope
        {
            return Err(refused(shared, TokenError::BadTag));
        }
        Ok(Some((def, meta.dropped)))
    }

    /// The feed of a verified token, if the token is young enough and its feed still stored;
    /// otherwise 410 with a `Location` that starts over (C25).
    async fn live_feed(&self, shared: &Arc<Shared>, token: &Token) -> Result<FeedDef, Error> {
        let found = self.feed_def(shared, token).await?;
        self.check_age(shared, token, found.as_ref().map(|(d, _)| &d.query))?;
        match found {
            Some((def, false)) => {
                self.check_custom_options(&def.query)?;
                Ok(def)
            }
            // Its entities were dropped for disuse (or the store was reset under it): the changes
            // since the token are gone, so the client must start over.
            Some((def, true)) => {
                shared.metrics.token_rejected(RejectionReason::expired);
                Err(Error::Expired {
                    location: self.location(Some(&def.query)),
                })
            }
            None => {
                shared.metrics.token_rejected(RejectionReason::expired);
                Err(Error::Expired {
                    location: self.collection_url(),
                })
            }
        }
    }

    /// Custom options (`sap-client=100`) choose what the upstream answers, so a link's feed is
    /// defined with them; one given again must be the feed's own, never another tenant's.
    fn check_custom_options(&self, feed_query: &DefiningQuery) -> Result<(), Error> {
        for (name, value) in &self.query.custom {
            if !feed_query
                .parts()
                .iter()
                .any(|(n, v)| n == name && v == value)
            {
                return Err(Error::bad_request(format!(
                    "the query option {name}={value} is not part of the feed the link was issued for; use the link as the gateway returned it, or start a new tracked read with it"
                )));
            }
        }
        Ok(())
    }

    /// Resolve a delta token to its verified, unexpired feed definition.
    async fn delta_token(&self, shared: &Arc<Shared>) -> Result<(Token, Version, FeedDef), Error> {
        let text = self.query.deltatoken.as_deref().unwrap_or_default();
        let token = self.token(shared, text)?;
        let TokenKind::Delta { since } = token.kind else {
            return Err(refused(shared, TokenError::BadTag));
        };
        let def = self.live_feed(shared, &token).await?;
        Ok((token, since, def))
    }
}

/// A delta link presented to be watched (a webhook subscription, `subscriptions::api`): its
/// verified token, baseline and unexpired feed, with the same answers as a delta request for a
/// forged, foreign or expired one.
pub(crate) async fn verified_delta_link(
    shared: &Arc<Shared>,
    req: &TrackedRequest,
) -> Result<(Token, Version, FeedDef), Error> {
    req.delta_token(shared).await
}

/// The answer to a token we do not accept: the same for every reason, so that nothing is learned
/// from probing (C10); only the metrics tell the reasons apart.
fn refused(shared: &Shared, e: TokenError) -> Error {
    shared.metrics.token_rejected(match e {
        TokenError::Malformed => RejectionReason::malformed,
        TokenError::BadTag => RejectionReason::forged,
    });
    Error::client(
        StatusCode::BAD_REQUEST,
        "InvalidDeltaToken",
        format!("{e}: use the delta and next links exactly as the gateway returned them"),
    )
}

/// The initial response of a tracked read: refresh, then the live entities at the new version.
async fn initial(shared: &Arc<Shared>, req: TrackedRequest) -> Result<Response<Body>, Error> {
    let def = req.requested_feed();
    // Taken before the version is fixed, so every later version is younger than the token (retention).
    let issued_at = now_secs(shared);
    let page_size = req.page_size(shared);
    let input = req.refresh_input(shared, def.clone())?;
    let fresh = match first_read(shared, &req, &def, input, issued_at, page_size).await? {
        FirstRead::Streamed(response) => return Ok(response),
        FirstRead::Refreshed(fresh) => fresh,
    };
    let count = if req.query.count {
        let store = shared.store.clone();
        let feed = def.id();
        Some(
            tokio::task::spawn_blocking(move || store.feed(feed))
                .await??
                .map(|m| m.live)
                .unwrap_or(0),
        )
    } else {
        None
    };
    let cursor = Cursor::Initial {
        at: fresh.version,
        after: 0,
        remaining: req.query.top.unwrap_or(u64::MAX),
    };
    live_page(
        shared,
        &req,
        def.id(),
        &def.query,
        issued_at,
        cursor,
        page_size,
        count,
        true,
        Some(fresh),
    )
    .await
}

/// How the first page of a tracked read is answered.
enum FirstRead {
    /// From the rows a running first load has written so far.
    Streamed(Response<Body>),
    /// After the refresh, from the published version.
    Refreshed(Fresh),
}

/// Refresh for a tracked read; when the refresh is the feed's first load, answer the first page as
/// soon as the load has written enough rows for it, instead of after the whole enumeration. Later
/// pages follow as the load gets to them (`streaming_page`), and the delta link comes on the last
/// page once the load is published. Each page is a whole response, so a load that fails after the
/// first page is answered on the next page request, with the refresh's error status, never inside
/// a 200 (C26). Not done when the page needs the whole result first: `$count`, or a `$top` that
/// ends within the first page.
async fn first_read(
    shared: &Arc<Shared>,
    req: &TrackedRequest,
    def: &FeedDef,
    input: RefreshInput,
    issued_at: u64,
    page_size: u32,
) -> Result<FirstRead, Error> {
    let feed = input.feed;
    let store = shared.store.clone();
    let stored = tokio::task::spawn_blocking(move || store.feed(feed))
        .await??
        .is_some_and(|m| !m.dropped);
    let skip = req.query.skip.unwrap_or(0);
    let remaining = req.query.top.unwrap_or(u64::MAX);
    let take = u64::from(page_size).min(remaining);
    if stored || req.query.count || remaining <= take {
        return req.fresh(shared, def).await.map(FirstRead::Refreshed);
    }
    let mut progress = shared.feeds.load_progress(feed).subscribe();
    progress.mark_changed();
    let task_shared = shared.clone();
    // Like `TrackedRequest::fresh`: the feed goes on the schedule once the upstream has accepted
    // the credentials it will be refreshed with.
    let schedule_on_accept = {
        let input = input.clone();
        move || {
            if let Some(interval) = shared.config.poll_interval(&req.route, &req.set_name) {
                shared.schedule.asked(shared, &input, interval);
            }
        }
    };
    let schedule = &schedule_on_accept;
    // The refresh goes on in its own task whether or not this request waits for it.
    // It logs under the request that started it, like any refresh.
    let mut refresh = tokio::spawn(tracing::Instrument::instrument(
        async move { ensure_fresh(&task_shared, input).await },
        tracing::Span::current(),
    ));
    let refreshed = |fresh: Fresh| async move {
        authorize_after_refresh(
            shared,
            &req.service_root,
            def,
            &req.headers,
            fresh.by_this_request,
        )
        .await?;
        schedule();
        Ok::<_, Error>(FirstRead::Refreshed(fresh))
    };
    loop {
        tokio::select! {
            done = &mut refresh => return refreshed(done??).await,
            changed = progress.changed() => {
                if changed.is_err() {
                    return refreshed(refresh.await??).await;
                }
                let Some(p) = progress.borrow_and_update().clone() else { continue };
                // One row more than the page shows that a next page exists.
                if p.done.is_some() || p.written.saturating_sub(p.first_row) <= skip + take {
                    continue;
                }
                // Served from the store while the refresh runs: the upstream is asked whether these
                // credentials may read the feed, as for any page served from the store.
                authorize(shared, &req.service_root, def, &req.headers).await?;
                schedule();
                let cursor = Cursor::Streaming { pending: p.pending, after: 0, remaining };
                let response =
                    streamed_rows(shared, req, feed, &def.query, issued_at, cursor, page_size, true)
                        .await?;
                return Ok(FirstRead::Streamed(response));
            }
        }
    }
}

/// A page of rows a running first load has written at its pending version; there is always a
/// next page (the caller checked that more rows were written than the page holds).
#[allow(clippy::too_many_arguments)]
async fn streamed_rows(
    shared: &Arc<Shared>,
    req: &TrackedRequest,
    feed: FeedId,
    query: &DefiningQuery,
    issued_at: u64,
    cursor: Cursor,
    page_size: u32,
    first: bool,
) -> Result<Response<Body>, Error> {
    let Cursor::Streaming {
        pending,
        after,
        remaining,
    } = cursor
    else {
        return Err(Error::Internal(
            "streamed_rows needs a streaming cursor".into(),
        ));
    };
    let store = shared.store.clone();
    let skip = if first {
        req.query.skip.unwrap_or(0)
    } else {
        0
    };
    let start = (!first).then_some(after);
    let take = u64::from(page_size).min(remaining) as usize;
    let mut rows = tokio::task::spawn_blocking(move || {
        store.live_page_at(feed, start, skip, take, Some(pending))
    })
    .await??;
    rows.truncate(take);
    let Some((last, _)) = rows.last() else {
        return Err(Error::Internal("a streamed page found no rows".into()));
    };
    let next = Cursor::Streaming {
        pending,
        after: *last,
        remaining: remaining.saturating_sub(take as u64),
    };
    record_issued(shared, feed, issued_at).await?;
    let end = PageEnd::Next(req.next_link(shared, feed, issued_at, next, page_size, false));
    let entries: Vec<Entry> = rows
        .iter()
        .map(|(_, row)| Entry::Entity(row.body()))
        .collect();
    let ctx = page_context(req, query, false, None);
    let body = write_page(&ctx, &entries, &end);
    Ok(respond(req, body, None, first, page_size))
}

/// A next link of a streamed first read: rows of the running load as it writes them, and once it
/// is published the rest of the published version with the delta link, as for any initial
/// response. A load that failed, or was cut short by a restart, cannot be continued: its error (or
/// a 502) says to read again.
async fn streaming_page(
    shared: &Arc<Shared>,
    req: &TrackedRequest,
    token: &Token,
    cursor: Cursor,
    page_size: u32,
) -> Result<Response<Body>, Error> {
    let Cursor::Streaming {
        pending,
        after,
        remaining,
    } = cursor
    else {
        return Err(Error::Internal(
            "streaming_page needs a streaming cursor".into(),
        ));
    };
    let feed = token.feed;
    // An expired link points at the defining query: the store's, or the running load's.
    let query = match req.feed_def(shared, token).await? {
        Some((def, _)) => Some(def.query),
        None => shared
            .feeds
            .progress_of(feed)
            .and_then(|tx| tx.borrow().as_ref().map(|p| p.def.clone()))
            .filter(|def| def.id() == feed)
            .map(|def| def.query),
    };
    req.check_age(shared, token, query.as_ref())?;
    let interrupted = || {
        Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "the first tracked read of {} was interrupted before it completed; read it again",
                req.set_name
            ),
        )
    };
    let take = u64::from(page_size).min(remaining);
    loop {
        let store = shared.store.clone();
        let published =
            tokio::task::spawn_blocking(move || store.was_published(feed, pending)).await??;
        let progress = shared.feeds.progress_of(feed);
        let mut rx = progress.as_ref().map(|tx| tx.subscribe());
        let state = rx
            .as_mut()
            .and_then(|rx| rx.borrow_and_update().clone())
            .filter(|p| p.pending == pending);
        if published {
            let def = req.live_feed(shared, token).await?;
            authorize(shared, &req.service_root, &def, &req.headers).await?;
            // A row served earlier may have been written again with other content (the upstream
            // sent its key twice): the delta link then starts before the load, so that the next
            // delta brings every row of it in its final state.
            let rewritten = state.as_ref().is_some_and(|p| p.rewritten);
            let at = if rewritten {
                Version(pending.0.saturating_sub(1))
            } else {
                pending
            };
            let cursor = Cursor::Initial {
                at,
                after,
                remaining,
            };
            return live_page(
                shared,
                req,
                feed,
                &def.query,
                token.issued_at,
                cursor,
                page_size,
                None,
                false,
                None,
            )
            .await;
        }
        let (Some(p), Some(rx)) = (state, rx.as_mut()) else {
            return Err(interrupted());
        };
        if p.def.id() != feed
            || p.def.route != req.route
            || p.def.entity_set != req.set_name
            || p.def.scope != req.scope
        {
            return Err(refused(shared, TokenError::BadTag));
        }
        authorize(shared, &req.service_root, &p.def, &req.headers).await?;
        match p.done {
            Some(Err(e)) => return Err(e),
            // Published since the check above, or published nothing: look again.
            Some(Ok(_)) => {
                let store = shared.store.clone();
                if !tokio::task::spawn_blocking(move || store.was_published(feed, pending))
                    .await??
                {
                    return Err(interrupted());
                }
                continue;
            }
            None if p.written.saturating_sub(after.saturating_add(1)) > take => {
                return streamed_rows(
                    shared,
                    req,
                    feed,
                    &p.def.query,
                    token.issued_at,
                    cursor,
                    page_size,
                    false,
                )
                .await;
            }
            None => {
                if rx.changed().await.is_err() {
                    return Err(interrupted());
                }
            }
        }
    }
}

/// A tracked read with `$orderby`: the live entities in the requested order, `$skip`/`$top`
/// applied after ordering, in one page with the delta link — so that the rows are the ones the
/// upstream would return, and no row can shift between pages. A result larger than the largest
/// page, or an `$orderby` that is not a list of property paths, is answered normally instead.
async fn ordered(shared: &Arc<Shared>, req: TrackedRequest) -> Result<Answer, Error> {
    let Some(Ok(order)) = req.query.orderby.as_deref().map(OrderBy::parse) else {
        return Ok(Answer::PassThrough);
    };
    let def = req.requested_feed();
    let issued_at = now_secs(shared);
    let fresh = req.fresh(shared, &def).await?;
    let feed = def.id();
    let (skip, top) = (
        req.query.skip.unwrap_or(0),
        req.query.top.unwrap_or(u64::MAX),
    );
    let limit = u64::from(shared.config.max_page_size);
    let store = shared.store.clone();
    let selected = tokio::task::spawn_blocking(move || {
        let mut keyed: Vec<(SortKey, u64)> = Vec::new();
        store.scan_live(feed, |row, body| keyed.push((order.key_of(body), row)))?;
        let live = keyed.len() as u64;
        let wanted = live.saturating_sub(skip).min(top);
        if wanted > limit {
            return Ok::<_, Error>(None);
        }
        // Ties are broken by row (the upstream's first-seen order) so that the order is stable.
        keyed.sort_by(|a, b| order.compare(&a.0, &b.0).then(a.1.cmp(&b.1)));
        let window: Vec<u64> = keyed
            .into_iter()
            .skip(skip as usize)
            .take(wanted as usize)
            .map(|(_, k)| k)
            .collect();
        let rows = store.rows(feed, &window)?;
        Ok(Some((live, rows)))
    })
    .await??;
    let Some((live, rows)) = selected else {
        tracing::info!(set = %req.set_name, "ordered tracked read larger than the largest page; answered untracked");
        return Ok(Answer::PassThrough);
    };
    let entries: Vec<Entry> = rows
        .iter()
        .map(|(_, row)| Entry::Entity(row.body()))
        .collect();
    let ctx = page_context(&req, &def.query, false, req.query.count.then_some(live));
    record_issued(shared, feed, issued_at).await?;
    let link = req.delta_link(shared, feed, fresh.version, issued_at);
    let body = write_page(&ctx, &entries, &PageEnd::Delta(link));
    // The page size preference is not applied: the whole ordered result is one page.
    let mut prefs = req.prefs.clone();
    prefs.max_page_size = None;
    let req = TrackedRequest { prefs, ..req };
    Ok(Answer::Response(respond(&req, body, Some(fresh), true, 0)))
}

/// `$deltatoken=latest` (C13): refresh to fix "now", answer no entities and a delta link from now.
async fn latest(shared: &Arc<Shared>, req: TrackedRequest) -> Result<Response<Body>, Error> {
    let def = req.requested_feed();
    let issued_at = now_secs(shared);
    let fresh = req.fresh(shared, &def).await?;
    let ctx = page_context(&req, &def.query, true, req.query.count.then_some(0));
    record_issued(shared, def.id(), issued_at).await?;
    let link = req.delta_link(shared, def.id(), fresh.version, issued_at);
    let body = write_page(&ctx, &[], &PageEnd::Delta(link));
    Ok(respond(
        &req,
        body,
        Some(fresh),
        true,
        req.page_size(shared),
    ))
}

/// A delta: refresh, then the changes since the token's version.
async fn delta(shared: &Arc<Shared>, req: TrackedRequest) -> Result<Response<Body>, Error> {
    let (_, since, def) = req.delta_token(shared).await?;
    let req = req.in_format_of(&def);
    // Refused before anything is refreshed: a callback to a host not allowed is the client's mistake.
    let callback = match &req.prefs.callback {
        Some((url, spelling)) => Some((callback::check_url(shared, url)?, *spelling)),
        None => None,
    };
    let issued_at = now_secs(shared);
    let fresh = req.fresh(shared, &def).await?;
    let page_size = req.page_size(shared);
    let feed = def.id();
    // C33: with nothing to report, and a schedule that will notice changes, 202 and a call later.
    if let Some((url, spelling)) = callback
        && shared
            .config
            .poll_interval(&req.route, &req.set_name)
            .is_some()
    {
        let store = shared.store.clone();
        let upto = fresh.version;
        let changes =
            tokio::task::spawn_blocking(move || store.delta_count(feed, since, upto)).await??;
        let max = shared.config.notifications.max_pending;
        if changes == 0 && shared.callbacks.register(max, feed, url, upto) {
            record_issued(shared, feed, issued_at).await?;
            let link = req.delta_link(shared, feed, upto, issued_at);
            return Ok(callback::accepted(req.version, &link, spelling));
        }
    }
    let count = if req.query.count {
        let store = shared.store.clone();
        let upto = fresh.version;
        Some(tokio::task::spawn_blocking(move || store.delta_count(feed, since, upto)).await??)
    } else {
        None
    };
    let cursor = Cursor::Delta {
        since,
        upto: fresh.version,
        // No entry is at `since` itself, so this position means "from the start".
        after: (since, 0),
    };
    delta_page(
        shared,
        &req,
        feed,
        &def.query,
        issued_at,
        cursor,
        page_size,
        count,
        Some(fresh),
    )
    .await
}

/// A continuation page (our `$skiptoken`): no refresh, the cursor says where to go on.
async fn page(shared: &Arc<Shared>, req: TrackedRequest) -> Result<Response<Body>, Error> {
    let text = req.query.skiptoken.as_deref().unwrap_or_default();
    let text = text.strip_prefix(SKIPTOKEN_PREFIX).unwrap_or(text);
    let token = req.token(shared, text)?;
    let TokenKind::Page {
        cursor,
        page_size,
        count,
    } = token.kind
    else {
        return Err(refused(shared, TokenError::BadTag));
    };
    if let Cursor::Streaming { .. } = cursor {
        return streaming_page(shared, &req, &token, cursor, page_size).await;
    }
    let def = req.live_feed(shared, &token).await?;
    let req = req.in_format_of(&def);
    // Pages come from the store, so the upstream is asked whether these credentials may still
    // read the feed.
    authorize(shared, &req.service_root, &def, &req.headers).await?;
    let feed = token.feed;
    let store = shared.store.clone();
    let count = match (count, cursor) {
        (false, _) | (_, Cursor::Streaming { .. }) => None,
        (true, Cursor::Initial { .. }) => tokio::task::spawn_blocking(move || store.feed(feed))
            .await??
            .map(|m| m.live),
        (true, Cursor::Delta { since, upto, .. }) => {
            Some(tokio::task::spawn_blocking(move || store.delta_count(feed, since, upto)).await??)
        }
    };
    match cursor {
        Cursor::Initial { .. } => {
            live_page(
                shared,
                &req,
                feed,
                &def.query,
                token.issued_at,
                cursor,
                page_size,
                count,
                false,
                None,
            )
            .await
        }
        Cursor::Streaming { .. } => Err(Error::Internal(
            "a streaming cursor reached the wrong page".into(),
        )),
        Cursor::Delta { .. } => {
            delta_page(
                shared,
                &req,
                feed,
                &def.query,
                token.issued_at,
                cursor,
                page_size,
                count,
                None,
            )
            .await
        }
    }
}

/// `/$count` on a delta link (C23): the number of entries the delta would hold; the token stays as
/// it is.
async fn count(shared: &Arc<Shared>, req: TrackedRequest) -> Result<Response<Body>, Error> {
    let (_, since, def) = req.delta_token(shared).await?;
    let fresh = req.fresh(shared, &def).await?;
    let store = shared.store.clone();
    let feed = def.id();
    let n = tokio::task::spawn_blocking(move || store.delta_count(feed, since, fresh.version))
        .await??;
    let mut response = Response::new(body::full(n.to_string()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(
        names::ODATA_VERSION,
        HeaderValue::from_static(req.version.header_value()),
    );
    headers.insert(header::VARY, HeaderValue::from_static("OData-MaxVersion"));
    Ok(response)
}

fn page_context<'a>(
    req: &'a TrackedRequest,
    query: &'a DefiningQuery,
    delta: bool,
    count: Option<u64>,
) -> PageContext<'a> {
    PageContext {
        version: req.version,
        service_root: &req.public_root,
        entity_set: &req.set_name,
        select: query.context_projection(req.version),
        delta,
        count,
    }
}

#[allow(clippy::too_many_arguments)]
async fn live_page(
    shared: &Arc<Shared>,
    req: &TrackedRequest,
    feed: FeedId,
    query: &DefiningQuery,
    issued_at: u64,
    cursor: Cursor,
    page_size: u32,
    count: Option<u64>,
    first: bool,
    fresh: Option<Fresh>,
) -> Result<Response<Body>, Error> {
    let Cursor::Initial {
        at,
        after,
        remaining,
    } = cursor
    else {
        return Err(Error::Internal("live_page needs an initial cursor".into()));
    };
    let store = shared.store.clone();
    let after = (!first).then_some(after);
    // `$skip` applies once, to the first page; `$top` is a budget carried from page to page (C8).
    let skip = if first {
        req.query.skip.unwrap_or(0)
    } else {
        0
    };
    let take = (page_size as u64).min(remaining) as usize;
    let limit = take + 1;
    let mut rows =
        tokio::task::spawn_blocking(move || store.live_page(feed, after, skip, limit)).await??;
    let more = rows.len() > take && remaining > take as u64;
    rows.truncate(take);
    record_issued(shared, feed, issued_at).await?;
    let end = match rows.last() {
        Some((last, _)) if more => PageEnd::Next(req.next_link(
            shared,
            feed,
            issued_at,
            Cursor::Initial {
                at,
                after: *last,
                remaining: remaining.saturating_sub(take as u64),
            },
            page_size,
            count.is_some(),
        )),
        _ => PageEnd::Delta(req.delta_link(shared, feed, at, issued_at)),
    };
    let entries: Vec<Entry> = rows
        .iter()
        .map(|(_, row)| Entry::Entity(row.body()))
        .collect();
    let ctx = page_context(req, query, false, count);
    let body = write_page(&ctx, &entries, &end);
    Ok(respond(req, body, fresh, first, page_size))
}

#[allow(clippy::too_many_arguments)]
async fn delta_page(
    shared: &Arc<Shared>,
    req: &TrackedRequest,
    feed: FeedId,
    query: &DefiningQuery,
    issued_at: u64,
    cursor: Cursor,
    page_size: u32,
    count: Option<u64>,
    fresh: Option<Fresh>,
) -> Result<Response<Body>, Error> {
    let Cursor::Delta { since, upto, after } = cursor else {
        return Err(Error::Internal("delta_page needs a delta cursor".into()));
    };
    let first = after == (since, 0);
    let store = shared.store.clone();
    let limit = page_size as usize + 1;
    let start = (!first).then_some(after);
    let mut rows =
        tokio::task::spawn_blocking(move || store.delta_page(feed, since, upto, start, limit))
            .await??;
    let more = rows.len() > page_size as usize;
    rows.truncate(page_size as usize);
    record_issued(shared, feed, issued_at).await?;
    let end = match rows.last() {
        Some((v, k, _)) if more => PageEnd::Next(req.next_link(
            shared,
            feed,
            issued_at,
            Cursor::Delta {
                since,
                upto,
                after: (*v, *k),
            },
            page_size,
            count.is_some(),
        )),
        _ => PageEnd::Delta(req.delta_link(shared, feed, upto, issued_at)),
    };
    let ids: Vec<String> = rows
        .iter()
        .map(|(_, _, row)| format!("{}({})", req.set_name, row.predicate()))
        .collect();
    let entries: Vec<Entry> = rows
        .iter()
        .zip(&ids)
        .map(|((_, _, row), id): (&(Version, u64, EntityRow), &String)| {
            match row.removed_reason() {
                None => Entry::Entity(row.body()),
                Some(reason) => Entry::Removed {
                    entity_id: id,
                    key_members: row.key_members(),
                    reason,
                },
            }
        })
        .collect();
    let ctx = page_context(req, query, true, count);
    let body = write_page(&ctx, &entries, &end);
    Ok(respond(req, body, fresh, first, page_size))
}

/// Headers of a tracked response: version, `Vary`, `Preference-Applied` (C3, C14, C21) and the
/// age of the refresh behind it.
fn respond(
    req: &TrackedRequest,
    body: Vec<u8>,
    fresh: Option<Fresh>,
    first: bool,
    page_size: u32,
) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    let headers = response.headers_mut();
    let content_type = if req.format.ieee754 {
        names::JSON_IEEE754_CONTENT_TYPE
    } else {
        names::JSON_CONTENT_TYPE
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        names::ODATA_VERSION,
        HeaderValue::from_static(req.version.header_value()),
    );
    // Preferences decide whether the URL is tracked and how the page is cut (C14, C30).
    headers.insert(
        header::VARY,
        HeaderValue::from_static("OData-MaxVersion, Prefer"),
    );
    let mut applied = Vec::new();
    if let (Some(spelling), true) = (req.prefs.track_changes, first) {
        applied.push(spelling.to_owned());
    }
    if let Some((_, spelling)) = req.prefs.max_page_size {
        applied.push(format!("{spelling}={page_size}"));
    }
    if !applied.is_empty()
        && let Ok(v) = HeaderValue::from_str(&applied.join(", "))
    {
        headers.insert(names::PREFERENCE_APPLIED, v);
    }
    if let Some(fresh) = fresh {
        let age = SystemTime::now()
            .duration_since(fresh.finished_at)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        if let Ok(v) = HeaderValue::from_str(&age.to_string()) {
            headers.insert(names::REFRESH_AGE, v);
        }
    }
    response
}

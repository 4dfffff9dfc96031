//! Answering tracked requests from the store: the initial response (C3, C4), deltas (C11), their
//! continuation pages (C21, C22), `$deltatoken=latest` (C13) and `/$count` on a delta link (C23).
//! Every page is built whole before a status line is written (C26).
//!
//! This module classifies a tracked request and writes pages of live rows; `first_read` answers
//! the initial read (streamed during a first load, or ordered), `delta` the changes since a token.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Response, StatusCode, header};

use crate::Shared;
use crate::body::{self, Body};
use crate::error::Error;
use crate::odata::delta::{Entry, PageContext, PageEnd, write_page};
use crate::odata::prefer::Preferences;
use crate::odata::query::{DefiningQuery, ODataQuery, encode_path};
use crate::odata::{ODataVersion, names};

use super::authorize::{authorize, authorize_after_refresh};
use super::feed::{FeedDef, FeedId, Scope, SetSpec, Version};
use super::fetch::forwarded_headers;
use super::freshness;
use super::refresh::{Fresh, RefreshInput, ensure_fresh};
use super::retention::{record_issued, token_is_valid};
use super::token::{Cursor, SKIPTOKEN_PREFIX, Token, TokenError, TokenKind};
use crate::metrics::RejectionReason;

mod delta;
mod first_read;

use delta::{count, delta, delta_page, latest};
use first_read::{initial, ordered, streaming_page};

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
            replica_max_age: freshness::max_age(
                shared.config.min_refresh_interval,
                poll,
                &self.headers,
            ),
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
    let of = PageOf {
        shared,
        req: &req,
        feed,
        query: &def.query,
        issued_at: token.issued_at,
        page_size,
    };
    match cursor {
        Cursor::Initial { .. } => live_page(of, cursor, count, false, None).await,
        Cursor::Streaming { .. } => Err(Error::Internal(
            "a streaming cursor reached the wrong page".into(),
        )),
        Cursor::Delta { .. } => delta_page(of, cursor, count, None).await,
    }
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

/// What every page of one tracked answer is written from: the request, its feed and defining
/// query, the issue time its tokens carry, and the page size.
#[derive(Clone, Copy)]
struct PageOf<'a> {
    shared: &'a Arc<Shared>,
    req: &'a TrackedRequest,
    feed: FeedId,
    query: &'a DefiningQuery,
    issued_at: u64,
    page_size: u32,
}

/// A page of live rows at a published version (an initial read and its next links).
async fn live_page(
    of: PageOf<'_>,
    cursor: Cursor,
    count: Option<u64>,
    first: bool,
    fresh: Option<Fresh>,
) -> Result<Response<Body>, Error> {
    let PageOf {
        shared,
        req,
        feed,
        query,
        issued_at,
        page_size,
    } = of;
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

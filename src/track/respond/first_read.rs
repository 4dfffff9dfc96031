//! The first read of a feed: refresh, then the live entities at the new version (C3, C4); while
//! a feed's first load runs, its pages are answered as the load writes them; and a tracked
//! `$orderby`, ordered by the gateway in one page.

use std::sync::Arc;

use http::Response;

use crate::Shared;
use crate::body::Body;
use crate::error::{Error, UpstreamFailure};
use crate::odata::delta::{Entry, PageEnd, write_page};
use crate::odata::orderby::{OrderBy, SortKey};

use crate::track::authorize::{authorize, authorize_after_refresh};
use crate::track::feed::{FeedDef, Version};
use crate::track::refresh::{Fresh, RefreshInput, ensure_fresh};
use crate::track::retention::record_issued;
use crate::track::token::{Cursor, Token, TokenError};

use super::{Answer, PageOf, TrackedRequest, live_page, now_secs, page_context, refused, respond};

/// The initial response of a tracked read: refresh, then the live entities at the new version.
pub(super) async fn initial(
    shared: &Arc<Shared>,
    req: TrackedRequest,
) -> Result<Response<Body>, Error> {
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
    let of = PageOf {
        shared,
        req: &req,
        feed: def.id(),
        query: &def.query,
        issued_at,
        page_size,
    };
    live_page(of, cursor, count, true, Some(fresh)).await
}

/// How the first page of a tracked read is answered.
pub(super) enum FirstRead {
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
pub(super) async fn first_read(
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
                let of = PageOf {
                    shared,
                    req,
                    feed,
                    query: &def.query,
                    issued_at,
                    page_size,
                };
                let response = streamed_rows(of, cursor, true).await?;
                return Ok(FirstRead::Streamed(response));
            }
        }
    }
}

/// A page of rows a running first load has written at its pending version; there is always a
/// next page (the caller checked that more rows were written than the page holds).
pub(super) async fn streamed_rows(
    of: PageOf<'_>,
    cursor: Cursor,
    first: bool,
) -> Result<Response<Body>, Error> {
    let PageOf {
        shared,
        req,
        feed,
        query,
        issued_at,
        page_size,
    } = of;
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
/// a 502) says to read again. A next link of a load running on another replica waits for it to be
/// published.
pub(super) async fn streaming_page(
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
    let mut waited_elsewhere = false;
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
            let of = PageOf {
                shared,
                req,
                feed,
                query: &def.query,
                issued_at: token.issued_at,
                page_size,
            };
            return live_page(of, cursor, None, false, None).await;
        }
        let (Some(p), Some(rx)) = (state, rx.as_mut()) else {
            // On a store shared by several replicas the load may be running on another one (a
            // proxy sent this request here), which holds the feed's refresh lock until it has
            // published or failed: wait for that once, then look again. A wait longer than the
            // store's statement timeout answers 503, and the retry finds the load published.
            if shared.store.is_shared() && !waited_elsewhere {
                waited_elsewhere = true;
                let store = shared.store.clone();
                drop(tokio::task::spawn_blocking(move || store.lock_feed(feed)).await??);
                continue;
            }
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
                let of = PageOf {
                    shared,
                    req,
                    feed,
                    query: &p.def.query,
                    issued_at: token.issued_at,
                    page_size,
                };
                return streamed_rows(of, cursor, false).await;
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
pub(super) async fn ordered(shared: &Arc<Shared>, req: TrackedRequest) -> Result<Answer, Error> {
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

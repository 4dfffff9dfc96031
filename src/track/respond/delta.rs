//! Deltas: the changes since a token's version (C11) and their pages, `$deltatoken=latest` (C13),
//! and `/$count` on a delta link (C23).

use std::sync::Arc;

use http::{HeaderValue, Response, header};

use crate::Shared;
use crate::body::{self, Body};
use crate::error::Error;
use crate::odata::delta::{Entry, PageEnd, write_page};
use crate::odata::names;
use crate::store::EntityRow;

use crate::track::callback;
use crate::track::feed::Version;
use crate::track::refresh::Fresh;
use crate::track::retention::record_issued;
use crate::track::token::Cursor;

use super::{PageOf, TrackedRequest, now_secs, page_context, respond};

/// `$deltatoken=latest` (C13): refresh to fix "now", answer no entities and a delta link from now.
pub(super) async fn latest(
    shared: &Arc<Shared>,
    req: TrackedRequest,
) -> Result<Response<Body>, Error> {
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
pub(super) async fn delta(
    shared: &Arc<Shared>,
    req: TrackedRequest,
) -> Result<Response<Body>, Error> {
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
    let of = PageOf {
        shared,
        req: &req,
        feed,
        query: &def.query,
        issued_at,
        page_size,
    };
    delta_page(of, cursor, count, Some(fresh)).await
}

/// `/$count` on a delta link (C23): the number of entries the delta would hold; the token stays as
/// it is.
pub(super) async fn count(
    shared: &Arc<Shared>,
    req: TrackedRequest,
) -> Result<Response<Body>, Error> {
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

/// A page of the changes since a token's version.
pub(super) async fn delta_page(
    of: PageOf<'_>,
    cursor: Cursor,
    count: Option<u64>,
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

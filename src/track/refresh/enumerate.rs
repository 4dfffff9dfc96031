//! Reading the upstream collection of a feed: every page in order, with the next page fetched
//! while earlier ones are hashed; nextLink cycles refused; and the cross-check against the
//! upstream's `@odata.count`, reading on with `$skip` past an upstream that stops early.

use std::collections::VecDeque;

use bytes::Bytes;
use percent_encoding::percent_decode_str;
use url::Url;

use crate::error::{Error, UpstreamFailure};
use crate::odata::page::{PageError, tail_next_link};
use crate::odata::query::{encode_pairs, encode_path};
use crate::track::feed::Index;
use crate::track::fetch::{OnRefusal, Prefetch, is_rejected};

use super::Pass;
use super::page::{HashingPage, Scanned, scan};
use super::tally::{ReadOn, Verdict};

/// A page being fetched; for a nextLink whose `$count` was taken out, the link as the upstream
/// wrote it, fetched instead if the upstream refuses the shorter one.
struct NextPage {
    fetch: Prefetch,
    as_written: Option<Url>,
}

impl NextPage {
    fn start(pass: &Pass<'_>, url: Url, as_written: Option<Url>, on_refusal: OnRefusal) -> Self {
        NextPage {
            fetch: Prefetch::start(&pass.fetcher, url, on_refusal),
            as_written,
        }
    }

    /// The page's body. An upstream that refuses a nextLink without `$count` gets every later
    /// link as it wrote it.
    async fn wait(mut self, pass: &mut Pass<'_>) -> Result<Bytes, Error> {
        match (self.fetch.wait().await, self.as_written) {
            (Err(e), Some(url)) if is_rejected(&e) => {
                tracing::info!(set = %pass.set_name(), "the upstream refused its nextLink without $count; following its links as written");
                pass.count_in_links = true;
                pass.fetcher.get_page(&url, OnRefusal::Fail).await
            }
            (result, _) => result,
        }
    }
}

/// `url` without the `$count` system query option, or `None` when it has none. Every other part of
/// the query is kept byte for byte: the rest of a nextLink is the upstream's to interpret.
pub(super) fn without_count(url: &Url) -> Option<Url> {
    let is_count = |part: &&str| {
        let name = part.split('=').next().unwrap_or_default();
        percent_decode_str(name)
            .decode_utf8_lossy()
            .eq_ignore_ascii_case("$count")
    };
    let query = url.query()?;
    if !query.split('&').any(|part| is_count(&part)) {
        return None;
    }
    let kept = query.split('&').filter(|part| !is_count(part));
    let kept = kept.collect::<Vec<_>>().join("&");
    let mut out = url.clone();
    out.set_query((!kept.is_empty()).then_some(kept.as_str()));
    Some(out)
}

/// Most index entries made room for from an upstream's `@odata.count`: the count is the
/// upstream's word, and a larger feed still grows past this as it is read.
const MAX_RESERVED_ENTRIES: u64 = 1 << 22;

/// The short, fixed-size identity of a link, for the set of links followed.
pub(super) fn link_hash(url: &Url) -> [u8; 16] {
    let hash = blake3::hash(url.as_str().as_bytes());
    let mut out = [0; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    out
}

impl Pass<'_> {
    /// The collection URL with a query.
    pub(super) fn collection_url(&self, pairs: &[(String, String)]) -> Url {
        let mut url = self.input.service_root.clone();
        let path = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            encode_path(self.set_name())
        );
        url.set_path(&path);
        let q = encode_pairs(pairs);
        url.set_query(if q.is_empty() { None } else { Some(&q) });
        url
    }

    /// Read every page of the feed's upstream collection.
    pub(super) async fn enumerate(&mut self, index: &mut Index) -> Result<(), Error> {
        let mut pairs = self.input.def.query.enumeration(&self.key_names());
        pairs.push(("$count".into(), "true".into()));
        // A refusal of the first request is about the client's query or credentials; later ones
        // are the upstream's fault. An upstream that cannot count or order may refuse what we
        // added to the query, so that is tried without before the client is blamed.
        match self.read_collection(&pairs, index, OnRefusal::PassOn).await {
            Err(Error::Rejected { status, .. }) if matches!(status.as_u16(), 400 | 501) => {
                tracing::info!(set = %self.set_name(), %status, "the upstream refused $count/$orderby; enumerating without them");
                pairs.retain(|(n, _)| n != "$count" && n != "$orderby");
                self.read_collection(&pairs, index, OnRefusal::PassOn)
                    .await?;
            }
            other => other?,
        }
        self.check_complete(&pairs, index).await
    }

    /// Read a collection query and every page after it.
    async fn read_collection(
        &mut self,
        pairs: &[(String, String)],
        index: &mut Index,
        on_refusal: OnRefusal,
    ) -> Result<(), Error> {
        // A pipeline: the next page is fetched while earlier ones are parsed and hashed on the
        // blocking pool (pages are up to `max_page_bytes`; parsing them on the threads that serve
        // requests would stall those), two pages hashing at a time so that both cores work.
        // Results are applied in page order, so that a key seen twice keeps its last state.
        let url = self.collection_url(pairs);
        self.links.insert(link_hash(&url));
        let mut next = Some(NextPage::start(self, url, None, on_refusal));
        let mut hashing: VecDeque<HashingPage> = VecDeque::new();
        loop {
            let Some(page) = next.take() else {
                break;
            };
            let body = page.wait(self).await?;
            // The next page is asked for while this one is parsed when its link can be read off
            // the end of the body; the parse confirms the guess or drops that request.
            let guessed = tail_next_link(&body)
                .and_then(|link| crate::upstream::resolve_link(&self.input.service_root, link).ok())
                .map(|url| (url.clone(), self.next_page(url)));
            let scanned = self.scan_page(&body).await?;
            if index.is_empty()
                && let Some(count) = scanned.count
            {
                // A first load: the index takes the upstream's count at once.
                let limit = self.shared.config.limits.max_entities_per_feed;
                index.reserve(count.min(limit).min(MAX_RESERVED_ENTRIES) as usize);
            }
            if let Some(link) = &scanned.next_link {
                let url = crate::upstream::resolve_link(&self.input.service_root, link)?;
                self.follow(&url)?;
                next = Some(match guessed {
                    Some((guess, page)) if guess == url => page,
                    _ => self.next_page(url),
                });
            }
            hashing.push_back(HashingPage::start(
                body,
                scanned.spans,
                self.input.set.clone(),
                self.digest_in_worker,
            ));
            if hashing.len() >= 2 {
                self.apply_page(hashing.pop_front(), index).await?;
            }
        }
        while !hashing.is_empty() {
            self.apply_page(hashing.pop_front(), index).await?;
        }
        Ok(())
    }

    /// Start fetching the page of nextLink `url`: without its `$count` unless the upstream has
    /// refused such a link in this refresh. The first page asked for the count; later pages need
    /// not (an upstream that ignores `$count` is not affected either way).
    fn next_page(&self, url: Url) -> NextPage {
        match without_count(&url).filter(|_| !self.count_in_links) {
            Some(shorter) => NextPage::start(self, shorter, Some(url), OnRefusal::Reworded),
            None => NextPage::start(self, url, None, OnRefusal::Fail),
        }
    }

    /// Note a nextLink about to be followed; one seen before in this refresh is a cycle, which would
    /// otherwise be read until the page cap.
    pub(super) fn follow(&mut self, url: &Url) -> Result<(), Error> {
        if self.links.insert(link_hash(url)) {
            return Ok(());
        }
        tracing::warn!(set = %self.set_name(), link = %url, "the upstream's nextLink points back at a page already read");
        Err(Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "the upstream's paging of {} loops back to a page already read; nothing was committed",
                self.set_name()
            ),
        ))
    }

    /// Parse an upstream page on the blocking pool and count it.
    async fn scan_page(&mut self, body: &Bytes) -> Result<Scanned, Error> {
        let shared = body.clone();
        let scanned = tokio::task::spawn_blocking(move || scan(&shared)).await?;
        let scanned = scanned.map_err(|e| self.unreadable_page(e))?;
        self.count_page(&scanned);
        Ok(scanned)
    }

    /// Count a parsed page.
    pub(super) fn count_page(&mut self, scanned: &Scanned) {
        self.tally.page(scanned.spans.len() as u64, scanned.count);
        self.shared
            .metrics
            .entities_enumerated
            .inc_by(scanned.spans.len() as u64);
        self.shared.metrics.upstream_pages.inc();
    }

    /// The error for a page that is not an OData collection.
    pub(super) fn unreadable_page(&self, e: PageError) -> Error {
        tracing::warn!(set = %self.set_name(), error = %e, "unreadable upstream page");
        Error::upstream(
            UpstreamFailure::BadAnswer,
            format!(
                "the upstream sent an unreadable page of {}; nothing was committed",
                self.set_name()
            ),
        )
    }

    /// Cross-check the enumeration with the upstream's `@odata.count`. An upstream that stops early
    /// without a nextLink (silent truncation, or a silent cap on every answer) is read on with
    /// `$skip`/`$top` until the count is reached or a round comes back empty; the page cap and the
    /// refresh timeout bound how long. Rows that went while the enumeration ran leave a shortfall
    /// the read-on cannot fill: that is churn, and the removal confirmation decides about those
    /// rows (C27). Only an upstream that keeps delivering rows it already sent fails the refresh.
    async fn check_complete(
        &mut self,
        pairs: &[(String, String)],
        index: &mut Index,
    ) -> Result<(), Error> {
        let step = u64::from(self.shared.config.upstream.page_size);
        let mut read_on = ReadOn::new(&self.tally, step);
        let mut verdict = read_on.first(&self.tally);
        if verdict != Verdict::Complete {
            tracing::warn!(
                set = %self.set_name(),
                reported = self.tally.reported,
                delivered = self.tally.distinct,
                "the upstream delivered fewer entities than it counted; reading on with $skip"
            );
        }
        while let Verdict::ReadOn { skip, top } = verdict {
            let before = self.tally;
            let mut more: Vec<(String, String)> = pairs
                .iter()
                .filter(|(n, _)| n != "$count")
                .cloned()
                .collect();
            more.push(("$skip".into(), skip.to_string()));
            more.push(("$top".into(), top.to_string()));
            self.read_collection(&more, index, OnRefusal::Fail).await?;
            verdict = read_on.after_round(
                &self.tally,
                self.tally.delivered.saturating_sub(before.delivered),
                self.tally.distinct.saturating_sub(before.distinct),
            );
        }
        match verdict {
            Verdict::Truncated => Err(Error::upstream(
                UpstreamFailure::BadAnswer,
                format!(
                    "the upstream counted {} entities of {} but delivered {}, even when asked past them; nothing was committed",
                    self.tally.reported.unwrap_or(0),
                    self.set_name(),
                    self.tally.distinct
                ),
            )),
            Verdict::Explained => {
                tracing::info!(set = %self.set_name(), reported = self.tally.reported, delivered = self.tally.distinct, "the upstream holds fewer entities than it counted; rows went while it was read");
                Ok(())
            }
            Verdict::Complete | Verdict::ReadOn { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped(link: &str) -> Option<String> {
        without_count(&Url::parse(link).unwrap()).map(String::from)
    }

    #[test]
    fn count_is_taken_out_of_a_next_link_and_the_rest_kept_as_written() {
        assert_eq!(
            stripped("http://u/svc/Books?$orderby=ID&$count=true&$skiptoken=1000").as_deref(),
            Some("http://u/svc/Books?$orderby=ID&$skiptoken=1000")
        );
        assert_eq!(
            stripped("http://u/svc/Books?%24COUNT=true&$skiptoken=a%2Bb%3D&$filter=x%20eq%201")
                .as_deref(),
            Some("http://u/svc/Books?$skiptoken=a%2Bb%3D&$filter=x%20eq%201")
        );
        assert_eq!(
            stripped("http://u/svc/Books?$count=true").as_deref(),
            Some("http://u/svc/Books")
        );
    }

    #[test]
    fn a_link_without_count_or_with_count_only_inside_expand_is_left_alone() {
        assert_eq!(stripped("http://u/svc/Books?$skiptoken=5"), None);
        assert_eq!(stripped("http://u/svc/Books"), None);
        assert_eq!(
            stripped("http://u/svc/Books?$expand=Items($count=true)&$skiptoken=5"),
            None
        );
        assert_eq!(stripped("http://u/svc/Books?countries=2&x$count=1"), None);
    }
}

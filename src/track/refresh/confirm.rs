//! Confirming candidate removals upstream before a tombstone is published (C27): an entity the
//! enumeration did not see is looked up by key — batched `$filter=key in (…)` ANDed with the feed's
//! filter, falling back to `or`-chains, single `eq` filters and GET by key as the upstream rejects
//! each form. Found → kept (and updated if changed); found by key but outside the filter → removed
//! with reason `changed`; not found → `deleted`. Any other failure fails the refresh.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::error::{Error, UpstreamFailure};
use crate::odata::delta::Reason;
use crate::odata::entity_id::key_filter;
use crate::odata::query::{encode, encode_pairs, encode_path};

use super::super::feed::Index;
use super::super::hash::KeyHash;
use super::Pass;
use super::fetch::OnRefusal;

/// How candidate removals are looked up upstream; a step down whenever the upstream rejects one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConfirmStrategy {
    /// `$filter=ID in (…)`, batched.
    #[default]
    In,
    /// `$filter=ID eq 1 or ID eq 2 …`, batched.
    Or,
    /// `$filter=ID eq 1`, one request per key.
    Single,
    /// `GET Set(1)`, one request per key (only for feeds without a filter).
    ByKey,
}

impl Pass<'_> {
    /// Confirm candidate removals upstream (C27): a candidate found in the feed's result is kept (and
    /// updated if it changed); one not found there but found by key left the set (`changed`); one not
    /// found at all is `deleted`.
    pub(super) async fn confirm(
        &mut self,
        index: &mut Index,
        candidates: Vec<KeyHash>,
        strategy: &mut ConfirmStrategy,
    ) -> Result<Vec<(KeyHash, Reason)>, Error> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.shared.store.clone();
        let feed = self.input.feed;
        let rows = tokio::task::spawn_blocking(move || store.rows(feed, &candidates)).await??;
        let by_predicate: HashMap<String, KeyHash> =
            rows.into_iter().map(|(k, r)| (r.predicate, k)).collect();
        let predicates: Vec<String> = by_predicate.keys().cloned().collect();

        let filtered = self.input.def.query.get("$filter").is_some()
            || self.input.def.query.get("$search").is_some();
        let in_feed = self.lookup(&predicates, true, index, strategy).await?;
        let missing: Vec<String> = predicates
            .into_iter()
            .filter(|p| !in_feed.contains(p))
            .collect();
        let still_exist = if filtered && !missing.is_empty() {
            self.lookup(&missing, false, index, strategy).await?
        } else {
            HashSet::new()
        };
        let mut removals = Vec::new();
        for p in missing {
            let reason = if still_exist.contains(&p) {
                Reason::Changed
            } else {
                Reason::Deleted
            };
            if let Some(k) = by_predicate.get(&p) {
                removals.push((*k, reason));
            }
        }
        if !in_feed.is_empty() {
            tracing::info!(
                set = %self.set_name(),
                kept = in_feed.len(),
                "entities missing from the enumeration were confirmed present upstream and kept"
            );
        }
        Ok(removals)
    }

    /// Which of `predicates` the upstream returns — within the feed's query (`in_feed`, observing
    /// what it finds) or by key alone. Falls back through `in`, `or`, single `eq` and GET by key as
    /// the upstream rejects them (400/501); any other failure fails the refresh.
    async fn lookup(
        &mut self,
        predicates: &[String],
        in_feed: bool,
        index: &mut Index,
        strategy: &mut ConfirmStrategy,
    ) -> Result<HashSet<String>, Error> {
        let mut found = HashSet::new();
        let has_filter = self.input.def.query.get("$filter").is_some()
            || self.input.def.query.get("$search").is_some();
        let mut rest: Vec<&String> = predicates.iter().collect();
        while !rest.is_empty() {
            let batch_len = match *strategy {
                ConfirmStrategy::In | ConfirmStrategy::Or => batch_len(&rest),
                _ => 1,
            };
            let batch: Vec<&str> = rest[..batch_len].iter().map(|s| s.as_str()).collect();
            let result = match *strategy {
                ConfirmStrategy::ByKey => {
                    self.lookup_by_key(batch[0], in_feed, index, &mut found)
                        .await
                }
                s => {
                    self.lookup_filtered(
                        &batch,
                        s == ConfirmStrategy::In,
                        in_feed,
                        index,
                        &mut found,
                    )
                    .await
                }
            };
            match result {
                Ok(()) => rest.drain(..batch_len),
                Err(e) if is_rejected(&e) => {
                    let next = match *strategy {
                        ConfirmStrategy::In => ConfirmStrategy::Or,
                        ConfirmStrategy::Or => ConfirmStrategy::Single,
                        ConfirmStrategy::Single if !has_filter => ConfirmStrategy::ByKey,
                        _ => {
                            return Err(Error::upstream(
                                UpstreamFailure::BadAnswer,
                                format!(
                                    "the upstream rejected every way of confirming removals from {}; nothing was committed",
                                    self.set_name()
                                ),
                            ));
                        }
                    };
                    tracing::info!(set = %self.set_name(), from = ?strategy, to = ?next, "upstream rejected a removal check; falling back");
                    *strategy = next;
                    continue;
                }
                Err(e) => return Err(e),
            };
        }
        Ok(found)
    }

    async fn lookup_filtered(
        &mut self,
        batch: &[&str],
        use_in: bool,
        in_feed: bool,
        index: &mut Index,
        found: &mut HashSet<String>,
    ) -> Result<(), Error> {
        let keys = key_filter(&self.input.set.key, batch, use_in);
        let mut pairs: Vec<(String, String)> = Vec::new();
        if in_feed {
            for (name, value) in self.input.def.query.enumeration(&self.key_names()) {
                match name.as_str() {
                    "$filter" => pairs.push((name, format!("({value}) and ({keys})"))),
                    "$orderby" => {}
                    _ => pairs.push((name, value)),
                }
            }
            if self.input.def.query.get("$filter").is_none() {
                pairs.push(("$filter".into(), keys));
            }
        } else {
            pairs.push(("$filter".into(), keys));
            pairs.push(("$select".into(), self.key_names().join(",")));
            for (n, v) in self.input.def.query.parts() {
                if !n.starts_with('$') {
                    pairs.push((n.clone(), v.clone()));
                }
            }
        }
        let mut url = self.collection_url(&pairs);
        loop {
            let body = self.fetcher.get(&url, OnRefusal::FallBack).await?;
            let next = if in_feed {
                self.read_page(&body, index, Some(found))?
            } else {
                self.read_keys(&body, found)?
            };
            match next {
                None => return Ok(()),
                Some(link) => url = crate::upstream::resolve_link(&self.input.service_root, &link)?,
            }
        }
    }

    /// Collect the key predicates of a page without observing its entities (existence checks).
    fn read_keys(
        &mut self,
        body: &Bytes,
        found: &mut HashSet<String>,
    ) -> Result<Option<String>, Error> {
        let page = self.parse_page(body)?;
        for raw in &page.entities {
            let digest = self
                .hasher
                .digest(raw.get().as_bytes(), &self.input.set.key, &[])
                .map_err(|e| {
                    Error::upstream(
                        UpstreamFailure::BadAnswer,
                        format!("an entity of {} cannot be read ({e})", self.set_name()),
                    )
                })?;
            found.insert(digest.key.predicate);
        }
        Ok(page.next_link)
    }

    async fn lookup_by_key(
        &mut self,
        predicate: &str,
        in_feed: bool,
        index: &mut Index,
        found: &mut HashSet<String>,
    ) -> Result<(), Error> {
        let mut url = self.input.service_root.clone();
        let path = format!(
            "{}/{}({})",
            url.path().trim_end_matches('/'),
            encode_path(self.set_name()),
            encode_path(predicate)
        );
        url.set_path(&path);
        let pairs: Vec<(String, String)> = self
            .input
            .def
            .query
            .enumeration(&self.key_names())
            .into_iter()
            .filter(|(n, _)| n == "$select" || n == "$expand" || !n.starts_with('$'))
            .collect();
        let q = encode_pairs(&pairs);
        url.set_query(if q.is_empty() { None } else { Some(&q) });
        let fetched = self.fetcher.get_status(&url).await?;
        let (status, body) = (fetched.status, fetched.body);
        match status.as_u16() {
            200 => {
                let p = if in_feed {
                    self.observe(&body, index)?
                } else {
                    self.hasher
                        .digest(&body, &self.input.set.key, &[])
                        .map_err(|e| {
                            Error::upstream(
                                UpstreamFailure::BadAnswer,
                                format!("an entity cannot be read ({e})"),
                            )
                        })?
                        .key
                        .predicate
                };
                found.insert(p);
                Ok(())
            }
            404 => Ok(()),
            _ => Err(Error::upstream(
                UpstreamFailure::BadAnswer,
                format!(
                    "the upstream answered {status} to a key lookup in {}; nothing was committed",
                    self.set_name()
                ),
            )),
        }
    }
}

/// A batch of predicates whose filter keeps the URL well under common limits (8 KiB).
fn batch_len(rest: &[&String]) -> usize {
    let mut len = 0;
    let mut n = 0;
    for p in rest {
        len += encode(p).len() + 16;
        if n > 0 && (len > 2000 || n >= 100) {
            break;
        }
        n += 1;
    }
    n.max(1)
}

/// The marker error for "the upstream rejected this form of query".
pub(super) fn rejected() -> Error {
    Error::upstream(UpstreamFailure::BadAnswer, REJECTED)
}

const REJECTED: &str = "the upstream rejected the query";

fn is_rejected(e: &Error) -> bool {
    matches!(e, Error::Upstream { message, .. } if message == REJECTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_short() {
        let keys: Vec<String> = (0..1000)
            .map(|i| format!("'{}'", "x".repeat(i % 50)))
            .collect();
        let refs: Vec<&String> = keys.iter().collect();
        let n = batch_len(&refs);
        assert!((1..=100).contains(&n));
        let long = ["y".repeat(5000)];
        assert_eq!(batch_len(&long.iter().collect::<Vec<_>>()), 1);
    }
}

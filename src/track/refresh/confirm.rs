//! Confirming candidate removals upstream before a tombstone is published (C27): an entity the
//! enumeration did not see is looked up by key — batched `$filter=key in (…)` ANDed with the feed's
//! filter, falling back to `or`-chains, single `eq` filters and GET by key as the upstream rejects
//! each form. Any refusal of a form counts as rejection — servers answer an `in` they cannot parse
//! with 400, 501, or even 500 (JayStack's odata-v4-server) — except 401 and 403, which are passed on,
//! and 429, which fails the refresh once its retries are spent. The form that worked is remembered
//! in the feed's slot. Found → kept (and updated if changed); found by key but outside the filter →
//! removed with reason `changed`; not found → `deleted`. Only when every form fails, or the upstream
//! fails otherwise, does the refresh fail. Pages are parsed and hashed on the blocking pool.

use std::collections::HashSet;

use bytes::Bytes;

use crate::error::{Error, UpstreamFailure};
use crate::odata::delta::Reason;
use crate::odata::entity_id::key_filter;
use crate::odata::page::PageError;
use crate::odata::query::{encode, encode_pairs, encode_path};
use crate::store::RowKey;

use super::super::feed::Index;
use super::super::hash::KeyHash;
use super::Pass;
use super::page::{PageDigests, Scanned, digest_all, scan};
use crate::track::feed::ConfirmStrategy;
use crate::track::fetch::is_rejected;
use crate::track::fetch::{OnRefusal, passed_on};

impl Pass<'_> {
    /// Confirm candidate removals upstream (C27): a candidate found in the feed's result is kept (and
    /// updated if it changed); one not found there but found by key left the set (`changed`); one not
    /// found at all is `deleted`.
    pub(super) async fn confirm(
        &mut self,
        index: &mut Index,
        candidates: Vec<(KeyHash, u64)>,
        strategy: &mut ConfirmStrategy,
    ) -> Result<Vec<(RowKey, Reason)>, Error> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.shared.store.clone();
        let feed = self.input.feed;
        let rows: Vec<u64> = candidates.iter().map(|(_, row)| *row).collect();
        // Only the keys are read, not the stored bodies.
        let row_keys = tokio::task::spawn_blocking(move || store.keys_of(feed, &rows)).await??;
        // Answers are matched by key identity, not spelling: an upstream may write a GUID or a
        // decimal of the same key another way than the enumeration did.
        let predicates: Vec<String> = row_keys.iter().map(|k| k.predicate.clone()).collect();
        let keys: Vec<KeyHash> = row_keys.iter().map(|k| k.key_hash).collect();
        let mut by_key: std::collections::HashMap<KeyHash, RowKey> =
            row_keys.into_iter().map(|k| (k.key_hash, k)).collect();

        let filtered = self.input.def.query.get("$filter").is_some()
            || self.input.def.query.get("$search").is_some();
        let in_feed = self.lookup(&predicates, true, index, strategy).await?;
        let (missing_keys, missing): (Vec<KeyHash>, Vec<String>) = keys
            .into_iter()
            .zip(predicates)
            .filter(|(k, _)| !in_feed.contains(k))
            .unzip();
        let still_exist = if filtered && !missing.is_empty() {
            self.lookup(&missing, false, index, strategy).await?
        } else {
            HashSet::new()
        };
        let mut removals = Vec::new();
        for k in missing_keys {
            let reason = if still_exist.contains(&k) {
                Reason::Changed
            } else {
                Reason::Deleted
            };
            if let Some(k) = by_key.remove(&k) {
                removals.push((k, reason));
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
    /// the upstream refuses them (any status but 401, 403 and 429); any other failure fails the
    /// refresh.
    async fn lookup(
        &mut self,
        predicates: &[String],
        in_feed: bool,
        index: &mut Index,
        strategy: &mut ConfirmStrategy,
    ) -> Result<HashSet<KeyHash>, Error> {
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
            // Entities found in the feed may have changed: their rows join the batch.
            self.flush_if_full().await?;
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
        found: &mut HashSet<KeyHash>,
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
        let mut first = true;
        loop {
            let body = if first {
                self.fetcher.get(&url, OnRefusal::FallBack).await?
            } else {
                self.fetcher.get_page(&url, OnRefusal::FallBack).await?
            };
            first = false;
            let (scanned, digests) = self.scan_and_digest(&body).await?;
            self.count_page(&scanned);
            if in_feed {
                self.apply_digests(&body, digests, None, index, Some(found))
                    .await?;
            } else {
                // An existence check: the entity only tells that its key is there.
                for digest in digests.into_iter().filter_map(|e| e.digest) {
                    found.insert(digest.map_err(|e| self.unreadable(e))?.key_hash);
                }
            }
            match scanned.next_link {
                None => return Ok(()),
                Some(link) => {
                    url = crate::upstream::resolve_link(&self.input.service_root, &link)?;
                    self.follow(&url)?;
                }
            }
        }
    }

    /// Parse a page and hash its entities, on the blocking pool.
    async fn scan_and_digest(&self, body: &Bytes) -> Result<(Scanned, PageDigests), Error> {
        let shared = body.clone();
        let set = self.input.set.clone();
        let done = tokio::task::spawn_blocking(move || {
            let scanned = scan(&shared)?;
            let digests = digest_all(&shared, &scanned.spans, &set, true);
            Ok::<_, PageError>((scanned, digests))
        })
        .await?;
        done.map_err(|e| self.unreadable_page(e))
    }

    async fn lookup_by_key(
        &mut self,
        predicate: &str,
        in_feed: bool,
        index: &mut Index,
        found: &mut HashSet<KeyHash>,
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
        let status = fetched.status;
        match status.as_u16() {
            200 => {
                let body = fetched.body;
                let shared = body.clone();
                let set = self.input.set.clone();
                let digests = tokio::task::spawn_blocking(move || {
                    digest_all(&shared, &[(0, shared.len())], &set, true)
                })
                .await?;
                if in_feed {
                    self.apply_digests(&body, digests, None, index, Some(found))
                        .await
                } else {
                    for digest in digests.into_iter().filter_map(|e| e.digest) {
                        found.insert(digest.map_err(|e| self.unreadable(e))?.key_hash);
                    }
                    Ok(())
                }
            }
            404 => Ok(()),
            401 | 403 => Err(passed_on(&fetched)),
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

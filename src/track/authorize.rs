//! Authorizing tracked requests of per-identity feeds: before the gateway answers one from its
//! store, the upstream must have accepted this request's own credentials for the feed recently —
//! by a refresh this request ran, or by a cheap read of the feed's collection with `$top=0`.
//! Without it, a revoked credential would go on reading pages of earlier reads (next links are
//! served from the store), and a bearer JWT scoped by unverified claims could be forged.
//!
//! A 2xx is reused for `identity.authorization_cache` per credentials and feed. The cache is keyed
//! by the credentials themselves, not by the scope: one claims scope covers every token with the
//! same claims, renewed and forged ones alike, and each must be accepted on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use url::Url;

use crate::Shared;
use crate::config::IdentityScope;
use crate::error::Error;
use crate::odata::query::{encode_pairs, encode_path};

use super::feed::FeedDef;
use super::fetch::{Fetcher, OnRefusal, forwarded_headers};

/// Headers that carry credentials, for the default identity scope.
pub(crate) const CREDENTIAL_HEADERS: &[&str] = &["authorization", "apikey", "x-api-key"];

/// Most authorizations remembered; past it the oldest is forgotten (and checked again when used).
const MAX_ENTRIES: usize = 10_000;

/// Recent upstream authorizations, by credentials and feed.
pub(crate) struct Authorizations {
    /// How long a 2xx counts.
    ttl: Duration,
    /// When each (credentials, feed) was last accepted.
    accepted: Mutex<HashMap<[u8; 32], Instant>>,
}

/// What identifies an authorization: a keyed hash of the feed and of every header that can carry
/// a credential.
#[derive(Clone, Copy)]
pub(crate) struct AuthKey([u8; 32]);

impl Authorizations {
    /// A cache whose entries count for `ttl` (zero: never reused).
    pub(crate) fn new(ttl: Duration) -> Self {
        Authorizations {
            ttl,
            accepted: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.accepted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the upstream accepted these credentials for the feed within the cache time.
    fn fresh(&self, key: AuthKey) -> bool {
        self.entries()
            .get(&key.0)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Remember that the upstream accepted these credentials for the feed now.
    pub(crate) fn record(&self, key: AuthKey) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key.0) {
            entries.retain(|_, at| at.elapsed() < self.ttl);
            if entries.len() >= MAX_ENTRIES
                && let Some(oldest) = entries.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(key.0, Instant::now());
    }

    /// Number of remembered authorizations.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

/// The key of credentials for a feed; `headers` are those forwarded upstream
/// ([`forwarded_headers`]), so that a refresh and a check of the same request agree.
pub(crate) fn key(shared: &Shared, def: &FeedDef, headers: &HeaderMap) -> AuthKey {
    let mut h = blake3::Hasher::new_keyed(&shared.scope_key);
    h.update(b"authorization check\0");
    h.update(&def.id().0);
    let configured: &[String] = match &shared.config.identity {
        IdentityScope::Headers(names) => names,
        _ => &[],
    };
    let names = CREDENTIAL_HEADERS
        .iter()
        .copied()
        .chain(["cookie"])
        .chain(configured.iter().map(String::as_str));
    for name in names {
        h.update(&(name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        for v in headers.get_all(name) {
            h.update(&(v.len() as u64).to_be_bytes());
            h.update(v.as_bytes());
        }
        h.update(b"\0");
    }
    AuthKey(*h.finalize().as_bytes())
}

/// Make sure the upstream accepts this request's credentials for the feed before it is answered
/// from the store. `shared` feeds are the gateway's own: nothing to check. A 401/403 (or another
/// refusal) is passed on with its status and `WWW-Authenticate`.
pub(crate) async fn authorize(
    shared: &Arc<Shared>,
    service_root: &Url,
    def: &FeedDef,
    headers: &HeaderMap,
) -> Result<(), Error> {
    if shared.config.identity == IdentityScope::Shared {
        return Ok(());
    }
    let forwarded = forwarded_headers(headers);
    let key = key(shared, def, &forwarded);
    if shared.authorizations.fresh(key) {
        return Ok(());
    }
    let fetcher = Fetcher::new(shared.clone(), &def.route, forwarded, &def.entity_set)
        .ieee754(def.query.ieee754());
    let url = |top: &str| {
        let mut pairs = def.query.parts().to_vec();
        pairs.push(("$top".into(), top.into()));
        let mut url = service_root.clone();
        let path = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            encode_path(&def.entity_set)
        );
        url.set_path(&path);
        url.set_query(Some(&encode_pairs(&pairs)));
        url
    };
    match fetcher.get(&url("0"), OnRefusal::PassOn).await {
        Ok(_) => {}
        // An upstream that will not answer an empty page is asked for one row.
        Err(Error::Rejected { status, .. }) if matches!(status.as_u16(), 400 | 501) => {
            fetcher.get(&url("1"), OnRefusal::PassOn).await?;
        }
        Err(e) => return Err(e),
    }
    shared.authorizations.record(key);
    Ok(())
}

/// Note that a refresh read the feed upstream with these (forwarded) credentials. Called before
/// the refresh lets go of the feed, so that a request sharing the refresh finds it.
pub(crate) fn refreshed_with(shared: &Shared, def: &FeedDef, forwarded: &HeaderMap) {
    if shared.config.identity != IdentityScope::Shared {
        shared.authorizations.record(key(shared, def, forwarded));
    }
}

/// Authorize a request whose answer follows a refresh: one this request ran itself read the
/// upstream with its credentials already.
pub(crate) async fn authorize_after_refresh(
    shared: &Arc<Shared>,
    service_root: &Url,
    def: &FeedDef,
    headers: &HeaderMap,
    refreshed_by_this_request: bool,
) -> Result<(), Error> {
    if refreshed_by_this_request {
        return Ok(());
    }
    authorize(shared, service_root, def, headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_forgets_after_its_time() {
        let cache = Authorizations::new(Duration::from_secs(60));
        for i in 0..(MAX_ENTRIES + 10) {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            cache.record(AuthKey(k));
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        let newest = {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&((MAX_ENTRIES + 9) as u64).to_be_bytes());
            AuthKey(k)
        };
        assert!(cache.fresh(newest));
        let never = Authorizations::new(Duration::ZERO);
        never.record(newest);
        assert!(!never.fresh(newest));
    }
}

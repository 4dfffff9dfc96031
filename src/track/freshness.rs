//! How old an answer may be: the feed's own policy (`min_refresh_interval`, its `poll_interval`)
//! and what the client asks for with `Cache-Control` (RFC 9111 §5.2.1). Pure functions.

use std::time::Duration;

use http::HeaderMap;

/// The oldest successful refresh a tracked request may be answered from. A feed on a schedule is
/// answered from the store while its last refresh is younger than the interval (the schedule keeps
/// it so); a client's `max-age=N` or `no-cache` lowers that, never raises it.
pub(crate) fn max_age(
    min_refresh_interval: Duration,
    poll_interval: Option<Duration>,
    request: &HeaderMap,
) -> Duration {
    let policy = min_refresh_interval.max(poll_interval.unwrap_or_default());
    match client_max_age(request) {
        Some(asked) => policy.min(asked),
        None => policy,
    }
}

/// The request's `Cache-Control: no-cache` (zero) or `max-age=N`; the smallest when several are
/// given. Unreadable directives are ignored, as RFC 9111 asks of caches.
pub(crate) fn client_max_age(request: &HeaderMap) -> Option<Duration> {
    let mut found: Option<Duration> = None;
    for value in request.get_all(http::header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for directive in text.split(',') {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let asked = if name.eq_ignore_ascii_case("no-cache") {
                Some(Duration::ZERO)
            } else if name.eq_ignore_ascii_case("max-age") {
                arg.and_then(|a| a.parse::<u64>().ok())
                    .map(Duration::from_secs)
            } else {
                None
            };
            if let Some(asked) = asked {
                found = Some(found.map_or(asked, |f| f.min(asked)));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::CACHE_CONTROL, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cache_control_lowers_the_feeds_policy_never_raises_it() {
        let ten = Some(Duration::from_secs(10));
        assert_eq!(
            max_age(Duration::ZERO, ten, &headers(&[])),
            Duration::from_secs(10)
        );
        assert_eq!(
            max_age(Duration::ZERO, ten, &headers(&["max-age=3"])),
            Duration::from_secs(3)
        );
        assert_eq!(
            max_age(Duration::ZERO, ten, &headers(&["max-age=3600"])),
            Duration::from_secs(10)
        );
        assert_eq!(
            max_age(Duration::from_secs(60), None, &headers(&["No-Cache"])),
            Duration::ZERO
        );
        assert_eq!(max_age(Duration::ZERO, None, &headers(&[])), Duration::ZERO);
    }

    #[test]
    fn cache_control_directives_are_read_leniently() {
        assert_eq!(
            client_max_age(&headers(&["private, max-age=\"5\"", "max-age=7"])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(client_max_age(&headers(&["max-age=soon, public"])), None);
        assert_eq!(client_max_age(&headers(&["max-age=-1"])), None);
        assert_eq!(
            client_max_age(&headers(&["no-store, no-cache=\"x\""])),
            Some(Duration::ZERO)
        );
    }
}

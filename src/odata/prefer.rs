//! The `Prefer` request header (P "Header Prefer"): the preferences the gateway acts on. Unknown
//! preferences are ignored, as the protocol requires.

/// The preferences of one request that matter to the gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preferences {
    /// `odata.track-changes` or `track-changes`, with the spelling the client used (C1, C3: we echo it).
    pub track_changes: Option<&'static str>,
    /// `odata.maxpagesize=N` or `maxpagesize=N` (C21), with the spelling the client used.
    pub max_page_size: Option<(u32, &'static str)>,
    /// `callback; url="…"` (4.01) or `odata.callback; url="…"` (4.0) (C33): the URL, and the
    /// spelling the client used. Without a `url` parameter the preference means nothing.
    pub callback: Option<(String, &'static str)>,
}

impl Preferences {
    /// Parse every `Prefer` header value of a request. Preference names are case-insensitive;
    /// parameters after `;` are ignored. A preference given more than once counts once, the first
    /// (RFC 7240 §2), and both spellings of one preference are the same preference. A malformed
    /// `maxpagesize` value is ignored like any preference we cannot honour; one too large for the
    /// integer type is read as the largest, which the configured maximum then caps.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut prefs = Preferences::default();
        let (mut seen_track, mut seen_size) = (false, false);
        for value in values {
            for item in split_outside_quotes(value, ',') {
                let pref = item.split(';').next().unwrap_or("").trim();
                let (name, arg) = match pref.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (pref, None),
                };
                if let Some(spelling) = track_changes_spelling(name) {
                    if !seen_track {
                        seen_track = true;
                        prefs.track_changes = Some(spelling);
                    }
                } else if name.eq_ignore_ascii_case("odata.maxpagesize")
                    || name.eq_ignore_ascii_case("maxpagesize")
                {
                    if seen_size {
                        continue;
                    }
                    seen_size = true;
                    let spelling = if name.len() > "maxpagesize".len() {
                        "odata.maxpagesize"
                    } else {
                        "maxpagesize"
                    };
                    if let Some(n) = arg.and_then(page_size) {
                        prefs.max_page_size = Some((n, spelling));
                    }
                } else if name.eq_ignore_ascii_case("callback")
                    || name.eq_ignore_ascii_case("odata.callback")
                {
                    let spelling = if name.len() > "callback".len() {
                        "odata.callback"
                    } else {
                        "callback"
                    };
                    let url = split_outside_quotes(item, ';').skip(1).find_map(|param| {
                        let (n, v) = param.split_once('=')?;
                        n.trim()
                            .eq_ignore_ascii_case("url")
                            .then(|| v.trim().trim_matches('"').to_owned())
                    });
                    if let Some(url) = url.filter(|u| !u.is_empty()) {
                        prefs.callback.get_or_insert((url, spelling));
                    }
                }
            }
        }
        prefs
    }
}

/// The spelling of the track-changes preference, if `name` is one.
fn track_changes_spelling(name: &str) -> Option<&'static str> {
    if name.eq_ignore_ascii_case("odata.track-changes") {
        Some("odata.track-changes")
    } else if name.eq_ignore_ascii_case("track-changes") {
        Some("track-changes")
    } else {
        None
    }
}

/// A positive page size; all digits but beyond `u32` saturates (the caller caps it anyway).
fn page_size(arg: &str) -> Option<u32> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match arg.parse::<u32>() {
        Ok(0) => None,
        Ok(n) => Some(n),
        // Only digits, so the only way to fail is overflow (or all zeros, which parse).
        Err(_) => Some(u32::MAX),
    }
}

/// A `Prefer` header value without the track-changes preference (either spelling), the others
/// kept as they were sent; `None` when nothing is left. A request the gateway does not track goes
/// upstream without it, so that an upstream with change tracking of its own does not answer with
/// delta links of its own that the gateway would then refuse (C2, C36).
pub fn without_track_changes(value: &str) -> Option<String> {
    let kept: Vec<&str> = split_outside_quotes(value, ',')
        .filter(|item| {
            let name = item.split([';', '=']).next().unwrap_or("").trim();
            track_changes_spelling(name).is_none()
        })
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// Split on `sep` except inside double-quoted strings (preference values may be quoted).
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in s.char_indices() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_of_track_changes_are_recognised_c1() {
        let p = Preferences::parse(["odata.track-changes"]);
        assert_eq!(p.track_changes, Some("odata.track-changes"));
        let p = Preferences::parse(["Track-Changes"]);
        assert_eq!(p.track_changes, Some("track-changes"));
        let p = Preferences::parse(["return=minimal, odata.track-changes; x=1"]);
        assert_eq!(p.track_changes, Some("odata.track-changes"));
    }

    #[test]
    fn maxpagesize_is_parsed_with_its_spelling_c21() {
        let p = Preferences::parse(["odata.maxpagesize=25", "odata.track-changes"]);
        assert_eq!(p.max_page_size, Some((25, "odata.maxpagesize")));
        assert!(p.track_changes.is_some());
        let p = Preferences::parse(["maxpagesize = 7"]);
        assert_eq!(p.max_page_size, Some((7, "maxpagesize")));
        for bad in [
            "maxpagesize=0",
            "maxpagesize=-1",
            "maxpagesize=abc",
            "maxpagesize",
        ] {
            assert_eq!(Preferences::parse([bad]).max_page_size, None, "{bad}");
        }
    }

    #[test]
    fn callback_urls_are_read_in_both_spellings_c33() {
        let p =
            Preferences::parse(["odata.track-changes, callback; url=\"http://h:1/cb?a=1;b=2,c\""]);
        assert_eq!(
            p.callback,
            Some(("http://h:1/cb?a=1;b=2,c".into(), "callback"))
        );
        assert!(p.track_changes.is_some());
        let p = Preferences::parse(["odata.callback;URL=http://h/x"]);
        assert_eq!(p.callback, Some(("http://h/x".into(), "odata.callback")));
        assert_eq!(Preferences::parse(["callback"]).callback, None);
        assert_eq!(Preferences::parse(["callback; url=\"\""]).callback, None);
    }

    #[test]
    fn a_repeated_preference_counts_once_the_first_c30() {
        let p = Preferences::parse(["odata.maxpagesize=5, odata.maxpagesize=10"]);
        assert_eq!(p.max_page_size, Some((5, "odata.maxpagesize")));
        let p = Preferences::parse(["maxpagesize=7", "odata.maxpagesize=9"]);
        assert_eq!(p.max_page_size, Some((7, "maxpagesize")));
        let p = Preferences::parse(["track-changes, odata.track-changes"]);
        assert_eq!(p.track_changes, Some("track-changes"));
    }

    #[test]
    fn a_maxpagesize_beyond_the_integer_type_saturates() {
        let p = Preferences::parse(["odata.maxpagesize=99999999999999999999999"]);
        assert_eq!(p.max_page_size, Some((u32::MAX, "odata.maxpagesize")));
    }

    #[test]
    fn track_changes_is_stripped_and_the_rest_kept_c36() {
        assert_eq!(without_track_changes("odata.track-changes"), None);
        assert_eq!(
            without_track_changes("return=minimal, Track-Changes, odata.maxpagesize=5"),
            Some("return=minimal, odata.maxpagesize=5".to_owned())
        );
        assert_eq!(
            without_track_changes("odata.track-changes;x=1,foo=\"a,b\""),
            Some("foo=\"a,b\"".to_owned())
        );
    }

    #[test]
    fn unknown_preferences_are_ignored() {
        let p = Preferences::parse(["respond-async, wait=10, foo=\"a,b\""]);
        assert_eq!(p, Preferences::default());
    }
}

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
    /// parameters after `;` are ignored; a malformed `maxpagesize` value is ignored like any
    /// preference we cannot honour.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut prefs = Preferences::default();
        for value in values {
            for item in split_outside_quotes(value, ',') {
                let pref = item.split(';').next().unwrap_or("").trim();
                let (name, arg) = match pref.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (pref, None),
                };
                if name.eq_ignore_ascii_case("odata.track-changes") {
                    prefs.track_changes = Some("odata.track-changes");
                } else if name.eq_ignore_ascii_case("track-changes") {
                    prefs.track_changes.get_or_insert("track-changes");
                } else if name.eq_ignore_ascii_case("odata.maxpagesize")
                    || name.eq_ignore_ascii_case("maxpagesize")
                {
                    let spelling = if name.len() > "maxpagesize".len() {
                        "odata.maxpagesize"
                    } else {
                        "maxpagesize"
                    };
                    if let Some(n) = arg.and_then(|a| a.parse::<u32>().ok()).filter(|n| *n > 0) {
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
    fn unknown_preferences_are_ignored() {
        let p = Preferences::parse(["respond-async, wait=10, foo=\"a,b\""]);
        assert_eq!(p, Preferences::default());
    }
}

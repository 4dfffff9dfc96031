//! The payload format a tracked request asks for, from `$format` or `Accept` (C32). The gateway
//! writes JSON only; what it must know beyond that is `IEEE754Compatible=true`, which changes the
//! bytes of every `Edm.Int64` and `Edm.Decimal` value (J §4.5.1, §7.1).

/// The JSON a tracked request accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsonFormat {
    /// `IEEE754Compatible=true`: 64-bit integers and decimals written as strings.
    pub ieee754: bool,
}

/// Why a request cannot be answered in JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// `$format` names something other than JSON.
    #[error(
        "$format={0} is not supported on tracked requests: the gateway answers them in JSON only; use $format=json or leave it out"
    )]
    Format(String),
    /// No media range of `Accept` admits JSON.
    #[error(
        "Accept: {0} admits no JSON: the gateway answers tracked requests in application/json only"
    )]
    Accept(String),
}

/// The JSON format a request asks for; `$format` wins over `Accept` (U §5.1.8). No `Accept`, an
/// empty one, `*/*`, `application/*` and `application/json` with any parameters are JSON.
pub fn negotiate(format: Option<&str>, accept: Option<&str>) -> Result<JsonFormat, FormatError> {
    if let Some(format) = format {
        let trimmed = format.trim();
        if trimmed.eq_ignore_ascii_case("json") {
            return Ok(JsonFormat::default());
        }
        return match media_range(trimmed) {
            Some(("application", "json", params)) => Ok(JsonFormat {
                ieee754: ieee754(&params),
            }),
            _ => Err(FormatError::Format(format.to_owned())),
        };
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(JsonFormat::default());
    };
    let mut json = None;
    for range in accept.split(',').filter(|r| !r.trim().is_empty()) {
        let Some((kind, sub, params)) = media_range(range.trim()) else {
            continue;
        };
        let refused = params
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("q") && v.parse::<f32>().is_ok_and(|q| q <= 0.0));
        let admits = matches!(
            (kind, sub),
            ("*", "*") | ("application", "*") | ("application", "json")
        );
        if admits && !refused {
            // The explicit JSON range says more than a wildcard beside it.
            let explicit = sub == "json";
            match json {
                Some((true, _)) => {}
                _ if explicit || json.is_none() => json = Some((explicit, ieee754(&params))),
                _ => {}
            }
        }
    }
    match json {
        Some((_, ieee754)) => Ok(JsonFormat { ieee754 }),
        None => Err(FormatError::Accept(accept.chars().take(200).collect())),
    }
}

/// A media range: type and subtype (`other` unless they can mean JSON), and its parameters.
type MediaRange = (&'static str, &'static str, Vec<(String, String)>);

/// `type/subtype;name=value;…`.
fn media_range(text: &str) -> Option<MediaRange> {
    let mut pieces = text.split(';');
    let (kind, sub) = pieces.next()?.trim().split_once('/')?;
    let known = |s: &str| -> Option<&'static str> {
        ["*", "application", "json"]
            .into_iter()
            .find(|k| k.eq_ignore_ascii_case(s.trim()))
    };
    // Anything but the types that can mean JSON is kept only as "other".
    let kind = known(kind).unwrap_or("other");
    let sub = known(sub).unwrap_or("other");
    let params = pieces
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect();
    Some((kind, sub, params))
}

fn ieee754(params: &[(String, String)]) -> bool {
    params
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("IEEE754Compatible") && v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_any_spelling_is_accepted_c32() {
        for accept in [
            None,
            Some(""),
            Some("*/*"),
            Some("application/*"),
            Some("application/json"),
            Some("application/json;odata.metadata=minimal;charset=utf-8"),
            Some("application/xml, application/json;q=0.5"),
            Some("text/html, */*;q=0.1"),
        ] {
            assert_eq!(
                negotiate(None, accept),
                Ok(JsonFormat::default()),
                "{accept:?}"
            );
        }
        assert_eq!(
            negotiate(Some("json"), Some("application/xml")),
            Ok(JsonFormat::default())
        );
        assert_eq!(negotiate(Some("JSON"), None), Ok(JsonFormat::default()));
        assert!(negotiate(Some("application/json;odata.metadata=full"), None).is_ok());
    }

    #[test]
    fn other_formats_are_refused_c32() {
        for accept in [
            "application/xml",
            "application/atom+xml",
            "text/csv",
            "application/json;q=0",
            "nonsense",
        ] {
            assert!(negotiate(None, Some(accept)).is_err(), "{accept}");
        }
        for format in [
            "xml",
            "atom",
            "csv",
            "application/xml",
            "text/csv",
            "whatever",
        ] {
            assert!(negotiate(Some(format), None).is_err(), "{format}");
        }
    }

    #[test]
    fn ieee754_compatible_is_read_from_accept_and_format_c32() {
        let on = JsonFormat { ieee754: true };
        assert_eq!(
            negotiate(None, Some("application/json;IEEE754Compatible=true")),
            Ok(on)
        );
        assert_eq!(
            negotiate(None, Some("*/*, application/json;ieee754compatible=TRUE")),
            Ok(on)
        );
        assert_eq!(
            negotiate(Some("application/json;IEEE754Compatible=true"), None),
            Ok(on)
        );
        assert_eq!(
            negotiate(None, Some("application/json;IEEE754Compatible=false")),
            Ok(JsonFormat::default())
        );
    }
}

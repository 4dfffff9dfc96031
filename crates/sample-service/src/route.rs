//! What a request path addresses: the service document, `$metadata`, `$batch`, a collection,
//! its `$count`, an entity or one of its properties.

use percent_encoding::percent_decode_str;

/// What a request path addresses.
pub(crate) enum Route {
    ServiceDoc,
    Batch,
    Metadata,
    Collection(String),
    Count(String),
    Entity {
        set: String,
        key: String,
    },
    Property {
        set: String,
        key: String,
        property: String,
        raw: bool,
    },
    Unknown,
}

/// Maps a request path onto a [`Route`]; segments are percent-decoded after
/// splitting so that an encoded `/` inside a string key stays in the key.
pub(crate) fn route(root: &str, path: &str) -> Route {
    let Some(rest) = path.strip_prefix(root) else {
        return Route::Unknown;
    };
    if rest.is_empty() || rest == "/" {
        return Route::ServiceDoc;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Route::Unknown;
    };
    let decoded: Option<Vec<String>> = rest
        .split('/')
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
        .collect();
    let Some(segments) = decoded else {
        return Route::Unknown;
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let resource = segments.first().and_then(|s| split_resource(s));
    match (segments.as_slice(), resource) {
        (["$metadata"], _) => Route::Metadata,
        (["$batch"], _) => Route::Batch,
        ([_], Some((set, None))) => Route::Collection(set),
        ([_], Some((set, Some(key)))) => Route::Entity { set, key },
        ([_, "$count"], Some((set, None))) => Route::Count(set),
        ([_, property], Some((set, Some(key)))) => Route::Property {
            set,
            key,
            property: property.to_string(),
            raw: false,
        },
        ([_, property, "$value"], Some((set, Some(key)))) => Route::Property {
            set,
            key,
            property: property.to_string(),
            raw: true,
        },
        _ => Route::Unknown,
    }
}

/// `Customers` → (`Customers`, None); `Customers(42)` → (`Customers`, `42`).
fn split_resource(segment: &str) -> Option<(String, Option<String>)> {
    match segment.split_once('(') {
        None if segment.is_empty() || segment.starts_with('$') => None,
        None => Some((segment.to_string(), None)),
        Some((set, rest)) => {
            let key = rest.strip_suffix(')')?;
            Some((set.to_string(), Some(key.to_string())))
        }
    }
}

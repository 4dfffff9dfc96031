//! The JSON `$batch` format (OData JSON Format 4.01 §19): `{"requests":[…]}` answered by
//! `{"responses":[…]}`. Requests and answers are kept as the JSON text they came as, so that
//! numbers and bodies are forwarded exactly.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{BatchError, Part};

/// One request of a JSON batch: what the gateway reads of it, and its text.
pub(crate) struct Request {
    pub(crate) raw: Box<RawValue>,
    pub(crate) part: Part,
    /// The ids it depends on (`dependsOn`).
    pub(crate) depends_on: Vec<String>,
}

#[derive(Deserialize)]
struct Envelope {
    requests: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    id: Option<String>,
    method: String,
    url: String,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    atomicity_group: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
}

#[derive(Deserialize)]
struct Responses {
    responses: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct ResponseHead {
    id: Option<String>,
}

/// Parse a JSON batch request.
pub(crate) fn parse_request(body: &[u8]) -> Result<Vec<Request>, BatchError> {
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| BatchError::Malformed(format!("not a JSON batch: {e}")))?;
    envelope
        .requests
        .into_iter()
        .map(|raw| {
            let head: Head = serde_json::from_str(raw.get()).map_err(|e| {
                BatchError::Malformed(format!("a batch request cannot be read: {e}"))
            })?;
            let method = http::Method::from_bytes(head.method.to_ascii_uppercase().as_bytes())
                .map_err(|_| BatchError::Malformed(format!("not a method: {:.20}", head.method)))?;
            let headers = head
                .headers
                .iter()
                .filter_map(|(n, v)| v.as_str().map(|v| (n.clone(), v.to_owned())))
                .collect();
            Ok(Request {
                part: Part {
                    id: head.id,
                    method,
                    target: head.url,
                    headers,
                    in_change_set: head.atomicity_group.is_some(),
                },
                depends_on: head.depends_on,
                raw,
            })
        })
        .collect()
}

/// One answer of a JSON batch response: its id and its text.
pub(crate) type Answer = (Option<String>, Box<RawValue>);

/// The answers of a JSON batch response with their ids.
pub(crate) fn parse_responses(body: &[u8]) -> Result<Vec<Answer>, BatchError> {
    let responses: Responses = serde_json::from_slice(body)
        .map_err(|e| BatchError::Malformed(format!("not a JSON batch response: {e}")))?;
    responses
        .responses
        .into_iter()
        .map(|raw| {
            let head: ResponseHead = serde_json::from_str(raw.get()).map_err(|e| {
                BatchError::Malformed(format!("a batch answer cannot be read: {e}"))
            })?;
            Ok((head.id, raw))
        })
        .collect()
}

/// `{"requests":[…]}` from request texts.
pub(crate) fn join_requests<'a>(raw: impl Iterator<Item = &'a RawValue>) -> Vec<u8> {
    join("requests", raw)
}

/// `{"responses":[…]}` from answer texts.
pub(crate) fn join_responses<'a>(raw: impl Iterator<Item = &'a RawValue>) -> Vec<u8> {
    join("responses", raw)
}

fn join<'a>(member: &str, raw: impl Iterator<Item = &'a RawValue>) -> Vec<u8> {
    let mut out = format!("{{\"{member}\":[").into_bytes();
    for (i, r) in raw.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r.get().as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// The request without the track-changes preference in its `headers`, for a request forwarded
/// upstream (C2, C36); `None` when it has none. Its other members (a body above all) keep their
/// text.
pub(crate) fn without_track_changes(raw: &RawValue) -> Option<Box<RawValue>> {
    let mut members: std::collections::BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(raw.get()).ok()?;
    let mut headers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(members.get("headers")?.get()).ok()?;
    let mut changed = false;
    headers.retain(|name, value| {
        if !name.eq_ignore_ascii_case("prefer") {
            return true;
        }
        let Some(text) = value.as_str() else {
            return true;
        };
        let kept = crate::odata::prefer::without_track_changes(text);
        if kept.as_deref() == Some(text) {
            return true;
        }
        changed = true;
        match kept {
            Some(kept) => {
                *value = serde_json::Value::String(kept);
                true
            }
            None => false,
        }
    });
    if !changed {
        return None;
    }
    let headers = serde_json::value::to_raw_value(&headers).ok()?;
    members.insert("headers".to_owned(), headers);
    serde_json::value::to_raw_value(&members).ok()
}

/// An answer written by the gateway: JSON bodies are embedded, others as a string.
pub(crate) fn response(
    id: Option<&str>,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Box<RawValue>, BatchError> {
    let mut head = serde_json::Map::new();
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            head.insert(
                name.as_str().to_owned(),
                serde_json::Value::String(v.to_owned()),
            );
        }
    }
    let mut out = String::from("{");
    if let Some(id) = id {
        out.push_str(&format!(
            "\"id\":{},",
            serde_json::Value::String(id.to_owned())
        ));
    }
    out.push_str(&format!(
        "\"status\":{},\"headers\":{}",
        status.as_u16(),
        serde_json::Value::Object(head)
    ));
    if !body.is_empty() {
        let embedded = std::str::from_utf8(body)
            .ok()
            .filter(|text| serde_json::from_str::<&RawValue>(text).is_ok());
        match embedded {
            Some(json) => out.push_str(&format!(",\"body\":{json}")),
            None => out.push_str(&format!(
                ",\"body\":{}",
                serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
            )),
        }
    }
    out.push('}');
    RawValue::from_string(out)
        .map_err(|e| BatchError::Malformed(format!("an answer cannot be written: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_request_loses_only_the_track_changes_preference() {
        let raw = RawValue::from_string(
            r#"{"id":"1","method":"GET","url":"Customers?$apply=x","headers":{"Prefer":"odata.track-changes, return=minimal","Accept":"application/json"},"body":{"n":1.10}}"#.to_owned(),
        )
        .unwrap();
        let out = without_track_changes(&raw).expect("rewritten");
        let v: serde_json::Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v["headers"]["Prefer"], "return=minimal");
        assert_eq!(v["headers"]["Accept"], "application/json");
        assert_eq!(v["url"], "Customers?$apply=x");
        assert!(out.get().contains(r#""body":{"n":1.10}"#), "{}", out.get());

        let only = RawValue::from_string(
            r#"{"method":"GET","url":"Customers(1)","headers":{"prefer":"track-changes"}}"#
                .to_owned(),
        )
        .unwrap();
        let out = without_track_changes(&only).expect("rewritten");
        let v: serde_json::Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v["headers"], serde_json::json!({}));

        for untouched in [
            r#"{"method":"GET","url":"Customers","headers":{"Prefer":"return=minimal"}}"#,
            r#"{"method":"GET","url":"Customers"}"#,
        ] {
            let raw = RawValue::from_string(untouched.to_owned()).unwrap();
            assert!(without_track_changes(&raw).is_none(), "{untouched}");
        }
    }

    #[test]
    fn requests_keep_their_text_and_groups() {
        let body = br#"{"requests":[{"id":"1","method":"get","url":"Customers","headers":{"prefer":"odata.track-changes"}},{"id":"2","atomicityGroup":"g","method":"POST","url":"Customers","body":{"n":12345678901234567890}}]}"#;
        let requests = parse_request(body).unwrap();
        assert_eq!(requests[0].part.method, http::Method::GET);
        assert_eq!(requests[0].part.headers[0].1, "odata.track-changes");
        assert!(requests[1].part.in_change_set);
        let joined = join_requests(requests[1..].iter().map(|r| &*r.raw));
        assert!(
            String::from_utf8(joined)
                .unwrap()
                .contains("12345678901234567890")
        );
        assert!(parse_request(b"{\"requests\":[{\"id\":\"1\"}]}").is_err());
        assert!(parse_request(b"[]").is_err());
    }
}

//! What the fuzz targets check, as plain functions over the input: each returns normally or panics
//! naming the property that broke. The cargo-fuzz targets in `fuzz_targets/` feed them libFuzzer's
//! inputs; `tests/fuzz.rs` in the gateway feeds them proptest's hostile inputs on every `cargo test`,
//! so a long fuzzing session and the CI run check exactly the same properties.
//!
//! Every function here holds for *any* input: "never panics" is the floor, and where a parser accepts
//! its input, what it produced is checked against an independent reading of the same input.

use odata_delta_gateway::odata::ODataVersion;
use odata_delta_gateway::odata::entity_id::{KeyProperty, KeyType};
use odata_delta_gateway::odata::json::{object_members, write_canonical, write_compact};
use odata_delta_gateway::odata::metadata::{ServiceMetadata, SetKey};
use odata_delta_gateway::odata::page::Page;
use odata_delta_gateway::odata::prefer::Preferences;
use odata_delta_gateway::odata::query::{DefiningQuery, ODataQuery, encode_pairs};
use odata_delta_gateway::proxy::LinkRewriter;
use odata_delta_gateway::track::hash::{EntityError, Hasher, KeyHash};
use odata_delta_gateway::track::refresh::tally::{ReadOn, Tally, Verdict};
use odata_delta_gateway::track::token::{Token, TokenError, TokenKey};

/// The request context tokens are bound to in these checks; its content does not matter, only that
/// encoding and decoding agree on it.
pub const BINDING: &[u8] = b"/odata/v4/shop\0Customers\0shared";

/// Longest text `Token::decode` reads; a token the gateway issues must fit.
const MAX_TOKEN_LEN: usize = 256;

fn token_key() -> TokenKey {
    TokenKey::derive(b"fuzz")
}

/// Any text presented as a delta token or page cursor is refused or accepted, never a panic. A tag
/// cannot be guessed, so text that is accepted must be exactly what the key issues for that token.
pub fn token_decode(text: &str) {
    let key = token_key();
    if let Ok(token) = Token::decode(text, &key, BINDING) {
        assert_eq!(
            token.encode(&key, BINDING),
            text,
            "an accepted token is not what the key issues for it"
        );
    }
}

/// A token the gateway issues decodes to itself in the context it was issued for, is URL-safe and
/// short enough to be read back, and is refused as forged in any other context.
pub fn token_round_trip(token: Token, binding: &[u8]) {
    let key = token_key();
    let text = token.encode(&key, binding);
    assert!(
        text.len() <= MAX_TOKEN_LEN,
        "an issued token is {} characters, longer than decode accepts",
        text.len()
    );
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "an issued token is not URL-safe: {text}"
    );
    assert_eq!(Token::decode(&text, &key, binding), Ok(token));
    let mut elsewhere = binding.to_vec();
    elsewhere.push(b'/');
    assert_eq!(
        Token::decode(&text, &key, &elsewhere),
        Err(TokenError::BadTag),
        "a token was accepted in a context it was not issued for"
    );
}

/// Any query string is parsed or refused, never a panic. When it is parsed, its defining query
/// survives the encoded form it is stored in (`from_encoded(encoded()) == defining()`), and building
/// the upstream enumeration from it does not panic either.
pub fn query_normalize(raw: &str) {
    let Ok(query) = ODataQuery::parse(Some(raw)) else {
        return;
    };
    let defining = query.defining();
    let encoded = defining.encoded();
    let stored = DefiningQuery::from_encoded(&encoded)
        .unwrap_or_else(|e| panic!("the encoded defining query {encoded:?} does not decode: {e}"));
    assert_eq!(
        stored, defining,
        "the defining query of {raw:?} changes when stored as {encoded:?}"
    );
    let _ = defining.selected();
    let _ = encode_pairs(&defining.enumeration(&["ID"]));
}

/// Normalizing a defining query a second time changes nothing: a request that repeats the query the
/// gateway itself wrote defines the same feed.
pub fn query_normalization_is_idempotent(raw: &str) {
    let Ok(query) = ODataQuery::parse(Some(raw)) else {
        return;
    };
    let defining = query.defining();
    let encoded = defining.encoded();
    let again = ODataQuery::parse(Some(&encoded))
        .unwrap_or_else(|e| panic!("the gateway's own query {encoded:?} is refused: {e}"))
        .defining();
    assert_eq!(
        again.encoded(),
        encoded,
        "normalizing {raw:?} twice gives two different feeds"
    );
}

/// The key every page check reads: one `Edm.Int32` property, `ID`.
fn int32_key() -> [KeyProperty; 1] {
    [KeyProperty {
        name: "ID".into(),
        ty: KeyType::Integer,
        enum_type: None,
    }]
}

/// A count the page parser accepted is what the page says: digits (bare or quoted) read as a `u64`,
/// or `u64::MAX` when they do not fit in one.
fn assert_count_read_right(body: &[u8], count: u64) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let written = value.get("@odata.count").or_else(|| value.get("@count"));
    let Some(written) = written else {
        return;
    };
    let text = match written {
        serde_json::Value::String(s) => s.clone(),
        // Numbers too long for u64 come back as floats here; only integers are checked.
        serde_json::Value::Number(n) if n.is_u64() => n.to_string(),
        _ => return,
    };
    assert!(
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
        "the count {text:?} was read as {count}"
    );
    assert_eq!(
        count,
        text.parse::<u64>().unwrap_or(u64::MAX),
        "count {text:?}"
    );
}

/// One round of reading an upstream as the fuzzer describes it: entities delivered, how many of
/// them carry new keys (at most all of them), and the `@odata.count` of the round, if any.
pub type Round = (u64, u64, Option<u64>);

/// Whatever an upstream counts and delivers, tallying it never overflows (saturating at
/// `u64::MAX`), and the read-on that a shortfall starts behaves: it asks from where the pages read
/// so far ended, never backwards; it stops once the count is met, once a round comes back empty,
/// and after two rounds in a row without a new key; and a shortfall of at most 1% never fails.
pub fn count_tally(enumeration: &[Round], rounds: &[Round], step: u64) {
    let mut tally = Tally::default();
    let apply = |tally: &mut Tally, &(entities, new, count): &Round| {
        tally.page(entities, count);
        tally.distinct = tally.distinct.saturating_add(new.min(entities));
    };
    for round in enumeration {
        apply(&mut tally, round);
    }
    let pages = enumeration.len() as u64;
    assert_eq!(tally.pages, pages, "pages miscounted");
    let mut read_on = ReadOn::new(&tally, step);
    let mut verdict = read_on.first(&tally);
    assert_eq!(
        verdict == Verdict::Complete,
        tally.shortfall() == 0,
        "{tally:?}: {verdict:?}"
    );
    let mut last_skip = None;
    let mut idle = 0;
    for round in rounds {
        let Verdict::ReadOn { skip, top } = verdict else {
            break;
        };
        assert!(top >= 1, "asked for {top} entities");
        assert_eq!(
            skip, tally.delivered,
            "read on from elsewhere than where the pages ended"
        );
        if let Some(last) = last_skip {
            assert!(skip >= last, "read on backwards: {last} then {skip}");
        }
        last_skip = Some(skip);
        let before = tally;
        apply(&mut tally, round);
        let (delivered, new) = (
            tally.delivered - before.delivered,
            tally.distinct - before.distinct,
        );
        idle = if new == 0 { idle + 1 } else { 0 };
        verdict = read_on.after_round(&tally, delivered, new);
        let stopped = !matches!(verdict, Verdict::ReadOn { .. });
        if tally.shortfall() == 0 {
            assert_eq!(verdict, Verdict::Complete, "{tally:?}");
        } else if delivered == 0 {
            assert_eq!(
                verdict,
                Verdict::Explained,
                "an empty round must stop: {tally:?}"
            );
        } else if idle >= 2 {
            assert!(stopped, "two idle rounds must stop: {tally:?}");
        }
        if verdict == Verdict::Truncated {
            assert!(
                !tally.tolerable(),
                "a shortfall within 1% failed: {tally:?}"
            );
        }
    }
}

/// How deep the scanner in `odata::json` follows nesting before it refuses.
const SCANNER_MAX_DEPTH: usize = 128;

/// How deeply `json` nests arrays and objects; brackets inside strings do not count.
fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Any upstream body is read as a page or refused, never a panic. Every entity of a page that was
/// read is JSON serde_json has validated, so the scanner must read it too unless it nests deeper
/// than the scanner follows; hashing it either succeeds with an integer key literal or fails on the
/// key — and its content hash does not depend on whitespace or on the order of its members.
pub fn page_parse(body: &[u8]) {
    let Ok(page) = Page::parse(body) else {
        return;
    };
    if let Some(count) = page.count {
        assert_count_read_right(body, count);
    }
    let key = int32_key();
    let mut hasher = Hasher::default();
    let mut members = Vec::new();
    for entity in &page.entities {
        let raw = entity.get().as_bytes();
        // serde_json follows any depth when it only skips a value; the scanner stops at its limit.
        let too_deep = nesting_depth(raw) > SCANNER_MAX_DEPTH;
        if let Err(e) = object_members(raw, &mut members) {
            assert!(
                too_deep,
                "serde_json accepted an entity the scanner cannot read ({e}): {}",
                String::from_utf8_lossy(raw)
            );
            continue;
        }
        let digest = match hasher.digest(raw, &key, &[]) {
            Ok(d) => d,
            Err(EntityError::Key(_)) => continue,
            Err(EntityError::Json(_)) if too_deep => continue,
            Err(EntityError::Json(e)) => panic!(
                "serde_json accepted an entity the hasher cannot read ({e}): {}",
                String::from_utf8_lossy(raw)
            ),
        };
        let predicate = &digest.key.predicate;
        let digits = predicate.strip_prefix('-').unwrap_or(predicate);
        assert!(
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
            "an Int32 key was written as the literal {predicate:?}"
        );
        assert_eq!(digest.key_hash, KeyHash::of(predicate));

        let mut compact = Vec::new();
        write_compact(raw, &mut compact);
        let compacted = hasher
            .digest(&compact, &key, &[])
            .unwrap_or_else(|e| panic!("the compact form of a hashable entity is not ({e})"));
        assert_eq!(
            compacted,
            digest,
            "whitespace changed the digest of {}",
            String::from_utf8_lossy(raw)
        );

        // Reordering is only meaningless when every name is unique.
        let mut names: Vec<&[u8]> = members.iter().map(|m| m.name(raw)).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() == members.len() {
            let mut reversed = b"{".to_vec();
            for (i, m) in members.iter().rev().enumerate() {
                if i > 0 {
                    reversed.push(b',');
                }
                reversed.extend_from_slice(&raw[m.name.0 - 1..m.value.1]);
            }
            reversed.push(b'}');
            let reordered = hasher
                .digest(&reversed, &key, &[])
                .unwrap_or_else(|e| panic!("a reordered hashable entity is not ({e})"));
            assert_eq!(
                reordered,
                digest,
                "member order changed the digest of {}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}

/// Any text is read as `$metadata` or refused, never a panic; every entity set it names can be
/// looked up, and a usable key has at least one property.
pub fn metadata_parse(xml: &str) {
    let Ok(metadata) = ServiceMetadata::parse(xml) else {
        return;
    };
    for name in metadata.set_names() {
        match metadata.set(name) {
            Some(SetKey::Key(key)) => assert!(!key.is_empty(), "set {name} has an empty key"),
            Some(SetKey::Unusable(why)) => assert!(!why.is_empty()),
            None => panic!("set {name} is listed but cannot be looked up"),
        }
    }
}

/// Any bytes are scanned or refused, never a panic, and the member ranges found lie inside the text.
/// Where serde_json accepts the text, so must the scanner, and the canonical form must be JSON of
/// the same value without control information (top-level members starting with `x_` are skipped
/// too, to exercise the caller's filter).
pub fn canonical_json(bytes: &[u8]) {
    let mut members = Vec::new();
    if object_members(bytes, &mut members).is_ok() {
        for m in &members {
            assert!(m.name.0 >= 1 && m.name.0 <= m.name.1 && m.name.1 < bytes.len());
            assert!(m.value.0 <= m.value.1 && m.value.1 <= bytes.len());
        }
    }
    let skip = |name: &[u8]| name.starts_with(b"x_");
    let mut canonical = Vec::new();
    let written = write_canonical(bytes, &skip, &mut canonical);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    if let Err(e) = written {
        panic!("serde_json accepted JSON the canonical writer refuses ({e})");
    }
    let reread: serde_json::Value = serde_json::from_slice(&canonical).unwrap_or_else(|e| {
        panic!(
            "the canonical form is not JSON ({e}): {}",
            String::from_utf8_lossy(&canonical)
        )
    });
    // Names are compared as the strings they denote, so the canonical form is always a fixed point.
    // It holds the same value unless a name is given twice in one object: JSON readers keep the
    // last of those, and "last" is exactly what member order must not decide.
    canonical_form_is_a_fixed_point(&canonical);
    if !has_duplicate_names(&value_with_duplicates(bytes)) && !bytes.contains(&b'\\') {
        assert_eq!(
            reread,
            without_control_information(value, true),
            "the canonical form holds another value"
        );
    }
}

/// Whether any object in the text names a member twice (compared after unescaping).
fn value_with_duplicates(bytes: &[u8]) -> Vec<Vec<String>> {
    let mut objects = Vec::new();
    collect_names(bytes, 0, &mut objects);
    objects
}

fn collect_names(bytes: &[u8], depth: usize, objects: &mut Vec<Vec<String>>) {
    if depth > 64 {
        return;
    }
    let mut members = Vec::new();
    if odata_delta_gateway::odata::json::object_members(bytes, &mut members).is_ok() {
        let names = members
            .iter()
            .map(|m| {
                serde_json::from_slice::<String>(&bytes[m.name.0 - 1..m.name.1 + 1])
                    .unwrap_or_default()
            })
            .collect();
        objects.push(names);
        for m in &members {
            collect_names(m.value(bytes), depth + 1, objects);
        }
    } else {
        let mut elements = Vec::new();
        if odata_delta_gateway::odata::json::array_elements(bytes, &mut elements).is_ok() {
            for (a, b) in elements {
                collect_names(&bytes[a..b], depth + 1, objects);
            }
        }
    }
}

fn has_duplicate_names(objects: &[Vec<String>]) -> bool {
    objects.iter().any(|names| {
        let mut sorted = names.clone();
        sorted.sort();
        sorted.windows(2).any(|w| w[0] == w[1])
    })
}

/// The canonical form is a fixed point: written again it does not change. Otherwise two spellings of
/// the same entity (escaped and unescaped member names) hash differently.
pub fn canonical_form_is_a_fixed_point(bytes: &[u8]) {
    let mut once = Vec::new();
    if write_canonical(bytes, &|_| false, &mut once).is_err() {
        return;
    }
    let mut twice = Vec::new();
    if let Err(e) = write_canonical(&once, &|_| false, &mut twice) {
        panic!(
            "the canonical form is refused by its own writer ({e}): {}",
            String::from_utf8_lossy(&once)
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&twice),
        String::from_utf8_lossy(&once),
        "canonicalizing twice changes the form of {:?}",
        String::from_utf8_lossy(bytes)
    );
}

fn without_control_information(value: serde_json::Value, top: bool) -> serde_json::Value {
    use odata_delta_gateway::odata::json::is_control_information;
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(k, _)| {
                    let skipped = top && k.starts_with("x_");
                    !(is_control_information(k.as_bytes()) || skipped)
                })
                .map(|(k, v)| (k, without_control_information(v, false)))
                .collect(),
        ),
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .map(|v| without_control_information(v, false))
                .collect(),
        ),
        other => other,
    }
}

/// Any `Prefer` and `OData-MaxVersion` values are read, never a panic, and a page size that is
/// honoured is positive.
pub fn request_headers(prefer: &[&str], max_version: &str) {
    let prefs = Preferences::parse(prefer.iter().copied());
    if let Some((size, _)) = prefs.max_page_size {
        assert!(size > 0, "maxpagesize 0 was honoured");
    }
    let _ = ODataVersion::negotiate(Some(max_version));
}

/// Rewriting upstream links in a body gives the same bytes however the body is cut into chunks.
pub fn link_rewrite(body: &[u8], cuts: &[usize]) {
    const FROM: &str = "http://up:4004/odata/v4/shop";
    const TO: &str = "https://gw.example.com/api";
    let mut whole = LinkRewriter::new(FROM, TO);
    let mut expected = whole.push(body).to_vec();
    expected.extend_from_slice(&whole.finish());

    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunked = LinkRewriter::new(FROM, TO);
    let mut out = Vec::new();
    let mut last = 0;
    for cut in cuts.into_iter().chain([body.len()]) {
        out.extend_from_slice(&chunked.push(&body[last..cut]));
        last = cut;
    }
    out.extend_from_slice(&chunked.finish());
    assert_eq!(out, expected, "chunking changed the rewritten body");
}

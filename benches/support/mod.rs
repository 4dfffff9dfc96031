//! Test data shared by the benches: entities shaped like a real catalog service's (a dozen
//! properties, a decimal as a string, an etag, a nested object two levels deep, an array), written
//! compactly the way upstream services send them.

use std::fmt::Write;

/// A small deterministic mixer, so that values vary from entity to entity without a RNG crate.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const CITIES: [&str; 6] = ["Berlin", "Lyon", "Porto", "Kraków", "Malmö", "Zürich"];
const WORDS: [&str; 8] = [
    "sturdy",
    "compact",
    "cordless",
    "refurbished",
    "stainless",
    "modular",
    "quiet",
    "foldable",
];

/// One entity with key `id`. `revision` changes `stock`, `price`, the etag and `modifiedAt`, the way
/// an update upstream does; the same (id, revision) always gives the same bytes.
pub fn entity(id: u32, revision: u32) -> String {
    let r = mix(u64::from(id));
    let word = |n: u64| WORDS[(n % WORDS.len() as u64) as usize];
    let stock = (mix(r ^ u64::from(revision)) % 500) as u32;
    let cents = 199 + (r % 90_000) + u64::from(revision);
    let supplier = 1 + (r >> 8) % 400;
    let mut out = String::with_capacity(640);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        concat!(
            r#"{{"@odata.etag":"W/\"{rev}-{id}\"","ID":{id},"name":"{w1} {w2} widget {id}","#,
            r#""description":"A {w3} widget for daily use, model {r:x}. Ships in a {w1} box.","#,
            r#""price":"{euros}.{cents:02}","currency_code":"EUR","stock":{stock},"#,
            r#""rating":{rating}.{tenth},"active":{active},"createdAt":"2025-03-{day:02}T08:15:00Z","#,
            r#""modifiedAt":"2026-11-{mday:02}T{hour:02}:00:00Z","#,
            r#""dimensions":{{"width":{wd},"height":{ht},"depth":12.5,"unit":"cm"}},"#,
            r#""tags":["{w1}","{w2}","id-{id}"],"#,
            r#""supplier":{{"ID":{sup},"name":"Supplier {sup}","address":{{"street":"Hauptstraße {no}","city":"{city}","country":"DE"}}}}}}"#,
        ),
        rev = revision,
        id = id,
        w1 = word(r),
        w2 = word(r >> 3),
        w3 = word(r >> 6),
        r = r & 0xffff_ffff,
        euros = cents / 100,
        cents = cents % 100,
        stock = stock,
        rating = 1 + r % 5,
        tenth = (r >> 4) % 10,
        active = !r.is_multiple_of(7),
        day = 1 + r % 28,
        mday = 1 + u64::from(revision) % 28,
        hour = u64::from(revision) % 24,
        wd = 10 + r % 40,
        ht = 5 + (r >> 5) % 30,
        sup = supplier,
        no = 1 + r % 120,
        city = CITIES[(supplier % CITIES.len() as u64) as usize],
    );
    out
}

/// An OData collection page holding the entities `ids` (each at the revision `revision(id)`), with
/// `@odata.count` when `count` is given and an `@odata.nextLink` when `next_link` is.
pub fn page_body(
    ids: std::ops::Range<u32>,
    revision: impl Fn(u32) -> u32,
    count: Option<u32>,
    next_link: Option<&str>,
) -> String {
    let mut out = String::with_capacity(ids.len() * 660 + 200);
    out.push_str(r#"{"@odata.context":"$metadata#Items","#);
    if let Some(n) = count {
        let _ = write!(out, r#""@odata.count":{n},"#);
    }
    out.push_str(r#""value":["#);
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&entity(id, revision(id)));
    }
    out.push(']');
    if let Some(link) = next_link {
        let _ = write!(out, r#","@odata.nextLink":"{link}""#);
    }
    out.push('}');
    out
}

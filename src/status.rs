//! The status page of the admin listener (`GET /`): one table row per feed — entity set, query,
//! scope (a short hash, never a credential), entities, version, the last refresh (when, how long,
//! outcome), changes in the last hour, the webhook subscriptions watching it, and an inline SVG
//! chart of recent refresh durations.
//! Server-rendered HTML with no script and no external asset; every value is HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::percent_decode_str;

use crate::Shared;
use crate::error::Error;
use crate::track::feed::FeedId;
use crate::track::history::{FeedHistory, RECENT_REFRESHES, RefreshRecord};

/// Most rows the page shows; a gateway may hold thousands of feeds.
const MAX_ROWS: usize = 1000;

/// One row: what the store says of a feed, and what this process saw of its refreshes.
struct Row {
    route: String,
    entity_set: String,
    query: String,
    scope: String,
    entities: u64,
    version: Option<u64>,
    dropped: bool,
    history: Option<FeedHistory>,
    /// Live webhook subscriptions to the feed's changes.
    subscriptions: usize,
}

/// Render the page. Reads the store on the blocking pool.
pub(crate) async fn page(app: &std::sync::Arc<Shared>) -> Result<String, Error> {
    let store = app.store.clone();
    let stored = tokio::task::spawn_blocking(move || store.feeds()).await??;
    let mut rows: BTreeMap<FeedId, Row> = stored
        .into_iter()
        .map(|(id, m)| {
            (
                id,
                Row {
                    route: m.route,
                    entity_set: m.entity_set,
                    query: m.query,
                    scope: m.scope,
                    entities: m.live,
                    version: Some(m.version),
                    dropped: m.dropped,
                    history: None,
                    subscriptions: 0,
                },
            )
        })
        .collect();
    // A feed whose first load failed has a history but nothing stored.
    for (id, h) in app.refresh_history.snapshot() {
        let row = rows.entry(id).or_insert_with(|| Row {
            route: h.def.route.clone(),
            entity_set: h.def.entity_set.clone(),
            query: h.def.query.encoded(),
            scope: h.def.scope.0.clone(),
            entities: h.entities,
            version: h.version.map(|v| v.0),
            dropped: false,
            history: None,
            subscriptions: 0,
        });
        row.history = Some(h);
    }
    for (id, n) in app.subscriptions.per_feed(app.clock.now_ms()) {
        if let Some(row) = rows.get_mut(&id) {
            row.subscriptions = n;
        }
    }
    Ok(render(rows.into_values().collect(), SystemTime::now()))
}

fn render(mut rows: Vec<Row>, now: SystemTime) -> String {
    rows.sort_by(|a, b| {
        (&a.route, &a.entity_set, &a.query).cmp(&(&b.route, &b.entity_set, &b.query))
    });
    let total = rows.len();
    let mut out = String::with_capacity(4096 + rows.len().min(MAX_ROWS) * 1024);
    out.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>odata-delta-gateway status</title><style>",
        "body{font:14px system-ui,sans-serif;margin:1.5em}",
        "table{border-collapse:collapse}th,td{padding:.3em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}",
        "td.n{text-align:right}code{font-size:13px}.failed{color:#b00020}.dropped{color:#777}",
        "svg rect{fill:#3a6ea5}svg rect.failed{fill:#b00020}",
        "</style></head><body>\n<h1>odata-delta-gateway</h1>\n"
    ));
    let _ = writeln!(
        out,
        "<p id=\"summary\">{total} feed{} · version {}</p>",
        if total == 1 { "" } else { "s" },
        escape(env!("CARGO_PKG_VERSION"))
    );
    out.push_str(concat!(
        "<table id=\"feeds\"><thead><tr><th>Route</th><th>Entity set</th><th>Query</th>",
        "<th>Scope</th><th>Entities</th><th>Version</th><th>Last refresh</th><th>Duration</th>",
        "<th>Outcome</th><th>Changes (1 h)</th><th>Subscriptions</th><th>Recent durations</th>",
        "</tr></thead><tbody>\n"
    ));
    for row in rows.iter().take(MAX_ROWS) {
        render_row(&mut out, row, now);
    }
    out.push_str("</tbody></table>\n");
    if total > MAX_ROWS {
        let _ = writeln!(out, "<p>{} more feeds not shown.</p>", total - MAX_ROWS);
    }
    out.push_str("</body></html>\n");
    out
}

fn render_row(out: &mut String, row: &Row, now: SystemTime) {
    let last = row.history.as_ref().and_then(|h| h.recent.back());
    let outcome = match (last, row.dropped) {
        (Some(RefreshRecord { error: None, .. }), _) => "ok".to_owned(),
        (Some(RefreshRecord { error: Some(e), .. }), _) => format!("failed: {e}"),
        (None, true) => "dropped (unused)".to_owned(),
        (None, false) => "not refreshed since start".to_owned(),
    };
    let class = match (last, row.dropped) {
        (Some(RefreshRecord { error: Some(_), .. }), _) => " class=\"failed\"",
        (None, true) => " class=\"dropped\"",
        _ => "",
    };
    let _ = write!(
        out,
        "<tr class=\"feed\"><td>{}</td><td class=\"set\">{}</td><td class=\"query\"><code>{}</code></td>\
         <td class=\"scope\"><code>{}</code></td><td class=\"n entities\">{}</td><td class=\"n version\">{}</td>\
         <td class=\"last\">{}</td><td class=\"n duration\">{}</td><td class=\"outcome\"{class}>{}</td>\
         <td class=\"n changes\">{}</td><td class=\"n subscriptions\">{}</td><td>",
        escape(if row.route.is_empty() {
            "/"
        } else {
            &row.route
        }),
        escape(&row.entity_set),
        escape(&readable_query(&row.query)),
        escape(&short_scope(&row.scope)),
        row.entities,
        row.version.map_or("–".to_owned(), |v| v.to_string()),
        last.map_or("–".to_owned(), |r| utc(r.finished_at)),
        last.map_or("–".to_owned(), |r| millis(r.duration)),
        escape(&outcome),
        row.history.as_ref().map_or(0, |h| h.changes_last_hour(now)),
        row.subscriptions,
    );
    if let Some(h) = &row.history {
        chart(out, h);
    }
    out.push_str("</td></tr>\n");
}

/// Bars of the recent refresh durations, oldest on the left, scaled to the longest; failed
/// refreshes in red. Each bar's title gives its duration and changes.
fn chart(out: &mut String, h: &FeedHistory) {
    const BAR: usize = 4;
    const HEIGHT: f64 = 24.0;
    let longest = h
        .recent
        .iter()
        .map(|r| r.duration)
        .max()
        .unwrap_or_default()
        .max(Duration::from_millis(1));
    let _ = write!(
        out,
        "<svg class=\"chart\" width=\"{w}\" height=\"{HEIGHT}\" viewBox=\"0 0 {w} {HEIGHT}\" role=\"img\" \
         aria-label=\"durations of the last {n} refreshes, longest {longest}\">",
        w = RECENT_REFRESHES * BAR,
        n = h.recent.len(),
        longest = millis(longest),
    );
    for (i, r) in h.recent.iter().enumerate() {
        let height = (r.duration.as_secs_f64() / longest.as_secs_f64() * HEIGHT).max(1.0);
        let _ = write!(
            out,
            "<rect{} x=\"{}\" y=\"{:.1}\" width=\"{}\" height=\"{height:.1}\"><title>{}, {} changes</title></rect>",
            if r.error.is_some() {
                " class=\"failed\""
            } else {
                ""
            },
            i * BAR,
            HEIGHT - height,
            BAR - 1,
            millis(r.duration),
            r.changes,
        );
    }
    out.push_str("</svg>");
}

/// The defining query as a person reads it: decoded, `&`-separated; `(all)` when empty.
fn readable_query(encoded: &str) -> String {
    if encoded.is_empty() {
        return "(all)".to_owned();
    }
    encoded
        .split('&')
        .map(|pair| percent_decode_str(pair).decode_utf8_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("&")
}

/// `shared`, or the first hex digits of a hash of the scope label: enough to tell scopes apart,
/// and nothing that could be a credential.
pub(crate) fn short_scope(scope: &str) -> String {
    if scope == "shared" {
        return scope.to_owned();
    }
    blake3::hash(scope.as_bytes()).to_hex()[..12].to_owned()
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// `2026-12-02 03:04:05 UTC`.
pub(crate) fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Escape text for HTML element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_dates_are_utc() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_796_180_645)),
            "2026-12-02 03:04:05 UTC"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29 00:00:00 UTC"
        );
        assert_eq!(short_scope("shared"), "shared");
        assert_eq!(short_scope("abc").len(), 12);
        assert_eq!(
            readable_query("%24filter=city%20eq%20%27Paris%27"),
            "$filter=city eq 'Paris'"
        );
    }
}

//! The operator's `feeds` commands (`list`, `show`, `drop`, `compact`) on a data dir: they open
//! the store themselves, so they refuse while a gateway holds it (redb's file lock) instead of
//! racing it. Output is plain text for people and scripts (`list` is one tab-separated line per
//! feed, after a header).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::config::{FeedsArgs, FeedsCommand};
use crate::status::{short_scope, utc};
use crate::store::{FeedMeta, RedbStore, file_path};
use crate::track::feed::FeedId;

/// Shortest id prefix accepted, so that a typo rarely names another feed.
const MIN_PREFIX: usize = 6;

/// Run one `feeds` command; its output, or the message to print as the error.
pub fn run(args: &FeedsArgs) -> Result<String, String> {
    let mut store = RedbStore::open_existing(&args.data_dir).map_err(|e| e.to_string())?;
    match &args.command {
        FeedsCommand::List => list(&store),
        FeedsCommand::Show { id } => {
            let (id, meta) = find(&store, id)?;
            Ok(show(id, &meta))
        }
        FeedsCommand::Drop { id } => {
            let (id, meta) = find(&store, id)?;
            if meta.dropped {
                return Ok(format!("feed {} was dropped already\n", hex(id)));
            }
            // u64::MAX: whenever it was last used.
            let dropped = store.drop_feed(id, u64::MAX).map_err(|e| e.to_string())?;
            Ok(if dropped {
                format!(
                    "dropped feed {} ({} {}): its delta links now answer 410 with the query to start over\n",
                    hex(id),
                    meta.route,
                    meta.entity_set
                )
            } else {
                format!("feed {} was not dropped\n", hex(id))
            })
        }
        FeedsCommand::Compact => compact(&mut store, &args.data_dir),
    }
}

fn list(store: &RedbStore) -> Result<String, String> {
    let feeds = store.feeds().map_err(|e| e.to_string())?;
    let mut out =
        String::from("id\troute\tentity_set\tscope\tentities\tversion\tlast_used\tstate\n");
    for (id, m) in &feeds {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            hex(*id),
            if m.route.is_empty() { "/" } else { &m.route },
            m.entity_set,
            short_scope(&m.scope),
            m.live,
            m.version,
            used(m),
            if m.dropped { "dropped" } else { "stored" },
        );
    }
    Ok(out)
}

fn show(id: FeedId, m: &FeedMeta) -> String {
    format!(
        "id:         {}\nroute:      {}\nentity set: {}\nquery:      {}\nscope:      {}\nentities:   {}\nversion:    {}\nlast used:  {}\nstate:      {}\n",
        hex(id),
        if m.route.is_empty() { "/" } else { &m.route },
        m.entity_set,
        if m.query.is_empty() {
            "(all)"
        } else {
            &m.query
        },
        short_scope(&m.scope),
        m.live,
        m.version,
        used(m),
        if m.dropped {
            "dropped (entities deleted; delta links answer 410)"
        } else {
            "stored"
        },
    )
}

fn compact(store: &mut RedbStore, dir: &Path) -> Result<String, String> {
    let size = || std::fs::metadata(file_path(dir)).map_or(0, |m| m.len());
    let before = size();
    let compacted = store.compact().map_err(|e| e.to_string())?;
    let after = size();
    Ok(if compacted {
        format!(
            "compacted {}: {before} → {after} bytes\n",
            file_path(dir).display()
        )
    } else {
        format!(
            "{} is compact already ({after} bytes)\n",
            file_path(dir).display()
        )
    })
}

/// The feed whose id is `wanted` or starts with it.
fn find(store: &RedbStore, wanted: &str) -> Result<(FeedId, FeedMeta), String> {
    let wanted = wanted.trim().to_ascii_lowercase();
    if wanted.len() < MIN_PREFIX || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "'{wanted}' is not a feed id: give the id from `feeds list` (hex), or at least {MIN_PREFIX} of its first digits"
        ));
    }
    let mut found: Vec<(FeedId, FeedMeta)> = store
        .feeds()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(id, _)| hex(*id).starts_with(&wanted))
        .collect();
    match found.len() {
        0 => Err(format!("no feed has an id starting with {wanted}")),
        1 => Ok(found.remove(0)),
        n => Err(format!(
            "{n} feeds have ids starting with {wanted}; give more digits"
        )),
    }
}

fn hex(id: FeedId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn used(m: &FeedMeta) -> String {
    if m.last_used_ms == 0 {
        return "–".into();
    }
    utc(UNIX_EPOCH + Duration::from_millis(m.last_used_ms))
}

//! Comparing a replica with a real server's collection, and the entries of the last delta a replica read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use crate::support::gateway::Replica;

/// How many differences of each kind a failure message shows.
const SHOWN: usize = 8;

/// Panics, naming the first differences, unless the replica holds exactly `rows`, the server's (all
/// properties, including CAP's server-maintained `modifiedAt` and its Decimal strings).
pub fn assert_converged(replica: &Replica, rows: &[Value], what: &str) {
    let expected = replica.expected(rows, |_| true);
    if replica.rows == expected {
        return;
    }
    let mut report = format!(
        "{what}: the replica ({} rows) diverges from the server ({} rows)\n",
        replica.rows.len(),
        expected.len()
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|(id, _)| !replica.rows.contains_key(*id))
        .collect();
    let extra: Vec<_> = replica
        .rows
        .iter()
        .filter(|(id, _)| !expected.contains_key(*id))
        .collect();
    let different: Vec<_> = expected
        .iter()
        .filter_map(|(id, want)| {
            let have = replica.rows.get(id)?;
            (have != want).then_some((id, want, have))
        })
        .collect();
    let _ = writeln!(report, "missing from the replica: {}", missing.len());
    for (id, row) in missing.iter().take(SHOWN) {
        let _ = writeln!(report, "  {id}: {row}");
    }
    let _ = writeln!(
        report,
        "in the replica but not on the server: {}",
        extra.len()
    );
    for (id, row) in extra.iter().take(SHOWN) {
        let _ = writeln!(report, "  {id}: {row}");
    }
    let _ = writeln!(report, "different: {}", different.len());
    for (id, want, have) in different.iter().take(SHOWN) {
        let _ = writeln!(report, "  {id}:\n    server  {want}\n    replica {have}");
    }
    panic!("{report}");
}

/// The numeric key of an entity-id such as `Customers(42)`.
pub fn key_of(entity_id: &str) -> i64 {
    entity_id
        .strip_prefix("Customers(")
        .and_then(|s| s.strip_suffix(')'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a Customers entity-id: {entity_id}"))
}

/// What the last response a replica followed held, by key.
#[derive(Debug, Default)]
pub struct Entries {
    /// Keys of the added or changed entities.
    pub upserted: BTreeSet<i64>,
    /// Keys of the tombstones, with their reason.
    pub removed: BTreeMap<i64, String>,
}

/// The entries of the replica's last response; each entity appears at most once (C12).
pub fn entries(replica: &Replica) -> Entries {
    let mut out = Entries::default();
    for id in &replica.last_upserted {
        assert!(
            out.upserted.insert(key_of(id)),
            "C12: {id} appears twice in one delta"
        );
    }
    for (id, reason) in &replica.last_removed {
        let key = key_of(id);
        assert!(
            !out.upserted.contains(&key) && out.removed.insert(key, reason.clone()).is_none(),
            "C12: {id} appears twice in one delta"
        );
    }
    out
}

//! Comparing a replica with a real server's collection, and the entries of the last delta a replica read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use crate::api::Api;
use crate::support::gateway::{Client, Replica};

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

/// After the common writes of the pass-through and write tests (10 patched, 20 and 21 deleted,
/// 5001 and 5002 created): the gateway counts the delta itself (C23), the delta carries three
/// entities in their current state and two tombstones, the replica converges, and the next delta
/// is empty (C11).
pub async fn check_the_delta_after_the_writes(replica: &mut Replica, client: &Client, api: &Api) {
    // The gateway counts the delta itself (C23): three entities and two tombstones.
    let link = replica.delta_link.clone().expect("a delta link");
    let count_url = link.replacen("/Customers?", "/Customers/$count?", 1);
    let r = client.get(&count_url, &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "5".to_owned()),
        "GET {count_url}"
    );
    replica
        .sync(client)
        .await
        .unwrap_or_else(|r| panic!("delta: {} {}", r.status, r.text()));
    let got = entries(replica);
    assert_eq!(got.upserted, BTreeSet::from([10, 5001, 5002]));
    assert_eq!(
        got.removed.into_iter().collect::<Vec<_>>(),
        vec![(20, "deleted".to_owned()), (21, "deleted".to_owned())]
    );
    for id in [10, 5001, 5002] {
        assert_eq!(
            replica.rows.get(&format!("Customers({id})")),
            api.get(id).await.as_ref(),
            "the delta carries the server's current state of Customers({id})"
        );
    }
    assert_converged(replica, &api.read_all("").await, "after the writes");
    // No write since: the next delta is empty (C11).
    replica.sync(client).await.expect("an empty delta");
    let got = entries(replica);
    assert!(got.upserted.is_empty() && got.removed.is_empty(), "{got:?}");
}

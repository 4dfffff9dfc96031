//! One suite for every store: each case is a function of a [`FeedStore`], run against the embedded
//! store always and against PostgreSQL when `ODG_TEST_POSTGRES` names a database (`.ci/run`
//! starts one); each PostgreSQL case gets a schema of its own.

use super::postgres::{PgLimits, PgStore};
use super::*;

/// A live row of key `n` whose body and content are `text`.
pub(super) fn live(n: u64, text: &str) -> EntityRow {
    let predicate = n.to_string();
    EntityRow::live(
        KeyHash::of(&predicate),
        ContentHash(crate::ids::truncate(blake3::hash(text.as_bytes()))),
        &predicate,
        format!("\"ID\":{n}").as_bytes(),
        0,
        |out| out.extend_from_slice(text.as_bytes()),
    )
}

/// The meta of a feed at `version`.
pub(super) fn meta(version: u64, live: u64, next_row: u64) -> FeedMeta {
    FeedMeta {
        route: String::new(),
        entity_set: "S".into(),
        query: String::new(),
        scope: "shared".into(),
        version,
        live,
        last_used_ms: 0,
        dropped: false,
        next_row,
    }
}

fn bodies(store: &Store, feed: FeedId) -> Vec<String> {
    store
        .live_page(feed, None, 0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, r)| String::from_utf8(r.body().to_vec()).unwrap())
        .collect()
}

fn pending(rows: &[(u64, bool, EntityRow)]) -> Vec<PendingRow> {
    rows.iter()
        .map(|(row, existed, state)| PendingRow {
            row: *row,
            existed: *existed,
            state: state.clone(),
        })
        .collect()
}

/// Pending states are invisible until the publish, discarded by the next settle when the refresh
/// failed, and superseded ones compacted once a newer state is published.
fn pending_states_are_invisible_until_published(store: Store) {
    let feed = FeedId([9; 16]);
    let first = pending(&[
        (0, false, live(0, "a0")),
        (1, false, live(1, "a1")),
        (2, false, live(2, "a2")),
    ]);
    store.write_pending(feed, Version(1), &first).unwrap();
    assert!(bodies(&store, feed).is_empty(), "nothing published yet");
    store.publish(feed, &meta(1, 3, 3), 1).unwrap();
    assert_eq!(bodies(&store, feed), ["a0", "a1", "a2"]);

    let update = pending(&[(1, true, live(1, "b1"))]);
    store.write_pending(feed, Version(2), &update).unwrap();
    assert_eq!(bodies(&store, feed), ["a0", "a1", "a2"]);
    assert_eq!(store.delta_count(feed, Version(1), Version(2)).unwrap(), 0);
    let settled = store.settle(feed, 0).unwrap();
    assert_eq!(settled.discarded, 1);
    assert_eq!(settled.burned, 2);
    let mut loaded = 0;
    store.load_index(feed, |_| loaded += 1).unwrap();
    assert_eq!(loaded, 3);

    store.write_pending(feed, Version(3), &update).unwrap();
    store.publish(feed, &meta(3, 3, 3), 2).unwrap();
    assert_eq!(bodies(&store, feed), ["a0", "b1", "a2"]);
    assert_eq!(store.delta_count(feed, Version(0), Version(3)).unwrap(), 3);
    assert_eq!(store.delta_count(feed, Version(1), Version(3)).unwrap(), 1);
    // Compacted by whichever step the store does it in, once.
    let compacted =
        store.settle(feed, 0).unwrap().compacted + store.compact_superseded(feed).unwrap();
    assert_eq!(compacted, 1);
    assert_eq!(store.settle(feed, 0).unwrap().compacted, 0);
    assert_eq!(store.compact_superseded(feed).unwrap(), 0);
    assert_eq!(store.delta_count(feed, Version(0), Version(3)).unwrap(), 3);
    let page = store
        .delta_page(feed, Version(1), Version(3), None, 10)
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!((page[0].0, page[0].1), (Version(3), 1));
    assert_eq!(page[0].2.body(), b"b1");
    assert!(store.was_published(feed, Version(3)).unwrap());
    assert!(!store.was_published(feed, Version(2)).unwrap());
}

/// Pages of live rows honour `after`, `skip` and `limit`; delta pages resume after a cursor;
/// tombstones appear in deltas and the index but not in live pages, and old ones are purged.
fn pages_cursors_tombstones_and_purge(store: Store) {
    let feed = FeedId([7; 16]);
    let rows: Vec<(u64, bool, EntityRow)> = (0..5)
        .map(|n| (n, false, live(n, &format!("r{n}"))))
        .collect();
    store
        .write_pending(feed, Version(1), &pending(&rows))
        .unwrap();
    store.publish(feed, &meta(1, 5, 5), 100).unwrap();
    let page = store.live_page(feed, Some(0), 1, 2).unwrap();
    assert_eq!(page.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [2, 3]);
    let first = store
        .delta_page(feed, Version(0), Version(1), None, 2)
        .unwrap();
    assert_eq!(first.iter().map(|e| e.1).collect::<Vec<_>>(), [0, 1]);
    let rest = store
        .delta_page(
            feed,
            Version(0),
            Version(1),
            Some((first[1].0, first[1].1)),
            10,
        )
        .unwrap();
    assert_eq!(rest.iter().map(|e| e.1).collect::<Vec<_>>(), [2, 3, 4]);

    let gone = EntityRow::removed(
        KeyHash::of("3"),
        crate::odata::delta::Reason::Deleted,
        "3",
        b"\"ID\":3",
    );
    store
        .write_pending(feed, Version(2), &pending(&[(3, true, gone)]))
        .unwrap();
    store.publish(feed, &meta(2, 4, 5), 200).unwrap();
    assert_eq!(bodies(&store, feed), ["r0", "r1", "r2", "r4"]);
    let delta = store
        .delta_page(feed, Version(1), Version(2), None, 10)
        .unwrap();
    assert_eq!(delta.len(), 1);
    assert!(delta[0].2.removed_reason().is_some());
    let mut tombstones = 0;
    store
        .load_index(feed, |r| tombstones += usize::from(r.content.is_none()))
        .unwrap();
    assert_eq!(tombstones, 1);
    let keys = store.keys_of(feed, &[4, 1, 99]).unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| k.predicate.as_str())
            .collect::<Vec<_>>(),
        ["4", "1"]
    );
    assert_eq!(store.rows(feed, &[2]).unwrap()[0].1.body(), b"r2");
    let mut scanned = Vec::new();
    store.scan_live(feed, |row, _| scanned.push(row)).unwrap();
    assert_eq!(scanned, [0, 1, 2, 4]);

    store.settle(feed, 0).unwrap();
    let settled = store.settle(feed, 1_000).unwrap();
    assert_eq!(settled.purged, [KeyHash::of("3")]);
    assert_eq!(store.delta_count(feed, Version(1), Version(2)).unwrap(), 0);
}

/// Retention marks only grow; an idle feed is dropped keeping its definition; subscriptions and
/// the secret round-trip.
fn marks_drops_subscriptions_and_secret(store: Store) {
    let feed = FeedId([5; 16]);
    store
        .write_pending(feed, Version(1), &pending(&[(0, false, live(0, "x"))]))
        .unwrap();
    store.publish(feed, &meta(1, 1, 1), 1_000).unwrap();
    store.touch(&[(feed, 500), (FeedId([6; 16]), 9)]).unwrap();
    assert_eq!(store.feed(feed).unwrap().unwrap().last_used_ms, 1_000);
    assert_eq!(store.cover_issued(feed, 900, 5_000).unwrap(), 1_000);
    assert_eq!(store.cover_issued(feed, 2_000, 3_000).unwrap(), 3_000);
    assert_eq!(store.cover_issued(FeedId([6; 16]), 1, 2).unwrap(), 0);
    assert_eq!(store.idle_feeds(4_000).unwrap(), [feed]);
    assert!(!store.drop_feed(feed, 2_000).unwrap());
    assert!(store.drop_feed(feed, 4_000).unwrap());
    let dropped = store.feed(feed).unwrap().unwrap();
    assert!(dropped.dropped && dropped.version == 1);
    assert!(bodies(&store, feed).is_empty());
    assert!(store.stored_feeds().unwrap().is_empty());
    assert_eq!(store.feeds().unwrap().len(), 1);

    let row = SubscriptionRow {
        feed: feed.0,
        route: "/odata".into(),
        entity_set: "S".into(),
        query: String::new(),
        collection_url: "http://gw/odata/S".into(),
        scope: "shared".into(),
        notification_url: "http://hook".into(),
        client_state: None,
        created_ms: 1,
        expires_ms: 2,
        since: 1,
        issued_at: 1,
        missed: 0,
    };
    store.put_subscription([1; 16], &row).unwrap();
    assert_eq!(store.subscriptions().unwrap(), vec![([1; 16], row)]);
    store.delete_subscriptions(&[[1; 16], [2; 16]]).unwrap();
    assert!(store.subscriptions().unwrap().is_empty());
    assert_eq!(store.token_secret().unwrap().len(), 32);
}

/// The store's size grows with what it holds; a store shared by replicas counts every refresh
/// that ended well and grants one claim per notification until it runs out; one that is not
/// counts nothing and grants every claim.
fn sizes_refresh_counts_and_notification_claims(store: Store) {
    let feed = FeedId([7; 16]);
    let empty = store.bytes().unwrap();
    assert!(empty > 0, "an empty store still has its tables");
    // Incompressible bodies, more than a file's or a table's first allocation.
    let rows: Vec<_> = (0..2000u64)
        .map(|n| {
            let mut noise = [0u8; 2048];
            blake3::Hasher::new()
                .update(&n.to_be_bytes())
                .finalize_xof()
                .fill(&mut noise);
            let body: String = noise.iter().map(|b| format!("{b:02x}")).collect();
            (n, false, live(n, &body))
        })
        .collect();
    store
        .write_pending(feed, Version(1), &pending(&rows))
        .unwrap();
    store.publish(feed, &meta(1, 2000, 2000), 1).unwrap();
    assert!(
        store.bytes().unwrap() > empty + 4_000_000,
        "8 MB of rows take room"
    );

    let (stored, first) = store.feed_and_refreshes(feed).unwrap();
    assert_eq!(stored.map(|m| m.version), Some(1));
    store.count_unchanged_refresh(feed, 7).unwrap();
    let (_, second) = store.feed_and_refreshes(feed).unwrap();
    let (first, second) = ((first.count, first.at_ms), (second.count, second.at_ms));
    let id = [3; 16];
    if store.is_shared() {
        assert_eq!((first, second), ((1, 1), (2, 7)));
        assert!(
            store
                .claim_notification(id, Version(1), 1_000, 500)
                .unwrap()
        );
        assert!(
            !store
                .claim_notification(id, Version(1), 1_200, 500)
                .unwrap()
        );
        assert!(
            store
                .claim_notification(id, Version(2), 1_200, 500)
                .unwrap()
        );
        assert!(
            !store
                .claim_notification(id, Version(1), 1_300, 500)
                .unwrap()
        );
        assert!(
            store
                .claim_notification(id, Version(2), 1_800, 500)
                .unwrap(),
            "a claim whose hold ran out gives way"
        );
    } else {
        assert_eq!((first, second), ((0, 0), (0, 0)));
        assert!(
            store
                .claim_notification(id, Version(1), 1_000, 500)
                .unwrap()
        );
        assert!(
            store
                .claim_notification(id, Version(1), 1_000, 500)
                .unwrap()
        );
    }
}

macro_rules! conformance {
    ($($case:ident),*) => {
        mod redb {
            $(#[test]
            fn $case() {
                let dir = tempfile::tempdir().unwrap();
                super::$case(super::Store::open(dir.path()).unwrap());
            })*
        }
        mod postgres {
            $(#[test]
            #[ignore = "needs PostgreSQL: set ODG_TEST_POSTGRES to a database URL"]
            fn $case() {
                super::$case(super::postgres_store(stringify!($case)));
            })*
        }
    };
}

conformance!(
    pending_states_are_invisible_until_published,
    pages_cursors_tombstones_and_purge,
    marks_drops_subscriptions_and_secret,
    sizes_refresh_counts_and_notification_claims
);

/// A fresh schema in the test database, and a store on it.
fn postgres_store(case: &str) -> Store {
    let url =
        std::env::var("ODG_TEST_POSTGRES").expect("ODG_TEST_POSTGRES names the test database");
    let mut salt = [0u8; 4];
    getrandom::fill(&mut salt).unwrap();
    let schema = format!("t_{case}_{:08x}", u32::from_be_bytes(salt));
    let store = PgStore::open(&url, Some(&schema), PgLimits::default()).unwrap();
    // The secret is created once per database schema and stays.
    let again = PgStore::open(&url, Some(&schema), PgLimits::default()).unwrap();
    assert_eq!(store.token_secret().unwrap(), again.token_secret().unwrap());
    Store::new(std::sync::Arc::new(store))
}

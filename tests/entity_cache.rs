//! The entity cache's compact tier: writes put their entities in (so the first decision after
//! a write decodes them instead of reading SQLite), updates replace them and deletes remove
//! them, so a slice never holds a stale entity. The differential tests check whole decisions
//! through it; this checks that it is used, and where its answers come from.

use cedar_policy::EntityUid;
use policyd::store::Store;
use policyd::store::codec;
use policyd::store::sqlite::SqliteStore;
use serde_json::{Value, json};

fn records(items: Value) -> Vec<codec::Record> {
    codec::parse_batch(items, None).unwrap()
}

fn uid(text: &str) -> EntityUid {
    text.parse().unwrap()
}

/// The `level` attribute of `uid` as the store slices it, or `None` when absent.
fn level(store: &Store, text: &str) -> Option<i64> {
    let slice = store.slice(&[uid(text)], Some(1)).unwrap();
    let entity = slice.first()?;
    match entity.get("level") {
        Some(cedar_policy_core::ast::PartialValue::Value(v)) => v.to_string().parse().ok(),
        _ => panic!("{entity}"),
    }
}

#[test]
fn writes_fill_the_compact_tier_and_no_read_sees_a_stale_entity() {
    let dir = tempfile::tempdir().unwrap();
    // One resolved entity at a time: every slice past the first entity misses it.
    let store = Store::new(
        Box::new(SqliteStore::open(&dir.path().join("s.db")).unwrap()),
        1,
        1 << 20,
    );
    store
        .upsert(&records(json!([
            {"uid": {"type": "Org", "id": "o"}, "attrs": {"level": 1}, "parents": []},
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {"level": 2},
             "parents": [{"type": "Org", "id": "o"}]},
        ])))
        .unwrap();
    assert_eq!(store.compact_stats(), (0, 2));
    assert_eq!(level(&store, "Doc::\"d\""), Some(2));
    // The document and its parent (for its ancestors) came from the compact tier, not SQLite.
    assert_eq!(store.compact_stats(), (2, 2));
    let slice = store.slice(&[uid("Doc::\"d\"")], Some(1)).unwrap();
    assert!(slice[0].is_descendant_of(&uid("Org::\"o\"").into()));

    store
        .upsert(&records(json!([
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {"level": 3}, "parents": []},
        ])))
        .unwrap();
    assert_eq!(level(&store, "Doc::\"d\""), Some(3));
    let slice = store.slice(&[uid("Doc::\"d\"")], Some(1)).unwrap();
    assert!(!slice[0].is_descendant_of(&uid("Org::\"o\"").into()));

    assert!(store.delete(&uid("Doc::\"d\"")).unwrap());
    assert_eq!(level(&store, "Doc::\"d\""), None);
    assert_eq!(store.compact_stats().1, 1);
    assert_eq!(level(&store, "Org::\"o\""), Some(1));
}

#[test]
fn with_the_compact_tier_off_every_miss_reads_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(
        Box::new(SqliteStore::open(&dir.path().join("s.db")).unwrap()),
        1,
        0,
    );
    store
        .upsert(&records(json!([
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {"level": 2}, "parents": []},
        ])))
        .unwrap();
    assert_eq!(level(&store, "Doc::\"d\""), Some(2));
    assert_eq!(store.compact_stats(), (0, 0));
}

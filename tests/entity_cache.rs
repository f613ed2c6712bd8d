//! The entity cache's compact tier: writes put their entities in (so the first decision after
//! a write decodes them instead of reading SQLite), updates replace them and deletes remove
//! them, so a slice never holds a stale entity. The differential tests check whole decisions
//! through it; this checks that it is used, and where its answers come from.

use cedar_policy::EntityUid;
use policyd::policy::slicing::Follow;
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

/// A store over the SQLite file at `path`, with a first tier of `cache` bytes and a compact
/// tier of `compact` bytes (0: none).
fn open(path: &std::path::Path, cache: u64, compact: u64) -> Store {
    Store::new(Box::new(SqliteStore::open(path).unwrap()), cache, compact)
}

/// The `level` attribute of `uid` as the store slices it, or `None` when absent.
fn level(store: &Store, text: &str) -> Option<i64> {
    let slice = store.slice(&[uid(text)], Some(1), &Follow::All).unwrap();
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
    let store = open(&dir.path().join("s.db"), 1, 1 << 20);
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
    let slice = store
        .slice(&[uid("Doc::\"d\"")], Some(1), &Follow::All)
        .unwrap();
    assert!(slice[0].is_descendant_of(&uid("Org::\"o\"").into()));

    store
        .upsert(&records(json!([
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {"level": 3}, "parents": []},
        ])))
        .unwrap();
    assert_eq!(level(&store, "Doc::\"d\""), Some(3));
    let slice = store
        .slice(&[uid("Doc::\"d\"")], Some(1), &Follow::All)
        .unwrap();
    assert!(!slice[0].is_descendant_of(&uid("Org::\"o\"").into()));

    assert!(store.delete(&uid("Doc::\"d\"")).unwrap());
    assert_eq!(level(&store, "Doc::\"d\""), None);
    assert_eq!(store.compact_stats().1, 1);
    assert_eq!(level(&store, "Org::\"o\""), Some(1));
}

#[test]
fn with_the_compact_tier_off_every_miss_reads_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.db"), 1, 0);
    store
        .upsert(&records(json!([
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {"level": 2}, "parents": []},
        ])))
        .unwrap();
    assert_eq!(level(&store, "Doc::\"d\""), Some(2));
    assert_eq!(store.compact_stats(), (0, 0));
}

/// `n` documents under one organization.
fn documents(n: usize) -> Vec<codec::Record> {
    let mut items =
        vec![json!({"uid": {"type": "Org", "id": "o"}, "attrs": {"level": 0}, "parents": []})];
    items.extend((0..n).map(|i| {
        json!({"uid": {"type": "Doc", "id": format!("d{i}")}, "attrs": {"level": i},
               "parents": [{"type": "Org", "id": "o"}]})
    }));
    records(Value::Array(items))
}

#[test]
fn a_restarted_store_warms_its_compact_tier_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let first = open(&path, 1, 0);
    first.upsert(&documents(3_000)).unwrap();
    drop(first);

    let restarted = open(&path, 1, 8 << 20);
    assert_eq!(restarted.compact_stats(), (0, 0));
    assert_eq!(restarted.warm().unwrap(), 3_001);
    assert_eq!(restarted.compact_stats(), (0, 3_001));
    assert_eq!(level(&restarted, "Doc::\"d2999\""), Some(2999));
    // The document and its organization were decoded, not read from SQLite.
    assert_eq!(restarted.compact_stats().0, 2);

    // A small tier is warmed to about 7/8 of its bound, not cycled through (a shard that
    // fills before the others may drop a few of its first).
    let small = open(&path, 1, 32 << 10);
    let kept = small.warm().unwrap();
    assert!((500..3_001).contains(&kept), "{kept}");
    let held = small.compact_stats().1;
    assert!(held <= kept && held * 10 >= kept * 9, "{held} of {kept}");

    // A stopped warm-up keeps nothing more.
    let stopped = open(&path, 1, 8 << 20);
    stopped.stop_warming();
    assert_eq!(stopped.warm().unwrap(), 0);
}

/// Stores `Doc::"d"`, child of `Org::"o"`; the roots of a decision on the document.
fn doc_in_org(store: &Store) -> [EntityUid; 1] {
    store
        .upsert(&records(json!([
            {"uid": {"type": "Org", "id": "o"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {},
             "parents": [{"type": "Org", "id": "o"}]},
        ])))
        .unwrap();
    [uid("Doc::\"d\"")]
}

/// An entity a miss resolved, or found in the first tier for its closure, is taken from there
/// when the slice reaches it next: the first tier is asked once per entity and slice.
#[test]
fn a_slice_asks_the_first_tier_once_per_entity() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.db"), 1 << 20, 1 << 20);
    store
        .upsert(&records(json!([
            {"uid": {"type": "Org", "id": "o"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {"org": {"__entity": {"type": "Org", "id": "o"}}},
             "parents": [{"type": "Org", "id": "o"}]},
            {"uid": {"type": "Doc", "id": "e"}, "attrs": {"org": {"__entity": {"type": "Org", "id": "o"}}},
             "parents": [{"type": "Org", "id": "o"}]},
        ])))
        .unwrap();
    let slice = |doc: &str| {
        let roots = [uid(&format!("Doc::\"{doc}\""))];
        let slice = store
            .slice_now(&roots, Some(2), &Follow::All)
            .unwrap()
            .unwrap();
        assert_eq!(slice.len(), 2);
        store.cache_stats()
    };
    // `d` and, for its closure, `o` miss; the slice reaches `o` again through `org`.
    assert_eq!(slice("d"), (0, 2, 2));
    // `e` misses; `o`, in the first tier, is found there once.
    assert_eq!(slice("e"), (1, 3, 3));
    let (_, blocking) = (
        dir.path(),
        store.slice(&[uid("Doc::\"e\"")], Some(2), &Follow::All),
    );
    assert_eq!(blocking.unwrap().len(), 2);
    assert_eq!(store.cache_stats(), (3, 3, 3));
}

/// A miss is looked up once: the request's thread counts it, then reads it without asking
/// the first tier again (each first-tier lookup of a million-entity store is a cache miss of
/// the CPU's own).
#[test]
fn a_miss_looks_up_the_first_tier_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.db"), 1 << 20, 1 << 20);
    let roots = doc_in_org(&store);
    let slice = store
        .slice_now(&roots, Some(1), &Follow::All)
        .unwrap()
        .unwrap();
    assert_eq!(slice.len(), 1);
    // The document, and its parent while resolving its ancestors: one miss each.
    assert_eq!(store.cache_stats(), (0, 2, 2));
    store
        .slice_now(&roots, Some(1), &Follow::All)
        .unwrap()
        .unwrap();
    assert_eq!(store.cache_stats(), (1, 2, 2));
}

/// What only the store holds is never read on the caller's thread (a serving thread, which a
/// stalling disk must not hold): `slice_now` answers `None` and counts nothing, and the slice
/// the engine then takes on a blocking thread reads it, counting its lookups once.
/// A read from memory that gives up (an ancestor only the backend holds) counts nothing: the
/// blocking read made instead counts each lookup of either tier once.
#[test]
fn a_read_that_gives_up_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Compact segments of 128 bytes: the document fits, its organization (a long name) does not.
    let store = open(&dir.path().join("s.db"), 1 << 20, 16 * 8 * 128);
    store
        .upsert(&records(json!([
            {"uid": {"type": "Org", "id": "o"}, "attrs": {"name": "o".repeat(300)}, "parents": []},
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {},
             "parents": [{"type": "Org", "id": "o"}]},
        ])))
        .unwrap();
    assert_eq!(store.compact_stats(), (0, 1));
    let roots = [uid("Doc::\"d\"")];
    assert!(
        store
            .slice_now(&roots, Some(1), &Follow::All)
            .unwrap()
            .is_none()
    );
    assert_eq!(store.cache_stats(), (0, 0, 0));
    assert_eq!(store.compact_stats(), (0, 1));
    assert_eq!(store.slice(&roots, Some(1), &Follow::All).unwrap().len(), 1);
    // The document and its organization missed the first tier once each; the document came
    // from the compact tier once.
    assert_eq!(store.cache_stats(), (0, 2, 2));
    assert_eq!(store.compact_stats(), (1, 1));
}

#[test]
fn slice_now_reads_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    // No compact tier: a first-tier miss can only be read from the store.
    let store = open(&dir.path().join("s.db"), 1 << 20, 0);
    let roots = doc_in_org(&store);
    assert!(
        store
            .slice_now(&roots, Some(1), &Follow::All)
            .unwrap()
            .is_none()
    );
    assert_eq!(store.cache_stats(), (0, 0, 0));
    assert_eq!(store.slice(&roots, Some(1), &Follow::All).unwrap().len(), 1);
    assert_eq!(store.cache_stats(), (0, 2, 2));
    // Now in memory: answered on the caller's thread.
    assert_eq!(
        store
            .slice_now(&roots, Some(1), &Follow::All)
            .unwrap()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.cache_stats(), (1, 2, 2));
}

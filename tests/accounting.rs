//! Property test of storage accounting: after any sequence of writes, every maintained counter
//! equals the total recomputed from scratch.

use std::collections::{BTreeMap, HashMap};

use cedar_policy::Entity;
use policyd::storage::ACCOUNT_TYPES;
use policyd::store::sqlite::{SqliteStore, TotalRow};
use policyd::store::{EntityStore, codec};
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
enum Op {
    /// Upsert an item (new, resized, moved, or retyped) under a project (or none).
    PutItem {
        item: usize,
        ty: usize,
        project: Option<usize>,
        size: Option<i64>,
    },
    /// Upsert a project under an organization (or none): moves all its items' org totals.
    PutProject { project: usize, org: Option<usize> },
    /// Delete any entity.
    Delete { kind: usize, index: usize },
}

const ITEM_TYPES: [&str; 3] = ["Dataset", "Run", "Model"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8usize, 0..3usize, proptest::option::weighted(0.9, 0..4usize), proptest::option::weighted(0.9, 0..1_000_000i64))
            .prop_map(|(item, ty, project, size)| Op::PutItem { item, ty, project, size }),
        2 => (0..4usize, proptest::option::weighted(0.85, 0..3usize)).prop_map(|(project, org)| Op::PutProject { project, org }),
        1 => (0..3usize, 0..8usize).prop_map(|(kind, index)| Op::Delete { kind, index }),
    ]
}

fn uid(ty: &str, id: String) -> Value {
    json!({"type": ty, "id": id})
}

/// The test's own model: what is stored, as (parents, size) by (type, id).
type Model = HashMap<(String, String), (Vec<(String, String)>, Option<i64>)>;

fn write(
    store: &SqliteStore,
    model: &mut Model,
    ty: &str,
    id: String,
    parent: Option<(&str, String)>,
    size: Option<i64>,
) {
    let mut attrs = json!({});
    if let Some(s) = size {
        attrs["size_bytes"] = json!(s);
    }
    let parents: Vec<Value> = parent.iter().map(|(t, i)| uid(t, i.clone())).collect();
    let entity = Entity::from_json_value(
        json!({"uid": uid(ty, id.clone()), "attrs": attrs, "parents": parents}),
        None,
    )
    .unwrap();
    store.upsert(&[codec::encode(&entity).unwrap()]).unwrap();
    let parents = parent.into_iter().map(|(t, i)| (t.to_owned(), i)).collect();
    model.insert((ty.to_owned(), id), (parents, size));
}

/// Totals recomputed from the model alone.
fn expected(model: &Model) -> Vec<TotalRow> {
    let mut totals: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    for ((ty, id), (_, size)) in model {
        let Some(size) = size else { continue };
        let mut ancestors = std::collections::BTreeSet::new();
        let mut stack: Vec<(String, String)> = model[&(ty.clone(), id.clone())].0.clone();
        while let Some(a) = stack.pop() {
            if ancestors.insert(a.clone())
                && let Some((ps, _)) = model.get(&a)
            {
                stack.extend(ps.iter().cloned());
            }
        }
        for (aty, aid) in ancestors {
            if ACCOUNT_TYPES.contains(&aty.as_str()) {
                let e = totals.entry((aty, aid, ty.clone())).or_default();
                e.0 += 1;
                e.1 += size;
            }
        }
    }
    totals.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn counters_equal_a_recount_from_scratch(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let mut model = Model::new();
        for org in 0..3 {
            write(&store, &mut model, "Organization", format!("o{org}"), None, None);
        }
        for op in ops {
            match op {
                Op::PutItem { item, ty, project, size } => {
                    // An item keeps one type: delete it under its old type first when retyped.
                    for old in ITEM_TYPES.iter().filter(|t| **t != ITEM_TYPES[ty]) {
                        let key = (old.to_string(), format!("i{item}"));
                        if model.remove(&key).is_some() {
                            store.delete(&format!("{old}::\"i{item}\"").parse().unwrap()).unwrap();
                        }
                    }
                    write(&store, &mut model, ITEM_TYPES[ty], format!("i{item}"), project.map(|p| ("Project", format!("p{p}"))), size);
                }
                Op::PutProject { project, org } => {
                    write(&store, &mut model, "Project", format!("p{project}"), org.map(|o| ("Organization", format!("o{o}"))), None);
                }
                Op::Delete { kind, index } => {
                    let (ty, id) = match kind {
                        0 => ("Project", format!("p{}", index % 4)),
                        1 => ("Organization", format!("o{}", index % 3)),
                        _ => (ITEM_TYPES[index % 3], format!("i{index}")),
                    };
                    let existed = model.remove(&(ty.to_owned(), id.clone())).is_some();
                    let deleted = store.delete(&format!("{ty}::\"{id}\"").parse().unwrap()).unwrap().is_some();
                    prop_assert_eq!(existed, deleted);
                }
            }
            prop_assert_eq!(store.totals().unwrap(), expected(&model));
        }
        store.recount_all().unwrap();
        prop_assert_eq!(store.totals().unwrap(), expected(&model));
    }
}

#[test]
fn stores_from_before_accounting_are_backfilled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // A version-1 store, as issue 2's daemon wrote it.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            r#"
            CREATE TABLE entities (etype TEXT NOT NULL, eid TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (etype, eid)) WITHOUT ROWID;
            CREATE TABLE parents (ctype TEXT NOT NULL, cid TEXT NOT NULL, ptype TEXT NOT NULL, pid TEXT NOT NULL, PRIMARY KEY (ctype, cid, ptype, pid)) WITHOUT ROWID;
            CREATE INDEX parents_by_parent ON parents (ptype, pid);
            INSERT INTO entities VALUES ('Organization', 'o', '{"uid":{"type":"Organization","id":"o"},"attrs":{"quota_bytes":100},"parents":[]}');
            INSERT INTO entities VALUES ('Project', 'p', '{"uid":{"type":"Project","id":"p"},"attrs":{},"parents":[{"type":"Organization","id":"o"}]}');
            INSERT INTO entities VALUES ('Dataset', 'd', '{"uid":{"type":"Dataset","id":"d"},"attrs":{"size_bytes":42},"parents":[{"type":"Project","id":"p"}]}');
            INSERT INTO parents VALUES ('Project', 'p', 'Organization', 'o'), ('Dataset', 'd', 'Project', 'p');
            PRAGMA user_version = 1;
            "#,
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let totals = store.totals().unwrap();
    let want = |a: &str, i: &str| ((a.to_owned(), i.to_owned(), "Dataset".to_owned()), (1, 42));
    assert_eq!(
        totals,
        vec![want("Organization", "o"), want("Project", "p")]
    );
    use policyd::store::StorageLedger;
    let usage = store
        .usage(&"Organization::\"o\"".parse().unwrap(), 0)
        .unwrap()
        .unwrap();
    assert_eq!((usage.used(), usage.quota), (42, Some(100)));
}

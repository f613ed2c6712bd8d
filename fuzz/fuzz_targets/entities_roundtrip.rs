//! Entity JSON -> store -> entity JSON: whatever the schema accepts reads back exactly, and the
//! decision-path decoder agrees with Cedar's parser.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use policyd::policy::{PolicySnapshot, load_dir};
use policyd::store::sqlite::SqliteStore;
use policyd::store::{EntityStore, codec};

static SNAPSHOT: LazyLock<PolicySnapshot> = LazyLock::new(|| {
    load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .expect("bundled policies")
});

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(records) = codec::parse_batch(value, SNAPSHOT.schema.as_ref()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("db")).expect("store");
    if store.upsert(&records).is_err() {
        return; // a hierarchy cycle is refused
    }
    for r in &records {
        let back = store.get(&r.uid).expect("read").expect("stored");
        assert_eq!(back.body, r.body);
        let parsed = codec::decode(&back.uid, &back.body).expect("decodes");
        let cedar = cedar_policy::Entity::from_json_str(&back.body, None).expect("cedar parses");
        assert!(parsed.entity.deep_eq(&cedar));
    }
});

//! Importing Cedar entity files into the store: `policyd import`, and seeding an empty store at
//! start-up from the entities directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cedar_policy::{EntityUid, Schema};
use serde_json::value::RawValue;

use crate::store::codec::{self, EntityError, NotItems};
use crate::store::{Record, Store, StoreError};

/// Why an import wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not JSON.
    #[error("{}: malformed JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// An entity in a file is invalid.
    #[error("{}: {source}", path.display())]
    Entity {
        /// The file.
        path: PathBuf,
        /// The entity's problem.
        source: EntityError,
    },
    /// The same entity is in two files.
    #[error("{}: entity {uid} is also in {}", path.display(), first.display())]
    Duplicate {
        /// The later file.
        path: PathBuf,
        /// The earlier file.
        first: PathBuf,
        /// The entity.
        uid: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Entities validated together: the store writes one chunk while the next is validated.
const CHUNK: usize = 2_048;

/// What the validating thread hands the writer.
enum Validated {
    /// Records to write, no entity among them handed over before.
    Chunk(Vec<Record>),
    /// An entity or a file is refused: nothing may be written.
    Refused(ImportError),
    /// Every file is valid and was handed over.
    Done,
}

/// Validates every file against `schema` and writes all their entities in one transaction:
/// all or nothing. Returns how many entities were written.
///
/// Validation (on its own thread, which splits each chunk across the cores) and writing (on
/// this one) run at once, a chunk apart: the transaction is committed only after the last
/// file has been validated, and abandoned at the first refusal.
pub fn import_files(
    store: &Store,
    schema: Option<&Schema>,
    paths: &[PathBuf],
) -> Result<usize, ImportError> {
    let (hand, take) = std::sync::mpsc::sync_channel(2);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let last = match validate_files(schema, paths, &hand) {
                Ok(()) => Validated::Done,
                Err(e) => Validated::Refused(e),
            };
            // The writer may have stopped (a store error) and dropped its end.
            let _ = hand.send(last);
        });
        let mut refused = None;
        let mut written = 0;
        let stored = store.upsert_stream(&mut || match take.recv() {
            Ok(Validated::Chunk(records)) => {
                written += records.len();
                Ok(Some(records))
            }
            Ok(Validated::Done) => Ok(None),
            Ok(Validated::Refused(e)) => {
                refused = Some(e);
                Err(StoreError::Abandoned)
            }
            // The validating thread ended without a verdict: commit nothing.
            Err(_) => Err(StoreError::Abandoned),
        });
        // Ends the validating thread early when the write failed.
        drop(take);
        match (refused, stored) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e.into()),
            (None, Ok(())) => Ok(written),
        }
    })
}

/// Validates the files chunk by chunk, handing each chunk's records over as it is done. An
/// entity that appears again in the same file alike counts once (as in Cedar); in another
/// file, or differently, it is refused. `Ok` once every file was handed over; `Err` when
/// one was refused or the writer stopped taking chunks.
fn validate_files(
    schema: Option<&Schema>,
    paths: &[PathBuf],
    hand: &std::sync::mpsc::SyncSender<Validated>,
) -> Result<(), ImportError> {
    // Every entity handed over: the file it came from and a hash of its stored body (the
    // bodies themselves would hold the whole import in memory again).
    let mut seen: HashMap<EntityUid, (usize, u64)> = HashMap::new();
    for (file, path) in paths.iter().enumerate() {
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
            path: path.clone(),
            source,
        })?;
        // Only the array's structure here; each chunk's entities are parsed with the chunk.
        let items = codec::raw_items(text.as_bytes()).map_err(|e| match e {
            NotItems::Malformed(source) => ImportError::Json {
                path: path.clone(),
                source,
            },
            NotItems::NotAnArray(source) => ImportError::Entity {
                path: path.clone(),
                source,
            },
        })?;
        for (n, raw) in items.chunks(CHUNK).enumerate() {
            let start = n * CHUNK;
            let refused = |source: EntityError| ImportError::Entity {
                path: path.clone(),
                source,
            };
            let write = codec::parse_raw_write(raw, schema).map_err(|mut e| {
                e.index += start;
                refused(e)
            })?;
            let mut records = Vec::with_capacity(write.records.len());
            for record in write.records {
                match seen.get(&record.uid) {
                    None => {
                        seen.insert(record.uid.clone(), (file, body_hash(&record.body)));
                        records.push(record);
                    }
                    Some((first, _)) if *first != file => {
                        return Err(ImportError::Duplicate {
                            path: path.clone(),
                            first: paths[*first].clone(),
                            uid: record.uid.to_string(),
                        });
                    }
                    Some((_, hash)) if *hash == body_hash(&record.body) => {}
                    Some(_) if alike_earlier(&items[..start], &record, schema) => {}
                    Some(_) => {
                        // Its first appearance in this chunk is its second in the file.
                        let at = raw
                            .iter()
                            .position(|r| uid_of_raw(r).as_ref() == Some(&record.uid));
                        return Err(refused(EntityError {
                            index: start + at.unwrap_or(0),
                            uid: Some(record.uid.to_string()),
                            message: codec::LISTED_TWICE.to_owned(),
                        }));
                    }
                }
            }
            if hand.send(Validated::Chunk(records)).is_err() {
                return Err(StoreError::Abandoned.into());
            }
        }
    }
    Ok(())
}

fn body_hash(body: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    hasher.finish()
}

fn uid_of_raw(raw: &RawValue) -> Option<EntityUid> {
    codec::uid_of(&serde_json::from_str(raw.get()).ok()?)
}

/// Whether `record` is the same entity as its first appearance among `earlier` (whose body
/// text differed: Cedar lists parents in any order). Validates that appearance again: a
/// duplicate with another text is rare.
fn alike_earlier(earlier: &[&RawValue], record: &Record, schema: Option<&Schema>) -> bool {
    let Some(first) = earlier
        .iter()
        .find(|r| uid_of_raw(r).as_ref() == Some(&record.uid))
    else {
        return false;
    };
    codec::parse_raw_write(std::slice::from_ref(first), schema)
        .ok()
        .and_then(|write| write.records.into_iter().next())
        .is_some_and(|first| codec::same_entity(&first.body, &record.body))
}

/// Imports every `*.json` file of `dir` (sorted by name) when the store holds no entity yet.
///
/// Returns how many entities were seeded; `None` when the store was not empty.
pub fn seed_if_empty(
    store: &Store,
    schema: Option<&Schema>,
    dir: &Path,
) -> Result<Option<usize>, ImportError> {
    if store.count()? > 0 {
        return Ok(None);
    }
    let read_err = |source| ImportError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    import_files(store, schema, &paths).map(Some)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use super::*;
    use crate::storage::{QuotaCheck, ReserveOutcome, Usage};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{EntityStore, NextChunk, StorageLedger, WriteEffect};
    use crate::synth::{self, Shape};

    /// A SQLite store that notes the size of every chunk a streamed write hands it.
    struct Noting {
        inner: SqliteStore,
        chunks: Arc<Mutex<Vec<usize>>>,
    }

    impl EntityStore for Noting {
        fn upsert(&self, records: &[Record]) -> Result<WriteEffect, StoreError> {
            self.inner.upsert(records)
        }
        fn upsert_stream(&self, next: &mut NextChunk<'_>) -> Result<WriteEffect, StoreError> {
            self.inner.upsert_stream(&mut || {
                let chunk = next()?;
                if let Some(records) = &chunk {
                    self.chunks.lock().unwrap().push(records.len());
                }
                Ok(chunk)
            })
        }
        fn delete(&self, uid: &EntityUid) -> Result<Option<WriteEffect>, StoreError> {
            self.inner.delete(uid)
        }
        fn get(&self, uid: &EntityUid) -> Result<Option<Record>, StoreError> {
            self.inner.get(uid)
        }
        fn body(&self, uid: &EntityUid) -> Result<Option<String>, StoreError> {
            self.inner.body(uid)
        }
        fn count(&self) -> Result<u64, StoreError> {
            self.inner.count()
        }
        fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping()
        }
        fn scan(&self, visit: &mut dyn FnMut(Record) -> bool) -> Result<(), StoreError> {
            self.inner.scan(visit)
        }
    }

    impl StorageLedger for Noting {
        fn usage(&self, uid: &EntityUid, now: i64) -> Result<Option<Usage>, StoreError> {
            self.inner.usage(uid, now)
        }
        fn children(&self, parent: &EntityUid, ty: &str) -> Result<Vec<EntityUid>, StoreError> {
            self.inner.children(parent, ty)
        }
        fn check_quota(
            &self,
            project: &EntityUid,
            add: i64,
            now: i64,
        ) -> Result<Option<QuotaCheck>, StoreError> {
            self.inner.check_quota(project, add, now)
        }
        fn reserve(
            &self,
            project: &EntityUid,
            bytes: i64,
            ttl: i64,
            key: Option<&str>,
            now: i64,
        ) -> Result<ReserveOutcome, StoreError> {
            self.inner.reserve(project, bytes, ttl, key, now)
        }
        fn release(&self, id: &str) -> Result<bool, StoreError> {
            self.inner.release(id)
        }
        fn sweep_reservations(&self, now: i64, limit: i64) -> Result<usize, StoreError> {
            self.inner.sweep_reservations(now, limit)
        }
    }

    fn schema() -> Schema {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let snapshot = crate::policy::load_dir(&dir).unwrap();
        snapshot.schema.clone().unwrap()
    }

    fn sqlite(dir: &Path, name: &str) -> SqliteStore {
        SqliteStore::open(&dir.join(name)).unwrap()
    }

    fn write_file(dir: &Path, name: &str, entities: &[Value]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, Value::Array(entities.to_vec()).to_string()).unwrap();
        path
    }

    /// `(uid, usage)` of every organization and project in `entities`, as `store` counts them.
    fn usages(store: &Store, entities: &[Value]) -> Vec<(EntityUid, Option<Usage>)> {
        entities
            .iter()
            .filter_map(codec::uid_of)
            .filter(|u| ["Organization", "Project"].contains(&u.type_name().to_string().as_str()))
            .map(|u| {
                let usage = store.ledger().usage(&u, 0).unwrap();
                (u, usage)
            })
            .collect()
    }

    /// The import hands the store chunk after chunk in one transaction, and what it stores
    /// (entities, storage counters) equals one write of the whole file, children listed before
    /// their parents included.
    #[test]
    fn an_import_is_written_chunk_by_chunk_as_one_write_would_be() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema();
        let forward: Vec<Value> = synth::entities(Shape::about(6_000), 7).collect();
        let mut backward = forward.clone();
        backward.reverse();
        for (n, entities) in [forward, backward].iter().enumerate() {
            let file = write_file(dir.path(), &format!("p{n}.json"), entities);
            let chunks = Arc::new(Mutex::new(Vec::new()));
            let noting = Noting {
                inner: sqlite(dir.path(), &format!("chunked{n}.db")),
                chunks: chunks.clone(),
            };
            let chunked = Store::new(Box::new(noting), 1, 0);
            let imported = import_files(&chunked, Some(&schema), &[file]).unwrap();
            assert_eq!(imported, entities.len());
            let chunks = chunks.lock().unwrap().clone();
            assert_eq!(chunks.len(), entities.len().div_ceil(CHUNK), "{chunks:?}");

            let whole = Store::new(Box::new(sqlite(dir.path(), &format!("whole{n}.db"))), 1, 0);
            let records = codec::parse_batch(Value::Array(entities.clone()), Some(&schema));
            whole.upsert(&records.unwrap()).unwrap();

            assert_eq!(chunked.count().unwrap(), whole.count().unwrap());
            let counted = usages(&chunked, entities);
            assert!(
                counted
                    .iter()
                    .any(|(_, u)| u.as_ref().is_some_and(|u| u.used() > 0))
            );
            assert_eq!(counted, usages(&whole, entities));
        }
    }

    fn user(id: &str, name: Option<i64>) -> Value {
        let attrs = match name {
            // The schema's `name` is a String: a number is refused.
            Some(n) => serde_json::json!({"name": n}),
            None => serde_json::json!({}),
        };
        serde_json::json!({"uid": {"type": "User", "id": id}, "attrs": attrs, "parents": []})
    }

    fn users(n: usize) -> Vec<Value> {
        (0..n).map(|i| user(&format!("u{i}"), None)).collect()
    }

    /// A refused entity several chunks in leaves the store as it was, and the error names its
    /// position in the file; so does an entity listed again differently, or in another file.
    #[test]
    fn a_late_refusal_writes_nothing_and_names_the_entity() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema();
        let store = Store::new(Box::new(sqlite(dir.path(), "s.db")), 1, 0);
        let before = write_file(dir.path(), "before.json", &[user("kept", None)]);
        assert_eq!(import_files(&store, Some(&schema), &[before]).unwrap(), 1);
        let at = 2 * CHUNK + 5;

        let mut bad = users(3 * CHUNK);
        bad[at] = user("broken", Some(1));
        let file = write_file(dir.path(), "bad.json", &bad);
        match import_files(&store, Some(&schema), &[file]) {
            Err(ImportError::Entity { source, .. }) => {
                assert_eq!(source.index, at);
                assert_eq!(source.uid.as_deref(), Some("User::\"broken\""));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.count().unwrap(), 1);

        // Listed again alike in a later chunk: counted once. Differently: refused, where.
        let mut again = users(2 * CHUNK);
        again.push(user("u3", None));
        let file = write_file(dir.path(), "again.json", &again);
        assert_eq!(
            import_files(&store, Some(&schema), &[file]).unwrap(),
            2 * CHUNK
        );
        assert_eq!(store.count().unwrap(), 2 * CHUNK as u64 + 1);
        let mut differently = users(CHUNK);
        differently.push(serde_json::json!({
            "uid": {"type": "User", "id": "u3"}, "attrs": {},
            "parents": [{"type": "Organization", "id": "o"}],
        }));
        let file = write_file(dir.path(), "differently.json", &differently);
        match import_files(&store, Some(&schema), &[file]) {
            Err(ImportError::Entity { source, .. }) => assert_eq!(source.index, CHUNK),
            other => panic!("{other:?}"),
        }

        // In two files: refused, naming both.
        let one = write_file(dir.path(), "one.json", &users(CHUNK + 1));
        let two = write_file(
            dir.path(),
            "two.json",
            &[user("new", None), user("u0", None)],
        );
        match import_files(&store, Some(&schema), &[one.clone(), two.clone()]) {
            Err(ImportError::Duplicate { path, first, uid }) => {
                assert_eq!((path, first), (two, one));
                assert_eq!(uid, "User::\"u0\"");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            store
                .get(&"User::\"new\"".parse().unwrap())
                .unwrap()
                .is_none()
        );
        assert_eq!(store.count().unwrap(), 2 * CHUNK as u64 + 1);
    }

    /// A file that is not JSON, or JSON that is not an array, is refused as such, naming the
    /// file, and nothing of the import is written.
    #[test]
    fn a_file_that_is_no_array_of_entities_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema();
        let store = Store::new(Box::new(sqlite(dir.path(), "s.db")), 1, 0);
        let good = write_file(dir.path(), "good.json", &[user("kept", None)]);
        let malformed = dir.path().join("malformed.json");
        std::fs::write(&malformed, "[{").unwrap();
        match import_files(&store, Some(&schema), &[good.clone(), malformed.clone()]) {
            Err(ImportError::Json { path, .. }) => assert_eq!(path, malformed),
            other => panic!("{other:?}"),
        }
        let object = dir.path().join("object.json");
        std::fs::write(&object, r#"{"uid": {"type": "User", "id": "x"}}"#).unwrap();
        match import_files(&store, Some(&schema), &[good, object.clone()]) {
            Err(ImportError::Entity { path, source }) => {
                assert_eq!(path, object);
                assert_eq!(source.message, "expected a JSON array of Cedar entities");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.count().unwrap(), 0);
    }

    /// A store tuned for imports commits an import through a rollback journal: its pages are
    /// written once, into the file, and the WAL stays empty; a store that is not passes them
    /// all through its WAL. Either way the file is in WAL mode afterwards.
    #[test]
    fn a_tuned_import_writes_its_pages_once() {
        let dir = tempfile::tempdir().unwrap();
        let entities: Vec<Value> = synth::entities(Shape::about(6_000), 3).collect();
        let file = write_file(dir.path(), "p.json", &entities);
        for tuned in [false, true] {
            let db = dir.path().join(format!("tuned-{tuned}.db"));
            let sqlite = SqliteStore::open(&db).unwrap();
            let sqlite = if tuned {
                sqlite.for_import(16).unwrap()
            } else {
                sqlite
            };
            let store = Store::new(Box::new(sqlite), 1, 0);
            let n = import_files(&store, Some(&schema()), std::slice::from_ref(&file)).unwrap();
            assert_eq!(n, entities.len());
            let wal = std::fs::metadata(dir.path().join(format!("tuned-{tuned}.db-wal")))
                .map_or(0, |m| m.len());
            if tuned {
                assert!(wal < 100_000, "{wal} bytes of WAL");
            } else {
                assert!(wal > 1_000_000, "{wal} bytes of WAL");
            }
            let conn = rusqlite::Connection::open(&db).unwrap();
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            assert_eq!(store.count().unwrap(), entities.len() as u64);
        }
    }
}

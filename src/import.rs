//! Importing Cedar entity files into the store: `policyd import`, and seeding an empty store at
//! start-up from the entities directory.

use std::path::{Path, PathBuf};

use cedar_policy::Schema;

use crate::store::codec::{self, EntityError};
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

/// Validates every file against `schema`, then writes all their entities in one transaction.
pub fn import_files(
    store: &Store,
    schema: Option<&Schema>,
    paths: &[PathBuf],
) -> Result<usize, ImportError> {
    let mut records: Vec<Record> = Vec::new();
    let mut origin: std::collections::HashMap<cedar_policy::EntityUid, PathBuf> =
        std::collections::HashMap::new();
    for path in paths {
        for record in read_file(path, schema)? {
            if let Some(first) = origin.get(&record.uid) {
                return Err(ImportError::Duplicate {
                    path: path.clone(),
                    first: first.clone(),
                    uid: record.uid.to_string(),
                });
            }
            origin.insert(record.uid.clone(), path.clone());
            records.push(record);
        }
    }
    store.upsert(&records)?;
    Ok(records.len())
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

fn read_file(path: &Path, schema: Option<&Schema>) -> Result<Vec<Record>, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value = serde_json::from_str(&text).map_err(|source| ImportError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    codec::parse_batch(value, schema).map_err(|source| ImportError::Entity {
        path: path.to_path_buf(),
        source,
    })
}

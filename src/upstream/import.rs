//! `policyd upstream import --db FILE`: moves an existing SQLite store up to the upstream.
//!
//! Every stored entity is written upstream through the ordinary write path (so the change log
//! and the replicas see it), in revisions of [`CHUNK`] entities. Upserts only: importing twice
//! leaves the same entities, and entities already upstream that the file lacks stay.

use std::path::Path;

use super::{Upstream, UpstreamError};
use crate::store::Record;
use crate::store::sqlite::SqliteStore;
use crate::store::{EntityStore, StoreError};

/// Entities per upstream revision.
pub const CHUNK: usize = 5_000;

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Entities written.
    pub entities: usize,
    /// The last revision written; `None` when the store was empty.
    pub revision: Option<i64>,
}

/// Copies every entity of the SQLite store at `db` up to `upstream`.
pub async fn import(upstream: &Upstream, db: &Path) -> Result<Imported, UpstreamError> {
    if !db.is_file() {
        return Err(UpstreamError::Store(StoreError::Open {
            path: db.display().to_string(),
            message: "no such file".to_owned(),
        }));
    }
    let path = db.to_path_buf();
    let records = tokio::task::spawn_blocking(move || {
        let store = SqliteStore::open(&path)?;
        let mut all: Vec<Record> = Vec::new();
        store.scan(&mut |r| {
            all.push(r);
            true
        })?;
        Ok::<_, StoreError>(all)
    })
    .await
    .map_err(|e| UpstreamError::Schema(format!("reading the store failed: {e}")))??;
    let mut revision = None;
    for chunk in records.chunks(CHUNK) {
        revision = Some(upstream.upsert(chunk).await?.revision);
    }
    Ok(Imported {
        entities: records.len(),
        revision,
    })
}

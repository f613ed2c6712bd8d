//! `policyd upstream import --db FILE`: moves an existing SQLite store up to the upstream.
//!
//! Every stored entity is written upstream through the ordinary write path (so the change log
//! and the replicas see it), in revisions of [`CHUNK`] entities. Upserts only: importing twice
//! leaves the same entities, and entities already upstream that the file lacks stay.
//!
//! The store is read on a blocking thread while the upstream commits: a chunk is handed over
//! as soon as it is read, so reading the file and writing the upstream overlap.

use std::path::Path;

use tokio::sync::mpsc;

use super::{Upstream, UpstreamError};
use crate::store::Record;
use crate::store::sqlite::SqliteStore;
use crate::store::{EntityStore, StoreError};

/// Entities per upstream revision.
pub const CHUNK: usize = 5_000;

/// Chunks read ahead of the upstream's commits.
const READ_AHEAD: usize = 2;

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
    let (chunks, mut read) = mpsc::channel::<Vec<Record>>(READ_AHEAD);
    let reader = tokio::task::spawn_blocking(move || {
        let store = SqliteStore::open(&path)?;
        let mut chunk = Vec::with_capacity(CHUNK);
        store.scan(&mut |r| {
            chunk.push(r);
            if chunk.len() < CHUNK {
                return true;
            }
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            // A closed channel means the upstream side failed: stop reading.
            chunks.blocking_send(full).is_ok()
        })?;
        if !chunk.is_empty() {
            // Ignored for the same reason: the upstream side's error is the one reported.
            let _ = chunks.blocking_send(chunk);
        }
        Ok::<_, StoreError>(())
    });
    let mut done = Imported {
        entities: 0,
        revision: None,
    };
    while let Some(chunk) = read.recv().await {
        done.revision = Some(upstream.upsert(&chunk).await?.revision);
        done.entities += chunk.len();
    }
    reader
        .await
        .map_err(|e| UpstreamError::Schema(format!("reading the store failed: {e}")))??;
    Ok(done)
}

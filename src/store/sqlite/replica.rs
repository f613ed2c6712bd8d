//! Applying upstream revisions to the SQLite file of a replica (see [`crate::store::replica`]).
//!
//! The position lives in a one-row `replica` table of the same file, written in the same
//! transaction as the entities it describes. The table is created on first use, so a store
//! that never joined a fleet is unchanged.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{SqliteStore, delete_in, upsert_in};
use crate::store::replica::{Position, Replicated};
use crate::store::{StoreError, WriteEffect};

const CREATE: &str = "CREATE TABLE IF NOT EXISTS replica (
    one      INTEGER PRIMARY KEY CHECK (one = 1),
    upstream TEXT NOT NULL,
    revision INTEGER NOT NULL
)";

impl SqliteStore {
    /// Applies one batch and records its position, atomically.
    pub(super) fn apply_replicated(&self, batch: &Replicated) -> Result<WriteEffect, StoreError> {
        self.write(|tx| {
            tx.execute_batch(CREATE)?;
            let mut effect = WriteEffect::default();
            if batch.reset {
                clear(tx)?;
                // Everything cached is replaced.
                effect.hierarchy_changed = true;
            }
            for uid in &batch.deletes {
                if let Some(e) = delete_in(tx, uid)? {
                    effect.hierarchy_changed |= e.hierarchy_changed;
                }
            }
            let written = upsert_in(tx, &batch.upserts)?;
            effect.hierarchy_changed |= written.hierarchy_changed;
            tx.prepare_cached(
                "INSERT INTO replica (one, upstream, revision) VALUES (1, ?1, ?2)
                 ON CONFLICT (one) DO UPDATE SET upstream = excluded.upstream,
                 revision = excluded.revision",
            )?
            .execute(params![batch.position.upstream, batch.position.revision])?;
            Ok(effect)
        })
    }

    /// The recorded position; `None` for a store that never was a replica.
    pub(super) fn position(&self) -> Result<Option<Position>, StoreError> {
        self.read(|conn| {
            let exists: Option<i64> = conn
                .query_row(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'replica'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_none() {
                return Ok(None);
            }
            Ok(conn
                .query_row("SELECT upstream, revision FROM replica", [], |r| {
                    Ok(Position {
                        upstream: r.get(0)?,
                        revision: r.get(1)?,
                    })
                })
                .optional()?)
        })
    }
}

/// Removes every entity, edge and counter (not reservations: in fleet mode they are upstream).
fn clear(tx: &Transaction<'_>) -> Result<(), StoreError> {
    Ok(tx.execute_batch(
        "DELETE FROM entities; DELETE FROM parents; DELETE FROM contributions; DELETE FROM totals;",
    )?)
}

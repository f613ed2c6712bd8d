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
    /// Applies one batch and records its position, atomically. Committed without waiting for
    /// the disk (`synchronous=NORMAL`): the upstream holds every batch, and a batch lost to a
    /// power cut takes its position with it, so the replica fetches it again.
    pub(super) fn apply_replicated(&self, batch: &Replicated) -> Result<WriteEffect, StoreError> {
        self.write_relaxed(|tx| {
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

/// Removes every entity, edge, reference row and counter (not reservations: in fleet mode they
/// are upstream).
fn clear(tx: &Transaction<'_>) -> Result<(), StoreError> {
    Ok(tx.execute_batch(
        "DELETE FROM entities; DELETE FROM parents; DELETE FROM refs; DELETE FROM contributions;
         DELETE FROM totals;",
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EntityStore, Record};

    fn record(id: &str, parent: Option<&str>, size: Option<i64>) -> Record {
        let parents: Vec<serde_json::Value> = parent
            .map(|p| serde_json::json!({"type": "Project", "id": p}))
            .into_iter()
            .collect();
        let mut attrs = serde_json::Map::new();
        if let Some(s) = size {
            attrs.insert("size_bytes".into(), s.into());
        }
        let body = serde_json::json!({
            "uid": {"type": if parent.is_some() { "Dataset" } else { "Project" }, "id": id},
            "attrs": attrs,
            "parents": parents,
        });
        let entity = cedar_policy::Entity::from_json_value(body, None).unwrap();
        crate::store::codec::encode(&entity).unwrap()
    }

    fn at(revision: i64) -> Position {
        Position {
            upstream: "u1".to_owned(),
            revision,
        }
    }

    #[test]
    fn batches_apply_with_their_position_and_a_reset_replaces_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("r.db")).unwrap();
        assert_eq!(store.replica_position().unwrap(), None);
        let batch = Replicated {
            position: at(3),
            reset: false,
            upserts: vec![record("p", None, None), record("d1", Some("p"), Some(10))],
            deletes: vec![],
        };
        store.replicate(&batch).unwrap();
        assert_eq!(store.replica_position().unwrap(), Some(at(3)));
        let d1 = batch.upserts[1].uid.clone();
        assert!(store.get(&d1).unwrap().is_some());
        assert_eq!(store.totals().unwrap()[0].1, (1, 10));

        // A delete and an upsert in one batch; deleting what is absent is no error.
        let gone: cedar_policy::EntityUid = r#"Dataset::"never""#.parse().unwrap();
        store
            .replicate(&Replicated {
                position: at(5),
                reset: false,
                upserts: vec![record("d2", Some("p"), Some(7))],
                deletes: vec![d1.clone(), gone],
            })
            .unwrap();
        assert!(store.get(&d1).unwrap().is_none());
        assert_eq!(store.totals().unwrap()[0].1, (1, 7));
        assert_eq!(store.replica_position().unwrap(), Some(at(5)));

        // A snapshot of another upstream replaces every entity and counter.
        let other = Position {
            upstream: "u2".to_owned(),
            revision: 1,
        };
        store
            .replicate(&Replicated {
                position: other.clone(),
                reset: true,
                upserts: vec![record("q", None, None)],
                deletes: vec![],
            })
            .unwrap();
        assert_eq!(store.count().unwrap(), 1);
        assert!(store.totals().unwrap().is_empty());
        assert_eq!(store.replica_position().unwrap(), Some(other));
    }
}

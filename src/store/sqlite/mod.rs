//! The SQLite backend: one WAL-mode database file, one writer connection, a pool of readers.
//!
//! Every commit of a write uses `synchronous=FULL`, so a write that was acknowledged survives a
//! process kill and a power loss (a replica's batches, which the upstream holds, are committed
//! with `NORMAL`: see `replica`). Identifiers are compared with SQLite's default BINARY collation:
//! exact and case-sensitive.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use cedar_policy::EntityUid;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

mod accounting;
mod bulk;
mod ledger;
pub mod refs;
mod replica;
mod rows;
mod schema;

use super::codec::{DecodeError, Record};
use super::replica::{Position, Replicated};
use super::{EntityStore, NextChunk, StorageLedger, StoreError, WriteEffect};
use crate::search::Filter;
use crate::storage::{QuotaCheck, ReserveOutcome, Usage};
use accounting::{Dirty, Key};

/// Prepared statements the writer connection keeps.
const WRITER_STATEMENTS: usize = 64;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections kept open between uses.
const MAX_IDLE_READERS: usize = 8;

/// An entity store in one SQLite file.
pub struct SqliteStore {
    path: String,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Set by [`SqliteStore::for_import`].
    importing: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let display = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: display.clone(),
                message: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let mut writer = Connection::open(path)?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                path: display,
                message: format!("cannot enable WAL (journal_mode is {mode})"),
            });
        }
        writer.execute_batch("PRAGMA synchronous=FULL;")?;
        writer.execute_batch(accounting::TEMP_TABLES)?;
        // A write runs ~20 distinct statements: keep them all prepared (the default keeps 16,
        // and re-preparing the evicted ones cost 7% of an import).
        writer.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
        plan_once(&writer)?;
        schema::migrate(&mut writer)?;
        Ok(SqliteStore {
            path: display,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            importing: false,
        })
    }

    /// Runs `f` on a pooled read-only connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(BUSY_TIMEOUT)?;
                plan_once(&c)?;
                c
            }
        };
        let result = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        // Each connection has its own page cache: keep a few, let bursts' extras close.
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Runs `f` in an immediate (write-locked) transaction on the writer connection.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// [`SqliteStore::write`] committed with `synchronous=NORMAL`: atomic and kept across a
    /// process kill, but the last commits may be lost to a power cut (the file stays
    /// consistent). Only for what can be had again from elsewhere: a replica's batches, which
    /// roll back together with the position they record and are then fetched again.
    fn write_relaxed<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        let out = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        conn.execute_batch("PRAGMA synchronous=FULL;")?;
        out
    }
}

/// Keeps each prepared statement's query plan across bindings. Without the query planner
/// stability guarantee, SQLite re-prepares a statement whenever a newly bound value might pick
/// another plan; on the writer's per-entity parent lookup that was 9% of an import's time.
fn plan_once(conn: &Connection) -> Result<(), StoreError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// The two key columns of a uid: type name and raw (unescaped) id.
fn key(uid: &EntityUid) -> Key {
    (uid.type_name().to_string(), uid.id().unescaped().to_owned())
}

/// The uid of a stored row.
fn stored_uid(ty: &str, id: &str) -> Result<EntityUid, StoreError> {
    Ok(
        crate::uid::from_parts(ty, id).map_err(|message| DecodeError {
            uid: format!("{ty}::{id:?}"),
            message,
        })?,
    )
}

fn record_from_row(ty: &str, id: &str, body: String) -> Result<Record, StoreError> {
    Ok(Record::from_stored(stored_uid(ty, id)?, body)?)
}

/// Inserts or replaces `records` in the caller's write transaction (see [`EntityStore::upsert`]).
fn upsert_in(
    tx: &rusqlite::Transaction<'_>,
    records: &[Record],
) -> Result<WriteEffect, StoreError> {
    let mut put = tx.prepare_cached(
        "INSERT INTO entities (etype, eid, body, size, quota) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (etype, eid) DO UPDATE
         SET body = excluded.body, size = excluded.size, quota = excluded.quota",
    )?;
    let mut clear = tx.prepare_cached("DELETE FROM parents WHERE ctype = ?1 AND cid = ?2")?;
    let mut dirty = Dirty::default();
    let mut moved = Vec::new();
    let keys: Vec<Key> = records.iter().map(|r| key(&r.uid)).collect();
    let parents: Vec<Vec<Key>> = records
        .iter()
        .map(|r| r.parents.iter().map(key).collect())
        .collect();
    // Gathered here, inserted many to a statement below (see `rows`).
    let mut edges: Vec<[&str; 4]> = Vec::new();
    let mut mentions: Vec<[&str; 5]> = Vec::new();
    for ((r, k), parents) in records.iter().zip(&keys).zip(&parents) {
        let was = accounting::before(tx, k)?;
        put.execute(params![k.0, k.1, r.body, r.size, r.quota])?;
        if was.existed() {
            clear.execute(params![k.0, k.1])?;
            refs::clear(tx, k)?;
        }
        edges.extend(
            parents
                .iter()
                .map(|(pty, pid)| [&*k.0, &*k.1, &**pty, &**pid]),
        );
        mentions.extend(
            (r.mentions.iter()).map(|(attr, ty, id)| [&*k.0, &*k.1, &**attr, &**ty, &**id]),
        );
        let mut parents = parents.clone();
        parents.sort();
        parents.dedup();
        if was.parents_of_stored() != parents.as_slice() {
            moved.push(k.clone());
        }
        dirty.note(k, &was, Some((r.size, parents)));
    }
    rows::insert(
        tx,
        "INSERT OR IGNORE INTO parents (ctype, cid, ptype, pid)",
        &edges,
    )?;
    refs::insert(tx, &mentions)?;
    // Asked once per written entity, after all edges are in, inside the write lock.
    let mut has_children =
        tx.prepare_cached("SELECT 1 FROM parents WHERE ptype = ?1 AND pid = ?2 LIMIT 1")?;
    let mut parents_of_something = HashSet::new();
    for k in &keys {
        if has_children.exists(params![k.0, k.1])? {
            parents_of_something.insert(k.clone());
        }
    }
    // Checked after all edges are in, so a cycle made of several entities of one write, or of
    // two concurrent writes, is caught too. Only an entity something points to can be on a
    // cycle.
    let mut cyclic = tx.prepare_cached(
        "WITH RECURSIVE up (t, i) AS (
             SELECT ptype, pid FROM parents WHERE ctype = ?1 AND cid = ?2
             UNION
             SELECT p.ptype, p.pid FROM parents p JOIN up ON p.ctype = up.t AND p.cid = up.i
         )
         SELECT 1 FROM up WHERE t = ?1 AND i = ?2 LIMIT 1",
    )?;
    for (r, k) in records.iter().zip(&keys) {
        if !r.parents.is_empty()
            && parents_of_something.contains(k)
            && cyclic.exists(params![k.0, k.1])?
        {
            return Err(StoreError::Cycle(r.uid.to_string()));
        }
    }
    let effect = WriteEffect {
        hierarchy_changed: moved.iter().any(|k| parents_of_something.contains(k)),
    };
    dirty.apply(tx, |k| Ok(parents_of_something.contains(k)))?;
    Ok(effect)
}

/// Removes one entity in the caller's write transaction; `None` when it was absent.
fn delete_in(
    tx: &rusqlite::Transaction<'_>,
    uid: &EntityUid,
) -> Result<Option<WriteEffect>, StoreError> {
    let k = key(uid);
    let was = accounting::before(tx, &k)?;
    let n = tx
        .prepare_cached("DELETE FROM entities WHERE etype = ?1 AND eid = ?2")?
        .execute(params![k.0, k.1])?;
    if n == 0 {
        return Ok(None);
    }
    tx.prepare_cached("DELETE FROM parents WHERE ctype = ?1 AND cid = ?2")?
        .execute(params![k.0, k.1])?;
    refs::write(tx, &k, None, true)?;
    let has_children = |k: &Key| -> Result<bool, StoreError> {
        Ok(tx
            .prepare_cached("SELECT 1 FROM parents WHERE ptype = ?1 AND pid = ?2 LIMIT 1")?
            .exists(params![k.0, k.1])?)
    };
    let hierarchy_changed = !was.parents_of_stored().is_empty() && has_children(&k)?;
    let mut dirty = Dirty::default();
    dirty.note(&k, &was, None);
    dirty.apply(tx, has_children)?;
    Ok(Some(WriteEffect { hierarchy_changed }))
}

impl EntityStore for SqliteStore {
    fn upsert(&self, records: &[Record]) -> Result<WriteEffect, StoreError> {
        self.write(|tx| upsert_in(tx, records))
    }

    /// Each chunk upserted in turn inside the one transaction (see [`bulk`]).
    fn upsert_stream(&self, next: &mut NextChunk<'_>) -> Result<WriteEffect, StoreError> {
        self.write_stream(next)
    }

    fn delete(&self, uid: &EntityUid) -> Result<Option<WriteEffect>, StoreError> {
        self.write(|tx| delete_in(tx, uid))
    }

    fn get(&self, uid: &EntityUid) -> Result<Option<Record>, StoreError> {
        let (ty, id) = key(uid);
        self.read(|conn| {
            let body: Option<String> = conn
                .prepare_cached("SELECT body FROM entities WHERE etype = ?1 AND eid = ?2")?
                .query_row(params![ty, id], |r| r.get(0))
                .optional()?;
            body.map(|b| record_from_row(&ty, &id, b)).transpose()
        })
    }

    fn body(&self, uid: &EntityUid) -> Result<Option<String>, StoreError> {
        let (ty, id) = key(uid);
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT body FROM entities WHERE etype = ?1 AND eid = ?2")?
                .query_row(params![ty, id], |r| r.get(0))
                .optional()?)
        })
    }

    fn count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM entities")?
                .query_row([], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// From the primary key's index, one group per type.
    fn count_by_type(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT etype, count(*) FROM entities GROUP BY etype")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn replicate(&self, batch: &Replicated) -> Result<WriteEffect, StoreError> {
        self.apply_replicated(batch)
    }

    fn replica_position(&self) -> Result<Option<Position>, StoreError> {
        self.position()
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
    }

    fn candidates(
        &self,
        ty: &str,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.read(|conn| refs::candidates(conn, ty, filter, after, limit))
    }

    fn scan(&self, visit: &mut dyn FnMut(Record) -> bool) -> Result<(), StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT etype, eid, body FROM entities")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let record = record_from_row(
                    &row.get::<_, String>(0)?,
                    &row.get::<_, String>(1)?,
                    row.get(2)?,
                )?;
                if !visit(record) {
                    break;
                }
            }
            Ok(())
        })
    }
}

impl StorageLedger for SqliteStore {
    fn usage(&self, uid: &EntityUid, now: i64) -> Result<Option<Usage>, StoreError> {
        let k = key(uid);
        self.read(|conn| ledger::usage(conn, &k, now))
    }

    fn children(&self, parent: &EntityUid, ty: &str) -> Result<Vec<EntityUid>, StoreError> {
        let k = key(parent);
        let keys = self.read(|conn| ledger::children(conn, &k, ty))?;
        keys.iter().map(|(t, i)| stored_uid(t, i)).collect()
    }

    fn check_quota(
        &self,
        project: &EntityUid,
        add: i64,
        now: i64,
    ) -> Result<Option<QuotaCheck>, StoreError> {
        let k = key(project);
        self.read(|conn| ledger::check(conn, &k, add, now))
    }

    fn reserve(
        &self,
        project: &EntityUid,
        bytes: i64,
        ttl_micros: i64,
        idempotency_key: Option<&str>,
        now: i64,
    ) -> Result<ReserveOutcome, StoreError> {
        let k = key(project);
        self.write(|tx| ledger::reserve(tx, &k, bytes, ttl_micros, idempotency_key, now))
    }

    fn release(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| ledger::release(tx, id))
    }

    fn sweep_reservations(&self, now: i64, limit: i64) -> Result<usize, StoreError> {
        self.write(|tx| ledger::sweep(tx, now, limit))
    }

    fn open_reservations(&self, now: i64) -> Result<Option<u64>, StoreError> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM reservations WHERE expires_at > ?1")?
                .query_row(params![now], |r| r.get(0))?;
            Ok(Some(u64::try_from(n).unwrap_or(0)))
        })
    }
}

/// One storage counter: `((ancestor type, ancestor id, item type), (items, bytes))`.
pub type TotalRow = ((String, String, String), (i64, i64));

impl SqliteStore {
    /// Every maintained counter, sorted.
    pub fn totals(&self) -> Result<Vec<TotalRow>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT atype, aid, itype, items, bytes FROM totals ORDER BY 1, 2, 3")?;
            let rows = stmt.query_map([], |r| {
                Ok(((r.get(0)?, r.get(1)?, r.get(2)?), (r.get(3)?, r.get(4)?)))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Rebuilds every storage counter from the items themselves.
    pub fn recount_all(&self) -> Result<(), StoreError> {
        self.write(|tx| accounting::recount_all(tx))
    }
}

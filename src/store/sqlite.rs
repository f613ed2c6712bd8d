//! The SQLite backend: one WAL-mode database file, one writer connection, a pool of readers.
//!
//! Every commit uses `synchronous=FULL`, so a write that was acknowledged survives a process
//! kill and a power loss. Identifiers are compared with SQLite's default BINARY collation:
//! exact and case-sensitive.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use cedar_policy::EntityUid;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::codec::{DecodeError, Record, uid_from_strs};
use super::{EntityStore, StoreError};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE entities (
    etype TEXT NOT NULL,
    eid   TEXT NOT NULL,
    body  TEXT NOT NULL,
    PRIMARY KEY (etype, eid)
) WITHOUT ROWID;

-- One row per parent edge. Parents need not be stored entities, as in Cedar.
CREATE TABLE parents (
    ctype TEXT NOT NULL,
    cid   TEXT NOT NULL,
    ptype TEXT NOT NULL,
    pid   TEXT NOT NULL,
    PRIMARY KEY (ctype, cid, ptype, pid)
) WITHOUT ROWID;
CREATE INDEX parents_by_parent ON parents (ptype, pid);
"#];

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An entity store in one SQLite file.
pub struct SqliteStore {
    path: String,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
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
        migrate(&mut writer)?;
        Ok(SqliteStore {
            path: display,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
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
                c
            }
        };
        let result = f(&conn);
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
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
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Open {
            path: conn.path().unwrap_or_default().to_owned(),
            message: format!(
                "database schema version {applied} is newer than this policyd ({})",
                MIGRATIONS.len()
            ),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

/// The two key columns of a uid: type name and raw (unescaped) id.
fn key(uid: &EntityUid) -> (String, &str) {
    (uid.type_name().to_string(), uid.id().unescaped())
}

fn record_from_row(ty: &str, id: &str, body: String) -> Result<Record, StoreError> {
    let uid = uid_from_strs(ty, id).map_err(|message| DecodeError {
        uid: format!("{ty}::{id:?}"),
        message,
    })?;
    Ok(Record::from_stored(uid, body)?)
}

impl EntityStore for SqliteStore {
    fn upsert(&self, records: &[Record]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut put = tx.prepare_cached(
                "INSERT INTO entities (etype, eid, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (etype, eid) DO UPDATE SET body = excluded.body",
            )?;
            let mut clear =
                tx.prepare_cached("DELETE FROM parents WHERE ctype = ?1 AND cid = ?2")?;
            let mut edge = tx.prepare_cached(
                "INSERT OR IGNORE INTO parents (ctype, cid, ptype, pid) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in records {
                let (ty, id) = key(&r.uid);
                put.execute(params![ty, id, r.body])?;
                clear.execute(params![ty, id])?;
                for p in &r.parents {
                    let (pty, pid) = key(p);
                    edge.execute(params![ty, id, pty, pid])?;
                }
            }
            // Checked after all edges are in, inside the write lock, so a cycle made of
            // several entities of one write, or of two concurrent writes, is caught too.
            let mut cyclic = tx.prepare_cached(
                "WITH RECURSIVE up (t, i) AS (
                     SELECT ptype, pid FROM parents WHERE ctype = ?1 AND cid = ?2
                     UNION
                     SELECT p.ptype, p.pid FROM parents p JOIN up ON p.ctype = up.t AND p.cid = up.i
                 )
                 SELECT 1 FROM up WHERE t = ?1 AND i = ?2 LIMIT 1",
            )?;
            for r in records.iter().filter(|r| !r.parents.is_empty()) {
                let (ty, id) = key(&r.uid);
                if cyclic.exists(params![ty, id])? {
                    return Err(StoreError::Cycle(r.uid.to_string()));
                }
            }
            Ok(())
        })
    }

    fn delete(&self, uid: &EntityUid) -> Result<bool, StoreError> {
        let (ty, id) = key(uid);
        self.write(|tx| {
            let n = tx
                .prepare_cached("DELETE FROM entities WHERE etype = ?1 AND eid = ?2")?
                .execute(params![ty, id])?;
            tx.prepare_cached("DELETE FROM parents WHERE ctype = ?1 AND cid = ?2")?
                .execute(params![ty, id])?;
            Ok(n > 0)
        })
    }

    fn get(&self, uid: &EntityUid) -> Result<Option<Record>, StoreError> {
        let (ty, id) = key(uid);
        self.read(|conn| {
            let body: Option<String> = conn
                .prepare_cached("SELECT body FROM entities WHERE etype = ?1 AND eid = ?2")?
                .query_row(params![ty, id], |r| r.get(0))
                .optional()?;
            body.map(|b| record_from_row(&ty, id, b)).transpose()
        })
    }

    fn get_with_ancestors(&self, uid: &EntityUid) -> Result<Vec<Record>, StoreError> {
        let (ty, id) = key(uid);
        self.read(|conn| {
            // UNION (not UNION ALL) makes cyclic parent data terminate.
            let mut stmt = conn.prepare_cached(
                "WITH RECURSIVE closure (t, i) AS (
                     VALUES (?1, ?2)
                     UNION
                     SELECT p.ptype, p.pid FROM parents p
                     JOIN closure c ON p.ctype = c.t AND p.cid = c.i
                 )
                 SELECT e.etype, e.eid, e.body FROM closure c
                 JOIN entities e ON e.etype = c.t AND e.eid = c.i",
            )?;
            let rows = stmt.query_map(params![ty, id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (t, i, body) = row?;
                out.push(record_from_row(&t, &i, body)?);
            }
            Ok(out)
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

    fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
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

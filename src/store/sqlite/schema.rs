//! The entity store's schema: its migrations, applied in order and counted in
//! `PRAGMA user_version`, with the back-fills that bring rows written before a migration up to
//! it.

use rusqlite::{Connection, params};

use super::{accounting, refs};
use crate::store::StoreError;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    r#"
-- Storage accounting (see accounting.rs). `size` and `quota` mirror the `size_bytes` and
-- `quota_bytes` attributes so counters and quota checks never parse entity JSON.
ALTER TABLE entities ADD COLUMN size INTEGER;
ALTER TABLE entities ADD COLUMN quota INTEGER;

-- What each item currently counts toward: one row per accounted ancestor.
CREATE TABLE contributions (
    itype TEXT NOT NULL,
    iid   TEXT NOT NULL,
    atype TEXT NOT NULL,
    aid   TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (itype, iid, atype, aid)
) WITHOUT ROWID;

-- Items and bytes per accounted ancestor and item type.
CREATE TABLE totals (
    atype TEXT NOT NULL,
    aid   TEXT NOT NULL,
    itype TEXT NOT NULL,
    items INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (atype, aid, itype)
) WITHOUT ROWID;

-- Bytes held for uploads in flight, against a project and (when it has one) its organization.
CREATE TABLE reservations (
    id         TEXT PRIMARY KEY,
    ptype      TEXT NOT NULL,
    pid        TEXT NOT NULL,
    otype      TEXT,
    oid        TEXT,
    bytes      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    idem_key   TEXT UNIQUE
);
CREATE INDEX reservations_by_project ON reservations (ptype, pid, expires_at);
CREATE INDEX reservations_by_org ON reservations (otype, oid, expires_at);
CREATE INDEX reservations_by_expiry ON reservations (expires_at);
"#,
    refs::MIGRATION,
];

/// The migration that added storage accounting; stores older than it are back-filled.
const ACCOUNTING_MIGRATION: usize = 2;

/// The migration that added the reference index; stores older than it are back-filled.
const REFS_MIGRATION: usize = 3;

/// Brings the schema up to date, back-filling what a migration added for rows written before it.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
        if i + 1 == ACCOUNTING_MIGRATION {
            backfill_accounting(&tx)?;
        }
        if i + 1 == REFS_MIGRATION {
            refs::backfill(&tx)?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

/// Fills the accounting columns and counters for entities written before they existed.
fn backfill_accounting(conn: &Connection) -> Result<(), StoreError> {
    let rows: Vec<(String, String, String)> = conn
        .prepare("SELECT etype, eid, body FROM entities")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut update =
        conn.prepare("UPDATE entities SET size = ?3, quota = ?4 WHERE etype = ?1 AND eid = ?2")?;
    for (ty, id, body) in rows {
        let record = super::record_from_row(&ty, &id, body)?;
        update.execute(params![ty, id, record.size, record.quota])?;
    }
    accounting::recount_all(conn)
}

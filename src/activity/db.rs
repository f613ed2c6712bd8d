//! The activity database: schema, batched inserts, filtered keyset pages, retention pruning.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params_from_iter, types::Value as Sql};

use super::{Entry, Kind, Record};
use crate::store::StoreError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS activity (
    id              INTEGER PRIMARY KEY,
    time            INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    principal       TEXT,
    action          TEXT,
    resource        TEXT,
    decision        TEXT,
    reasons         TEXT NOT NULL,
    policy_revision TEXT,
    organization    TEXT
);
-- Every query is per organization, newest first; the narrower filters have their own paths.
CREATE INDEX IF NOT EXISTS activity_by_org ON activity (organization, id);
CREATE INDEX IF NOT EXISTS activity_by_org_principal ON activity (organization, principal, id);
CREATE INDEX IF NOT EXISTS activity_by_org_resource ON activity (organization, resource, id);
-- Time never decreases with the id: time bounds become id bounds, and pruning walks this.
CREATE INDEX IF NOT EXISTS activity_by_time ON activity (time);
"#;

/// Opens the database for writing, creating it and its schema.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: format!("cannot create directory {}: {e}", dir.display()),
        })?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Opens the database read-only (queries).
pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

pub(super) fn last_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM activity", [], |r| {
            r.get(0)
        })?,
    )
}

/// Commits a batch in one transaction.
pub(super) fn insert(conn: &mut Connection, records: &[Record]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO activity (id, time, kind, principal, action, resource, decision, reasons, policy_revision, organization)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for r in records {
            let e = &r.entry;
            let reasons = serde_json::to_string(&e.reasons).unwrap_or_else(|_| "[]".to_owned());
            stmt.execute(rusqlite::params![
                r.id,
                r.time,
                e.kind.as_str(),
                e.principal,
                e.action,
                e.resource,
                e.decision,
                reasons,
                e.policy_revision,
                e.organization
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Organization id (required by the API).
    pub organization: String,
    /// Exact Cedar uid string of the principal.
    pub principal: Option<String>,
    /// Exact Cedar uid string of the resource.
    pub resource: Option<String>,
    /// Exact Cedar uid string of the action.
    pub action: Option<String>,
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Records at or after this time (microseconds).
    pub since: Option<i64>,
    /// Records at or before this time (microseconds).
    pub until: Option<i64>,
    /// Records with ids below this (the previous page's `next_cursor`).
    pub before_id: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// One page, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    /// The records.
    pub records: Vec<Record>,
    /// Pass as `cursor` for the next (older) page; `None` on the last page.
    pub next_cursor: Option<i64>,
}

/// Newest-first keyset page: the organization's records, merged with the policy reloads (which
/// belong to no organization and concern them all) when the filters admit them.
pub(super) fn query(conn: &Connection, f: &Filter) -> Result<Page, StoreError> {
    let mut records = select(conn, f, Scope::Organization)?;
    let reloads_admitted = f.principal.is_none()
        && f.resource.is_none()
        && f.action.is_none()
        && f.kind.is_none_or(|k| k == Kind::PolicyReload);
    if reloads_admitted {
        records.extend(select(conn, f, Scope::Reloads)?);
        records.sort_by_key(|r| std::cmp::Reverse(r.id));
        records.truncate(f.limit + 1);
    }
    let next_cursor = if records.len() > f.limit {
        records.truncate(f.limit);
        records.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Page {
        records,
        next_cursor,
    })
}

enum Scope {
    Organization,
    Reloads,
}

/// Up to `limit + 1` matching records of one scope, newest first, each through an index.
fn select(conn: &Connection, f: &Filter, scope: Scope) -> Result<Vec<Record>, StoreError> {
    let mut sql = String::from(
        "SELECT id, time, kind, principal, action, resource, decision, reasons, policy_revision, organization
         FROM activity WHERE ",
    );
    let mut args: Vec<Sql> = Vec::new();
    match scope {
        Scope::Organization => {
            sql.push_str("organization = ?");
            args.push(Sql::Text(f.organization.clone()));
        }
        Scope::Reloads => {
            sql.push_str("organization IS NULL AND kind = ?");
            args.push(Sql::Text(Kind::PolicyReload.as_str().to_owned()));
        }
    }
    let mut push = |clause: &str, v: Sql| {
        sql.push_str(clause);
        args.push(v);
    };
    for (clause, value) in [
        (" AND principal = ?", &f.principal),
        (" AND resource = ?", &f.resource),
        (" AND action = ?", &f.action),
    ] {
        if let Some(v) = value {
            push(clause, Sql::Text(v.clone()));
        }
    }
    if let Some(k) = f.kind {
        push(" AND kind = ?", Sql::Text(k.as_str().to_owned()));
    }
    if let Some(c) = f.before_id {
        push(" AND id < ?", Sql::Integer(c));
    }
    // Time bounds as id bounds (time never decreases with id), found through the time index.
    if let Some(s) = f.since {
        push(
            " AND id >= COALESCE((SELECT id FROM activity WHERE time >= ? ORDER BY time, id LIMIT 1), 9223372036854775807)",
            Sql::Integer(s),
        );
    }
    if let Some(u) = f.until {
        push(
            " AND id <= COALESCE((SELECT id FROM activity WHERE time <= ? ORDER BY time DESC, id DESC LIMIT 1), 0)",
            Sql::Integer(u),
        );
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push(Sql::Integer(f.limit as i64 + 1));

    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |r| {
        let kind: String = r.get(2)?;
        let reasons: String = r.get(7)?;
        Ok(Record {
            id: r.get(0)?,
            time: r.get(1)?,
            entry: Entry {
                kind: Kind::parse(&kind).unwrap_or(Kind::Decision),
                principal: r.get(3)?,
                action: r.get(4)?,
                resource: r.get(5)?,
                decision: r.get(6)?,
                reasons: serde_json::from_str(&reasons).unwrap_or_default(),
                policy_revision: r.get(8)?,
                organization: r.get(9)?,
            },
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Deletes up to `batch` records older than `cutoff`.
pub(super) fn prune(conn: &Connection, cutoff: i64, batch: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM activity WHERE id IN (SELECT id FROM activity WHERE time < ?1 ORDER BY time LIMIT ?2)",
        rusqlite::params![cutoff, batch],
    )?)
}

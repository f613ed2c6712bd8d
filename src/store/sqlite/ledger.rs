//! Quota sides, storage usage queries and reservations, on the tables `accounting` maintains.

use std::collections::BTreeMap;

use cedar_policy::EntityUid;
use rusqlite::{Connection, OptionalExtension, params};

use super::accounting::Key;
use crate::storage::{
    self, ORGANIZATION_TYPE, QuotaCheck, Reservation, ReserveOutcome, Side, TypeUsage, Usage,
};
use crate::store::StoreError;

fn uid(key: &Key) -> Result<EntityUid, StoreError> {
    crate::uid::from_parts(&key.0, &key.1).map_err(|message| {
        StoreError::Corrupt(crate::store::codec::DecodeError {
            uid: format!("{}::{:?}", key.0, key.1),
            message,
        })
    })
}

/// Usage of a stored entity; `None` when it is not stored.
pub(super) fn usage(conn: &Connection, key: &Key, now: i64) -> Result<Option<Usage>, StoreError> {
    let quota: Option<Option<i64>> = conn
        .prepare_cached("SELECT quota FROM entities WHERE etype = ?1 AND eid = ?2")?
        .query_row(params![key.0, key.1], |r| r.get(0))
        .optional()?;
    let Some(quota) = quota else { return Ok(None) };
    let mut by_type = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT itype, items, bytes FROM totals WHERE atype = ?1 AND aid = ?2")?;
    let rows = stmt.query_map(params![key.0, key.1], |r| {
        Ok((
            r.get::<_, String>(0)?,
            TypeUsage {
                count: r.get(1)?,
                bytes: r.get(2)?,
            },
        ))
    })?;
    for row in rows {
        let (ty, u) = row?;
        by_type.insert(ty, u);
    }
    Ok(Some(Usage {
        quota,
        reserved: reserved(conn, key, now)?,
        by_type,
    }))
}

/// Bytes held by unexpired reservations on an organization, or else on a project.
fn reserved(conn: &Connection, key: &Key, now: i64) -> Result<i64, StoreError> {
    let sql = if key.0 == ORGANIZATION_TYPE {
        "SELECT COALESCE(SUM(bytes), 0) FROM reservations WHERE otype = ?1 AND oid = ?2 AND expires_at > ?3"
    } else {
        "SELECT COALESCE(SUM(bytes), 0) FROM reservations WHERE ptype = ?1 AND pid = ?2 AND expires_at > ?3"
    };
    Ok(conn
        .prepare_cached(sql)?
        .query_row(params![key.0, key.1, now], |r| r.get(0))?)
}

/// Stored children of `parent` of type `ty`.
pub(super) fn children(conn: &Connection, parent: &Key, ty: &str) -> Result<Vec<Key>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.ctype, p.cid FROM parents p
         JOIN entities e ON e.etype = p.ctype AND e.eid = p.cid
         WHERE p.ptype = ?1 AND p.pid = ?2 AND p.ctype = ?3",
    )?;
    let rows = stmt.query_map(params![parent.0, parent.1, ty], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The organization a project belongs to: its first `Organization` parent.
fn organization_of(conn: &Connection, project: &Key) -> Result<Option<Key>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT ptype, pid FROM parents WHERE ctype = ?1 AND cid = ?2 AND ptype = ?3
             ORDER BY pid LIMIT 1",
        )?
        .query_row(params![project.0, project.1, ORGANIZATION_TYPE], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

fn side(conn: &Connection, key: &Key, now: i64) -> Result<Option<Side>, StoreError> {
    Ok(match usage(conn, key, now)? {
        Some(u) => Some(Side {
            entity: uid(key)?,
            used: u.used(),
            reserved: u.reserved,
            quota: u.quota,
        }),
        None => None,
    })
}

/// Checks whether `add` bytes fit a project and its organization; `None` for an unknown project.
pub(super) fn check(
    conn: &Connection,
    project: &Key,
    add: i64,
    now: i64,
) -> Result<Option<QuotaCheck>, StoreError> {
    let Some(project_side) = side(conn, project, now)? else {
        return Ok(None);
    };
    let org_side = match organization_of(conn, project)? {
        Some(org) => side(conn, &org, now)?,
        None => None,
    };
    Ok(Some(storage::check(project_side, org_side, add)))
}

/// Checks and reserves in the caller's write transaction, so concurrent reservations are
/// serialized and can never together exceed a quota.
pub(super) fn reserve(
    conn: &Connection,
    project: &Key,
    bytes: i64,
    ttl_micros: i64,
    key: Option<&str>,
    now: i64,
) -> Result<ReserveOutcome, StoreError> {
    if let Some(k) = key {
        let existing = conn
            .prepare_cached(
                "SELECT id, ptype, pid, bytes, expires_at FROM reservations WHERE idem_key = ?1",
            )?
            .query_row(params![k], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (r.get(1)?, r.get(2)?),
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()?;
        if let Some((id, p, b, expires_at)) = existing {
            let found = Reservation {
                id,
                project: uid(&p)?,
                bytes: b,
                expires_at,
                idempotency_key: Some(k.to_owned()),
            };
            if let Some(answer) = found.asked_again(&uid(project)?, bytes, now) {
                return Ok(answer);
            }
            // An expired reservation no longer holds its key.
            conn.prepare_cached("DELETE FROM reservations WHERE id = ?1")?
                .execute(params![found.id])?;
        }
    }
    let Some(checked) = check(conn, project, bytes, now)? else {
        return Ok(ReserveOutcome::UnknownProject);
    };
    if !checked.allowed {
        return Ok(ReserveOutcome::Refused(checked));
    }
    let org = organization_of(conn, project)?;
    let expires_at = now.saturating_add(ttl_micros);
    let id: String = conn
        .prepare_cached(
            "INSERT INTO reservations (id, ptype, pid, otype, oid, bytes, expires_at, idem_key)
             VALUES (lower(hex(randomblob(16))), ?1, ?2, ?3, ?4, ?5, ?6, ?7)
             RETURNING id",
        )?
        .query_row(
            params![
                project.0,
                project.1,
                org.as_ref().map(|o| &o.0),
                org.as_ref().map(|o| &o.1),
                bytes,
                expires_at,
                key
            ],
            |r| r.get(0),
        )?;
    Ok(ReserveOutcome::Created(Reservation {
        id,
        project: uid(project)?,
        bytes,
        expires_at,
        idempotency_key: key.map(str::to_owned),
    }))
}

/// Releases a reservation; `false` when there was none with that id.
pub(super) fn release(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM reservations WHERE id = ?1")?
        .execute(params![id])?
        > 0)
}

/// Deletes up to `limit` expired reservations; returns how many.
pub(super) fn sweep(conn: &Connection, now: i64, limit: i64) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM reservations WHERE rowid IN
             (SELECT rowid FROM reservations WHERE expires_at <= ?1 LIMIT ?2)",
        )?
        .execute(params![now, limit])?)
}

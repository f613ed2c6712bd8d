//! The reference index and the candidate queries of permission search.
//!
//! `refs` holds one row per (entity, top-level attribute, entity that attribute's value
//! mentions), kept in the same transaction as the entity. With the `parents` edges it answers
//! a search's [`Filter`] as SQL: a superset of the stored entities of one type, in id order.

use rusqlite::{Connection, Transaction, params_from_iter};
use serde_json::Value;

use super::Key;
use crate::search::Filter;
use crate::store::StoreError;
use crate::store::codec::{Mention, mentions};

/// The migration adding the reference index.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE refs (
    stype TEXT NOT NULL,
    sid   TEXT NOT NULL,
    attr  TEXT NOT NULL,
    ttype TEXT NOT NULL,
    tid   TEXT NOT NULL,
    PRIMARY KEY (stype, sid, attr, ttype, tid)
) WITHOUT ROWID;
CREATE INDEX refs_by_target ON refs (ttype, tid, attr, stype, sid);
"#;

/// Replaces the reference rows of one entity with `mentions` (`None`: it was deleted);
/// `existed`: whether it was stored before (a new entity has no rows to clear).
pub(super) fn write(
    conn: &Connection,
    key: &Key,
    mentions: Option<&[Mention]>,
    existed: bool,
) -> Result<(), StoreError> {
    if existed {
        clear(conn, key)?;
    }
    let rows: Vec<[&str; 5]> = mentions
        .unwrap_or_default()
        .iter()
        .map(|(attr, ty, id)| [&*key.0, &*key.1, &**attr, &**ty, &**id])
        .collect();
    insert(conn, &rows)
}

/// Deletes the reference rows of one entity.
pub(super) fn clear(conn: &Connection, key: &Key) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM refs WHERE stype = ?1 AND sid = ?2")?
        .execute([&key.0, &key.1])?;
    Ok(())
}

/// Inserts reference rows `(stype, sid, attr, ttype, tid)`.
pub(super) fn insert(conn: &Connection, rows: &[[&str; 5]]) -> Result<(), StoreError> {
    super::rows::insert(
        conn,
        "INSERT OR IGNORE INTO refs (stype, sid, attr, ttype, tid)",
        rows,
    )
}

/// Fills the index for entities written before it existed.
pub(super) fn backfill(tx: &Transaction<'_>) -> Result<(), StoreError> {
    let rows: Vec<(String, String, String)> = tx
        .prepare("SELECT etype, eid, body FROM entities")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (ty, id, body) in rows {
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        write(tx, &(ty, id), Some(&mentions(&json)), false)?;
    }
    Ok(())
}

/// Up to `limit` ids of stored entities of type `ty` that `filter` may hold, sorted, after
/// `after`.
pub(super) fn candidates(
    conn: &Connection,
    ty: &str,
    filter: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut args: Vec<String> = Vec::new();
    let sql = query(ty, filter, after, &mut args);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut values: Vec<rusqlite::types::Value> =
        args.into_iter().map(rusqlite::types::Value::from).collect();
    values.push(limit.into());
    let rows = stmt.query_map(params_from_iter(values), |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The candidate query's SQL, its arguments pushed to `args` (the limit comes last).
pub fn query(ty: &str, filter: &Filter, after: Option<&str>, args: &mut Vec<String>) -> String {
    let after_sql = match after {
        Some(a) => {
            args.push(ty.to_owned());
            args.push(a.to_owned());
            "e.etype = ? AND e.eid > ?"
        }
        None => {
            args.push(ty.to_owned());
            "e.etype = ?"
        }
    };
    match filter {
        Filter::All => {
            format!("SELECT e.eid FROM entities e WHERE {after_sql} ORDER BY e.eid LIMIT ?")
        }
        other => {
            let mut n = 0;
            let mut set_args = Vec::new();
            let set = set_sql(other, &mut set_args, &mut n);
            // The filter's set drives the lookup (CROSS JOIN fixes SQLite's join order): it is
            // small when the filter narrows, while the tables are as large as the store.
            let sql = format!(
                "SELECT DISTINCT e.eid FROM ({set}) s CROSS JOIN entities e ON e.etype = s.t AND e.eid = s.i \
                 WHERE {after_sql} ORDER BY e.eid LIMIT ?"
            );
            let tail = std::mem::take(args);
            args.extend(set_args);
            args.extend(tail);
            sql
        }
    }
}

/// A `SELECT t, i` of the (type, id) pairs in `filter`. `All` only appears alone (see
/// [`Filter::simplify`]); met here, it is every stored entity.
fn set_sql(filter: &Filter, args: &mut Vec<String>, n: &mut usize) -> String {
    *n += 1;
    let k = *n;
    match filter {
        Filter::All => "SELECT etype AS t, eid AS i FROM entities".to_owned(),
        Filter::Nothing => "SELECT NULL AS t, NULL AS i WHERE 0".to_owned(),
        Filter::Is(uid) => {
            args.push(uid.type_name().to_string());
            args.push(uid.id().unescaped().to_owned());
            "SELECT ? AS t, ? AS i".to_owned()
        }
        Filter::InAny(uids) => {
            let mut seeds = Vec::new();
            for uid in uids {
                args.push(uid.type_name().to_string());
                args.push(uid.id().unescaped().to_owned());
                seeds.push("(?, ?)");
            }
            format!(
                "WITH RECURSIVE d{k} (t, i) AS (VALUES {} UNION \
                 SELECT c.ctype, c.cid FROM d{k} CROSS JOIN parents c ON c.ptype = d{k}.t AND c.pid = d{k}.i) \
                 SELECT t, i FROM d{k}",
                seeds.join(", ")
            )
        }
        Filter::AncestorOf(uid) => {
            args.push(uid.type_name().to_string());
            args.push(uid.id().unescaped().to_owned());
            format!(
                "WITH RECURSIVE u{k} (t, i) AS (VALUES (?, ?) UNION \
                 SELECT p.ptype, p.pid FROM u{k} CROSS JOIN parents p ON p.ctype = u{k}.t AND p.cid = u{k}.i) \
                 SELECT t, i FROM u{k}"
            )
        }
        // From the mentioned entities to those mentioning them, through the index on targets.
        Filter::Refers { attr, to } => {
            let inner = set_sql(to, args, n);
            args.push(attr.clone());
            format!(
                "SELECT r{k}.stype AS t, r{k}.sid AS i FROM ({inner}) x{k} \
                 CROSS JOIN refs r{k} ON r{k}.ttype = x{k}.t AND r{k}.tid = x{k}.i AND r{k}.attr = ?"
            )
        }
        Filter::And(parts) | Filter::Or(parts) => {
            let op = if matches!(filter, Filter::And(_)) {
                " INTERSECT "
            } else {
                " UNION "
            };
            let selects: Vec<String> = parts
                .iter()
                .map(|p| format!("SELECT t, i FROM ({})", set_sql(p, args, n)))
                .collect();
            selects.join(op)
        }
    }
}

//! Storage counters, maintained inside the transaction of every write so the totals are exact
//! at every commit and a query never scans items.
//!
//! Each item (an entity with a size) records its contributions: one row per accounted ancestor
//! it currently counts toward. Re-counting an item subtracts its recorded contributions and adds
//! the current ones, so any change (a size, a move, a project moving to another organization, a
//! delete) is handled by re-counting exactly the items whose size or ancestors it changed.

use std::collections::BTreeSet;

use rusqlite::{Connection, params};

use crate::storage::ACCOUNT_TYPES;
use crate::store::StoreError;

/// A key of the `entities` table: type name and raw id.
pub(super) type Key = (String, String);

/// Parent edges and size of an entity as stored before a write.
pub(super) struct Before {
    existed: bool,
    size: Option<i64>,
    parents: Vec<Key>,
}

impl Before {
    /// The parent edges the entity had, none when it was not stored.
    pub(super) fn parents_of_stored(&self) -> &[Key] {
        if self.existed { &self.parents } else { &[] }
    }
}

/// Reads what a write is about to replace.
pub(super) fn before(conn: &Connection, key: &Key) -> Result<Before, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT size FROM entities WHERE etype = ?1 AND eid = ?2")?;
    let mut rows = stmt.query(params![key.0, key.1])?;
    let (existed, size) = match rows.next()? {
        Some(row) => (true, row.get::<_, Option<i64>>(0)?),
        None => (false, None),
    };
    Ok(Before {
        existed,
        size,
        parents: parents(conn, key)?,
    })
}

/// The stored parent edges of an entity, sorted.
pub(super) fn parents(conn: &Connection, key: &Key) -> Result<Vec<Key>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT ptype, pid FROM parents WHERE ctype = ?1 AND cid = ?2 ORDER BY ptype, pid",
    )?;
    let rows = stmt.query_map(params![key.0, key.1], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Items whose counters a write must re-count, collected over a whole transaction.
#[derive(Default)]
pub(super) struct Dirty {
    /// Entities whose descendants' ancestor sets changed (new, moved or deleted).
    subtrees: BTreeSet<Key>,
    /// Items whose size alone changed.
    items: BTreeSet<Key>,
}

impl Dirty {
    /// Notes a write of `key`, now stored with `size` and `parents` (`None` when deleted).
    pub(super) fn note(&mut self, key: &Key, was: &Before, now: Option<(Option<i64>, &[Key])>) {
        match now {
            Some((size, parents)) if was.existed && was.parents == parents => {
                if was.size != size {
                    self.items.insert(key.clone());
                }
            }
            _ => {
                self.subtrees.insert(key.clone());
            }
        }
    }

    /// Re-counts every item the noted writes affected.
    pub(super) fn apply(self, conn: &Connection) -> Result<(), StoreError> {
        let mut items = self.items;
        let mut descendants = conn.prepare_cached(
            "WITH RECURSIVE down (t, i) AS (
                 VALUES (?1, ?2)
                 UNION
                 SELECT p.ctype, p.cid FROM parents p JOIN down ON p.ptype = down.t AND p.pid = down.i
             )
             SELECT t, i FROM down
             WHERE EXISTS (SELECT 1 FROM entities e WHERE e.etype = t AND e.eid = i AND e.size IS NOT NULL)
                OR EXISTS (SELECT 1 FROM contributions c WHERE c.itype = t AND c.iid = i)",
        )?;
        let mut has_children =
            conn.prepare_cached("SELECT 1 FROM parents WHERE ptype = ?1 AND pid = ?2 LIMIT 1")?;
        for root in &self.subtrees {
            // Most writes are leaves (items, users): then the root is the only item to re-count.
            if !has_children.exists(params![root.0, root.1])? {
                items.insert(root.clone());
                continue;
            }
            let rows =
                descendants.query_map(params![root.0, root.1], |r| Ok((r.get(0)?, r.get(1)?)))?;
            for row in rows {
                items.insert(row?);
            }
        }
        for item in &items {
            recount(conn, item)?;
        }
        Ok(())
    }
}

/// Replaces an item's contributions with what its current size and ancestors give.
fn recount(conn: &Connection, item: &Key) -> Result<(), StoreError> {
    let mut old = conn.prepare_cached(
        "SELECT atype, aid, bytes FROM contributions WHERE itype = ?1 AND iid = ?2",
    )?;
    let previous: Vec<(String, String, i64)> = old
        .query_map(params![item.0, item.1], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    for (atype, aid, bytes) in &previous {
        add_total(conn, atype, aid, &item.0, -1, -bytes)?;
    }
    if !previous.is_empty() {
        conn.prepare_cached("DELETE FROM contributions WHERE itype = ?1 AND iid = ?2")?
            .execute(params![item.0, item.1])?;
    }

    let size: Option<i64> = conn
        .prepare_cached("SELECT size FROM entities WHERE etype = ?1 AND eid = ?2")?
        .query_map(params![item.0, item.1], |r| r.get(0))?
        .next()
        .transpose()?
        .flatten();
    let Some(size) = size else { return Ok(()) };
    let mut ancestors = conn.prepare_cached(&ancestors_sql())?;
    let accounted: Vec<Key> = ancestors
        .query_map(params![item.0, item.1], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO contributions (itype, iid, atype, aid, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (atype, aid) in &accounted {
        insert.execute(params![item.0, item.1, atype, aid, size])?;
        add_total(conn, atype, aid, &item.0, 1, size)?;
    }
    Ok(())
}

/// Accounted ancestors (of [`ACCOUNT_TYPES`]) of an entity, through stored parent edges.
fn ancestors_sql() -> String {
    let types: Vec<String> = ACCOUNT_TYPES.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "WITH RECURSIVE up (t, i) AS (
             SELECT ptype, pid FROM parents WHERE ctype = ?1 AND cid = ?2
             UNION
             SELECT p.ptype, p.pid FROM parents p JOIN up ON p.ctype = up.t AND p.cid = up.i
         )
         SELECT t, i FROM up WHERE t IN ({})",
        types.join(", ")
    )
}

fn add_total(
    conn: &Connection,
    atype: &str,
    aid: &str,
    itype: &str,
    items: i64,
    bytes: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO totals (atype, aid, itype, items, bytes) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (atype, aid, itype) DO UPDATE
         SET items = items + excluded.items, bytes = bytes + excluded.bytes",
    )?
    .execute(params![atype, aid, itype, items, bytes])?;
    // Only a subtraction can empty a counter.
    if items < 0 {
        conn.prepare_cached(
            "DELETE FROM totals WHERE atype = ?1 AND aid = ?2 AND itype = ?3 AND items = 0",
        )?
        .execute(params![atype, aid, itype])?;
    }
    Ok(())
}

/// Rebuilds every counter from the items themselves (after a migration, or to verify).
pub(super) fn recount_all(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("DELETE FROM contributions; DELETE FROM totals;")?;
    let items: Vec<Key> = conn
        .prepare("SELECT etype, eid FROM entities WHERE size IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for item in &items {
        recount(conn, item)?;
    }
    Ok(())
}

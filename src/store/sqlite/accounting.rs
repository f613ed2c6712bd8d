//! Storage counters, maintained inside the transaction of every write so the totals are exact
//! at every commit and a query never scans items.
//!
//! Each item (an entity with a size) records its contributions: one row per accounted ancestor
//! it currently counts toward. Re-counting an item subtracts its recorded contributions and adds
//! the current ones, so any change (a size, a move, a project moving to another organization, a
//! delete) is handled by re-counting exactly the items whose size or ancestors it changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::types::{ToSqlOutput, ValueRef};
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

/// Reads what a write is about to replace, in one query (an entity's parent edges exist only
/// while it is stored).
pub(super) fn before(conn: &Connection, key: &Key) -> Result<Before, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.size, p.ptype, p.pid FROM entities e
         LEFT JOIN parents p ON p.ctype = e.etype AND p.cid = e.eid
         WHERE e.etype = ?1 AND e.eid = ?2 ORDER BY p.ptype, p.pid",
    )?;
    let mut rows = stmt.query(params![key.0, key.1])?;
    let mut was = Before {
        existed: false,
        size: None,
        parents: Vec::new(),
    };
    while let Some(row) = rows.next()? {
        was.existed = true;
        was.size = row.get(0)?;
        if let (Some(ty), Some(id)) = (row.get(1)?, row.get(2)?) {
            was.parents.push((ty, id));
        }
    }
    Ok(was)
}

impl Before {
    /// Whether the entity was stored.
    pub(super) fn existed(&self) -> bool {
        self.existed
    }
}

/// Items whose counters a write must re-count, collected over a whole transaction.
#[derive(Default)]
pub(super) struct Dirty {
    /// Entities whose descendants' ancestor sets changed (new, moved or deleted).
    subtrees: BTreeSet<Key>,
    /// Items whose size alone changed.
    items: BTreeSet<Key>,
    /// What the noted writes stored (see [`Stored`]), for the re-count to use instead of
    /// reading it back from the tables.
    stored: Stored,
}

/// Size and sorted parent edges of entities a write stored; `None` for an entity written
/// more than once, whose last state the re-count reads back from the tables.
type Stored = HashMap<Key, Option<(Option<i64>, Vec<Key>)>>;

impl Dirty {
    /// Notes a write of `key`, now stored with `size` and `parents`, sorted (`None` when
    /// deleted).
    pub(super) fn note(&mut self, key: &Key, was: &Before, now: Option<(Option<i64>, Vec<Key>)>) {
        let (size, parents) = match now {
            Some((size, parents)) if was.existed && was.parents == parents => {
                if was.size != size {
                    self.items.insert(key.clone());
                }
                (size, parents)
            }
            now => {
                self.subtrees.insert(key.clone());
                now.unwrap_or_default()
            }
        };
        self.stored
            .entry(key.clone())
            .and_modify(|s| *s = None)
            .or_insert(Some((size, parents)));
    }

    /// Re-counts every item the noted writes affected, set-wise: a handful of statements per
    /// write, whatever its size (an import of 100,000 items re-counts them in one pass).
    ///
    /// `has_children` says whether an entity is some stored entity's parent.
    pub(super) fn apply(
        self,
        conn: &Connection,
        mut has_children: impl FnMut(&Key) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        conn.prepare_cached("DELETE FROM temp.recount")?
            .execute([])?;
        conn.prepare_cached("DELETE FROM temp.subtrees")?
            .execute([])?;
        // Gathered, then inserted many to a statement (see `rows`).
        let mut marks: Vec<[&str; 2]> = Vec::new();
        let mut walks: Vec<[&str; 2]> = Vec::new();
        for root in &self.subtrees {
            // Most writes are leaves (items, users): then the root is the only item to re-count.
            if has_children(root)? {
                walks.push([&root.0, &root.1]);
            } else {
                marks.push([&root.0, &root.1]);
            }
        }
        marks.extend(self.items.iter().map(|item| [&*item.0, &*item.1]));
        super::rows::insert(conn, "INSERT OR IGNORE INTO temp.recount (t, i)", &marks)?;
        super::rows::insert(conn, "INSERT OR IGNORE INTO temp.subtrees (t, i)", &walks)?;
        let subtrees = walks.len();
        if subtrees > 0 {
            // Every subtree in one walk: an entity under several written roots is visited once.
            conn.prepare_cached(
                "INSERT OR IGNORE INTO temp.recount (t, i)
                 WITH RECURSIVE down (t, i) AS (
                     SELECT t, i FROM temp.subtrees
                     UNION
                     SELECT p.ctype, p.cid FROM down CROSS JOIN parents p ON p.ptype = down.t AND p.pid = down.i
                 )
                 SELECT t, i FROM down
                 WHERE EXISTS (SELECT 1 FROM entities e WHERE e.etype = t AND e.eid = i AND e.size IS NOT NULL)
                    OR EXISTS (SELECT 1 FROM contributions c WHERE c.itype = t AND c.iid = i)",
            )?
            .execute([])?;
        }
        recount_marked(conn, &self.stored)
    }
}

/// Replaces the contributions of every item in `temp.recount` with what its current size and
/// ancestors give, and moves the totals by the difference; `stored` holds the size and parents
/// of the items a write just stored.
fn recount_marked(conn: &Connection, stored: &Stored) -> Result<(), StoreError> {
    // New items (most of a large write) have no contributions to take out.
    let had_some: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM temp.recount r
             CROSS JOIN contributions c ON c.itype = r.t AND c.iid = r.i)",
        )?
        .query_row([], |r| r.get(0))?;
    if had_some {
        // Take the old contributions out of the totals, remembering which counters they
        // touched.
        conn.prepare_cached("DELETE FROM temp.touched")?
            .execute([])?;
        conn.prepare_cached(
            "INSERT OR IGNORE INTO temp.touched (atype, aid, itype)
             SELECT c.atype, c.aid, c.itype FROM temp.recount r
             CROSS JOIN contributions c ON c.itype = r.t AND c.iid = r.i",
        )?
        .execute([])?;
        conn.prepare_cached(
            "INSERT INTO totals (atype, aid, itype, items, bytes)
             SELECT c.atype, c.aid, c.itype, -COUNT(*), -SUM(c.bytes) FROM temp.recount r
             CROSS JOIN contributions c ON c.itype = r.t AND c.iid = r.i
             WHERE true GROUP BY c.atype, c.aid, c.itype
             ON CONFLICT (atype, aid, itype) DO UPDATE
             SET items = items + excluded.items, bytes = bytes + excluded.bytes",
        )?
        .execute([])?;
        conn.prepare_cached(
            "DELETE FROM contributions WHERE (itype, iid) IN (SELECT t, i FROM temp.recount)",
        )?
        .execute([])?;
    }
    // The current contributions: each sized item toward each accounted ancestor, once; they
    // are now all the recounted items' contributions, so they are what the totals gain.
    let mut add = conn.prepare_cached(
        "INSERT INTO totals (atype, aid, itype, items, bytes) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (atype, aid, itype) DO UPDATE
         SET items = items + excluded.items, bytes = bytes + excluded.bytes",
    )?;
    for ((atype, aid, itype), (items, bytes)) in insert_contributions(conn, stored)? {
        add.execute(params![atype, aid, itype, items, bytes])?;
    }
    if had_some {
        // Only a counter that lost contributions can have emptied.
        conn.prepare_cached(
            "DELETE FROM totals WHERE items = 0
             AND (atype, aid, itype) IN (SELECT atype, aid, itype FROM temp.touched)",
        )?
        .execute([])?;
    }
    Ok(())
}

/// What inserted contributions add to one counter `(atype, aid, itype)`: items and bytes.
type Gains = BTreeMap<(String, String, String), (i64, i64)>;

/// Inserts the contributions of the items in `temp.recount`: toward each of their accounted
/// ancestors (of [`ACCOUNT_TYPES`]), through stored parent edges, once each.
///
/// Items share their parents (the datasets of a project), so the accounted ancestors are
/// found once per distinct parent and remembered for the rest of the re-count, not walked
/// again per item (which cost most of a large import's writes). Returns what they add to each
/// counter.
fn insert_contributions(conn: &Connection, stored: &Stored) -> Result<Gains, StoreError> {
    let edges = sized_edges(conn, stored)?;
    let mut accounted: HashMap<Key, Vec<Key>> = HashMap::new();
    let mut rows: Vec<(&Key, &Key, i64)> = Vec::new();
    for (_, _, parent) in &edges {
        if !accounted.contains_key(parent) {
            let found = accounted_at_or_above(conn, parent)?;
            accounted.insert(parent.clone(), found);
        }
    }
    // One item's rows are consecutive: its ancestors through every parent, each once.
    let mut start = 0;
    for (n, (item, size, parent)) in edges.iter().enumerate() {
        for ancestor in accounted.get(parent).into_iter().flatten() {
            if !rows[start..].iter().any(|(_, a, _)| *a == ancestor) {
                rows.push((item, ancestor, *size));
            }
        }
        if edges.get(n + 1).is_none_or(|(next, _, _)| next != item) {
            start = rows.len();
        }
    }
    let mut gains = Gains::new();
    for (item, ancestor, size) in &rows {
        let key = (ancestor.0.clone(), ancestor.1.clone(), item.0.clone());
        let gain = gains.entry(key).or_default();
        gain.0 += 1;
        gain.1 = (gain.1.checked_add(*size)).ok_or(StoreError::Unsupported(
            "count more than 2^63 - 1 bytes in one total",
        ))?;
    }
    let rows: Vec<[ToSqlOutput<'_>; 5]> = rows
        .iter()
        .map(|(item, ancestor, size)| {
            fn text(s: &str) -> ToSqlOutput<'_> {
                ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
            }
            let (item, ancestor) = (*item, *ancestor);
            [
                text(&item.0),
                text(&item.1),
                text(&ancestor.0),
                text(&ancestor.1),
                ToSqlOutput::from(*size),
            ]
        })
        .collect();
    super::rows::insert(
        conn,
        "INSERT INTO contributions (itype, iid, atype, aid, bytes)",
        &rows,
    )?;
    Ok(gains)
}

/// Each sized item of `temp.recount` with each of its direct parents, in item order: from
/// `stored` for the items a write just stored (most of a large write), read back from the
/// tables for the others (the descendants a moved subtree's walk added).
fn sized_edges(conn: &Connection, stored: &Stored) -> Result<Vec<(Key, i64, Key)>, StoreError> {
    if stored.is_empty() {
        // Nothing in memory (a full re-count): one join over them all.
        return Ok(conn
            .prepare_cached(
                "SELECT r.t, r.i, e.size, p.ptype, p.pid FROM temp.recount r
                 CROSS JOIN entities e ON e.etype = r.t AND e.eid = r.i
                 CROSS JOIN parents p ON p.ctype = r.t AND p.cid = r.i
                 WHERE e.size IS NOT NULL ORDER BY r.t, r.i",
            )?
            .query_map([], |r| {
                Ok(((r.get(0)?, r.get(1)?), r.get(2)?, (r.get(3)?, r.get(4)?)))
            })?
            .collect::<Result<_, _>>()?);
    }
    let items: Vec<Key> = conn
        .prepare_cached("SELECT t, i FROM temp.recount ORDER BY t, i")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut read_back = conn.prepare_cached(
        "SELECT e.size, p.ptype, p.pid FROM entities e
         CROSS JOIN parents p ON p.ctype = e.etype AND p.cid = e.eid
         WHERE e.etype = ?1 AND e.eid = ?2 AND e.size IS NOT NULL",
    )?;
    let mut edges = Vec::new();
    for item in items {
        match stored.get(&item) {
            Some(Some((size, parents))) => {
                if let Some(size) = size {
                    edges.extend(parents.iter().map(|p| (item.clone(), *size, p.clone())));
                }
            }
            _ => {
                let rows = read_back.query_map(params![item.0, item.1], |r| {
                    Ok((r.get::<_, i64>(0)?, (r.get(1)?, r.get(2)?)))
                })?;
                for row in rows {
                    let (size, parent) = row?;
                    edges.push((item.clone(), size, parent));
                }
            }
        }
    }
    Ok(edges)
}

/// `key` and its stored ancestors (through parent edges), those of an accounted type.
fn accounted_at_or_above(conn: &Connection, key: &Key) -> Result<Vec<Key>, StoreError> {
    let types: Vec<String> = ACCOUNT_TYPES.iter().map(|t| format!("'{t}'")).collect();
    let sql = format!(
        "WITH RECURSIVE up (t, i) AS (
             SELECT ?1, ?2
             UNION
             SELECT p.ptype, p.pid FROM up CROSS JOIN parents p ON p.ctype = up.t AND p.cid = up.i
         )
         SELECT t, i FROM up WHERE t IN ({})",
        types.join(", ")
    );
    let found = conn
        .prepare_cached(&sql)?
        .query_map(params![key.0, key.1], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(found)
}

/// The temporary tables a write's re-count works in; created once per writer connection.
pub(super) const TEMP_TABLES: &str = "
CREATE TEMP TABLE IF NOT EXISTS recount (t TEXT NOT NULL, i TEXT NOT NULL, PRIMARY KEY (t, i)) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS subtrees (t TEXT NOT NULL, i TEXT NOT NULL, PRIMARY KEY (t, i)) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS touched (
    atype TEXT NOT NULL, aid TEXT NOT NULL, itype TEXT NOT NULL, PRIMARY KEY (atype, aid, itype)
) WITHOUT ROWID;
";

/// Rebuilds every counter from the items themselves (after a migration, or to verify).
pub(super) fn recount_all(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "DELETE FROM contributions; DELETE FROM totals; DELETE FROM temp.recount;
         INSERT INTO temp.recount (t, i) SELECT etype, eid FROM entities WHERE size IS NOT NULL;",
    )?;
    recount_marked(conn, &Stored::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EntityStore;
    use crate::store::sqlite::SqliteStore;

    fn key(t: &str, i: &str) -> Key {
        (t.to_owned(), i.to_owned())
    }

    /// The re-count takes what a write just stored from memory, and reads the rest back.
    #[test]
    fn sized_edges_come_from_memory_for_written_items_and_from_the_tables_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let item = serde_json::json!({"uid": {"type": "Dataset", "id": "d"},
            "attrs": {"size_bytes": 5}, "parents": [{"type": "Project", "id": "p"}]});
        let entity = cedar_policy::Entity::from_json_value(item, None).unwrap();
        store
            .upsert(&[crate::store::codec::encode(&entity).unwrap()])
            .unwrap();
        let conn = store.writer.lock().unwrap();
        conn.execute_batch(
            "DELETE FROM temp.recount; INSERT INTO temp.recount VALUES ('Dataset', 'd')",
        )
        .unwrap();
        let (d, p, q) = (
            key("Dataset", "d"),
            key("Project", "p"),
            key("Project", "q"),
        );
        // Noted by a write (a state the tables do not hold, to tell the sources apart).
        let noted = Stored::from([(d.clone(), Some((Some(7), vec![q.clone()])))]);
        assert_eq!(sized_edges(&conn, &noted).unwrap(), vec![(d.clone(), 7, q)]);
        // Noted twice, or not by this write: the tables' state.
        for other in [
            Stored::from([(d.clone(), None)]),
            Stored::from([(key("User", "u"), Some((None, Vec::new())))]),
            Stored::new(),
        ] {
            assert_eq!(
                sized_edges(&conn, &other).unwrap(),
                vec![(d.clone(), 5, p.clone())]
            );
        }
    }
}

//! The names dictionary: every uid, organization, revision and reason list the log mentions is
//! stored once in `names` and referred to by its integer id, so a record is a row of small
//! integers. A name is looked up through a 32-bit hash of its text (index `names_by_hash`),
//! the text compared on the rows that share it: over a large store nearly every resource is
//! a name, and an index of the texts themselves would store each one twice. The writer keeps
//! recently used names in memory (bounded) so interning costs a hash lookup, not a query; a
//! reader that keeps going (the fleet's shipper) keeps the texts of ids it resolved, which
//! never change once committed (names are never deleted).

use cedar_policy::EntityUid;
use quick_cache::unsync::Cache;
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;

/// Names remembered in memory, per kind of key: the principals, organizations and hot
/// resources a sidecar keeps deciding on (a miss is an index lookup in the writer's
/// transaction, per record). A uid takes about 150 bytes here: over a million-entity store,
/// where uniform access hits a cache of any affordable size rarely, 131,072 of them held about
/// 20 MiB that the entity cache uses better.
pub(super) const REMEMBERED: usize = 32_768;

/// The writer's view of the dictionary.
pub(super) struct Names {
    by_text: Cache<String, i64>,
    by_uid: Cache<EntityUid, i64>,
}

impl Names {
    pub(super) fn new() -> Names {
        Names {
            by_text: Cache::new(REMEMBERED),
            by_uid: Cache::new(REMEMBERED),
        }
    }

    /// The id of `text`, inserted into `names` (inside the caller's transaction) when new.
    pub(super) fn text(&mut self, conn: &Connection, text: &str) -> Result<i64, StoreError> {
        if let Some(id) = self.by_text.get(text) {
            return Ok(*id);
        }
        let id = lookup_or_insert(conn, text)?;
        self.by_text.insert(text.to_owned(), id);
        Ok(id)
    }

    /// The id of a uid's Cedar text (`User::"alice"`).
    pub(super) fn uid(&mut self, conn: &Connection, uid: &EntityUid) -> Result<i64, StoreError> {
        if let Some(id) = self.by_uid.get(uid) {
            return Ok(*id);
        }
        let id = lookup_or_insert(conn, &uid.to_string())?;
        self.by_uid.insert(uid.clone(), id);
        Ok(id)
    }

    /// Forgets everything: after a rolled-back transaction, ids it inserted do not exist.
    pub(super) fn forget(&mut self) {
        self.by_text.clear();
        self.by_uid.clear();
    }
}

fn lookup_or_insert(conn: &Connection, text: &str) -> Result<i64, StoreError> {
    if let Some(id) = find(conn, text)? {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO names (text, hash) VALUES (?1, ?2)")?
        .execute(params![text, hash(text)])?;
    Ok(conn.last_insert_rowid())
}

/// The id of `text` for a query filter; `None` when the log never mentioned it.
pub(super) fn find(conn: &Connection, text: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM names WHERE hash = ?1 AND text = ?2")?
        .query_row(params![hash(text), text], |r| r.get(0))
        .optional()?)
}

/// The stored hash of a name: 32-bit FNV-1a of its UTF-8 bytes. Part of the file format, so
/// it must never change (a test pins its values).
pub(super) fn hash(text: &str) -> i64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i64::from(h)
}

/// Rewrites a dictionary whose texts sit under a `UNIQUE` index (logs written before the
/// hashed form) into the hashed form, keeping every id; nothing to do on a new log or one
/// already hashed. Run inside the
/// opening transaction, before the schema's `CREATE ... IF NOT EXISTS`.
pub(super) fn migrate_unique_texts(tx: &Connection) -> Result<(), StoreError> {
    let columns: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info('names')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if columns.is_empty() || columns.iter().any(|c| c == "hash") {
        return Ok(());
    }
    tx.execute_batch(
        "CREATE TABLE hashed_names (id INTEGER PRIMARY KEY, text TEXT NOT NULL, hash INTEGER NOT NULL);",
    )?;
    {
        let mut read = tx.prepare("SELECT id, text FROM names")?;
        let mut write =
            tx.prepare("INSERT INTO hashed_names (id, text, hash) VALUES (?1, ?2, ?3)")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let (id, text): (i64, String) = (r.get(0)?, r.get(1)?);
            write.execute(params![id, text, hash(&text)])?;
        }
    }
    tx.execute_batch("DROP TABLE names; ALTER TABLE hashed_names RENAME TO names;")?;
    Ok(())
}

/// A reader's view of the dictionary: the texts of ids it has resolved, bounded.
pub(super) struct Texts {
    by_id: Cache<i64, String>,
}

impl Texts {
    /// Remembers at most `capacity` texts.
    pub(super) fn new(capacity: usize) -> Texts {
        Texts {
            by_id: Cache::new(capacity.max(1)),
        }
    }

    /// The text of name `id` (ids of committed records only: an id a rolled-back transaction
    /// inserted may be reused); `None` for no name (0) or an id the dictionary lacks.
    pub(super) fn get(&mut self, conn: &Connection, id: i64) -> Result<Option<String>, StoreError> {
        if id <= 0 {
            return Ok(None);
        }
        if let Some(t) = self.by_id.get(&id) {
            return Ok(Some(t.clone()));
        }
        let text: Option<String> = conn
            .prepare_cached("SELECT text FROM names WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        if let Some(t) = &text {
            self.by_id.insert(id, t.clone());
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is part of the file format: logs written by this version must be found by
    /// the next.
    #[test]
    fn the_stored_hash_is_32_bit_fnv_1a() {
        assert_eq!(hash(""), 0x811c_9dc5);
        assert_eq!(hash("a"), 0xe40c_292c);
        assert_eq!(hash("foobar"), 0xbf9c_f968);
        assert_eq!(hash("User::\"alice\""), hash("User::\"alice\""));
        assert_ne!(hash("User::\"alice\""), hash("User::\"alicf\""));
    }
}

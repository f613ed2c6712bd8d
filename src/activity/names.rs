//! The names dictionary: every uid, organization, revision and reason list the log mentions is
//! stored once in `names` and referred to by its integer id, so a record is a row of small
//! integers. The writer keeps recently used names in memory (bounded) so interning costs a
//! hash lookup, not a query.

use cedar_policy::EntityUid;
use quick_cache::unsync::Cache;
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;

/// Names remembered in memory, per kind of key.
const REMEMBERED: usize = 16_384;

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
    let found = conn
        .prepare_cached("SELECT id FROM names WHERE text = ?1")?
        .query_row(params![text], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO names (text) VALUES (?1)")?
        .execute(params![text])?;
    Ok(conn.last_insert_rowid())
}

/// The id of `text` for a query filter; `None` when the log never mentioned it.
pub(super) fn find(conn: &Connection, text: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM names WHERE text = ?1")?
        .query_row(params![text], |r| r.get(0))
        .optional()?)
}

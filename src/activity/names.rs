//! The names dictionary: every uid, organization, revision and reason list the log mentions is
//! stored once in `names` and referred to by its integer id, so a record is a row of small
//! integers. The writer keeps recently used names in memory (bounded) so interning costs a
//! hash lookup, not a query; a reader that keeps going (the fleet's shipper) keeps the texts
//! of ids it resolved, which never change once committed (names are never deleted).

use cedar_policy::EntityUid;
use quick_cache::unsync::Cache;
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;

/// Names remembered in memory, per kind of key.
pub(super) const REMEMBERED: usize = 16_384;

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

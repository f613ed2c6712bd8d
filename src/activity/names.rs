//! The names dictionary: every uid, organization, revision and reason list the log mentions is
//! stored once in `names` and referred to by its integer id, so a record is a row of small
//! integers. A name is looked up through a 32-bit hash of its text (index `names_by_hash`),
//! the text compared on the rows that share it: over a large store nearly every resource is
//! a name, and an index of the texts themselves would store each one twice. The writer keeps
//! the ids of names it interned in memory (bounded, see [`Names`]) so interning costs a hash
//! lookup, not a query; a reader that keeps going (the fleet's shipper) keeps the texts of ids
//! it resolved, which never change once committed (names are never deleted).

use std::io::Write;

use cedar_policy::EntityUid;
use quick_cache::unsync::Cache;
use rusqlite::{Connection, OptionalExtension, params};

use crate::arena::{self, Arena};
use crate::store::StoreError;

/// Texts remembered in memory (organizations, revisions, reason lists: a handful, hot) by the
/// writer, and by a reader that keeps going (the fleet's shipper) as resolved ids.
pub(super) const REMEMBERED: usize = 32_768;

/// Bytes of uid names the writer remembers (see [`Names`]): about 360,000 uids of the synthetic
/// platform, with 2.5 MiB of tables. A uid takes about 30 bytes here (its key, its id, the
/// table's 5 bytes), where a general-purpose cache took about 150: over a million-entity store,
/// where every decision names a resource the log already holds, a forgotten uid costs a search
/// of the names index and table at random pages.
pub(super) const UID_BYTES: u64 = 8 << 20;

/// The writer's view of the dictionary: the ids of names it interned, bounded. Uids are kept
/// in an [`Arena`] under `type NUL id` (a type name holds no NUL, so the key is exact), the id
/// after it in LEB128.
pub(super) struct Names {
    by_text: Cache<String, i64>,
    by_uid: Arena,
    /// The key being looked up, kept to spare an allocation per lookup.
    key: Vec<u8>,
}

impl Names {
    pub(super) fn new() -> Names {
        Names::with_uid_bytes(UID_BYTES)
    }

    /// Remembers about `bytes` of uids.
    pub(super) fn with_uid_bytes(bytes: u64) -> Names {
        Names {
            by_text: Cache::new(REMEMBERED),
            by_uid: Arena::new(bytes),
            key: Vec::new(),
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
        self.key.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(self.key, "{}", uid.type_name());
        self.key.push(0);
        self.key.extend_from_slice(uid.id().unescaped().as_bytes());
        let key = self.key.len();
        let remembered = self.by_uid.with(&self.key, |value| {
            let (id, _) = arena::read_varint(value.get(key..)?)?;
            i64::try_from(id).ok().filter(|id| *id > 0)
        });
        if let Some(id) = remembered.flatten() {
            return Ok(id);
        }
        let id = lookup_or_insert(conn, &uid.to_string())?;
        if let Ok(n) = usize::try_from(id) {
            arena::varint(&mut self.key, n);
            self.by_uid.insert(&self.key, key);
        }
        Ok(id)
    }

    /// Forgets everything: after a rolled-back transaction, ids it inserted do not exist.
    pub(super) fn forget(&mut self) {
        self.by_text.clear();
        self.by_uid.clear();
    }

    /// Uids remembered.
    #[cfg(test)]
    pub(super) fn uids(&self) -> usize {
        self.by_uid.len()
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
    fn dictionary() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE names (id INTEGER PRIMARY KEY, text TEXT NOT NULL, hash INTEGER NOT NULL);",
        )
        .unwrap();
        conn
    }

    fn uid(ty: &str, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.parse().unwrap(), cedar_policy::EntityId::new(id))
    }

    /// Uids the writer interned are found again in memory: with the dictionary's table gone,
    /// only the remembered ones still answer, with the ids the table gave them. Keys are
    /// exact: uids that differ only where a type name and an id meet, or by a NUL, stay apart.
    #[test]
    fn interned_uids_are_answered_from_memory_with_their_ids() {
        let conn = dictionary();
        let mut names = Names::with_uid_bytes(1 << 20);
        let uids: Vec<EntityUid> = (0..2_000)
            .map(|i| uid("Dataset", &format!("d{i}")))
            .chain([
                uid("A", "Bx"),
                uid("AB", "x"),
                uid("Ns::A", "x"),
                uid("A", "x\0y"),
                uid("A", "x\0"),
                uid("A", ""),
            ])
            .collect();
        let ids: Vec<i64> = uids.iter().map(|u| names.uid(&conn, u).unwrap()).collect();
        let distinct: std::collections::HashSet<i64> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), uids.len());
        for (u, id) in uids.iter().zip(&ids) {
            let text: String = conn
                .query_row("SELECT text FROM names WHERE id = ?1", [id], |r| r.get(0))
                .unwrap();
            assert_eq!(text, u.to_string());
        }
        assert_eq!(names.uids(), uids.len());
        conn.execute_batch("DROP TABLE names").unwrap();
        for (u, id) in uids.iter().zip(&ids) {
            assert_eq!(names.uid(&conn, u).unwrap(), *id, "{u}");
        }
        // Forgotten, they must be asked of the (now missing) table.
        names.forget();
        assert!(names.uid(&conn, &uids[0]).is_err());
    }

    /// The memory is bounded: past its budget the oldest uids are forgotten (and asked of the
    /// table again, which gives the same ids).
    #[test]
    fn remembered_uids_are_bounded() {
        let conn = dictionary();
        let mut names = Names::with_uid_bytes(64 << 10);
        let first: Vec<i64> = (0..20_000)
            .map(|i| names.uid(&conn, &uid("Run", &format!("r{i}"))).unwrap())
            .collect();
        let kept = names.uids();
        assert!((1_000..5_000).contains(&kept), "{kept}");
        for (i, id) in first.iter().enumerate() {
            assert_eq!(
                names.uid(&conn, &uid("Run", &format!("r{i}"))).unwrap(),
                *id
            );
        }
    }

    #[test]
    fn the_stored_hash_is_32_bit_fnv_1a() {
        assert_eq!(hash(""), 0x811c_9dc5);
        assert_eq!(hash("a"), 0xe40c_292c);
        assert_eq!(hash("foobar"), 0xbf9c_f968);
        assert_eq!(hash("User::\"alice\""), hash("User::\"alice\""));
        assert_ne!(hash("User::\"alice\""), hash("User::\"alicf\""));
    }
}

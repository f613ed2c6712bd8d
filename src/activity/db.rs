//! The activity database: schema, batched inserts, and the two bounds on its size (retention
//! in days, and bytes on disk). Reading pages of it is [`super::query`].
//!
//! A record is a row of small integers: names (uids, organizations, revisions, reason lists)
//! are interned in `names` (see [`super::names`]), the kind and decision share one column, and
//! time is stored in microseconds after the log's own epoch (six bytes instead of eight). Ids
//! are the rowid, so records are appended in id order and pages fill completely; three indexes
//! serve the per-organization queries.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::names::{self, Names};
use super::{Entry, Kind, Queued, Verdict};
use crate::store::StoreError;

/// Organization column of policy reloads, which concern every organization.
pub(super) const EVERY_ORG: i64 = 0;
/// Organization column of records that belong to none (never listed).
const NO_ORG: i64 = -1;

const SCHEMA: &str = r#"
-- A name is found by the hash of its text (see `names::hash`): an index of the texts
-- themselves would store every name twice.
CREATE TABLE IF NOT EXISTS names (
    id   INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    hash INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    id        INTEGER PRIMARY KEY,
    org       INTEGER NOT NULL,
    time      INTEGER NOT NULL,
    kind      INTEGER NOT NULL,
    principal INTEGER,
    action    INTEGER,
    resource  INTEGER,
    reasons   INTEGER,
    revision  INTEGER
);
-- Logs written before the indexes below held the id twice, or had segments of 65,536 ids.
DROP INDEX IF EXISTS org_records;
DROP INDEX IF EXISTS principal_records;
DROP INDEX IF EXISTS resource_records;
DROP INDEX IF EXISTS records_by_org;
DROP INDEX IF EXISTS records_by_principal;
DROP INDEX IF EXISTS records_by_resource;
-- Every query is per organization, newest first; the narrower filters have their own paths.
-- Each index leads with the record's segment (4,096 consecutive ids): a commit only adds to
-- the current segment's small subtree, a few dozen pages per index, instead of one random
-- page of a large index per record (tens of megabytes written per commit once there are many
-- resources). Segments of 65,536 ids (the logs before) still had each commit rewrite a few
-- hundred pages of the principal and resource indexes, about 2 MB through the WAL every
-- 200 ms at 16,000 decisions/s. A query walks the segments newest first, one index seek
-- each. An index entry ends with the record's rowid (its id), which orders the entries of one
-- key and answers the id range: naming `id` as a key column too would store it twice.
CREATE INDEX IF NOT EXISTS org_segments ON records (id >> 12, org);
CREATE INDEX IF NOT EXISTS principal_segments ON records (id >> 12, org, principal)
    WHERE principal IS NOT NULL;
CREATE INDEX IF NOT EXISTS resource_segments ON records (id >> 12, org, resource)
    WHERE resource IS NOT NULL;
CREATE INDEX IF NOT EXISTS names_by_hash ON names (hash);
"#;

/// Opens the database for writing, creating it and its schema, and migrating a log written
/// by an older policyd (one table of text columns) into the compact form.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: format!("cannot create directory {}: {e}", dir.display()),
        })?;
    }
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    // Each batch touches pages all over the three indexes: with SQLite's default 2 MiB cache
    // the writer spilled them mid-transaction and read them back (a fifth of its time).
    // Temporary tables and journals stay in memory.
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA cache_size=-8192; PRAGMA temp_store=MEMORY;",
    )?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    names::migrate_unique_texts(&tx)?;
    tx.execute_batch(SCHEMA)?;
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)",
        params![crate::storage::now_micros()],
    )?;
    // Names this log in the fleet's merged trail (see `crate::upstream::activity`): random,
    // and born with the log, so a new log never reuses the ids of an old one under one name.
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('sidecar', random() & 0x7fffffffffffffff)",
        [],
    )?;
    let old = tx
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'activity'",
            [],
            |_| Ok(()),
        )
        .optional()?;
    if old.is_some() {
        migrate_text_log(&tx)?;
    }
    tx.commit()?;
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

/// The log's epoch: record times are stored relative to it.
pub(super) fn epoch(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
            r.get(0)
        })?,
    )
}

/// The log's random name in the fleet's merged trail.
pub(super) fn sidecar(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT value FROM meta WHERE key = 'sidecar'", [], |r| {
            r.get(0)
        })?,
    )
}

/// Up to `limit` stored rows with ids above `id`, oldest first, times absolute (the fleet
/// ships them upstream).
pub(super) fn rows_after(
    conn: &Connection,
    epoch: i64,
    id: i64,
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ROW_COLUMNS} FROM records WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(
        params![id, i64::try_from(limit).unwrap_or(i64::MAX)],
        stored_row,
    )?;
    rows.map(|r| r.map(|(id, time, code, names)| (id, time + epoch, code, names)))
        .collect::<Result<Vec<Row>, _>>()
        .map_err(StoreError::from)
}

/// The last id and time written (0 when empty), so a restarted log continues both.
pub(super) fn last(conn: &Connection) -> Result<(i64, i64), StoreError> {
    let epoch = epoch(conn)?;
    let row: Option<(i64, i64)> = conn
        .query_row(
            "SELECT id, time FROM records ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.map_or((0, 0), |(id, t)| (id, t + epoch)))
}

/// Rows per `INSERT` statement, largest first: one statement per row cost the writer a fifth of
/// its time in statement overhead. A statement that names the rowid may fail half-way (a
/// non-integer id), so SQLite copies each page it touches into a statement journal first, once
/// per statement: the more rows per statement, the fewer copies per row. The writer inserts a
/// few milliseconds of records at a time, so the smaller sizes carry most slices.
const ROWS_PER_INSERT: [usize; 4] = [512, 64, 8, 1];
const COLUMNS: &str = "(id, org, time, kind, principal, action, resource, reasons, revision)";
const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// The statement text for each of [`ROWS_PER_INSERT`], built once: the writer runs one or more
/// per piece of 8 records, and the text is only the key of SQLite's prepared statements.
static INSERTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    ROWS_PER_INSERT
        .iter()
        .map(|&size| {
            format!(
                "INSERT INTO records {COLUMNS} VALUES {}",
                vec![ROW; size].join(", ")
            )
        })
        .collect()
});

/// One record as stored: every column a (nullable) integer.
type Row9 = [Option<i64>; 9];

/// Inserts records inside the caller's transaction, interning their names. After a failure
/// the caller rolls back and calls [`Names::forget`].
pub(super) fn write_rows(
    tx: &Connection,
    names: &mut Names,
    epoch: i64,
    batch: &[Queued],
) -> Result<(), StoreError> {
    let mut rows: Vec<Row9> = Vec::with_capacity(batch.len());
    for q in batch {
        rows.push(row(tx, names, epoch, q)?);
    }
    let mut left: &[Row9] = &rows;
    for (size, sql) in ROWS_PER_INSERT.iter().zip(INSERTS.iter()) {
        let size = *size;
        if left.len() < size {
            continue;
        }
        let mut insert = tx.prepare_cached(sql)?;
        let mut chunks = left.chunks_exact(size);
        for chunk in &mut chunks {
            run_insert(&mut insert, chunk)?;
        }
        left = chunks.remainder();
    }
    Ok(())
}

/// Binds `rows` to an insert statement of as many rows, and runs it.
fn run_insert(stmt: &mut rusqlite::CachedStatement<'_>, rows: &[Row9]) -> Result<(), StoreError> {
    for (r, values) in rows.iter().enumerate() {
        for (c, v) in values.iter().enumerate() {
            stmt.raw_bind_parameter(r * values.len() + c + 1, v)?;
        }
    }
    stmt.raw_execute()?;
    Ok(())
}

/// A queued record's columns, its names interned.
fn row(tx: &Connection, names: &mut Names, epoch: i64, q: &Queued) -> Result<Row9, StoreError> {
    let e = &q.entry;
    let org = match (&e.organization, e.kind) {
        (_, Kind::PolicyReload) => EVERY_ORG,
        (Some(o), _) => names.text(tx, o)?,
        (None, _) => NO_ORG,
    };
    let mut uid =
        |u: &Option<cedar_policy::EntityUid>| u.as_ref().map(|u| names.uid(tx, u)).transpose();
    let principal = uid(&e.principal)?;
    let action = uid(&e.action)?;
    let resource = uid(&e.resource)?;
    let reasons = if e.reasons.is_empty() {
        None
    } else {
        let text = serde_json::to_string(&e.reasons).unwrap_or_else(|_| "[]".to_owned());
        Some(names.text(tx, &text)?)
    };
    let revision = e
        .policy_revision
        .as_deref()
        .map(|r| names.text(tx, r))
        .transpose()?;
    Ok([
        Some(q.id),
        Some(org),
        Some(q.time - epoch),
        Some(code(e)),
        principal,
        action,
        resource,
        reasons,
        revision,
    ])
}

/// The kind and the decision in one small integer.
fn code(e: &Entry) -> i64 {
    let verdict = e.verdict.map_or(0, |v| v as i64 + 1);
    e.kind as i64 * 8 + verdict
}

/// The kind and the decision of a [`code`].
pub(super) fn decode(code: i64) -> (Kind, Option<Verdict>) {
    let kind = Kind::ALL
        .get(usize::try_from(code / 8).unwrap_or(0))
        .copied()
        .unwrap_or(Kind::Decision);
    let verdict = Verdict::ALL
        .get(usize::try_from(code % 8 - 1).unwrap_or(usize::MAX))
        .copied();
    (kind, verdict)
}

/// A stored row before its names are resolved: id, time, [`code`], and the name ids of
/// principal, action, resource, reasons, revision and organization.
pub(super) type Row = (i64, i64, i64, [Option<i64>; 6]);

/// The columns a [`Row`] is read from, in [`stored_row`]'s order.
pub(super) const ROW_COLUMNS: &str =
    "id, time, kind, principal, action, resource, reasons, revision, org";

/// Reads a [`Row`] from a result row of [`ROW_COLUMNS`].
pub(super) fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        [
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        ],
    ))
}

/// Bits of the id below the segment (see the schema).
pub(super) const SEGMENT_BITS: u32 = 12;

/// The smallest id whose (relative) time is at least `time`; one past the last id when none.
/// Records' times never decrease with their ids, so this is a binary search over the rowid.
pub(super) fn first_id_at_or_after(conn: &Connection, time: i64) -> Result<i64, StoreError> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(id), max(id) FROM records", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(hi)) = (lo, hi) else {
        return Ok(1);
    };
    let mut hi = hi + 1;
    let mut probe =
        conn.prepare_cached("SELECT id, time FROM records WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (id, t): (i64, i64) = probe.query_row(params![mid], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if t >= time {
            hi = mid.min(id);
        } else {
            lo = id + 1;
        }
    }
    Ok(lo)
}

/// Deletes every record older than `cutoff` (microseconds since the Unix epoch), oldest first
/// in chunks; returns how many.
pub(super) fn expire(conn: &Connection, cutoff: i64) -> Result<u64, StoreError> {
    let before = first_id_at_or_after(conn, cutoff - epoch(conn)?)?;
    delete_below(conn, before)
}

/// Bytes the log's pages hold (free pages excluded: they are reused before the file grows).
pub(super) fn used_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(u64::try_from((pages - free) * size).unwrap_or(0))
}

/// Deletes the oldest records until the log uses at most `target` bytes; returns how many.
pub(super) fn shrink_to(conn: &Connection, target: u64) -> Result<u64, StoreError> {
    let mut pruned = 0;
    loop {
        let used = used_bytes(conn)?;
        if used <= target {
            return Ok(pruned);
        }
        let (lo, hi, n): (Option<i64>, Option<i64>, i64) =
            conn.query_row("SELECT min(id), max(id), count(*) FROM records", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return Ok(pruned);
        };
        // Drop the share of records the excess represents (at least 1%), oldest first.
        let share = ((used - target) as f64 / used as f64).max(0.01);
        let span = ((hi - lo + 1) as f64 * share).ceil() as i64;
        let removed = delete_below(conn, lo + span.max(1))?;
        pruned += removed;
        if removed == 0 || n == 0 {
            return Ok(pruned);
        }
    }
}

/// Deletes records with ids below `id`, in chunks so the writer's transactions stay short.
fn delete_below(conn: &Connection, id: i64) -> Result<u64, StoreError> {
    const CHUNK: i64 = 10_000;
    let mut total = 0;
    loop {
        let n = conn
            .prepare_cached(
                "DELETE FROM records WHERE id IN (SELECT id FROM records WHERE id < ?1 ORDER BY id LIMIT ?2)",
            )?
            .execute(params![id, CHUNK])?;
        total += n as u64;
        if (n as i64) < CHUNK {
            return Ok(total);
        }
    }
}

/// Moves the rows of the first activity format (a table of text columns) into the compact one.
fn migrate_text_log(tx: &Connection) -> Result<(), StoreError> {
    let epoch = epoch(tx)?;
    let oldest: Option<i64> = tx.query_row("SELECT min(time) FROM activity", [], |r| r.get(0))?;
    let epoch = match oldest {
        Some(t) if t < epoch => {
            tx.execute("UPDATE meta SET value = ?1 WHERE key = 'epoch'", params![t])?;
            t
        }
        _ => epoch,
    };
    let mut names = Names::new();
    let mut stmt = tx.prepare(
        "SELECT id, time, kind, principal, action, resource, decision, reasons, policy_revision, organization
         FROM activity WHERE id > ?1 ORDER BY id LIMIT 10000",
    )?;
    let mut after = i64::MIN;
    loop {
        let mut rows = stmt.query(params![after])?;
        let mut batch = Vec::new();
        while let Some(r) = rows.next()? {
            let text = |i: usize| r.get::<_, Option<String>>(i);
            let uid = |t: Option<String>| t.and_then(|t| t.parse().ok());
            let kind: String = r.get(2)?;
            let reasons: String = r.get(7)?;
            batch.push(Queued {
                id: r.get(0)?,
                time: r.get(1)?,
                entry: Entry {
                    kind: Kind::parse(&kind).unwrap_or(Kind::Decision),
                    principal: uid(text(3)?),
                    action: uid(text(4)?),
                    resource: uid(text(5)?),
                    verdict: text(6)?.and_then(|v| Verdict::parse(&v)),
                    reasons: serde_json::from_str(&reasons).unwrap_or_default(),
                    policy_revision: text(8)?.map(Into::into),
                    organization: text(9)?,
                },
            });
        }
        let Some(last) = batch.last() else { break };
        after = last.id;
        write_rows(tx, &mut names, epoch, &batch)?;
    }
    drop(stmt);
    tx.execute_batch("DROP TABLE activity;")?;
    Ok(())
}

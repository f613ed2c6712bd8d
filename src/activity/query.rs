//! Reading the activity log: an organization's records, newest first, in keyset pages
//! (`cursor` is the last id of the previous page), filtered by principal, resource, action,
//! kind and time. Each filter goes through the index that leads with the record's segment
//! (see the schema in [`super::db`]), one seek per segment, newest segment first.

use rusqlite::{Connection, params_from_iter};

use super::db::{
    EVERY_ORG, ROW_COLUMNS, Row, SEGMENT_BITS, decode, epoch, first_id_at_or_after, stored_row,
};
use super::names::{self, Texts};
use super::{Kind, Record};
use crate::store::StoreError;

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
/// concern every organization) when the filters admit them.
pub(super) fn query(conn: &Connection, f: &Filter) -> Result<Page, StoreError> {
    let epoch = epoch(conn)?;
    let mut ids = Vec::new();
    // A filter naming something the log never mentioned matches nothing.
    let mut filters = [None; 3];
    let mut unknown = false;
    for (slot, text) in filters
        .iter_mut()
        .zip([&f.principal, &f.resource, &f.action])
    {
        if let Some(text) = text {
            match names::find(conn, text)? {
                Some(id) => *slot = Some(id),
                None => unknown = true,
            }
        }
    }
    if !unknown && let Some(org) = names::find(conn, &f.organization)? {
        ids.extend(select(conn, f, epoch, org, filters)?);
    }
    let reloads_admitted = f.principal.is_none()
        && f.resource.is_none()
        && f.action.is_none()
        && f.kind.is_none_or(|k| k == Kind::PolicyReload);
    if reloads_admitted {
        ids.extend(select(conn, f, epoch, EVERY_ORG, [None; 3])?);
        ids.sort_by_key(|r| std::cmp::Reverse(r.0));
        ids.truncate(f.limit + 1);
    }
    let next_cursor = if ids.len() > f.limit {
        ids.truncate(f.limit);
        ids.last().map(|r| r.0)
    } else {
        None
    };
    let mut texts = Texts::new(ids.len() * 6);
    let records = resolve(conn, epoch, &mut texts, &ids)?;
    Ok(Page {
        records,
        next_cursor,
    })
}

/// Up to `limit + 1` matching rows of one organization column, newest first: each segment of
/// the id range through its index, newest segment first, until the page is full. `filters`
/// are the name ids of principal, resource and action, when filtered on.
fn select(
    conn: &Connection,
    f: &Filter,
    epoch: i64,
    org: i64,
    filters: [Option<i64>; 3],
) -> Result<Vec<Row>, StoreError> {
    let (first, last): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(id), max(id) FROM records", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(Vec::new());
    };
    // The ids the filters allow: [lo, hi). Time never decreases with the id, so a time bound
    // is also an id bound, found by a binary search over the rowid.
    let mut lo = first;
    let mut hi = last + 1;
    if let Some(c) = f.before_id {
        hi = hi.min(c);
    }
    if let Some(s) = f.since {
        lo = lo.max(first_id_at_or_after(conn, s - epoch)?);
    }
    if let Some(u) = f.until {
        hi = hi.min(first_id_at_or_after(conn, u - epoch + 1)?);
    }
    let mut sql = format!(
        "SELECT {ROW_COLUMNS} FROM records WHERE (id >> {SEGMENT_BITS}) = ? AND org = ? \
         AND id >= ? AND id < ?"
    );
    let mut args: Vec<i64> = vec![0, org, lo, hi];
    for (column, value) in ["principal", "resource", "action"].iter().zip(filters) {
        if let Some(id) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            args.push(id);
        }
    }
    if let Some(k) = f.kind {
        sql.push_str(" AND kind BETWEEN ? AND ?");
        args.extend([k as i64 * 8, k as i64 * 8 + 7]);
    }
    if let Some(s) = f.since {
        sql.push_str(" AND time >= ?");
        args.push(s - epoch);
    }
    if let Some(u) = f.until {
        sql.push_str(" AND time <= ?");
        args.push(u - epoch);
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push(0);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut out: Vec<Row> = Vec::new();
    if lo >= hi {
        return Ok(out);
    }
    let want = f.limit + 1;
    let mut segment = (hi - 1) >> SEGMENT_BITS;
    while segment >= lo >> SEGMENT_BITS && out.len() < want {
        args[0] = segment;
        if let Some(n) = args.last_mut() {
            *n = i64::try_from(want - out.len()).unwrap_or(i64::MAX);
        }
        let rows = stmt.query_map(params_from_iter(&args), stored_row)?;
        for row in rows {
            out.push(row?);
        }
        segment -= 1;
    }
    Ok(out)
}

/// Turns rows into records, reading each name `texts` does not hold once.
fn resolve(
    conn: &Connection,
    epoch: i64,
    texts: &mut Texts,
    rows: &[Row],
) -> Result<Vec<Record>, StoreError> {
    let mut name = |id: Option<i64>| texts.get(conn, id.unwrap_or(0));
    rows.iter()
        .map(|&(id, time, code, [p, a, r, reasons, revision, org])| {
            let (kind, verdict) = decode(code);
            Ok(Record {
                id,
                time: time + epoch,
                kind,
                principal: name(p)?,
                action: name(a)?,
                resource: name(r)?,
                decision: verdict.map(|v| v.as_str().to_owned()),
                reasons: name(reasons)?
                    .map(|t| serde_json::from_str(&t).unwrap_or_default())
                    .unwrap_or_default(),
                policy_revision: name(revision)?,
                organization: name(org)?,
            })
        })
        .collect()
}

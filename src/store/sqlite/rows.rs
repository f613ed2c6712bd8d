//! Inserting many rows with one statement.
//!
//! A write stores several rows per entity (parent edges, reference rows, rows to re-count),
//! and running a statement costs about as much as the row it inserts. So a write gathers the
//! rows of each kind and inserts them [`ROWS`] to a statement: `policyd import` of 100,000
//! entities runs tens of thousands of statements instead of hundreds of thousands.

use rusqlite::{Connection, ToSql};

use crate::store::StoreError;

/// Rows per statement (SQLite binds up to 32,766 values per statement).
const ROWS: usize = 128;

/// Runs `{head} VALUES (?, ..), (?, ..) ..` (`head` like `INSERT OR IGNORE INTO t (a, b)`) for
/// every row of `rows`.
pub(super) fn insert<V: ToSql, const N: usize>(
    conn: &Connection,
    head: &str,
    rows: &[[V; N]],
) -> Result<(), StoreError> {
    let one = format!("({})", vec!["?"; N].join(", "));
    let mut full = rows.chunks_exact(ROWS);
    if rows.len() >= ROWS {
        let mut many = conn.prepare_cached(&format!(
            "{head} VALUES {}",
            vec![one.as_str(); ROWS].join(", ")
        ))?;
        for chunk in &mut full {
            bind_and_run(&mut many, chunk)?;
        }
    }
    let mut single = conn.prepare_cached(&format!("{head} VALUES {one}"))?;
    for row in full.remainder() {
        bind_and_run(&mut single, std::slice::from_ref(row))?;
    }
    Ok(())
}

fn bind_and_run<V: ToSql, const N: usize>(
    stmt: &mut rusqlite::CachedStatement<'_>,
    rows: &[[V; N]],
) -> Result<(), StoreError> {
    for (r, values) in rows.iter().enumerate() {
        for (c, v) in values.iter().enumerate() {
            stmt.raw_bind_parameter(r * N + c + 1, v)?;
        }
    }
    stmt.raw_execute()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full statements and the remainder both land, duplicates ignored as the head says.
    #[test]
    fn every_row_is_inserted_whatever_the_count() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT, b TEXT, PRIMARY KEY (a, b))")
            .unwrap();
        let texts: Vec<String> = (0..ROWS * 2 + 7).map(|i| i.to_string()).collect();
        let rows: Vec<[&str; 2]> = texts.iter().map(|t| [t.as_str(), "x"]).collect();
        insert(&conn, "INSERT OR IGNORE INTO t (a, b)", &rows).unwrap();
        insert(&conn, "INSERT OR IGNORE INTO t (a, b)", &rows[..3]).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, (ROWS * 2 + 7) as i64);
    }
}

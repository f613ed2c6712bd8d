//! Following the log from outside its writer: the fleet's shipper reads every committed
//! record once, oldest first, batch after batch, in the log's own compact form.
//!
//! A [`Follower`] keeps its read connection (and so its prepared statements) and the texts of
//! the names it has resolved. A batch is the stored rows, names still as ids, plus the text of
//! each distinct name they use: no per-record strings are made. Shipping records read as text
//! (a fresh connection and name lookups per batch, five strings per record) held a fleet
//! sidecar to 0.81 of the embedded store's decision rate (BENCHMARKS.md, "Fleet mode").

use std::collections::HashMap;
use std::path::Path;

use rusqlite::Connection;

use super::names::{REMEMBERED, Texts};
use super::{Kind, Verdict, db};
use crate::store::StoreError;

/// A committed record as stored: each name is an id into its [`Batch::names`] (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The record's id in this log.
    pub id: i64,
    /// Microseconds since the Unix epoch.
    pub time: i64,
    /// What the record is about.
    pub kind: Kind,
    /// The decision, or the reload's outcome.
    pub verdict: Option<Verdict>,
    /// The principal's uid.
    pub principal: i64,
    /// The action's uid.
    pub action: i64,
    /// The resource's (or written entity's) uid.
    pub resource: i64,
    /// The reasons, as a JSON list of strings.
    pub reasons: i64,
    /// The policy revision in force.
    pub revision: i64,
    /// The organization's id.
    pub organization: i64,
}

impl Row {
    /// The name ids this row uses (0 for those it has not).
    pub fn names(&self) -> [i64; 6] {
        [
            self.principal,
            self.action,
            self.resource,
            self.reasons,
            self.revision,
            self.organization,
        ]
    }
}

/// Committed records in id order, with the text of every name they use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The records.
    pub rows: Vec<Row>,
    /// Name id to text, for every non-zero name of `rows`.
    pub names: HashMap<i64, String>,
}

/// Reads the log in id order; see the module docs.
pub struct Follower {
    conn: Connection,
    epoch: i64,
    sidecar: String,
    texts: Texts,
}

impl Follower {
    /// Opens a follower of the log at `path`. Blocking.
    pub(super) fn open(path: &Path) -> Result<Follower, StoreError> {
        let conn = db::open_reader(path)?;
        let epoch = db::epoch(&conn)?;
        let sidecar = format!("{:016x}", db::sidecar(&conn)?);
        Ok(Follower {
            conn,
            epoch,
            sidecar,
            texts: Texts::new(REMEMBERED),
        })
    }

    /// The log's name in the fleet's merged trail: a random number born with the log, as 16
    /// hex digits.
    pub fn sidecar(&self) -> &str {
        &self.sidecar
    }

    /// Up to `limit` committed records with ids above `id`, oldest first. Blocking.
    pub fn after(&mut self, id: i64, limit: usize) -> Result<Batch, StoreError> {
        let stored = db::rows_after(&self.conn, self.epoch, id, limit)?;
        let mut batch = Batch {
            rows: Vec::with_capacity(stored.len()),
            names: HashMap::new(),
        };
        for (id, time, code, [p, a, r, reasons, revision, org]) in stored {
            let (kind, verdict) = db::decode(code);
            let row = Row {
                id,
                time,
                kind,
                verdict,
                principal: p.unwrap_or(0),
                action: a.unwrap_or(0),
                resource: r.unwrap_or(0),
                reasons: reasons.unwrap_or(0),
                revision: revision.unwrap_or(0),
                organization: org.unwrap_or(0),
            };
            for name in row.names() {
                if name > 0 && !batch.names.contains_key(&name) {
                    // A name the dictionary lacks (it cannot, for a committed record) is left
                    // out: the record is shipped without it, as a reader would show it.
                    if let Some(text) = self.texts.get(&self.conn, name)? {
                        batch.names.insert(name, text);
                    }
                }
            }
            batch.rows.push(row);
        }
        Ok(batch)
    }
}

//! The activity log: every decision, entity write and policy reload, kept in SQLite for
//! organization admins, without making the decision path wait for a disk.
//!
//! Records get their id and time under one short lock as they are queued, and a single writer
//! thread commits them in that order, so the records visible to a reader are always a prefix of
//! the id sequence: pagination by id never skips a record that commits later. The queue is
//! bounded; when it is full a record is dropped and counted, and the request still answers.

mod db;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

pub use db::{Filter, Page};

use crate::storage::now_micros;
use crate::store::StoreError;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An is-allowed question and its answer.
    Decision,
    /// An entity written.
    EntityUpsert,
    /// An entity deleted.
    EntityDelete,
    /// A policy reload attempt.
    PolicyReload,
}

impl Kind {
    /// The name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::EntityUpsert => "entity_upsert",
            Kind::EntityDelete => "entity_delete",
            Kind::PolicyReload => "policy_reload",
        }
    }

    /// Parses [`Kind::as_str`].
    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Decision,
            Kind::EntityUpsert,
            Kind::EntityDelete,
            Kind::PolicyReload,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// What a caller records; the log adds the id and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The kind.
    pub kind: Kind,
    /// Cedar uid string of the principal, for decisions.
    pub principal: Option<String>,
    /// Cedar uid string of the action, for decisions.
    pub action: Option<String>,
    /// Cedar uid string of the resource (decisions) or the entity written.
    pub resource: Option<String>,
    /// `Allow` or `Deny`, for decisions.
    pub decision: Option<String>,
    /// Determining policies (decisions) or errors (failed reloads).
    pub reasons: Vec<String>,
    /// The policy revision in force.
    pub policy_revision: Option<String>,
    /// Id of the organization the resource (or else the principal) belongs to.
    pub organization: Option<String>,
}

impl Entry {
    /// An entry of `kind` with every optional field empty.
    pub fn new(kind: Kind) -> Entry {
        Entry {
            kind,
            principal: None,
            action: None,
            resource: None,
            decision: None,
            reasons: Vec::new(),
            policy_revision: None,
            organization: None,
        }
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Increasing id; also the pagination key.
    pub id: i64,
    /// Microseconds since the Unix epoch; never decreases with the id.
    pub time: i64,
    /// The entry.
    pub entry: Entry,
}

/// Counters for the status endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Whether records are kept at all.
    pub enabled: bool,
    /// Records waiting for the writer.
    pub queued: usize,
    /// Records committed since start.
    pub written: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
    /// Batches the writer failed to commit (their records are lost and counted as dropped).
    pub failed_batches: u64,
}

struct Queue {
    records: VecDeque<Record>,
    next_id: i64,
    last_time: i64,
    stopping: bool,
}

pub(crate) struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    capacity: usize,
    written: AtomicU64,
    dropped: AtomicU64,
    failed_batches: AtomicU64,
}

/// Handle to the activity log. Dropping it flushes the queue.
pub struct ActivityLog {
    shared: Option<Arc<Shared>>,
    path: PathBuf,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ActivityLog {
    /// A log that records nothing (`--activity off`).
    pub fn disabled() -> ActivityLog {
        ActivityLog {
            shared: None,
            path: PathBuf::new(),
            writer: Mutex::new(None),
        }
    }

    /// A read-only view of the log at `path`, for `policyd activity` (no writer).
    pub fn reader(path: &Path) -> ActivityLog {
        ActivityLog {
            shared: None,
            path: path.to_path_buf(),
            writer: Mutex::new(None),
        }
    }

    /// Opens (creating if needed) the log database at `path` and starts its writer thread.
    pub fn open(path: &Path, capacity: usize) -> Result<ActivityLog, StoreError> {
        let conn = db::open(path)?;
        let last_id = db::last_id(&conn)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                records: VecDeque::new(),
                next_id: last_id + 1,
                last_time: 0,
                stopping: false,
            }),
            wake: Condvar::new(),
            capacity: capacity.max(1),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
        });
        let handle = writer::spawn(conn, shared.clone()).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: format!("cannot start the activity writer: {e}"),
        })?;
        Ok(ActivityLog {
            shared: Some(shared),
            path: path.to_path_buf(),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Queues a record and returns its id; `None` when the log is off or the queue is full.
    pub fn record(&self, entry: Entry) -> Option<i64> {
        let shared = self.shared.as_ref()?;
        let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.stopping {
            return None;
        }
        if q.records.len() >= shared.capacity {
            drop(q);
            let dropped = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per power of two keeps a sustained overload visible without flooding.
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    capacity = shared.capacity,
                    "activity queue full; records dropped"
                );
            }
            return None;
        }
        let id = q.next_id;
        q.next_id += 1;
        let time = now_micros().max(q.last_time);
        q.last_time = time;
        q.records.push_back(Record { id, time, entry });
        // The writer only needs waking for the first record of a batch (it then lingers on its
        // own) or a full batch; a wake-up per record would cost a context switch per decision.
        let wake = q.records.len() == 1 || q.records.len() >= writer::BATCH;
        drop(q);
        if wake {
            shared.wake.notify_one();
        }
        Some(id)
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        match &self.shared {
            None => Stats {
                enabled: false,
                queued: 0,
                written: 0,
                dropped: 0,
                failed_batches: 0,
            },
            Some(s) => Stats {
                enabled: true,
                queued: s
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .records
                    .len(),
                written: s.written.load(Ordering::Relaxed),
                dropped: s.dropped.load(Ordering::Relaxed),
                failed_batches: s.failed_batches.load(Ordering::Relaxed),
            },
        }
    }

    /// Whether records are kept.
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Stops taking records, commits everything queued, and stops the writer. Blocking.
    pub fn flush_and_stop(&self) {
        let Some(shared) = &self.shared else { return };
        shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopping = true;
        shared.wake.notify_all();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("activity writer panicked while flushing");
        }
    }

    /// One page of records, newest first. Blocking; opens its own read connection.
    pub fn query(&self, filter: &Filter) -> Result<Page, StoreError> {
        if self.path.as_os_str().is_empty() {
            return Ok(Page {
                records: Vec::new(),
                next_cursor: None,
            });
        }
        db::query(&db::open_reader(&self.path)?, filter)
    }

    /// Deletes up to `batch` records older than `cutoff` (microseconds); returns how many.
    pub fn prune(&self, cutoff: i64, batch: i64) -> Result<usize, StoreError> {
        if self.shared.is_none() {
            return Ok(0);
        }
        db::prune(&db::open(&self.path)?, cutoff, batch)
    }
}

impl Drop for ActivityLog {
    fn drop(&mut self) {
        self.flush_and_stop();
    }
}

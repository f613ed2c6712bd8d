//! The activity log: every decision, entity write and policy reload, kept in SQLite for
//! organization admins, without making the decision path wait for a disk.
//!
//! Records get their id and time under one short lock as they are queued, and a single writer
//! thread commits them in that order, so the records visible to a reader are always a prefix of
//! the id sequence: pagination by id never skips a record that commits later. The queue is
//! bounded; when it is full a record is dropped and counted, and the request still answers.
//! Queuing a record copies no text: uids are kept as they are and formatted (once per distinct
//! name) by the writer. The writer also keeps the log within its retention and its size bound
//! (`--activity-max-bytes`), pruning the oldest records first.

mod db;
mod follow;
mod names;
mod query;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use cedar_policy::EntityUid;

pub use follow::{Batch, Follower, Row};
pub use query::{Filter, Page};

use crate::config::ActivityConfig;
use crate::storage::now_micros;
use crate::store::StoreError;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An is-allowed question and its answer.
    Decision = 0,
    /// An entity written.
    EntityUpsert = 1,
    /// An entity deleted.
    EntityDelete = 2,
    /// A policy reload attempt.
    PolicyReload = 3,
}

impl Kind {
    /// Every kind, by its stored number.
    pub const ALL: [Kind; 4] = [
        Kind::Decision,
        Kind::EntityUpsert,
        Kind::EntityDelete,
        Kind::PolicyReload,
    ];

    /// The name used in JSON.
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
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The outcome a record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A decision allowed the request.
    Allow = 0,
    /// A decision denied the request.
    Deny = 1,
    /// A reload put a new policy set live.
    Applied = 2,
    /// A reload was refused; the previous set stays live.
    Refused = 3,
}

impl Verdict {
    /// Every verdict, by its stored number.
    pub const ALL: [Verdict; 4] = [
        Verdict::Allow,
        Verdict::Deny,
        Verdict::Applied,
        Verdict::Refused,
    ];

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "Allow",
            Verdict::Deny => "Deny",
            Verdict::Applied => "applied",
            Verdict::Refused => "refused",
        }
    }

    /// Parses [`Verdict::as_str`].
    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The verdict of a decision.
    pub fn of(allowed: bool) -> Verdict {
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }
}

/// What a caller records; the log adds the id and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The kind.
    pub kind: Kind,
    /// The principal, for decisions.
    pub principal: Option<EntityUid>,
    /// The action, for decisions.
    pub action: Option<EntityUid>,
    /// The resource (decisions) or the entity written.
    pub resource: Option<EntityUid>,
    /// The decision, or the outcome of a reload.
    pub verdict: Option<Verdict>,
    /// Determining policies (decisions) or errors (failed reloads).
    pub reasons: Vec<String>,
    /// The policy revision in force.
    pub policy_revision: Option<Arc<str>>,
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
            verdict: None,
            reasons: Vec::new(),
            policy_revision: None,
            organization: None,
        }
    }
}

/// An entry with the id and time the log gave it, waiting for the writer.
#[derive(Debug)]
struct Queued {
    id: i64,
    time: i64,
    entry: Entry,
}

/// A stored record, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Increasing id; also the pagination key.
    pub id: i64,
    /// Microseconds since the Unix epoch; never decreases with the id.
    pub time: i64,
    /// The kind.
    pub kind: Kind,
    /// Cedar uid string of the principal, for decisions.
    pub principal: Option<String>,
    /// Cedar uid string of the action, for decisions.
    pub action: Option<String>,
    /// Cedar uid string of the resource (decisions) or the entity written.
    pub resource: Option<String>,
    /// `Allow` or `Deny` (decisions), `applied` or `refused` (reloads).
    pub decision: Option<String>,
    /// Determining policies (decisions) or errors (failed reloads).
    pub reasons: Vec<String>,
    /// The policy revision in force.
    pub policy_revision: Option<String>,
    /// Id of the organization the record belongs to (none for reloads).
    pub organization: Option<String>,
}

/// Counters for the status endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Whether records are kept at all.
    pub enabled: bool,
    /// Records waiting for the writer, or taken by it and not yet committed.
    pub queued: usize,
    /// Records committed since start.
    pub written: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
    /// Batches the writer failed to commit (their records are lost and counted as dropped).
    pub failed_batches: u64,
    /// Records deleted since start because they were older than the retention.
    pub expired: u64,
    /// Records deleted since start, oldest first, to keep the log within its size bound.
    pub pruned: u64,
}

struct Queue {
    records: VecDeque<Queued>,
    next_id: i64,
    last_time: i64,
    stopping: bool,
}

pub(crate) struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    capacity: usize,
    /// Records the writer has taken from the queue and is committing.
    committing: AtomicUsize,
    written: AtomicU64,
    dropped: AtomicU64,
    failed_batches: AtomicU64,
    expired: AtomicU64,
    pruned: AtomicU64,
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

    /// Opens (creating or upgrading if needed) the log database and starts its writer thread.
    pub fn open(config: &ActivityConfig) -> Result<ActivityLog, StoreError> {
        let path = &config.db_path;
        let conn = db::open(path)?;
        let (last_id, last_time) = db::last(&conn)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                records: VecDeque::new(),
                next_id: last_id + 1,
                last_time,
                stopping: false,
            }),
            wake: Condvar::new(),
            capacity: config.queue.max(1),
            committing: AtomicUsize::new(0),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            pruned: AtomicU64::new(0),
        });
        let bounds = writer::Bounds {
            retention_micros: i64::from(config.retention_days) * 86_400 * 1_000_000,
            max_bytes: config.max_bytes,
        };
        let handle = writer::spawn(conn, shared.clone(), bounds).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: format!("cannot start the activity writer: {e}"),
        })?;
        Ok(ActivityLog {
            shared: Some(shared),
            path: path.clone(),
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
        q.records.push_back(Queued { id, time, entry });
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
            None => Stats::default(),
            Some(s) => Stats {
                enabled: true,
                queued: {
                    let q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
                    q.records.len() + s.committing.load(Ordering::Relaxed)
                },
                written: s.written.load(Ordering::Relaxed),
                dropped: s.dropped.load(Ordering::Relaxed),
                failed_batches: s.failed_batches.load(Ordering::Relaxed),
                expired: s.expired.load(Ordering::Relaxed),
                pruned: s.pruned.load(Ordering::Relaxed),
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
        query::query(&db::open_reader(&self.path)?, filter)
    }

    /// A follower of the log (the fleet's shipper); `None` when the log is off. Blocking.
    pub fn follow(&self) -> Result<Option<Follower>, StoreError> {
        if self.shared.is_none() {
            return Ok(None);
        }
        Follower::open(&self.path).map(Some)
    }

    /// Deletes the records older than `cutoff` (microseconds since the Unix epoch) now, as the
    /// writer does every minute for the retention; returns how many. Blocking; opens its own
    /// connection.
    pub fn expire(&self, cutoff: i64) -> Result<u64, StoreError> {
        if self.shared.is_none() {
            return Ok(0);
        }
        db::expire(&db::open(&self.path)?, cutoff)
    }

    /// Bytes the log's database uses (free pages excluded). Blocking.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        db::used_bytes(&db::open_reader(&self.path)?)
    }
}

impl Drop for ActivityLog {
    fn drop(&mut self) {
        self.flush_and_stop();
    }
}

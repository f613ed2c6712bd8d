//! The writer thread: owns the activity database's write connection, commits queued records in
//! batches, in id order, and keeps the log within its retention and its size bound.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::names::Names;
use super::{Queued, Shared, db};
use crate::storage::now_micros;
use crate::store::StoreError;

/// Most records in one transaction.
pub(super) const BATCH: usize = 8_192;
/// How long one transaction gathers records before it commits. Bigger transactions write each
/// index page once instead of once per few records: under load this is most of the log's cost.
const LINGER: Duration = Duration::from_millis(200);
/// Within a transaction, how often the writer takes what has been queued and inserts it. The
/// inserts are most of the writer's work: done a few milliseconds' worth at a time, they take
/// the CPU in slices of a fraction of a millisecond instead of tens of milliseconds at each
/// commit, during which decisions queued behind the writer on a small machine.
const SLICE: Duration = Duration::from_millis(2);
/// Records inserted between two yields of the CPU: about 50 µs of work.
const PIECE: usize = 8;
/// A slice longer than this (several milliseconds of records at full load) means the writer is
/// behind: it then inserts without yielding or pausing until it has caught up.
const BEHIND: usize = 128;
/// How often records past the retention are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// Past the size bound, the oldest records are deleted until the log is back to this share of
/// it, so pruning runs in occasional chunks rather than after every batch.
const SHRINK_TO: f64 = 0.9;

/// The limits the writer keeps the log within.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    /// Records older than this are deleted.
    pub retention_micros: i64,
    /// The most bytes the log's pages may hold.
    pub max_bytes: u64,
}

pub(super) fn spawn(
    conn: Connection,
    shared: Arc<Shared>,
    bounds: Bounds,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("policyd-activity".to_owned())
        .spawn(move || run(conn, &shared, bounds))
}

fn run(mut conn: Connection, shared: &Shared, bounds: Bounds) {
    // Swapped with the queue's buffer (see `take`), so both keep their capacity.
    let mut slice: VecDeque<Queued> = VecDeque::with_capacity(BATCH);
    let mut names = Names::new();
    let epoch = match db::epoch(&conn) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "activity log unreadable; its records will be dropped");
            0
        }
    };
    let mut next_expiry = Instant::now();
    loop {
        let (stopping, queued) = idle(shared, next_expiry);
        let stopped = if queued {
            let stopped = transaction(&mut conn, &mut names, epoch, shared, &mut slice);
            keep_within_size(&conn, shared, bounds);
            stopped
        } else {
            stopping
        };
        if Instant::now() >= next_expiry {
            expire(&conn, shared, bounds);
            next_expiry = Instant::now() + EXPIRE_EVERY;
        }
        if stopped {
            return;
        }
    }
}

/// Waits until a record is queued, the log is stopping, or `until`; returns whether it is
/// stopping and whether records are queued.
fn idle(shared: &Shared, until: Instant) -> (bool, bool) {
    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    while q.records.is_empty() && !q.stopping {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        q = shared
            .wake
            .wait_timeout(q, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    (q.stopping, !q.records.is_empty())
}

/// Moves up to `most` queued records into `slice`; returns whether the log is stopping with
/// nothing left queued.
fn take(shared: &Shared, slice: &mut VecDeque<Queued>, most: usize) -> bool {
    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    let n = q.records.len().min(most);
    if n == q.records.len() {
        // The whole queue changes hands by swapping buffers, so deciding threads wait on the
        // lock for a moment, never for thousands of records being moved.
        std::mem::swap(&mut q.records, slice);
    } else {
        slice.extend(q.records.drain(..n));
    }
    // Counted as queued until committed (or lost): added under the queue's lock, so a reader
    // of the stats never sees a record in neither place.
    shared.committing.fetch_add(n, Ordering::Relaxed);
    q.stopping && q.records.is_empty()
}

/// One transaction of the log: it inserts what is queued every [`SLICE`] and commits after
/// [`LINGER`], [`BATCH`] records, or the stop. Returns whether the log is stopping with nothing
/// left queued.
fn transaction(
    conn: &mut Connection,
    names: &mut Names,
    epoch: i64,
    shared: &Shared,
    slice: &mut VecDeque<Queued>,
) -> bool {
    let deadline = Instant::now() + LINGER;
    let mut tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(StoreError::from);
    let mut taken = 0;
    let stopped = loop {
        let stopped = take(shared, slice, BATCH - taken);
        taken += slice.len();
        // Behind (a long queue), the writer inserts at full speed; keeping up, it inserts
        // a piece at a time and lets a deciding thread woken on this core run in between,
        // instead of after the whole slice.
        let behind = slice.len() > BEHIND;
        let piece = if behind { slice.len().max(1) } else { PIECE };
        for records in slice.make_contiguous().chunks(piece) {
            if let Ok(t) = &tx
                && let Err(e) = db::write_rows(t, names, epoch, records)
            {
                tx = Err(e);
            }
            if !behind {
                std::thread::yield_now();
            }
        }
        slice.clear();
        if stopped || taken >= BATCH {
            break stopped;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        if !behind {
            std::thread::sleep(left.min(SLICE));
        }
    };
    let committed = tx.and_then(|t| Ok(t.commit()?));
    let n = taken as u64;
    match committed {
        Ok(()) => {
            shared.written.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            names.forget();
            shared.failed_batches.fetch_add(1, Ordering::Relaxed);
            shared.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::error!(error = %e, records = n, "activity batch lost: commit failed");
        }
    }
    shared.committing.store(0, Ordering::Relaxed);
    stopped
}

/// Deletes records past the retention.
fn expire(conn: &Connection, shared: &Shared, bounds: Bounds) {
    match db::expire(conn, now_micros() - bounds.retention_micros) {
        Ok(0) => {}
        Ok(n) => {
            shared.expired.fetch_add(n, Ordering::Relaxed);
            tracing::info!(expired = n, "deleted activity older than the retention");
        }
        Err(e) => tracing::error!(error = %e, "expiring old activity failed"),
    }
}

/// Deletes the oldest records while the log holds more than its size bound.
fn keep_within_size(conn: &Connection, shared: &Shared, bounds: Bounds) {
    let over = match db::used_bytes(conn) {
        Ok(used) => used > bounds.max_bytes,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the activity log's size");
            return;
        }
    };
    if !over {
        return;
    }
    let target = (bounds.max_bytes as f64 * SHRINK_TO) as u64;
    match db::shrink_to(conn, target) {
        Ok(n) => {
            let total = shared.pruned.fetch_add(n, Ordering::Relaxed) + n;
            tracing::warn!(
                pruned = n,
                pruned_total = total,
                max_bytes = bounds.max_bytes,
                "activity log reached its size bound; oldest records deleted"
            );
        }
        Err(e) => tracing::error!(error = %e, "pruning the activity log to its size bound failed"),
    }
}

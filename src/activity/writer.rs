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

/// Most records in one transaction.
pub(super) const BATCH: usize = 8_192;
/// How long the writer lets records gather before committing them. Bigger batches write each
/// index page once instead of once per few records: under load this is most of the log's cost.
const LINGER: Duration = Duration::from_millis(200);
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
    // Swapped with the queue's buffer (see below), so both keep their capacity.
    let mut batch: VecDeque<Queued> = VecDeque::with_capacity(BATCH);
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
        let stopping = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            // Idle until a record (or the stop, or the next expiry) arrives; under load the
            // queue is never empty and records pile up while the previous batch commits, which
            // is what batches them.
            while q.records.is_empty() && !q.stopping {
                let idle = next_expiry.saturating_duration_since(Instant::now());
                if idle.is_zero() {
                    break;
                }
                q = shared
                    .wake
                    .wait_timeout(q, idle)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            let deadline = Instant::now() + LINGER;
            while !q.records.is_empty() && q.records.len() < BATCH && !q.stopping {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                q = shared
                    .wake
                    .wait_timeout(q, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            let n = q.records.len().min(BATCH);
            if n == q.records.len() {
                // The whole queue changes hands by swapping buffers, so deciding threads wait
                // on the lock for a moment, never for thousands of records being moved.
                std::mem::swap(&mut q.records, &mut batch);
            } else {
                batch.extend(q.records.drain(..n));
            }
            // Counted as queued until committed (or lost): set under the queue's lock, so a
            // reader of the stats never sees the batch in neither place.
            shared.committing.store(n, Ordering::Relaxed);
            q.stopping && q.records.is_empty()
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match db::insert(&mut conn, &mut names, epoch, batch.make_contiguous()) {
                Ok(()) => {
                    shared.written.fetch_add(n, Ordering::Relaxed);
                    keep_within_size(&conn, shared, bounds);
                }
                Err(e) => {
                    shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                    shared.dropped.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(error = %e, records = n, "activity batch lost: commit failed");
                }
            }
            batch.clear();
            shared.committing.store(0, Ordering::Relaxed);
        }
        if Instant::now() >= next_expiry {
            expire(&conn, shared, bounds);
            next_expiry = Instant::now() + EXPIRE_EVERY;
        }
        if stopping {
            return;
        }
    }
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

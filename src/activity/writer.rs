//! The writer thread: owns the activity database's write connection and commits queued records
//! in batches, in id order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{Record, Shared, db};

/// Most records in one transaction.
pub(super) const BATCH: usize = 4096;
/// How long the writer lets records gather before committing them. Bigger batches write each
/// index page once instead of once per few records: under load this is most of the log's cost.
const LINGER: Duration = Duration::from_millis(100);

pub(super) fn spawn(
    conn: Connection,
    shared: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("policyd-activity".to_owned())
        .spawn(move || run(conn, &shared))
}

fn run(mut conn: Connection, shared: &Shared) {
    let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
    loop {
        let stopping = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            // Idle until a record (or the stop) arrives; under load the queue is never empty and
            // records pile up while the previous batch commits, which is what batches them.
            while q.records.is_empty() && !q.stopping {
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            let deadline = Instant::now() + LINGER;
            while q.records.len() < BATCH && !q.stopping {
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
            batch.extend(q.records.drain(..n));
            q.stopping && q.records.is_empty()
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match db::insert(&mut conn, &batch) {
                Ok(()) => {
                    shared.written.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                    shared.dropped.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(error = %e, records = n, "activity batch lost: commit failed");
                }
            }
            batch.clear();
        }
        if stopping {
            return;
        }
    }
}

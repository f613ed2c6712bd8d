//! Serving lanes: threads that each run a single-threaded async runtime and serve the
//! connections the accept loop hands them.
//!
//! A connection stays on its lane for life, so a lane wakes only for its own sockets and a
//! request never moves between threads. Under tokio's multi-threaded scheduler a worker that
//! finds more than one ready task wakes a parked sibling to steal work; at moderate load
//! (requests arriving one by one, workers parking between them) that wake-up, its context
//! switch and the sibling's empty search cost about a fifth of a single check's CPU
//! (BENCHMARKS.md, "Serving threads"). Connections are dealt to lanes in turn.
//!
//! The price: nothing steals a lane's work, so nothing on a lane may block. Decisions read
//! entities from memory only (`Store::slice_now`); store reads and other blocking work go to
//! the blocking pool, and everything else (reloads, the reservation sweep, fleet
//! replication) runs on the shared runtime: the lanes only carry connections.

use std::sync::Arc;
use std::thread::JoinHandle;

use hyper_util::server::graceful::Watcher;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::state::AppState;

/// An accepted connection, detached from the accepting runtime's reactor.
pub(super) enum Socket {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

/// A connection to serve: its socket, the graceful-shutdown watch, and its connection slot.
struct Job {
    socket: Socket,
    watcher: Watcher,
    permit: OwnedSemaphorePermit,
}

/// The serving threads. Dropping this closes their queues: each lane then stops, ending the
/// connections it still serves.
pub(super) struct Lanes {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
}

impl Lanes {
    /// Starts `n` lanes (at least one) serving with `state`.
    pub(super) fn start(n: usize, state: &Arc<AppState>) -> std::io::Result<Lanes> {
        let mut lanes = Lanes {
            queues: Vec::new(),
            threads: Vec::new(),
            next: 0,
        };
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let state = state.clone();
            let name = format!("policyd-http-{i}");
            let open = state.metrics.connections(&name);
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || runtime.block_on(lane(rx, state, open)))?;
            lanes.queues.push(tx);
            lanes.threads.push(thread);
        }
        Ok(lanes)
    }

    /// Hands `socket` to the next lane.
    pub(super) fn serve(&mut self, socket: Socket, watcher: Watcher, permit: OwnedSemaphorePermit) {
        let lane = self.next % self.queues.len();
        self.next = self.next.wrapping_add(1);
        let job = Job {
            socket,
            watcher,
            permit,
        };
        if self.queues[lane].send(job).is_err() {
            // The lane's thread is gone (it cannot end before its queue closes unless it
            // panicked): the connection is dropped, closing it, and the slot freed.
            tracing::error!(lane, "a serving lane has stopped; connection dropped");
        }
    }

    /// Stops the lanes (ending what they still serve) and waits for their threads.
    pub(super) async fn stop(mut self) {
        self.queues.clear();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// One lane: serves each connection it is handed on a task of its own, until its queue
/// closes.
async fn lane(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    state: Arc<AppState>,
    open: prometheus::IntGauge,
) {
    while let Some(job) = jobs.recv().await {
        match super::Conn::attach(job.socket) {
            Ok(conn) => conn.serve(&state, job.watcher, job.permit, open.clone()),
            Err(e) => tracing::warn!(error = %e, "cannot serve an accepted connection"),
        }
    }
}

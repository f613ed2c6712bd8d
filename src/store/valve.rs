//! The stall valve: when the request's own thread may read the store.
//!
//! A cache miss read from SQLite takes a few microseconds when the page is in the OS page
//! cache, far less than handing the read to a blocking thread and waking the request again. So
//! misses are read on the request's thread, but only while reads are fast: a read in flight
//! for longer than [`SLOW`], or one that took that long, closes the valve, and until it opens
//! again ([`COOL_OFF`] after the last slow read, and never while a slow read is still in
//! flight) misses go to a blocking thread, where the decision deadline still answers on time.
//! A disk that stalls therefore holds at most the requests already reading it; the runtime keeps
//! answering everything else.

use std::cell::Cell;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A read taking longer than this is not a page-cache read: something is stalling.
pub const SLOW: Duration = Duration::from_millis(10);
/// How long the valve stays closed after a slow read.
pub const COOL_OFF: Duration = Duration::from_secs(1);
/// Threads that may read inline at once; more use the blocking pool.
const SLOTS: usize = 64;

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

thread_local! {
    /// This thread's slot in [`StallValve::reading`], once it has one.
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

fn now_micros() -> u64 {
    u64::try_from(ORIGIN.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// See the module docs. One per store.
pub struct StallValve {
    /// Per reading thread: when its inline read began (microseconds after `ORIGIN`, plus one),
    /// or 0 when it is not reading.
    reading: [AtomicU64; SLOTS],
    /// Slots handed out so far.
    slots: AtomicUsize,
    /// Inline reads are allowed from this time on (microseconds after `ORIGIN`).
    open_at: AtomicU64,
    /// Inline reads that found the valve closed, since start.
    refused: AtomicU64,
}

impl Default for StallValve {
    fn default() -> Self {
        StallValve {
            reading: std::array::from_fn(|_| AtomicU64::new(0)),
            slots: AtomicUsize::new(0),
            open_at: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

impl StallValve {
    /// Permission to read inline now, or `None` when the valve is closed.
    pub fn enter(&self) -> Option<Reading<'_>> {
        let now = now_micros();
        let slow = u64::try_from(SLOW.as_micros()).unwrap_or(u64::MAX);
        let in_use = self.slots.load(Ordering::Acquire).min(SLOTS);
        let stalled = self.reading[..in_use].iter().any(|r| {
            let since = r.load(Ordering::Acquire);
            since != 0 && now.saturating_sub(since - 1) > slow
        });
        let slot = self.slot();
        if stalled || now < self.open_at.load(Ordering::Acquire) || slot.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let slot = slot?;
        self.reading[slot].store(now + 1, Ordering::Release);
        Some(Reading {
            valve: self,
            slot,
            started: now,
        })
    }

    /// Inline reads refused because the valve was closed, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn slot(&self) -> Option<usize> {
        SLOT.with(|s| {
            if let Some(slot) = s.get() {
                return Some(slot);
            }
            let slot = self.slots.fetch_add(1, Ordering::AcqRel);
            if slot >= SLOTS {
                return None;
            }
            s.set(Some(slot));
            Some(slot)
        })
    }
}

/// An inline read in progress; dropping it ends the read, closing the valve if it was slow.
pub struct Reading<'a> {
    valve: &'a StallValve,
    slot: usize,
    started: u64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.valve.reading[self.slot].store(0, Ordering::Release);
        let now = now_micros();
        if now.saturating_sub(self.started) > u64::try_from(SLOW.as_micros()).unwrap_or(0) {
            let until = now + u64::try_from(COOL_OFF.as_micros()).unwrap_or(0);
            self.valve.open_at.fetch_max(until, Ordering::AcqRel);
            tracing::warn!(
                read_ms = (now - self.started) / 1000,
                "a store read was slow; cache misses go to blocking threads for a while"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_read_closes_the_valve_for_everyone_until_the_cool_off() {
        let valve = StallValve::default();
        drop(valve.enter().expect("open at start"));
        let reading = valve.enter().expect("still open");
        std::thread::sleep(SLOW + Duration::from_millis(5));
        // While that read is still in flight, another thread is refused...
        std::thread::scope(|s| {
            s.spawn(|| assert!(valve.enter().is_none(), "a stalled read closes it"));
        });
        drop(reading);
        // ...and after it ends, everyone is, until the cool-off is over.
        assert!(valve.enter().is_none());
        assert_eq!(valve.refused(), 2);
        std::thread::sleep(COOL_OFF + Duration::from_millis(20));
        assert!(valve.enter().is_some(), "open again after the cool-off");
    }
}

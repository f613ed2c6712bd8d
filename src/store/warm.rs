//! Warming the entity cache's compact tier at start: a daemon restarted over a large store reads
//! every entity once, in the background, instead of from SQLite on the decisions that first
//! need each one.
//!
//! The pass scans the store in one read transaction, so what it reads is the store as it was
//! when it began. It keeps what it read only while no write has committed since then (the
//! cache's write epoch): the first write ends the pass, and misses fill the tier from there on.
//! It stops when the tier is nearly full (a first-in, first-out tier would otherwise drop what
//! it warmed first) and when the daemon stops.

use std::sync::atomic::Ordering;

use super::{Store, StoreError};

/// Compact forms handed to the cache at a time.
const CHUNK: usize = 1024;

impl Store {
    /// Reads every stored entity into the compact tier, as far as it holds them; the number
    /// kept. Returns early (with what was kept) when a write commits meanwhile or
    /// [`Store::stop_warming`] is called.
    pub fn warm(&self) -> Result<usize, StoreError> {
        // Filled to 7/8: the tier drops its oldest eighth when its newest segment is full.
        let budget = self.cache.compact_budget() / 8 * 7;
        if budget == 0 {
            return Ok(0);
        }
        let epoch = self.cache.epoch();
        let (mut kept, mut bytes, mut current) = (0, 0u64, true);
        let mut chunk = Vec::with_capacity(CHUNK);
        self.backend.scan(&mut |record| {
            if self.stop_warming.load(Ordering::Relaxed) {
                return false;
            }
            if let Ok(json) = serde_json::from_str(&record.body)
                && let Some(form) = self.cache.form(&json)
            {
                bytes += form.0.len() as u64 + 2;
                chunk.push(form);
            }
            if chunk.len() == CHUNK {
                let n = chunk.len();
                current = self.cache.fill_forms(epoch, std::mem::take(&mut chunk));
                kept += if current { n } else { 0 };
            }
            current && bytes < budget
        })?;
        let n = chunk.len();
        if current && n > 0 && self.cache.fill_forms(epoch, chunk) {
            kept += n;
        }
        Ok(kept)
    }

    /// Ends a running [`Store::warm`] at its next entity.
    pub fn stop_warming(&self) {
        self.stop_warming.store(true, Ordering::Relaxed);
    }
}

//! A bounded cache of parsed entities that can never serve a value older than the last write.
//!
//! Parsing Cedar entity JSON costs far more than evaluating policies, so decisions read parsed
//! entities from here. Each entry holds only its own entity's data, so a write invalidates
//! exactly the entities it wrote.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cedar_policy::EntityUid;
use quick_cache::sync::Cache;

use super::codec::Parsed;

/// `None` entries remember that an entity is absent.
type Entry = Option<Arc<Parsed>>;

pub(super) struct EntityCache {
    entries: Cache<EntityUid, Entry>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Counts writes. A reader fills the cache only if no write committed since it began
    /// reading, so a slow reader can never re-insert what a write just replaced.
    epoch: RwLock<u64>,
}

impl EntityCache {
    pub(super) fn new(capacity: usize) -> Self {
        EntityCache {
            entries: Cache::new(capacity.max(1)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            epoch: RwLock::new(0),
        }
    }

    pub(super) fn get(&self, uid: &EntityUid) -> Option<Entry> {
        let found = self.entries.get(uid);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// `(hits, misses, entries)` since start.
    pub(super) fn stats(&self) -> (u64, u64, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.entries.len(),
        )
    }

    /// The write epoch to pass to [`EntityCache::fill`] after reading the backend.
    pub(super) fn epoch(&self) -> u64 {
        *self.epoch.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Caches what was read at `epoch`, unless a write has happened since.
    pub(super) fn fill(&self, epoch: u64, entries: Vec<(EntityUid, Entry)>) {
        let current = self.epoch.read().unwrap_or_else(|p| p.into_inner());
        if *current != epoch {
            return;
        }
        for (uid, entry) in entries {
            self.entries.insert(uid, entry);
        }
    }

    /// Runs a backend write and drops the cached copies of `uids`, excluding fills meanwhile.
    ///
    /// The entries are dropped even when the write fails: its outcome may be unknown.
    pub(super) fn write<T, E>(
        &self,
        uids: &[&EntityUid],
        write: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let result = write();
        let mut epoch = self.epoch.write().unwrap_or_else(|p| p.into_inner());
        *epoch += 1;
        for uid in uids {
            self.entries.remove(*uid);
        }
        result
    }
}

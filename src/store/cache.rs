//! A bounded cache of resolved entities that can never serve a value older than the last write.
//!
//! Decoding entity JSON costs far more than evaluating policies, so decisions read resolved
//! entities from here. An entry holds its entity's own data and its ancestor closure, so a write
//! invalidates the entities it wrote, and also every entry when it changed the ancestors of an
//! entity that has descendants (their closures are then stale). Writes that move a subtree are
//! rare; writes of leaves (users, items) are the common case and evict only themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cedar_policy::EntityUid;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::resolve::Resolved;

/// `None` entries remember that an entity is absent.
pub(super) type Entry = Option<Arc<Resolved>>;

/// Weighs an entry by the memory it takes (see [`super::resolve::weight`]).
#[derive(Clone)]
struct Bytes;

/// What an entry for an absent entity costs: its key and the slot.
const ABSENT: u64 = 200;

impl Weighter<EntityUid, Entry> for Bytes {
    fn weight(&self, _: &EntityUid, entry: &Entry) -> u64 {
        entry.as_ref().map_or(ABSENT, |r| r.weight)
    }
}

pub(super) struct EntityCache {
    entries: Cache<EntityUid, Entry, Bytes>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Counts writes. A reader fills the cache only if no write committed since it began
    /// reading, so a slow reader can never re-insert what a write just replaced.
    epoch: RwLock<u64>,
}

/// What a write tells the cache.
pub(super) enum Invalidate {
    /// Only the written entities changed.
    Written,
    /// The ancestors of some entity with descendants changed: every closure may be stale.
    Everything,
}

impl EntityCache {
    /// A cache holding about `bytes` of entities.
    pub(super) fn new(bytes: u64) -> Self {
        // Sized for entities of about 2 KiB; the weights, not this estimate, bound the cache.
        let estimated = usize::try_from(bytes / 2048).unwrap_or(usize::MAX).max(16);
        EntityCache {
            entries: Cache::with_weighter(estimated, bytes.max(1), Bytes),
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

    /// Runs a backend write and drops what it made stale, excluding fills meanwhile: the cached
    /// copies of `uids`, or everything when `scope` says so. A failed write drops everything:
    /// its outcome may be unknown.
    pub(super) fn write<T, E>(
        &self,
        uids: &[&EntityUid],
        write: impl FnOnce() -> Result<T, E>,
        scope: impl FnOnce(&T) -> Invalidate,
    ) -> Result<T, E> {
        let result = write();
        let mut epoch = self.epoch.write().unwrap_or_else(|p| p.into_inner());
        *epoch += 1;
        match result.as_ref().map(scope) {
            Ok(Invalidate::Written) => {
                for uid in uids {
                    self.entries.remove(*uid);
                }
            }
            Ok(Invalidate::Everything) | Err(_) => self.entries.clear(),
        }
        result
    }
}

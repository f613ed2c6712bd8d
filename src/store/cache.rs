//! A bounded cache of entities, in two tiers, that can never serve a value older than the last
//! write.
//!
//! Decoding entity JSON costs far more than evaluating policies, so decisions read resolved
//! entities from here. An entry holds its entity's own data and its ancestor closure, so a write
//! invalidates the entities it wrote, and also every entry when it changed the ancestors of an
//! entity that has descendants (their closures are then stale). Writes that move a subtree are
//! rare; writes of leaves (users, items) are the common case and evict only themselves.
//!
//! A resolved entity takes kilobytes, so behind it a second tier keeps entities in compact form
//! (see [`super::compact`], a few dozen bytes each, in an [`Arena`]): a miss of the first tier
//! that the second holds is a decode instead of a database read and a JSON parse. A compact
//! entry holds only its entity's own data, so only writes of that entity make it stale: writes
//! put their entities' new compact forms in (write-through), and a write whose entities are not
//! all known (a streamed import, a replica's reset) empties the tier.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cedar_policy::EntityUid;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::arena::Arena;

use super::codec::Decoded;
use super::compact::Symbols;
use super::resolve::Resolved;

/// An entity's compact form and the length of its key (see [`Symbols::encode`]).
pub(super) type Form = (Vec<u8>, usize);

/// What a read of the backend found, to be cached by [`EntityCache::fill`].
#[derive(Default)]
pub(super) struct Fill {
    /// Resolved entities (and absent ones).
    pub(super) entries: Vec<(EntityUid, Entry)>,
    /// Compact forms of what was read from the backend.
    pub(super) forms: Vec<Form>,
}

/// What one read asked of the tiers: first-tier hits and misses, second-tier hits. Counted
/// (see [`EntityCache::count`]) only once the read is used: a read from memory that gives up
/// is made again on a blocking thread, and counts then.
#[derive(Default)]
pub(super) struct Lookups {
    pub(super) hits: u64,
    pub(super) misses: u64,
    pub(super) compact_hits: u64,
    /// Entities a miss resolved, or found in the first tier for its closure (a dataset's
    /// project): the rest of the slice takes them from here instead of probing the first
    /// tier again, a table too large for the CPU's caches over a large store.
    pub(super) met: Vec<(EntityUid, Arc<Resolved>)>,
}

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
    /// The second tier: compact forms; `None` when turned off.
    compact: Option<Arena>,
    symbols: Symbols,
    hits: AtomicU64,
    misses: AtomicU64,
    compact_hits: AtomicU64,
    /// Counts writes. A reader fills the cache only if no write committed since it began
    /// reading, so a slow reader can never re-insert what a write just replaced.
    epoch: RwLock<u64>,
}

/// Which entities a write wrote.
pub(super) enum Written<'a> {
    /// These, with the compact forms of those that have one.
    Entities(&'a [&'a EntityUid], Forms<'a>),
    /// Not known: every cached entity may be stale.
    Unknown,
}

/// The compact forms of a write's entities: at hand, or being computed on another thread
/// while the backend writes (see `Store::upsert`).
pub(super) enum Forms<'a> {
    /// Computed.
    Ready(Vec<Form>),
    /// Being computed by this thread.
    Computing(std::thread::ScopedJoinHandle<'a, Vec<Form>>),
}

impl Forms<'_> {
    /// The forms; none when their thread failed (the written entities then leave the tier
    /// and are read again from the backend).
    pub(super) fn get(self) -> Vec<Form> {
        match self {
            Forms::Ready(forms) => forms,
            Forms::Computing(handle) => handle.join().unwrap_or_default(),
        }
    }
}

/// What a write tells the cache about ancestor closures.
pub(super) enum Invalidate {
    /// Only the written entities changed.
    Written,
    /// The ancestors of some entity with descendants changed: every closure may be stale.
    Everything,
}

impl EntityCache {
    /// A cache holding about `bytes` of resolved entities and `compact` bytes of compact ones
    /// (0: no second tier).
    pub(super) fn new(bytes: u64, compact: u64) -> Self {
        // Sized for entities of about 2 KiB; the weights, not this estimate, bound the cache.
        let estimated = usize::try_from(bytes / 2048).unwrap_or(usize::MAX).max(16);
        EntityCache {
            entries: Cache::with_weighter(estimated, bytes.max(1), Bytes),
            compact: (compact > 0).then(|| Arena::new(compact)),
            symbols: Symbols::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            compact_hits: AtomicU64::new(0),
            epoch: RwLock::new(0),
        }
    }

    /// The first tier's entry for `uid`, not counted: the caller counts with
    /// [`EntityCache::count`].
    pub(super) fn peek(&self, uid: &EntityUid) -> Option<Entry> {
        self.entries.get(uid)
    }

    /// Counts what a read asked of the tiers.
    pub(super) fn count(&self, lookups: &Lookups) {
        for (counter, n) in [
            (&self.hits, lookups.hits),
            (&self.misses, lookups.misses),
            (&self.compact_hits, lookups.compact_hits),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// `uid` decoded from the second tier, when it holds it; the caller counts the hit.
    pub(super) fn decoded(&self, uid: &EntityUid) -> Option<Decoded> {
        let arena = self.compact.as_ref()?;
        let key = self.symbols.key(uid)?;
        arena.with(&key, |bytes| self.symbols.decode(bytes))?
    }

    /// The compact form of a canonical entity JSON, when the second tier is on and can hold it.
    pub(super) fn form(&self, json: &serde_json::Value) -> Option<Form> {
        self.compact.as_ref()?;
        self.symbols.encode(json)
    }

    /// Second-tier `(hits, entries)` since start.
    pub(super) fn compact_stats(&self) -> (u64, usize) {
        (
            self.compact_hits.load(Ordering::Relaxed),
            self.compact.as_ref().map_or(0, Arena::len),
        )
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

    /// Caches what was read at `epoch`, unless a write has happened since (`false` then).
    pub(super) fn fill(&self, epoch: u64, fill: Fill) -> bool {
        let current = self.epoch.read().unwrap_or_else(|p| p.into_inner());
        if *current != epoch {
            return false;
        }
        for (uid, entry) in fill.entries {
            self.entries.insert(uid, entry);
        }
        if let Some(arena) = &self.compact {
            for (form, key) in fill.forms {
                arena.insert(&form, key);
            }
        }
        true
    }

    /// Keeps compact forms read at `epoch`, unless a write has happened since; `false` then.
    pub(super) fn fill_forms(&self, epoch: u64, forms: Vec<Form>) -> bool {
        self.fill(
            epoch,
            Fill {
                entries: Vec::new(),
                forms,
            },
        )
    }

    /// The bytes of compact forms the second tier holds at most (0 when it is off).
    pub(super) fn compact_budget(&self) -> u64 {
        self.compact.as_ref().map_or(0, Arena::budget)
    }

    /// Runs a backend write and drops what it made stale, excluding fills meanwhile: the
    /// resolved copies of the written entities, or all of them when `scope` says so; the compact
    /// forms of the written entities are replaced by the new ones. A failed write drops what
    /// it may have changed: its outcome may be unknown.
    pub(super) fn write<T, E>(
        &self,
        written: Written<'_>,
        write: impl FnOnce() -> Result<T, E>,
        scope: impl FnOnce(&T) -> Invalidate,
    ) -> Result<T, E> {
        let result = write();
        // Awaited before fills are excluded, not while.
        let written = match written {
            Written::Entities(uids, forms) => Some((uids, forms.get())),
            Written::Unknown => None,
        };
        let mut epoch = self.epoch.write().unwrap_or_else(|p| p.into_inner());
        *epoch += 1;
        let Some((uids, forms)) = written else {
            self.entries.clear();
            if let Some(arena) = &self.compact {
                arena.clear();
            }
            return result;
        };
        match result.as_ref().map(scope) {
            Ok(Invalidate::Written) => {
                for uid in uids {
                    self.entries.remove(*uid);
                }
            }
            Ok(Invalidate::Everything) | Err(_) => self.entries.clear(),
        }
        if let Some(arena) = &self.compact {
            for uid in uids {
                if let Some(key) = self.symbols.key(uid) {
                    arena.remove(&key);
                }
            }
            if result.is_ok() {
                for (form, key) in forms {
                    arena.insert(&form, key);
                }
            }
        }
        result
    }
}

//! The entity store: where Cedar entities live, and how the entities one decision can touch are
//! gathered from it.
//!
//! [`EntityStore`] is the narrow interface a backend implements (SQLite today, see [`sqlite`]).
//! [`Store`] wraps a backend with a cache of parsed entities and the slicing algorithm, which
//! are the same for every backend.

mod cache;
pub mod codec;
mod materialize;
mod slice;
pub mod sqlite;

use std::sync::Arc;

use cedar_policy::{Entity, EntityUid};

use crate::storage::{QuotaCheck, ReserveOutcome, Usage};
use cache::EntityCache;
pub use codec::Record;

/// What a backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// The database file or its directory could not be prepared.
    #[error("cannot open store at {path}: {message}")]
    Open {
        /// The database path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The write would make an entity its own ancestor, which Cedar cannot evaluate.
    #[error("writing {0} would make it its own ancestor (a cycle in the parent hierarchy)")]
    Cycle(String),
    /// A stored entity could not be read back.
    #[error(transparent)]
    Corrupt(#[from] codec::DecodeError),
}

/// The operations a storage backend provides. Every method blocks; callers on an async runtime
/// run them on a blocking thread.
pub trait EntityStore: Send + Sync {
    /// Inserts or replaces every record in one durable transaction: all of them or none.
    /// Refuses ([`StoreError::Cycle`]) a write after which an entity would be its own ancestor.
    fn upsert(&self, records: &[Record]) -> Result<(), StoreError>;
    /// Removes one entity; `false` when it was absent.
    fn delete(&self, uid: &EntityUid) -> Result<bool, StoreError>;
    /// The stored record of one entity.
    fn get(&self, uid: &EntityUid) -> Result<Option<Record>, StoreError>;
    /// The uid and stored body of `uid` (when stored) and of every stored ancestor, in one
    /// indexed query. Bodies are returned unparsed: the caller parses each once.
    fn get_with_ancestors(&self, uid: &EntityUid) -> Result<Vec<(EntityUid, String)>, StoreError>;
    /// Number of stored entities.
    fn count(&self) -> Result<u64, StoreError>;
    /// Checks that the backend answers, cheaply.
    fn ping(&self) -> Result<(), StoreError>;
    /// Calls `visit` with every stored record until it returns `false`.
    fn scan(&self, visit: &mut dyn FnMut(Record) -> bool) -> Result<(), StoreError>;
}

/// Storage accounting, quotas and reservations, kept by the backend in the same transactions as
/// the entity writes that change them. Every method blocks.
pub trait StorageLedger: Send + Sync {
    /// Usage of a stored project or organization; `None` when the entity is not stored.
    fn usage(&self, uid: &EntityUid, now: i64) -> Result<Option<Usage>, StoreError>;
    /// Stored children of `parent` whose type is `ty`.
    fn children(&self, parent: &EntityUid, ty: &str) -> Result<Vec<EntityUid>, StoreError>;
    /// Whether `add` bytes fit a project and its organization; `None` for an unknown project.
    fn check_quota(
        &self,
        project: &EntityUid,
        add: i64,
        now: i64,
    ) -> Result<Option<QuotaCheck>, StoreError>;
    /// Checks and reserves atomically: concurrent reservations never together exceed a quota.
    fn reserve(
        &self,
        project: &EntityUid,
        bytes: i64,
        ttl_micros: i64,
        idempotency_key: Option<&str>,
        now: i64,
    ) -> Result<ReserveOutcome, StoreError>;
    /// Releases a reservation; `false` when there is none with that id.
    fn release(&self, id: &str) -> Result<bool, StoreError>;
    /// Deletes up to `limit` expired reservations, returning how many.
    fn sweep_reservations(&self, now: i64, limit: i64) -> Result<usize, StoreError>;
}

/// Everything a storage backend provides.
pub trait Backend: EntityStore + StorageLedger {
    /// The backend as its storage ledger.
    fn as_ledger(&self) -> &dyn StorageLedger;
}

impl<T: EntityStore + StorageLedger> Backend for T {
    fn as_ledger(&self) -> &dyn StorageLedger {
        self
    }
}

/// A backend behind a cache of parsed entities, with decision slicing on top.
pub struct Store {
    backend: Box<dyn Backend>,
    cache: EntityCache,
}

impl Store {
    /// The storage ledger: usage, quotas, reservations.
    pub fn ledger(&self) -> &dyn StorageLedger {
        self.backend.as_ledger()
    }

    /// Wraps `backend`, caching at most `cache_capacity` parsed entities.
    pub fn new(backend: Box<dyn Backend>, cache_capacity: usize) -> Self {
        Store {
            backend,
            cache: EntityCache::new(cache_capacity),
        }
    }

    /// Writes `records` atomically; once this returns, every decision sees them.
    pub fn upsert(&self, records: &[Record]) -> Result<(), StoreError> {
        let uids: Vec<&EntityUid> = records.iter().map(|r| &r.uid).collect();
        self.cache.write(&uids, || self.backend.upsert(records))
    }

    /// Deletes one entity; once this returns, no decision sees it.
    pub fn delete(&self, uid: &EntityUid) -> Result<bool, StoreError> {
        self.cache.write(&[uid], || self.backend.delete(uid))
    }

    /// The stored record of one entity.
    pub fn get(&self, uid: &EntityUid) -> Result<Option<Record>, StoreError> {
        self.backend.get(uid)
    }

    /// Number of stored entities.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.backend.count()
    }

    /// Calls `visit` with every stored record until it returns `false`.
    pub fn scan(&self, visit: &mut dyn FnMut(Record) -> bool) -> Result<(), StoreError> {
        self.backend.scan(visit)
    }

    /// Parsed-entity cache `(hits, misses, entries)` since start.
    pub fn cache_stats(&self) -> (u64, u64, usize) {
        self.cache.stats()
    }

    /// Checks that the backend answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.backend.ping()
    }

    /// Every stored entity a decision can touch: the `roots`, all their ancestors, and the
    /// entities reachable through attributes up to `depth` dereferences (with their ancestors).
    pub fn slice(&self, roots: &[EntityUid], depth: u32) -> Result<Vec<Entity>, StoreError> {
        slice::slice(roots, depth, |uid| self.fetch(uid))
    }

    /// [`Store::slice`] from the cache alone: `None` as soon as an entity is not cached. Never
    /// blocks, so a decision whose entities are all cached needs no trip to a blocking thread.
    pub fn slice_cached(&self, roots: &[EntityUid], depth: u32) -> Option<Vec<Entity>> {
        slice::slice(roots, depth, |uid| self.cache.get(uid).ok_or(())).ok()
    }

    /// Id of the organization `uid` is or belongs to (through its stored ancestors); the
    /// smallest when there are several. `org_type` is the organization entity type.
    pub fn organization_of(
        &self,
        uid: &EntityUid,
        org_type: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![uid.clone()];
        let mut found: Option<String> = None;
        while let Some(u) = stack.pop() {
            if !seen.insert(u.clone()) {
                continue;
            }
            if u.type_name().to_string() == org_type {
                let id = u.id().unescaped().to_owned();
                if found.as_ref().is_none_or(|f| id < *f) {
                    found = Some(id);
                }
                if u == *uid {
                    return Ok(found);
                }
            }
            if let Some(parsed) = self.fetch(&u)? {
                stack.extend(parsed.parents.iter().cloned());
            }
        }
        Ok(found)
    }

    /// One parsed entity, from the cache or else the backend (which also warms its ancestors).
    fn fetch(&self, uid: &EntityUid) -> Result<Option<Arc<codec::Parsed>>, StoreError> {
        if let Some(hit) = self.cache.get(uid) {
            return Ok(hit);
        }
        let epoch = self.cache.epoch();
        let stored = self.backend.get_with_ancestors(uid)?;
        let mut found = None;
        let mut parsed = Vec::with_capacity(stored.len());
        for (stored_uid, body) in stored {
            let p = Arc::new(codec::decode(&stored_uid, &body)?);
            if stored_uid == *uid {
                found = Some(p.clone());
            }
            parsed.push((stored_uid, Some(p)));
        }
        if found.is_none() {
            parsed.push((uid.clone(), None));
        }
        self.cache.fill(epoch, parsed);
        Ok(found)
    }
}

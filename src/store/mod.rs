//! The entity store: where Cedar entities live, and how the entities one decision can touch are
//! gathered from it.
//!
//! [`EntityStore`] is the narrow interface a backend implements (SQLite today, see [`sqlite`]).
//! [`Store`] wraps a backend with a cache of parsed entities and the slicing algorithm, which
//! are the same for every backend.

mod actions;
mod cache;
mod canonical;
pub mod codec;
mod compact;
mod forms;
mod materialize;
mod organization;
mod read;
pub mod replica;
pub mod resolve;
mod slice;
pub mod sqlite;
mod warm;

use cedar_policy::EntityUid;

use crate::search::Filter;
use crate::storage::{QuotaCheck, ReserveOutcome, Usage};
use cache::{EntityCache, Forms, Invalidate, Written};

pub use codec::Record;
pub use resolve::Resolved;

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
    /// The caller of a streamed write gave it up (see [`Store::upsert_stream`]); nothing of it
    /// was written.
    #[error("the write was abandoned before it completed")]
    Abandoned,
    /// The backend cannot do this (like a backend that cannot be a fleet replica).
    #[error("this store cannot {0}")]
    Unsupported(&'static str),
}

/// What a committed write changed, as far as cached ancestor closures are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteEffect {
    /// Some written or deleted entity that has stored descendants got other ancestors (new
    /// parents, none any more, or gone): the closures of those descendants changed too.
    pub hierarchy_changed: bool,
}

/// Yields the chunks of a streamed write (see [`EntityStore::upsert_stream`]).
pub type NextChunk<'a> = dyn FnMut() -> Result<Option<Vec<Record>>, StoreError> + 'a;

/// The operations a storage backend provides. Every method blocks; callers on an async runtime
/// run them on a blocking thread.
pub trait EntityStore: Send + Sync {
    /// Inserts or replaces every record in one durable transaction: all of them or none.
    /// Refuses ([`StoreError::Cycle`]) a write after which an entity would be its own ancestor.
    fn upsert(&self, records: &[Record]) -> Result<WriteEffect, StoreError>;
    /// [`EntityStore::upsert`] of every chunk `next` yields, in one transaction, each chunk
    /// written as a write of its own would be (so a caller can prepare the next chunk while
    /// this one is written): all of them or none. `next` gives `Ok(None)` after the last chunk;
    /// an error from it abandons the transaction. The default gathers every chunk first.
    fn upsert_stream(&self, next: &mut NextChunk<'_>) -> Result<WriteEffect, StoreError> {
        let mut all = Vec::new();
        while let Some(chunk) = next()? {
            all.extend(chunk);
        }
        self.upsert(&all)
    }
    /// Removes one entity; `None` when it was absent.
    fn delete(&self, uid: &EntityUid) -> Result<Option<WriteEffect>, StoreError>;
    /// The stored record of one entity.
    fn get(&self, uid: &EntityUid) -> Result<Option<Record>, StoreError>;
    /// The stored body (canonical entity JSON) of one entity, unparsed: the caller decodes it
    /// once. The read behind every cache miss, so a backend keeps it to one indexed lookup.
    fn body(&self, uid: &EntityUid) -> Result<Option<String>, StoreError>;
    /// Number of stored entities.
    fn count(&self) -> Result<u64, StoreError>;
    /// Checks that the backend answers, cheaply.
    fn ping(&self) -> Result<(), StoreError>;
    /// Calls `visit` with every stored record until it returns `false`.
    fn scan(&self, visit: &mut dyn FnMut(Record) -> bool) -> Result<(), StoreError>;
    /// Up to `limit` ids of stored entities of type `ty` whose id sorts after `after`, in id
    /// order, holding every such entity in `filter` (more is allowed: a search decides each
    /// candidate). The default scans; a backend with indexes narrows by the filter.
    fn candidates(
        &self,
        ty: &str,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let _ = filter;
        let mut ids = Vec::new();
        self.scan(&mut |record| {
            let id = record.uid.id().unescaped();
            if record.uid.type_name().to_string() == ty && after.is_none_or(|a| id > a) {
                ids.push(id.to_owned());
            }
            true
        })?;
        ids.sort();
        ids.truncate(limit);
        Ok(ids)
    }
    /// Applies a batch of upstream changes and records its position, in one transaction (fleet
    /// mode, see [`replica`]).
    fn replicate(&self, _batch: &replica::Replicated) -> Result<WriteEffect, StoreError> {
        Err(StoreError::Unsupported("be a fleet replica"))
    }
    /// The replica position last recorded by [`EntityStore::replicate`]; `None` when none was.
    fn replica_position(&self) -> Result<Option<replica::Position>, StoreError> {
        Ok(None)
    }
    /// Number of stored entities of each type (for the metrics). The default scans every
    /// record; a backend with an index on the type answers from it.
    fn count_by_type(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        self.scan(&mut |record| {
            *counts
                .entry(record.uid.type_name().to_string())
                .or_default() += 1;
            true
        })?;
        Ok(counts.into_iter().collect())
    }
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
    /// Number of reservations not expired at `now` (for the metrics); `None` from a backend
    /// that cannot tell.
    fn open_reservations(&self, now: i64) -> Result<Option<u64>, StoreError> {
        let _ = now;
        Ok(None)
    }
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

/// A backend behind a cache of resolved entities, with decision slicing on top.
pub struct Store {
    backend: Box<dyn Backend>,
    cache: EntityCache,
    /// Set to stop [`Store::warm`].
    stop_warming: std::sync::atomic::AtomicBool,
}

impl Store {
    /// The storage ledger: usage, quotas, reservations.
    pub fn ledger(&self) -> &dyn StorageLedger {
        self.backend.as_ledger()
    }

    /// Wraps `backend`, caching about `cache_bytes` of resolved entities and, behind them,
    /// `compact_bytes` of entities in compact form (0: none).
    pub fn new(backend: Box<dyn Backend>, cache_bytes: u64, compact_bytes: u64) -> Self {
        Store {
            backend,
            cache: EntityCache::new(cache_bytes, compact_bytes),
            stop_warming: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Writes `records` atomically; once this returns, every decision sees them.
    ///
    /// The compact forms of a large write are computed on a thread of their own while the
    /// backend writes (the serial part of a write, a core otherwise idle meanwhile), so they
    /// add nothing to how long the write takes.
    pub fn upsert(&self, records: &[Record]) -> Result<(), StoreError> {
        let uids: Vec<&EntityUid> = records.iter().map(|r| &r.uid).collect();
        std::thread::scope(|scope| {
            let forms = self.forms_alongside(scope, records);
            self.cache
                .write(
                    Written::Entities(&uids, forms),
                    || self.backend.upsert(records),
                    |e| invalidate(*e),
                )
                .map(drop)
        })
    }

    /// Writes every chunk `next` yields in one durable transaction, all or nothing (see
    /// [`EntityStore::upsert_stream`]); once this returns, every decision sees them. For large
    /// imports: every cached entity is dropped.
    pub fn upsert_stream(&self, next: &mut NextChunk<'_>) -> Result<(), StoreError> {
        self.cache
            .write(
                Written::Unknown,
                || self.backend.upsert_stream(next),
                |_| Invalidate::Everything,
            )
            .map(drop)
    }

    /// Applies a batch of upstream changes (fleet mode); once this returns, every decision sees
    /// them.
    pub fn replicate(&self, batch: &replica::Replicated) -> Result<(), StoreError> {
        let uids: Vec<&EntityUid> = (batch.upserts.iter().map(|r| &r.uid))
            .chain(&batch.deletes)
            .collect();
        // A reset also removes every entity it does not list: which ones is not known here.
        let written = match batch.reset {
            true => Written::Unknown,
            false => Written::Entities(&uids, Forms::Ready(self.forms(&batch.upserts))),
        };
        self.cache
            .write(
                written,
                || self.backend.replicate(batch),
                |e| invalidate(*e),
            )
            .map(drop)
    }

    /// Where this replica stands (fleet mode); `None` when it never applied a batch.
    pub fn replica_position(&self) -> Result<Option<replica::Position>, StoreError> {
        self.backend.replica_position()
    }

    /// Deletes one entity; once this returns, no decision sees it. `false` when it was absent.
    pub fn delete(&self, uid: &EntityUid) -> Result<bool, StoreError> {
        self.cache
            .write(
                Written::Entities(&[uid], Forms::Ready(Vec::new())),
                || self.backend.delete(uid),
                |e| e.map_or(Invalidate::Written, invalidate),
            )
            .map(|e| e.is_some())
    }

    /// The stored record of one entity.
    pub fn get(&self, uid: &EntityUid) -> Result<Option<Record>, StoreError> {
        self.backend.get(uid)
    }

    /// Candidates of a permission search (see [`EntityStore::candidates`]).
    pub fn candidates(
        &self,
        ty: &str,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.backend.candidates(ty, filter, after, limit)
    }

    /// Number of stored entities.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.backend.count()
    }

    /// Calls `visit` with every stored record until it returns `false`.
    pub fn scan(&self, visit: &mut dyn FnMut(Record) -> bool) -> Result<(), StoreError> {
        self.backend.scan(visit)
    }

    /// Number of stored entities of each type.
    pub fn count_by_type(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.backend.count_by_type()
    }

    /// Entity cache `(hits, misses, entries)` since start.
    pub fn cache_stats(&self) -> (u64, u64, usize) {
        self.cache.stats()
    }

    /// The compact tier's `(hits, entries)` since start: misses of the entity cache that it
    /// answered, and the entities it holds.
    pub fn compact_stats(&self) -> (u64, usize) {
        self.cache.compact_stats()
    }

    /// Checks that the backend answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.backend.ping()
    }
}

fn invalidate(effect: WriteEffect) -> Invalidate {
    if effect.hierarchy_changed {
        Invalidate::Everything
    } else {
        Invalidate::Written
    }
}

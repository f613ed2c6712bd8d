//! Reading entities for decisions: a slice of the store gathered through the two cache tiers
//! (see [`super::cache`]), each entity resolved with its ancestor closure (see
//! [`super::resolve`]), the backend read only for what neither tier holds.
//!
//! A serving thread slices from memory alone ([`Store::slice_now`]); what only the backend
//! holds is read on a blocking thread ([`Store::slice`]). Within one slice the entities a miss
//! resolved, or met in the first tier for its closure, are kept at hand (`Lookups::met`): the
//! slice often reaches them next (a dataset's project), and over a large store each probe of
//! the first tier is a cache miss of the CPU's own.

use std::sync::Arc;

use cedar_policy::EntityUid;
use cedar_policy_core::ast;

use super::cache::{Entry, Fill, Lookups};
use super::{Resolved, Store, StoreError, codec, resolve, slice};
use crate::policy::slicing::Follow;

/// Why [`Store::slice_now`] gave up.
enum NotNow {
    /// An entity is in neither tier of the cache: only the backend has it.
    Later,
    /// The compact tier held corrupt data.
    Failed(StoreError),
}

impl From<StoreError> for NotNow {
    fn from(e: StoreError) -> Self {
        NotNow::Failed(e)
    }
}

impl Store {
    /// Every stored entity a decision can touch: the `roots` and the entities reachable from
    /// them through the attributes `follow` names in fewer than `depth` dereferences (`None`:
    /// every entity they reach), each with its ancestors resolved (see [`slice`]).
    pub fn slice(
        &self,
        roots: &[EntityUid],
        depth: Option<u32>,
        follow: &Follow,
    ) -> Result<Vec<Arc<ast::Entity>>, StoreError> {
        let mut lookups = Lookups::default();
        let sliced = slice::slice(roots, depth, follow, |uid| {
            self.lookup(uid, &mut lookups, &mut |uid| self.backend.body(uid))
        });
        self.cache.count(&lookups);
        sliced
    }

    /// [`Store::slice`] from memory alone (both tiers of the cache), never blocking: `Ok(None)`
    /// when an entity must be read from the backend, which the caller then does on a blocking
    /// thread. A backend read may stall (a disk, a network); a serving thread must not, or
    /// every connection it serves would stall with it (see `server::lanes`).
    pub fn slice_now(
        &self,
        roots: &[EntityUid],
        depth: Option<u32>,
        follow: &Follow,
    ) -> Result<Option<Vec<Arc<ast::Entity>>>, StoreError> {
        // Counted only when this slice is the decision's: after `Later` the blocking read
        // slices again, and counts.
        let mut lookups = Lookups::default();
        let sliced = slice::slice(roots, depth, follow, |uid| {
            self.lookup(uid, &mut lookups, &mut |_| Err(NotNow::Later))
        });
        match sliced {
            Ok(slice) => {
                self.cache.count(&lookups);
                Ok(Some(slice))
            }
            Err(NotNow::Later) => Ok(None),
            Err(NotNow::Failed(e)) => Err(e),
        }
    }

    /// One resolved entity, from the cache (either tier) or else the backend. A miss also resolves (and
    /// caches) the ancestors its closure is built from.
    pub(super) fn fetch(&self, uid: &EntityUid) -> Result<Option<Arc<Resolved>>, StoreError> {
        let mut lookups = Lookups::default();
        let found = self.lookup(uid, &mut lookups, &mut |uid| self.backend.body(uid));
        self.cache.count(&lookups);
        found
    }

    /// `uid` from the first tier, else [`Store::read`] through `body`; what it asked of the
    /// tiers is added to `lookups`.
    fn lookup<E: From<StoreError>>(
        &self,
        uid: &EntityUid,
        lookups: &mut Lookups,
        body: &mut dyn FnMut(&EntityUid) -> Result<Option<String>, E>,
    ) -> Result<Option<Arc<Resolved>>, E> {
        // Not counted: the first tier is not asked.
        if let Some((_, met)) = lookups.met.iter().find(|(u, _)| u == uid) {
            return Ok(Some(met.clone()));
        }
        match self.cache.peek(uid) {
            Some(hit) => {
                lookups.hits += 1;
                Ok(hit)
            }
            None => {
                lookups.misses += 1;
                self.read(uid, lookups, body)
            }
        }
    }

    /// [`Store::lookup`] of an entity the first tier just missed: from the compact tier or, through
    /// `body`, the backend; then cached. What it asks of either tier (the first for its
    /// ancestors, the compact one for each entity it decodes) is added to `lookups`, for the
    /// caller to count once its read is used.
    fn read<E: From<StoreError>>(
        &self,
        uid: &EntityUid,
        lookups: &mut Lookups,
        body: &mut dyn FnMut(&EntityUid) -> Result<Option<String>, E>,
    ) -> Result<Option<Arc<Resolved>>, E> {
        let epoch = self.cache.epoch();
        let mut loaded = Fill::default();
        let kept = lookups.met.len();
        let found = self.load(uid, &mut Vec::new(), &mut loaded, lookups, body)?;
        for (other, entry) in &loaded.entries {
            if let Some(resolved) = entry.as_ref().filter(|_| other != uid) {
                lookups.met.push((other.clone(), resolved.clone()));
            }
        }
        if !self.cache.fill(epoch, loaded) {
            // A write committed meanwhile: what this read met may be stale, and the rest of
            // the slice asks the tiers again, as a read that is not cached must.
            lookups.met.truncate(kept);
        }
        Ok(found)
    }

    /// Reads and resolves `uid` and, first, its parents (from the cache, or recursively from
    /// its compact tier or else `body`, the backend's stored JSON). `path` holds the entities
    /// being resolved below this one, so a cycle in stored data (which writes refuse) is
    /// reported as corruption instead of recursing forever. `loaded` collects what was read,
    /// for the cache; `lookups` tallies what the tiers answered (the first tier for the parents).
    fn load<E: From<StoreError>>(
        &self,
        uid: &EntityUid,
        path: &mut Vec<EntityUid>,
        loaded: &mut Fill,
        lookups: &mut Lookups,
        body: &mut dyn FnMut(&EntityUid) -> Result<Option<String>, E>,
    ) -> Result<Entry, E> {
        if let Some((_, entry)) = loaded.entries.iter().find(|(u, _)| u == uid) {
            return Ok(entry.clone());
        }
        if !path.is_empty() {
            match self.cache.peek(uid) {
                Some(hit) => {
                    lookups.hits += 1;
                    if let Some(found) = &hit {
                        lookups.met.push((uid.clone(), found.clone()));
                    }
                    return Ok(hit);
                }
                None => lookups.misses += 1,
            }
        }
        if path.contains(uid) {
            return Err(StoreError::Corrupt(codec::DecodeError {
                uid: uid.to_string(),
                message: "it is its own ancestor (a cycle in the stored hierarchy)".to_owned(),
            })
            .into());
        }
        let decoded = match self.cache.decoded(uid) {
            Some(decoded) => {
                lookups.compact_hits += 1;
                Some(decoded)
            }
            None => match body(uid)? {
                None => None,
                Some(body) => {
                    let json = codec::parse_body(uid, &body).map_err(StoreError::from)?;
                    loaded.forms.extend(self.cache.form(&json));
                    Some(codec::decode(uid, json).map_err(StoreError::from)?)
                }
            },
        };
        let entry = match decoded {
            None => None,
            Some(decoded) => {
                path.push(uid.clone());
                let mut parents = Vec::with_capacity(decoded.parents.len());
                for parent in &decoded.parents {
                    parents.push(self.load(parent, path, loaded, lookups, body)?);
                }
                path.pop();
                Some(Arc::new(resolve::resolve(decoded, &parents)))
            }
        };
        loaded.entries.push((uid.clone(), entry.clone()));
        Ok(entry)
    }
}

//! Runs decisions: gathers the entity slice for a set of queries from the store and evaluates
//! them with the pure core, all against one policy snapshot.
//!
//! [`decide`] is the one place a decision deadline applies, for every route that decides (the
//! decision routes and the permission checks of the storage and activity routes).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar_policy::EntityUid;
use cedar_policy_core::ast;

use crate::authz::{self, Decision, Query};
use crate::policy::PolicySnapshot;
use crate::store::{Store, StoreError};

/// Why decisions could not be made; the caller answers with an error, never an Allow.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The slice could not be turned into Cedar entities.
    #[error(transparent)]
    Entities(#[from] authz::EntitiesError),
    /// The blocking task reading the store died.
    #[error("store read task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The decisions did not finish within the deadline.
    #[error("decision did not finish within {0:?}")]
    Deadline(Duration),
}

/// A decision and the organization it concerns.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The decision.
    pub decision: Decision,
    /// Id of the organization of the resource, or else of the principal.
    pub organization: Option<String>,
}

/// Decides every query on `snapshot`, sharing one entity slice between them, within
/// `deadline`; outcomes in the order of `queries`.
///
/// Entities come from memory (both tiers of the entity cache) on this thread; what only the
/// backend holds is read on a blocking thread, and the deadline cuts the wait short.
/// Evaluation is pure CPU and runs here. Past the deadline the answer is
/// [`EngineError::Deadline`], never a decision.
pub async fn decide(
    store: &Arc<Store>,
    snapshot: &PolicySnapshot,
    queries: &[Query],
    deadline: Duration,
) -> Result<Vec<Outcome>, EngineError> {
    decide_overriding(store, snapshot, queries, deadline, Vec::new()).await
}

/// [`decide`], with `overrides` standing in for the stored entities of the same uids (or
/// joining the slice when there is none): entities given with a request, never stored. Each
/// override must come with its ancestors closed, and the entities its attributes mention must
/// be among the queries' roots.
pub async fn decide_overriding(
    store: &Arc<Store>,
    snapshot: &PolicySnapshot,
    queries: &[Query],
    deadline: Duration,
    overrides: Vec<Arc<ast::Entity>>,
) -> Result<Vec<Outcome>, EngineError> {
    let started = Instant::now();
    let roots = roots(queries);
    let depth = snapshot.deref_depth;
    let slice = match store.slice_now(&roots, depth, &snapshot.follow)? {
        Some(slice) => slice,
        None => {
            let (store, follow) = (store.clone(), snapshot.follow.clone());
            let read = tokio::task::spawn_blocking(move || store.slice(&roots, depth, &follow));
            match tokio::time::timeout(deadline, read).await {
                Ok(joined) => joined.map_err(EngineError::Task)??,
                Err(_) => return Err(EngineError::Deadline(deadline)),
            }
        }
    };
    let mut slice = slice;
    if !overrides.is_empty() {
        slice.retain(|e| !overrides.iter().any(|o| o.uid() == e.uid()));
        slice.extend(overrides);
    }
    let outcomes = evaluate(snapshot, queries, slice)?;
    if started.elapsed() > deadline {
        return Err(EngineError::Deadline(deadline));
    }
    Ok(outcomes)
}

/// [`decide`] without a deadline, blocking: for commands and benchmarks off the runtime.
pub fn decide_blocking(
    store: &Store,
    snapshot: &PolicySnapshot,
    queries: &[Query],
) -> Result<Vec<Outcome>, EngineError> {
    let slice = store.slice(&roots(queries), snapshot.deref_depth, &snapshot.follow)?;
    evaluate(snapshot, queries, slice)
}

/// The union of the queries' roots, without repeats.
fn roots(queries: &[Query]) -> Vec<EntityUid> {
    let mut seen = HashSet::new();
    queries
        .iter()
        .flat_map(|q| q.roots.iter())
        .filter(|uid| seen.insert(*uid))
        .cloned()
        .collect()
}

/// Evaluates the queries over their slice. Pure CPU.
fn evaluate(
    snapshot: &PolicySnapshot,
    queries: &[Query],
    slice: Vec<Arc<ast::Entity>>,
) -> Result<Vec<Outcome>, EngineError> {
    let entities = authz::entities(snapshot, slice, queries.iter().map(|q| &q.action))?;
    Ok(queries
        .iter()
        .map(|q| Outcome {
            decision: authz::decide(q, &entities),
            organization: authz::query_organization(&entities, q),
        })
        .collect())
}

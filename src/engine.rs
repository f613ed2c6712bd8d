//! Runs decisions: gathers the entity slice for a set of queries from the store and evaluates
//! them with the pure core, all against one policy snapshot.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::EntityUid;

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
    /// The blocking task running the decisions died.
    #[error("decision task failed: {0}")]
    Task(String),
}

/// A decision and the organization it concerns.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The decision.
    pub decision: Decision,
    /// Id of the organization of the resource, or else of the principal.
    pub organization: Option<String>,
}

/// Most queries decided on the async runtime when their entities are all cached; larger
/// batches go to a blocking thread so one request never holds a runtime worker for long.
const INLINE_MAX: usize = 8;

/// Decides every query on `snapshot`, sharing one entity slice between them. Blocking.
pub fn decide_all(
    store: &Store,
    snapshot: &PolicySnapshot,
    queries: &[Query],
) -> Result<Vec<Outcome>, EngineError> {
    let slice = store.slice(&roots(queries), snapshot.deref_depth)?;
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
    slice: Vec<cedar_policy::Entity>,
) -> Result<Vec<Outcome>, EngineError> {
    let entities = authz::entities(snapshot, slice, queries.iter().map(|q| &q.action))?;
    Ok(queries
        .iter()
        .map(|q| Outcome {
            decision: authz::decide(snapshot, q, &entities),
            organization: authz::query_organization(&entities, q),
        })
        .collect())
}

/// Decides the queries without ever reading the store on the async runtime: inline when every
/// entity is cached (the common case, tens of microseconds), else on a blocking thread. Hands
/// the queries back with their outcomes.
pub async fn decide_all_async(
    store: Arc<Store>,
    snapshot: Arc<PolicySnapshot>,
    queries: Vec<Query>,
) -> Result<Vec<(Query, Outcome)>, EngineError> {
    if queries.len() <= INLINE_MAX
        && let Some(slice) = store.slice_cached(&roots(&queries), snapshot.deref_depth)
    {
        let outcomes = evaluate(&snapshot, &queries, slice)?;
        return Ok(queries.into_iter().zip(outcomes).collect());
    }
    tokio::task::spawn_blocking(move || {
        let outcomes = decide_all(&store, &snapshot, &queries)?;
        Ok(queries.into_iter().zip(outcomes).collect())
    })
    .await
    .unwrap_or_else(|join| Err(EngineError::Task(join.to_string())))
}

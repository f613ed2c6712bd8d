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

/// Decides every query on `snapshot`, sharing one entity slice between them. Blocking.
pub fn decide_all(
    store: &Store,
    snapshot: &PolicySnapshot,
    queries: &[Query],
) -> Result<Vec<Outcome>, EngineError> {
    let mut seen = HashSet::new();
    let roots: Vec<EntityUid> = queries
        .iter()
        .flat_map(|q| q.roots.iter())
        .filter(|uid| seen.insert(*uid))
        .cloned()
        .collect();
    let slice = store.slice(&roots, snapshot.deref_depth)?;
    let entities = authz::entities(snapshot, slice, queries.iter().map(|q| &q.action))?;
    Ok(queries
        .iter()
        .map(|q| Outcome {
            decision: authz::decide(snapshot, q, &entities),
            organization: authz::query_organization(&entities, q),
        })
        .collect())
}

/// [`decide_all`] on a blocking thread, so the store is never read on the async runtime. Hands
/// the queries back with their outcomes.
pub async fn decide_all_async(
    store: Arc<Store>,
    snapshot: Arc<PolicySnapshot>,
    queries: Vec<Query>,
) -> Result<Vec<(Query, Outcome)>, EngineError> {
    tokio::task::spawn_blocking(move || {
        let outcomes = decide_all(&store, &snapshot, &queries)?;
        Ok(queries.into_iter().zip(outcomes).collect())
    })
    .await
    .unwrap_or_else(|join| Err(EngineError::Task(join.to_string())))
}

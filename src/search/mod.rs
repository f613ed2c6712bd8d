//! Permission search: which stored entities a principal may act on (resource search), which
//! stored principals may act on a resource (subject search), which schema actions one principal
//! may take on one resource (action search).
//!
//! Exact by construction: an answer is what deciding every candidate would give, because every
//! candidate IS decided, by [`engine::decide_blocking`] (the same slice and the same policies
//! as `serve`'s decisions). Fast because the candidates are not the whole type: [`plan`] asks
//! Cedar's partial evaluation what the open side must look like, [`filter`] describes a
//! superset of those entities, and the store looks it up in its hierarchy and reference
//! indexes. Candidates come in uid order, a page at a time, so a first page of 100 decides
//! about 100 candidates when most of them are allowed.

pub mod filter;
mod plan;
pub mod residual;
pub mod token;

use std::time::{Duration, Instant};

use cedar_policy::{EntityTypeName, EntityUid};
use serde_json::Value;

use crate::authz;
use crate::engine::{self, EngineError};
use crate::policy::PolicySnapshot;
use crate::store::{Store, StoreError};
pub use filter::Filter;

/// Which side of the request a search leaves open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The resource: "what may this principal act on".
    Resource,
    /// The principal: "who may act on this resource".
    Subject,
}

impl Side {
    /// `resource` or `subject`.
    pub fn word(self) -> &'static str {
        match self {
            Side::Resource => "resource",
            Side::Subject => "subject",
        }
    }
}

/// A resource or subject search.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// The open side.
    pub side: Side,
    /// The known side: the principal of a resource search, the resource of a subject search.
    pub known: EntityUid,
    /// The action.
    pub action: EntityUid,
    /// The entity type of the open side.
    pub ty: EntityTypeName,
    /// Cedar context JSON.
    pub context: Option<Value>,
}

/// One page of answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The answers, in uid order.
    pub items: Vec<EntityUid>,
    /// Whether more answers follow `items`.
    pub more: bool,
}

/// Why a search could not be answered; never a partial or widened answer.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Deciding candidates failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Test-only: narrows every candidate filter further, dropping the first alternative of a
/// top-level union. The differential test turns it on to show that it catches a candidate
/// query narrower than the residuals. Never set outside tests.
#[doc(hidden)]
pub static NARROW_FOR_TEST: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The candidate filter of `query` (what the store is asked for).
pub fn candidate_filter(store: &Store, snapshot: &PolicySnapshot, query: &SearchQuery) -> Filter {
    let filter = plan::candidates(store, snapshot, query);
    if NARROW_FOR_TEST.load(std::sync::atomic::Ordering::Relaxed) {
        return match filter {
            Filter::Or(mut parts) if parts.len() > 1 => {
                parts.remove(0);
                Filter::Or(parts).simplify()
            }
            Filter::All | Filter::Or(_) => Filter::Nothing,
            _ => Filter::Nothing,
        };
    }
    filter
}

/// Up to `limit` answers of a resource or subject search whose ids sort after `after` (the
/// last id of the previous page), in uid order. Blocking; gives up past `deadline`.
pub fn search(
    store: &Store,
    snapshot: &PolicySnapshot,
    query: &SearchQuery,
    after: Option<&str>,
    limit: usize,
    deadline: Option<(Instant, Duration)>,
) -> Result<Page, SearchError> {
    let filter = candidate_filter(store, snapshot, query);
    let ty = query.ty.to_string();
    let chunk = (limit + 1).clamp(16, 1024);
    let mut cursor = after.map(str::to_owned);
    let mut items = Vec::new();
    loop {
        let ids = store.candidates(&ty, &filter, cursor.as_deref(), chunk)?;
        let exhausted = ids.len() < chunk;
        let mut uids = Vec::with_capacity(ids.len());
        let mut queries = Vec::with_capacity(ids.len());
        for id in &ids {
            let Ok(uid) = crate::uid::from_parts(&ty, id) else {
                continue;
            };
            let (principal, resource) = match query.side {
                Side::Resource => (query.known.clone(), uid.clone()),
                Side::Subject => (uid.clone(), query.known.clone()),
            };
            // A request the schema refuses is never allowed.
            if let Ok(q) = authz::prepare(
                snapshot,
                principal,
                query.action.clone(),
                resource,
                query.context.clone(),
            ) {
                uids.push(uid);
                queries.push(q);
            }
        }
        let outcomes = engine::decide_blocking(store, snapshot, &queries)?;
        for (uid, outcome) in uids.into_iter().zip(outcomes) {
            if outcome.decision.allowed {
                if items.len() == limit {
                    return Ok(Page { items, more: true });
                }
                items.push(uid);
            }
        }
        if exhausted {
            return Ok(Page { items, more: false });
        }
        cursor = ids.last().cloned();
        if let Some((start, budget)) = deadline
            && start.elapsed() > budget
        {
            return Err(EngineError::Deadline(budget).into());
        }
    }
}

/// The actions `principal` may take on `resource`, sorted by uid: the schema's actions that
/// apply to the two types (without a schema, the stored `Action` entities), each decided.
pub fn actions(
    store: &Store,
    snapshot: &PolicySnapshot,
    principal: &EntityUid,
    resource: &EntityUid,
    context: Option<&Value>,
) -> Result<Vec<EntityUid>, SearchError> {
    let mut candidates: Vec<EntityUid> = match &snapshot.schema {
        Some(schema) => schema
            .actions_for_principal_and_resource(principal.type_name(), resource.type_name())
            .cloned()
            .collect(),
        None => {
            let ids = store.candidates("Action", &Filter::All, None, usize::MAX)?;
            ids.iter()
                .filter_map(|id| crate::uid::from_parts("Action", id).ok())
                .collect()
        }
    };
    candidates.sort_by_key(ToString::to_string);
    candidates.dedup();
    let mut kept = Vec::new();
    let mut queries = Vec::new();
    for action in candidates {
        if let Ok(q) = authz::prepare(
            snapshot,
            principal.clone(),
            action.clone(),
            resource.clone(),
            context.cloned(),
        ) {
            kept.push(action);
            queries.push(q);
        }
    }
    let outcomes = engine::decide_blocking(store, snapshot, &queries)?;
    Ok(kept
        .into_iter()
        .zip(outcomes)
        .filter(|(_, o)| o.decision.allowed)
        .map(|(a, _)| a)
        .collect())
}

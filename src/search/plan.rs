//! The candidate plan of a search: type-aware partial evaluation of the policies with the
//! known side's stored entities, and the union of what each permit's residual can be true for
//! (see [`super::residual`]).
//!
//! Any step that cannot be taken (no schema, a context or request TPE refuses, stored entities
//! the current schema no longer accepts) gives [`Filter::All`]: the search then scans the
//! type, and says so in a debug log line. That costs time, never exactness.

use cedar_policy::{Context, PartialEntities, PartialEntityUid, PartialRequest};
use cedar_policy_core::ast::Var;

use super::filter::Filter;
use super::residual::permit_filter;
use super::{SearchQuery, Side};
use crate::authz;
use crate::policy::PolicySnapshot;
use crate::store::Store;
use crate::store::codec::{collect_refs, error_chain};

/// A superset of the stored entities of the open side that `query` can allow.
pub fn candidates(store: &Store, snapshot: &PolicySnapshot, query: &SearchQuery) -> Filter {
    match narrow(store, snapshot, query) {
        Ok(filter) => filter.simplify(),
        Err(why) => {
            tracing::debug!(
                target: "policyd::search",
                kind = query.side.word(),
                r#type = %query.ty,
                reason = %why,
                "search cannot narrow its candidates; scanning the type"
            );
            Filter::All
        }
    }
}

fn narrow(store: &Store, snapshot: &PolicySnapshot, query: &SearchQuery) -> Result<Filter, String> {
    let schema = snapshot
        .schema
        .as_ref()
        .ok_or("no schema (partial evaluation needs one)")?;
    let context = match &query.context {
        None | Some(serde_json::Value::Null) => Context::empty(),
        Some(v) => Context::from_json_value(v.clone(), Some((schema, &query.action)))
            .map_err(|e| format!("context: {}", error_chain(&e)))?,
    };
    let known = PartialEntityUid::from_concrete(query.known.clone());
    let open = PartialEntityUid::new(query.ty.clone(), None);
    let (principal, resource, var) = match query.side {
        Side::Resource => (known, open, Var::Resource),
        Side::Subject => (open, known, Var::Principal),
    };
    let request = PartialRequest::new(
        principal,
        query.action.clone(),
        resource,
        Some(context),
        schema,
    )
    .map_err(|e| format!("request: {}", error_chain(&e)))?;
    // The entities a decision reads from the known side, exactly as a decision slices them.
    let mut roots = vec![query.known.clone()];
    if let Some(v) = &query.context {
        collect_refs(v, &mut roots);
    }
    roots.extend(snapshot.literal_roots().iter().cloned());
    let slice = store
        .slice(&roots, snapshot.deref_depth, &snapshot.follow)
        .map_err(|e| format!("store: {e}"))?;
    let entities =
        authz::entities(snapshot, slice, [&query.action]).map_err(|e| format!("entities: {e}"))?;
    let partial = PartialEntities::from_concrete(entities, schema)
        .map_err(|e| format!("entities: {}", error_chain(&e)))?;
    let response = snapshot
        .policies
        .tpe(&request, &partial, schema)
        .map_err(|e| format!("partial evaluation: {}", error_chain(&e)))?;
    let response = response.as_ref();
    if response.decision() == Some(cedar_policy::Decision::Deny) {
        return Ok(Filter::Nothing);
    }
    if response.true_permits().next().is_some() {
        return Ok(Filter::All);
    }
    Ok(Filter::Or(
        response
            .residual_permits()
            .map(|p| permit_filter(p.as_residual(), var))
            .collect(),
    ))
}

//! `POST /v1/is_authorized` and `POST /v1/is_authorized/batch`.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::json::{self, Body};
use crate::activity::{Entry, Kind, Verdict};
use crate::authz::{self, Query};
use crate::engine;
use crate::policy::PolicySnapshot;
use crate::state::AppState;

const REQUEST_FIELDS: &[&str] = &["principal", "action", "resource", "context"];

/// Parses and validates a single decision request body.
pub fn parse_single(snapshot: &PolicySnapshot, body: &[u8]) -> Result<Query, ApiError> {
    query(snapshot, json::parse(body)?, "")
}

/// Parses and validates a batch body of at most `max` requests.
pub fn parse_batch(
    snapshot: &PolicySnapshot,
    body: &[u8],
    max: usize,
) -> Result<Vec<Query>, ApiError> {
    let mut map = json::object(json::parse(body)?, "the body")?;
    json::deny_unknown(&map, &["requests"], "")?;
    let Some(Value::Array(items)) = map.remove("requests") else {
        return Err(ApiError::InvalidField {
            field: "requests".to_owned(),
            message: "must be an array of decision requests".to_owned(),
        });
    };
    if items.len() > max {
        return Err(ApiError::BatchTooLarge {
            got: items.len(),
            max,
        });
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| query(snapshot, item, &format!("requests[{i}]")))
        .collect()
}

/// One decision.
pub async fn single(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let snapshot = state.snapshot();
    let query = parse_single(&snapshot, body)?;
    let decided = decide(state, &snapshot, vec![query]).await?;
    let result = answer(state, &snapshot, &decided)
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("no decision for the request".to_owned()))?;
    Ok(json::respond(StatusCode::OK, &result))
}

/// Up to `max_batch` decisions on one snapshot and one entity slice, answered in order.
pub async fn batch(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let snapshot = state.snapshot();
    let queries = parse_batch(&snapshot, body, state.limits.max_batch)?;
    let decided = decide(state, &snapshot, queries).await?;
    let results = answer(state, &snapshot, &decided);
    Ok(json::respond(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

/// Decides within the deadline: a decision that cannot finish in time is a 503, never a hang
/// and never an Allow.
async fn decide(
    state: &AppState,
    snapshot: &Arc<PolicySnapshot>,
    queries: Vec<Query>,
) -> Result<Vec<(Query, engine::Outcome)>, ApiError> {
    let deadline = state.limits.decision_deadline;
    let outcomes = engine::decide(&state.store, snapshot, &queries, deadline).await?;
    Ok(queries.into_iter().zip(outcomes).collect())
}

/// Records each decision in the activity log and renders it with its `decision_id` (null when
/// the log is off or its queue is full).
fn answer(
    state: &AppState,
    snapshot: &PolicySnapshot,
    decided: &[(Query, engine::Outcome)],
) -> Vec<Value> {
    decided
        .iter()
        .map(|(query, outcome)| {
            let d = &outcome.decision;
            let id = state.activity.record(Entry {
                kind: Kind::Decision,
                principal: Some(query.principal.clone()),
                action: Some(query.action.clone()),
                resource: Some(query.resource.clone()),
                verdict: Some(Verdict::of(d.allowed)),
                reasons: d.reasons.clone(),
                policy_revision: Some(snapshot.revision.clone()),
                organization: outcome.organization.clone(),
            });
            let mut rendered = json::decision(d);
            rendered["decision_id"] = json!(id);
            rendered
        })
        .collect()
}

/// Parses and validates one decision request found at `at` in the body.
fn query(snapshot: &PolicySnapshot, value: Value, at: &str) -> Result<Query, ApiError> {
    let what = if at.is_empty() { "the body" } else { at };
    let mut map = json::object(value, what)?;
    json::deny_unknown(&map, REQUEST_FIELDS, at)?;
    let principal = json::uid(map.get("principal"), &json::join(at, "principal"))?;
    let action = json::uid(map.get("action"), &json::join(at, "action"))?;
    let resource = json::uid(map.get("resource"), &json::join(at, "resource"))?;
    authz::prepare(snapshot, principal, action, resource, map.remove("context")).map_err(|source| {
        ApiError::InvalidRequest {
            field: at.to_owned(),
            source,
        }
    })
}

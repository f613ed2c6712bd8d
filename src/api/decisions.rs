//! `POST /v1/is_authorized` and `POST /v1/is_authorized/batch`.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::json::{self, Body};
use crate::authz::{self, Query};
use crate::engine;
use crate::policy::PolicySnapshot;
use crate::state::AppState;

const REQUEST_FIELDS: &[&str] = &["principal", "action", "resource", "context"];

/// One decision.
pub async fn single(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let snapshot = state.snapshot();
    let query = query(&snapshot, json::parse(body)?, "")?;
    let decisions = engine::decide_all_async(state.store.clone(), snapshot, vec![query]).await?;
    let decision = decisions
        .first()
        .ok_or_else(|| ApiError::Internal("no decision for the request".to_owned()))?;
    Ok(json::respond(StatusCode::OK, &json::decision(decision)))
}

/// Up to `max_batch` decisions on one snapshot and one entity slice, answered in order.
pub async fn batch(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let mut map = json::object(json::parse(body)?, "the body")?;
    json::deny_unknown(&map, &["requests"], "")?;
    let Some(Value::Array(items)) = map.remove("requests") else {
        return Err(ApiError::InvalidField {
            field: "requests".to_owned(),
            message: "must be an array of decision requests".to_owned(),
        });
    };
    if items.len() > state.limits.max_batch {
        return Err(ApiError::BatchTooLarge {
            got: items.len(),
            max: state.limits.max_batch,
        });
    }
    let snapshot = state.snapshot();
    let queries = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| query(&snapshot, item, &format!("requests[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let decisions = engine::decide_all_async(state.store.clone(), snapshot, queries).await?;
    let results: Vec<Value> = decisions.iter().map(json::decision).collect();
    Ok(json::respond(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

/// Parses and validates one decision request found at `at` in the body.
fn query(snapshot: &Arc<PolicySnapshot>, value: Value, at: &str) -> Result<Query, ApiError> {
    let what = if at.is_empty() { "the body" } else { at };
    let map = json::object(value, what)?;
    json::deny_unknown(&map, REQUEST_FIELDS, at)?;
    let principal = json::uid(map.get("principal"), &json::join(at, "principal"))?;
    let action = json::uid(map.get("action"), &json::join(at, "action"))?;
    let resource = json::uid(map.get("resource"), &json::join(at, "resource"))?;
    authz::prepare(snapshot, principal, action, resource, map.get("context")).map_err(|source| {
        ApiError::InvalidRequest {
            field: at.to_owned(),
            source,
        }
    })
}

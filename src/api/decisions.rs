//! `POST /v1/is_authorized` and `POST /v1/is_authorized/batch`.
//!
//! One straight way through: parse the body into typed requests, validate them into queries,
//! decide them (slice and evaluate, within the deadline), record each in the activity log, and
//! render the answers.

use hyper::StatusCode;
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::consistency::{self, Consistency};
use super::error::ApiError;
use super::json::{self, Body, Object, Uid};
use crate::activity::{Entry, Kind, Verdict};
use crate::authz::{self, Decision, Query};
use crate::engine::{self, Outcome};
use crate::policy::PolicySnapshot;
use crate::state::AppState;

/// One decision request: cedar-agent's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    #[serde(default)]
    principal: Option<Uid>,
    #[serde(default)]
    action: Option<Uid>,
    #[serde(default)]
    resource: Option<Uid>,
    /// Cedar context JSON.
    #[serde(default)]
    context: Option<Value>,
    /// Fleet mode: the revision the answer must reflect (see [`super::consistency`]).
    #[serde(default)]
    consistency: Option<Consistency>,
}

/// A batch: `{"requests": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    #[serde(default)]
    requests: Option<Vec<Object<DecisionRequest>>>,
    /// Fleet mode: the revision every answer must reflect.
    #[serde(default)]
    consistency: Option<Consistency>,
}

impl DecisionRequest {
    /// Validates the request against the snapshot's schema; `at` locates it in the body.
    fn prepare(self, snapshot: &PolicySnapshot, at: &str) -> Result<Query, ApiError> {
        let field = |name: &str| json::join(at, name);
        if !at.is_empty() && self.consistency.is_some() {
            return Err(ApiError::InvalidField {
                field: field("consistency"),
                message: "give consistency once, beside requests".to_owned(),
            });
        }
        let principal = json::required(self.principal, &field("principal"))?;
        let action = json::required(self.action, &field("action"))?;
        let resource = json::required(self.resource, &field("resource"))?;
        authz::prepare(snapshot, principal, action, resource, self.context).map_err(|source| {
            ApiError::InvalidRequest {
                field: at.to_owned(),
                source,
            }
        })
    }
}

/// One decision as answered: cedar-agent's shape, plus the id of its activity record.
#[derive(Debug, Serialize)]
pub struct Answer {
    decision: &'static str,
    diagnostics: Diagnostics,
    /// `null` when the activity log is off or its queue is full.
    decision_id: Option<i64>,
    /// Fleet mode: the revision token of the replica the decision was made on.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
}

#[derive(Debug, Serialize)]
struct Diagnostics {
    reason: Vec<String>,
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct BatchAnswer<'a> {
    results: &'a [Answer],
    /// Fleet mode: the revision token of the replica the decisions were made on.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
}

/// Parses and validates a single decision request body.
pub fn parse_single(snapshot: &PolicySnapshot, body: &[u8]) -> Result<Query, ApiError> {
    parse_single_with(snapshot, body).map(|(query, _)| query)
}

/// [`parse_single`], with the request's consistency.
fn parse_single_with(
    snapshot: &PolicySnapshot,
    body: &[u8],
) -> Result<(Query, Option<Consistency>), ApiError> {
    let mut request = json::from_body::<Object<DecisionRequest>>(body)?.0;
    let consistency = request.consistency.take();
    Ok((request.prepare(snapshot, "")?, consistency))
}

/// Parses and validates a batch body of at most `max` requests.
pub fn parse_batch(
    snapshot: &PolicySnapshot,
    body: &[u8],
    max: usize,
) -> Result<Vec<Query>, ApiError> {
    parse_batch_with(snapshot, body, max).map(|(queries, _)| queries)
}

/// [`parse_batch`], with the batch's consistency.
fn parse_batch_with(
    snapshot: &PolicySnapshot,
    body: &[u8],
    max: usize,
) -> Result<(Vec<Query>, Option<Consistency>), ApiError> {
    let batch = json::from_body::<Object<BatchRequest>>(body)?.0;
    let consistency = batch.consistency;
    let Some(requests) = batch.requests else {
        return Err(ApiError::InvalidField {
            field: "requests".to_owned(),
            message: "must be an array of decision requests".to_owned(),
        });
    };
    if requests.len() > max {
        return Err(ApiError::BatchTooLarge {
            got: requests.len(),
            max,
        });
    }
    let queries = requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.0.prepare(snapshot, &format!("requests[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok((queries, consistency))
}

/// One decision. `at_least` is the `Policyd-At-Least` header (fleet mode).
pub async fn single(
    state: &AppState,
    at_least: Option<HeaderValue>,
    body: &[u8],
) -> Result<hyper::Response<Body>, ApiError> {
    let snapshot = state.snapshot();
    let (query, consistency) = parse_single_with(&snapshot, body)?;
    let revision = consistency::gate(state, consistency, at_least).await?;
    let queries = vec![query];
    let outcomes = decide(state, &snapshot, &queries).await?;
    let mut answer = record(state, &snapshot, queries, outcomes)
        .pop()
        .ok_or_else(|| ApiError::Internal("no decision for the request".to_owned()))?;
    answer.revision = revision;
    let id = answer.decision_id;
    let resp = json::respond_with(StatusCode::OK, &answer);
    Ok(super::with_decision_ids(resp, std::iter::once(id)))
}

/// Up to `max_batch` decisions on one snapshot and one entity slice, answered in order.
/// `at_least` is the `Policyd-At-Least` header (fleet mode).
pub async fn batch(
    state: &AppState,
    at_least: Option<HeaderValue>,
    body: &[u8],
) -> Result<hyper::Response<Body>, ApiError> {
    let snapshot = state.snapshot();
    let (queries, consistency) = parse_batch_with(&snapshot, body, state.limits.max_batch)?;
    let revision = consistency::gate(state, consistency, at_least).await?;
    let outcomes = decide(state, &snapshot, &queries).await?;
    let results = record(state, &snapshot, queries, outcomes);
    let resp = json::respond_with(
        StatusCode::OK,
        &BatchAnswer {
            results: &results,
            revision,
        },
    );
    Ok(super::with_decision_ids(
        resp,
        results.iter().map(|a| a.decision_id),
    ))
}

async fn decide(
    state: &AppState,
    snapshot: &PolicySnapshot,
    queries: &[Query],
) -> Result<Vec<Outcome>, ApiError> {
    let deadline = state.limits.decision_deadline;
    Ok(engine::decide(&state.store, snapshot, queries, deadline).await?)
}

/// Records each decision in the activity log and pairs it with its record's id.
fn record(
    state: &AppState,
    snapshot: &PolicySnapshot,
    queries: Vec<Query>,
    outcomes: Vec<Outcome>,
) -> Vec<Answer> {
    queries
        .into_iter()
        .zip(outcomes)
        .map(|(query, outcome)| {
            let Outcome {
                decision,
                organization,
            } = outcome;
            let id = state.activity.record(Entry {
                kind: Kind::Decision,
                principal: Some(query.principal),
                action: Some(query.action),
                resource: Some(query.resource),
                verdict: Some(Verdict::of(decision.allowed)),
                reasons: decision.reasons.clone(),
                policy_revision: Some(snapshot.revision.clone()),
                organization,
            });
            answer(decision, id)
        })
        .collect()
}

fn answer(decision: Decision, decision_id: Option<i64>) -> Answer {
    Answer {
        decision: json::decision_word(&decision),
        diagnostics: Diagnostics {
            reason: decision.reasons,
            errors: decision.errors,
        },
        decision_id,
        revision: None,
    }
}

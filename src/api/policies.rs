//! `GET /v1/policies` (what is served, how the last reload went and what it changed) and
//! `POST /v1/policies/reload`.

use std::time::SystemTime;

use cedar_policy::Effect;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::error::ErrorBody;
use super::json::{self, Body};
use super::openapi::{Answer, Content, Doc, any_object, schema};
use crate::policy::slicing::Follow;
use crate::policy::{Slicing, SourceError};
use crate::reload::{ReloadStatus, Trigger};
use crate::state::AppState;

/// How the OpenAPI document describes `GET /v1/policies`.
pub const DOC_STATUS: Doc = Doc {
    summary: "The served policy set, slicing, the last reload, cache, activity and analysis counters.",
    request: None,
    query: &[],
    answers: &[Answer {
        status: 200,
        description: "The status (see the README for its fields).",
        body: Content::Json(any_object),
    }],
};

/// The body of `POST /v1/policies/reload`: empty, or this object.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReloadRequest {
    /// Apply a set that widens access under `--reload-guard refuse-widening`.
    #[serde(default)]
    accept_widening: Option<bool>,
}

/// How the OpenAPI document describes `POST /v1/policies/reload`.
pub const DOC_RELOAD: Doc = Doc {
    summary: "Reload the policy directory now and answer with the outcome.",
    request: Some(schema::<ReloadRequest>),
    query: &[],
    answers: &[
        Answer {
            status: 200,
            description: "Reloaded (or unchanged): the new revision and what changed.",
            body: Content::Json(any_object),
        },
        Answer {
            status: 409,
            description: "`widening_refused`: the reload guard refused a set that widens access.",
            body: Content::Json(schema::<ErrorBody>),
        },
        Answer {
            status: 422,
            description: "`invalid_policies`: the sources were refused; the previous revision is still served.",
            body: Content::Json(schema::<ErrorBody>),
        },
    ],
};

/// The served policy set and the outcome of the last reload attempt.
pub fn status(state: &AppState) -> hyper::Response<Body> {
    let snapshot = state.snapshot();
    let policies: Vec<Value> = snapshot
        .infos
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "effect": match p.effect { Effect::Permit => "permit", Effect::Forbid => "forbid" },
                "file": p.file,
            })
        })
        .collect();
    let last_reload = state.reloader.last().map(|s| reload_json(&s));
    let counts = state.reloader.analysis_counts();
    let a = state.activity.stats();
    let (hits, misses, cached) = state.store.cache_stats();
    let (compact_hits, compact_entries) = state.store.compact_stats();
    json::respond(
        StatusCode::OK,
        &json!({
            "revision": snapshot.revision,
            "schema": snapshot.schema.is_some(),
            "loaded_at": time(snapshot.loaded_at),
            "deref_depth": snapshot.deref_depth,
            "slicing": slicing_json(&snapshot.slicing, &snapshot.follow),
            "last_reload": last_reload,
            "entity_cache": {
                "hits": hits, "misses": misses, "entries": cached,
                "compact": { "hits": compact_hits, "entries": compact_entries },
            },
            "activity": {
                "enabled": a.enabled,
                "queued": a.queued,
                "written": a.written,
                "dropped": a.dropped,
                "failed_batches": a.failed_batches,
                "expired": a.expired,
                "pruned": a.pruned,
            },
            "analysis": {
                "guard": state.reloader.guard_mode().as_str(),
                "completed": counts.completed,
                "widenings": counts.widenings,
                "unavailable": counts.unavailable,
                "refused": counts.refused,
            },
            "policies": policies,
        }),
    )
}

/// Reloads now and answers with the outcome: 200 with the new revision, 422 with the errors
/// and the revision still served, or 409 when the reload guard refused a widening.
///
/// The body is empty or `{"accept_widening": bool}`: `true` applies a set that widens access
/// under `--reload-guard refuse-widening`.
pub async fn reload(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let accept_widening = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        json::from_body::<json::Object<ReloadRequest>>(body)?
            .0
            .accept_widening
            .unwrap_or(false)
    };
    let outcome = state
        .reloader
        .reload(Trigger::Api, accept_widening)
        .await
        .ok_or_else(|| ApiError::Internal("the reload worker is not running".to_owned()))?;
    if outcome.widening_refused {
        return Err(ApiError::WideningRefused {
            message: outcome
                .errors
                .first()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "the new policies widen access".to_owned()),
            revision: outcome.revision.clone(),
            changes: changes_json(&outcome),
        });
    }
    if !outcome.ok {
        return Err(ApiError::InvalidPolicies {
            errors: outcome.errors.iter().map(error_json).collect(),
            revision: outcome.revision,
        });
    }
    Ok(json::respond(StatusCode::OK, &reload_json(&outcome)))
}

fn reload_json(s: &ReloadStatus) -> Value {
    json!({
        "at": time(s.at),
        "ok": s.ok,
        "revision": s.revision,
        "changed": s.changed,
        "trigger": s.trigger.as_str(),
        "errors": s.errors.iter().map(error_json).collect::<Vec<_>>(),
        "widening_refused": s.widening_refused,
        "changes": changes_json(s),
    })
}

/// The reload's analysis (`null` while pending or when none ran).
fn changes_json(s: &ReloadStatus) -> Value {
    s.changes
        .load_full()
        .and_then(|report| serde_json::to_value(&*report).ok())
        .unwrap_or(Value::Null)
}

/// `{"mode": "bounded", "depth", "proof", "follows": {"attributes": [names], "tags"}}` or
/// `{"mode": "reachable", "literals": [uids]}`.
fn slicing_json(slicing: &Slicing, follow: &Follow) -> Value {
    match slicing {
        Slicing::Bounded { depth, proof } => {
            let follows = match follow {
                Follow::All => json!("all"),
                Follow::Attributes { names, tags } => json!({ "attributes": names, "tags": tags }),
            };
            json!({ "mode": slicing.mode(), "depth": depth, "proof": proof.as_str(), "follows": follows })
        }
        Slicing::Reachable { literals } => json!({
            "mode": slicing.mode(),
            "literals": literals.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
    }
}

fn error_json(e: &SourceError) -> Value {
    json!({ "file": e.file, "line": e.line, "column": e.column, "message": e.message, "text": e.to_string() })
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

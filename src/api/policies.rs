//! `GET /v1/policies` (what is served, and how the last reload went) and
//! `POST /v1/policies/reload`.

use std::time::SystemTime;

use cedar_policy::Effect;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::json::{self, Body};
use crate::policy::SourceError;
use crate::reload::{ReloadStatus, Trigger};
use crate::state::AppState;

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
    let a = state.activity.stats();
    let (hits, misses, cached) = state.store.cache_stats();
    json::respond(
        StatusCode::OK,
        &json!({
            "revision": snapshot.revision,
            "schema": snapshot.schema.is_some(),
            "loaded_at": time(snapshot.loaded_at),
            "deref_depth": snapshot.deref_depth,
            "last_reload": last_reload,
            "entity_cache": { "hits": hits, "misses": misses, "entries": cached },
            "activity": {
                "enabled": a.enabled,
                "queued": a.queued,
                "written": a.written,
                "dropped": a.dropped,
                "failed_batches": a.failed_batches,
                "expired": a.expired,
                "pruned": a.pruned,
            },
            "policies": policies,
        }),
    )
}

/// Reloads now and answers with the outcome: 200 with the new revision, or 422 with the errors
/// and the revision still served.
pub async fn reload(state: &AppState) -> Result<hyper::Response<Body>, ApiError> {
    let outcome = state
        .reloader
        .reload(Trigger::Api)
        .await
        .ok_or_else(|| ApiError::Internal("the reload worker is not running".to_owned()))?;
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
    })
}

fn error_json(e: &SourceError) -> Value {
    json!({ "file": e.file, "line": e.line, "column": e.column, "message": e.message, "text": e.to_string() })
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

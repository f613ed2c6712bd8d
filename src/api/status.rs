//! Read-only status routes: `GET /v1/policies`, `/healthz`, `/readyz`.

use cedar_policy::Effect;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::json::{self, Body};
use crate::state::AppState;

/// The loaded policy set: revision, schema presence and each policy's id, effect and file.
pub fn policies(state: &AppState) -> hyper::Response<Body> {
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
    json::respond(
        StatusCode::OK,
        &json!({
            "revision": snapshot.revision,
            "schema": snapshot.schema.is_some(),
            "loaded_at": humantime::format_rfc3339_micros(snapshot.loaded_at).to_string(),
            "deref_depth": snapshot.deref_depth,
            "policies": policies,
        }),
    )
}

/// Liveness: the process answers.
pub fn healthz() -> hyper::Response<Body> {
    json::respond(StatusCode::OK, &json!({ "status": "ok" }))
}

/// Readiness: a valid snapshot is loaded (always, once serving) and the store answers.
pub async fn readyz(state: &AppState) -> Result<hyper::Response<Body>, ApiError> {
    let store = state.store.clone();
    let ping = tokio::task::spawn_blocking(move || store.ping()).await;
    match ping {
        Ok(Ok(())) => Ok(json::respond(
            StatusCode::OK,
            &json!({ "status": "ready", "revision": state.snapshot().revision }),
        )),
        Ok(Err(e)) => Err(ApiError::NotReady(format!("store unavailable: {e}"))),
        Err(e) => Err(ApiError::NotReady(format!("store check failed: {e}"))),
    }
}

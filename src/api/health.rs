//! Health routes: `/healthz` (liveness) and `/readyz` (readiness).

use hyper::StatusCode;
use serde_json::json;

use super::error::ApiError;
use super::json::{self, Body};
use crate::state::AppState;

/// Liveness: the process answers.
pub fn healthz() -> hyper::Response<Body> {
    json::respond(StatusCode::OK, &json!({ "status": "ok" }))
}

/// Readiness: a valid snapshot is loaded (always, once serving), the store answers and, in
/// fleet mode, the replica is not stale.
pub async fn readyz(state: &AppState) -> Result<hyper::Response<Body>, ApiError> {
    let store = state.store.clone();
    let ping = tokio::task::spawn_blocking(move || store.ping()).await;
    if let Some(fleet) = state.fleet.get() {
        fleet.fresh()?;
    }
    match ping {
        Ok(Ok(())) => Ok(json::respond(
            StatusCode::OK,
            &json!({ "status": "ready", "revision": state.snapshot().revision }),
        )),
        Ok(Err(e)) => Err(ApiError::NotReady(format!("store unavailable: {e}"))),
        Err(e) => Err(ApiError::NotReady(format!("store check failed: {e}"))),
    }
}

//! Health routes: `/healthz` (liveness) and `/readyz` (readiness).

use hyper::StatusCode;
use serde::Serialize;

use super::error::ApiError;
use super::json::{self, Body};
use super::openapi::{Answer, Content, Doc, schema};
use crate::state::AppState;

/// The liveness answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Live {
    /// Always `ok`.
    #[schema(value_type = String)]
    status: &'static str,
}

/// The readiness answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Ready<'a> {
    /// Always `ready`.
    #[schema(value_type = String)]
    status: &'static str,
    /// The served policy revision.
    #[schema(value_type = String)]
    revision: &'a str,
}

/// How the OpenAPI document describes `GET /healthz`.
pub const DOC_HEALTHZ: Doc = Doc {
    summary: "Liveness: the process answers.",
    request: None,
    query: &[],
    answers: &[Answer {
        status: 200,
        description: "Alive.",
        body: Content::Json(schema::<Live>),
    }],
};

/// How the OpenAPI document describes `GET /readyz`.
pub const DOC_READYZ: Doc = Doc {
    summary: "Readiness: policies loaded and the store answers.",
    request: None,
    query: &[],
    answers: &[
        Answer {
            status: 200,
            description: "Ready, with the served revision.",
            body: Content::Json(schema::<Ready<'static>>),
        },
        Answer {
            status: 503,
            description: "`not_ready`: the store does not answer.",
            body: Content::Json(schema::<super::error::ErrorBody>),
        },
    ],
};

/// Liveness: the process answers.
pub fn healthz() -> hyper::Response<Body> {
    json::respond_with(StatusCode::OK, &Live { status: "ok" })
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
        Ok(Ok(())) => Ok(json::respond_with(
            StatusCode::OK,
            &Ready {
                status: "ready",
                revision: &state.snapshot().revision,
            },
        )),
        Ok(Err(e)) => Err(ApiError::NotReady(format!("store unavailable: {e}"))),
        Err(e) => Err(ApiError::NotReady(format!("store check failed: {e}"))),
    }
}

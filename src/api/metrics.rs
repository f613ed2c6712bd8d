//! `GET /metrics`: the Prometheus text format, with the values read at scrape time gathered
//! from the store, the entity cache, the activity log, the reloader and, in fleet mode, the
//! replica.

use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use super::error::ApiError;
use super::json::Body;
use super::openapi::{Answer, Content, Doc};
use crate::metrics::{self, FleetSnapshot, Snapshot};
use crate::state::AppState;

/// How the OpenAPI document describes `GET /metrics`.
pub const DOC: Doc = Doc {
    summary: "Prometheus metrics, in the text exposition format.",
    request: None,
    query: &[],
    answers: &[Answer {
        status: 200,
        description: "Every policyd_ metric.",
        body: Content::Text,
    }],
};

/// Renders every metric.
pub async fn scrape(state: &AppState) -> Result<hyper::Response<Body>, ApiError> {
    let store = state.store.clone();
    let (entities, reservations_open) = tokio::task::spawn_blocking(move || {
        let entities = store.count_by_type()?;
        let open = store
            .ledger()
            .open_reservations(crate::storage::now_micros())?;
        Ok::<_, crate::store::StoreError>((entities, open))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("metrics task failed: {e}")))??;
    let snapshot = state.snapshot();
    let activity = state.activity.stats();
    let analysis = state.reloader.analysis_counts();
    let now = Snapshot {
        policies: snapshot.infos.len(),
        loaded_at: Some(snapshot.loaded_at),
        revision: snapshot.revision.to_string(),
        entities,
        cache: state.store.cache_stats(),
        compact: state.store.compact_stats(),
        activity: (activity.written, activity.dropped, activity.queued),
        reservations_open,
        analysis: (analysis.completed, analysis.unavailable, analysis.widenings),
        fleet: state.fleet.get().map(|fleet| FleetSnapshot {
            serve_stale: fleet.config().serve_stale,
            since_caught_up: fleet.since_confirmed(),
            stale: fleet.stale(),
            applied_revision: fleet.applied().revision,
            activity_shipped: fleet.shipped(),
        }),
    };
    let text = state
        .metrics
        .render(now)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut resp = hyper::Response::new(Body::new(Bytes::from(text)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    Ok(resp)
}

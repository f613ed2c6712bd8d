//! `PUT /v1/entities`, `GET` and `DELETE /v1/entities/{type}/{id}`.

use cedar_policy::EntityUid;
use hyper::StatusCode;
use serde_json::json;

use super::error::ApiError;
use super::json::{self, Body};
use super::on_store;
use crate::state::AppState;
use crate::store::codec::{self, uid_from_strs};

/// Validates every entity against the schema, then writes them all in one transaction.
pub async fn put(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let value = json::parse(body)?;
    // Held until the commit: a reload that changes the schema waits for this write to land
    // (and then checks it) or runs first (and this write is validated against its schema).
    let _gate = state.write_gate.read().await;
    let snapshot = state.snapshot();
    let records = codec::parse_batch(value, snapshot.schema.as_ref())?;
    let n = records.len();
    on_store(&state.store, move |store| store.upsert(&records)).await?;
    tracing::info!(upserted = n, "entities written");
    Ok(json::respond(StatusCode::OK, &json!({ "upserted": n })))
}

/// The stored entity, in Cedar entity JSON.
pub async fn get(state: &AppState, ty: &str, id: &str) -> Result<hyper::Response<Body>, ApiError> {
    let uid = path_uid(ty, id)?;
    let shown = uid.to_string();
    let record = on_store(&state.store, move |store| store.get(&uid)).await?;
    let record =
        record.ok_or_else(|| ApiError::NotFound(format!("entity {shown} is not stored")))?;
    let body = json::parse(record.body.as_bytes())
        .map_err(|e| ApiError::Internal(format!("stored entity {shown}: {e}")))?;
    Ok(json::respond(StatusCode::OK, &body))
}

/// Removes one entity.
pub async fn delete(
    state: &AppState,
    ty: &str,
    id: &str,
) -> Result<hyper::Response<Body>, ApiError> {
    let uid = path_uid(ty, id)?;
    let shown = uid.to_string();
    let removed = on_store(&state.store, move |store| store.delete(&uid)).await?;
    if !removed {
        return Err(ApiError::NotFound(format!("entity {shown} is not stored")));
    }
    tracing::info!(entity = %shown, "entity deleted");
    Ok(json::empty(StatusCode::NO_CONTENT))
}

fn path_uid(ty: &str, id: &str) -> Result<EntityUid, ApiError> {
    uid_from_strs(ty, id).map_err(|message| ApiError::InvalidField {
        field: "path".to_owned(),
        message,
    })
}

//! `PUT /v1/entities`, `GET` and `DELETE /v1/entities/{type}/{id}`.

use cedar_policy::EntityUid;
use hyper::StatusCode;

use super::error::ApiError;
use super::error::ErrorBody;
use super::json::{self, Body};
use super::on_store;
use super::openapi::{Answer, Content, Doc, any_object, object_array, schema};
use crate::activity::{Entry, Kind};
use crate::state::AppState;
use crate::storage::ORGANIZATION_TYPE;
use crate::store::codec::{self, NotItems};
use crate::store::{Store, StoreError};

/// The answer to a write.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Written {
    /// Entities stored.
    upserted: usize,
    /// Action entities that matched the schema's declarations (checked, not stored).
    actions_matched: usize,
    /// Fleet mode: the upstream revision token of the write.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
}

/// How the OpenAPI document describes `PUT /v1/entities`.
pub const DOC_PUT: Doc = Doc {
    summary: "Write Cedar entities (a JSON array), validated against the schema, all or none.",
    request: Some(object_array),
    query: &[],
    answers: &[
        Answer {
            status: 200,
            description: "Written.",
            body: Content::Json(schema::<Written>),
        },
        Answer {
            status: 400,
            description: "`invalid_entity`, `hierarchy_cycle`: nothing was written.",
            body: Content::Json(schema::<ErrorBody>),
        },
        Answer {
            status: 413,
            description: "`too_many_entities`, `body_too_large`.",
            body: Content::Json(schema::<ErrorBody>),
        },
    ],
};

/// How the OpenAPI document describes `GET /v1/entities/{type}/{id}`.
pub const DOC_GET: Doc = Doc {
    summary: "One stored entity (or schema action), in Cedar entity JSON.",
    request: None,
    query: &[],
    answers: &[
        Answer {
            status: 200,
            description: "The entity.",
            body: Content::Json(any_object),
        },
        Answer {
            status: 400,
            description: "`invalid_field`: the path is not an entity uid.",
            body: Content::Json(schema::<ErrorBody>),
        },
        Answer {
            status: 404,
            description: "`not_found`: no such entity.",
            body: Content::Json(schema::<ErrorBody>),
        },
    ],
};

/// How the OpenAPI document describes `DELETE /v1/entities/{type}/{id}`.
pub const DOC_DELETE: Doc = Doc {
    summary: "Remove one stored entity.",
    request: None,
    query: &[],
    answers: &[
        Answer {
            status: 204,
            description: "Removed.",
            body: Content::Empty,
        },
        Answer {
            status: 400,
            description: "`invalid_field`: the path is not an entity uid.",
            body: Content::Json(schema::<ErrorBody>),
        },
        Answer {
            status: 404,
            description: "`not_found`: no such entity.",
            body: Content::Json(schema::<ErrorBody>),
        },
    ],
};

/// Validates every entity against the schema, then writes them all in one transaction.
///
/// `upserted` counts the entities stored; `actions_matched` the action entities that matched
/// the schema's declarations (with a schema they are checked, not stored).
pub async fn put(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let items = codec::raw_items(body).map_err(|e| match e {
        NotItems::Malformed(e) => ApiError::BadJson(e.to_string()),
        NotItems::NotAnArray(e) => e.into(),
    })?;
    if items.len() > state.limits.max_entities_per_write {
        return Err(ApiError::TooManyEntities {
            got: items.len(),
            max: state.limits.max_entities_per_write,
        });
    }
    // Held until the commit: a reload that changes the schema waits for this write to land
    // (and then checks it) or runs first (and this write is validated against its schema).
    let _gate = state.write_gate.read().await;
    let snapshot = state.snapshot();
    let codec::Write { records, actions } =
        codec::parse_raw_write(&items, snapshot.schema.as_ref())?;
    let n = records.len();
    let log = state.activity.enabled();
    let revision = match state.fleet.get() {
        Some(fleet) => Some(fleet.upsert(records.clone()).await?),
        None => None,
    };
    let local = revision.is_none();
    let orgs = on_store(&state.store, move |store| {
        if local {
            store.upsert(&records)?;
        }
        if log {
            organizations(store, &records)
        } else {
            Ok(vec![])
        }
    })
    .await?;
    tracing::info!(upserted = n, "entities written");
    for (uid, org) in orgs {
        state
            .activity
            .record(change(Kind::EntityUpsert, &uid, org, &snapshot.revision));
    }
    Ok(json::respond_with(
        StatusCode::OK,
        &Written {
            upserted: n,
            actions_matched: actions,
            revision,
        },
    ))
}

/// The stored entity, in Cedar entity JSON. With a schema, an action is answered from the
/// schema, its source: the action with every action group it is in.
pub async fn get(state: &AppState, ty: &str, id: &str) -> Result<hyper::Response<Body>, ApiError> {
    let uid = path_uid(ty, id)?;
    let shown = uid.to_string();
    if let Some(closure) = state.snapshot().action_entities(&uid)
        && let Some(action) = closure.first()
    {
        let entity = cedar_policy::Entity::from(action.as_ref().clone());
        let body = entity
            .to_json_value()
            .map_err(|e| ApiError::Internal(format!("schema action {shown}: {e}")))?;
        return Ok(json::respond(StatusCode::OK, &body));
    }
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
    let target = uid.clone();
    let log = state.activity.enabled();
    let local = state.fleet.get().is_none();
    let (removed, org) = on_store(&state.store, move |store| {
        // Resolved first: once deleted, the entity no longer leads to its organization.
        let org = if log {
            store.organization_of(&uid, ORGANIZATION_TYPE)?
        } else {
            None
        };
        Ok::<_, StoreError>((local && store.delete(&uid)?, org))
    })
    .await?;
    // Fleet mode: the upstream decides whether it was stored, and the replica follows.
    let upstream_revision = match state.fleet.get() {
        Some(fleet) => fleet.delete(&target).await?,
        None => None,
    };
    if !removed && upstream_revision.is_none() {
        return Err(ApiError::NotFound(format!("entity {shown} is not stored")));
    }
    tracing::info!(entity = %shown, "entity deleted");
    let revision = state.snapshot().revision.clone();
    state
        .activity
        .record(change(Kind::EntityDelete, &target, org, &revision));
    Ok(match upstream_revision {
        Some(token) => json::respond(StatusCode::OK, &serde_json::json!({ "revision": token })),
        None => json::empty(StatusCode::NO_CONTENT),
    })
}

/// The organization of each written entity, sharing lookups between entities of one write.
/// The organization each written entity belongs to, found from its parents (already in the
/// record) rather than by reading the entity back.
fn organizations(
    store: &Store,
    records: &[codec::Record],
) -> Result<Vec<(EntityUid, Option<String>)>, StoreError> {
    records
        .iter()
        .map(|r| {
            let org = store.organization_under(&r.uid, &r.parents, ORGANIZATION_TYPE)?;
            Ok((r.uid.clone(), org))
        })
        .collect()
}

fn change(kind: Kind, uid: &EntityUid, org: Option<String>, revision: &str) -> Entry {
    Entry {
        resource: Some(uid.clone()),
        organization: org,
        policy_revision: Some(revision.into()),
        ..Entry::new(kind)
    }
}

fn path_uid(ty: &str, id: &str) -> Result<EntityUid, ApiError> {
    crate::uid::from_parts(ty, id).map_err(|message| ApiError::InvalidField {
        field: "path".to_owned(),
        message,
    })
}

//! Storage routes: per-organization and per-project totals (for callers the policies allow to
//! `view_storage`), quota checks, and reservations for uploads in flight. In fleet mode quota
//! checks and reservations are decided upstream (see [`crate::upstream::ledger`]).

use std::collections::BTreeMap;

use cedar_policy::EntityUid;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::json::{self, Body};
use super::{forbidden, on_store, permission_query, permitted};
use crate::state::AppState;
use crate::storage::{
    self, ORGANIZATION_TYPE, PROJECT_TYPE, QuotaCheck, Reservation, ReserveOutcome, Side, Usage,
};

/// Longest a reservation may be held.
const MAX_TTL_SECONDS: i64 = 7 * 24 * 3600;

/// The action a caller needs on the organization or project to see its storage.
const VIEW_STORAGE: &str = "view_storage";

/// `GET /v1/storage/{Organization|Project}/{id}?principal=<uid>`.
pub async fn totals(
    state: &AppState,
    ty: &str,
    id: &str,
    query: Option<&str>,
) -> Result<hyper::Response<Body>, ApiError> {
    if ty != ORGANIZATION_TYPE && ty != PROJECT_TYPE {
        return Err(ApiError::NotFound(format!(
            "storage is accounted per {ORGANIZATION_TYPE} and {PROJECT_TYPE}, not {ty}"
        )));
    }
    let principal = principal_param(query)?;
    let entity = crate::uid::from_parts(ty, id).map_err(|message| ApiError::InvalidField {
        field: "path".to_owned(),
        message,
    })?;
    let snapshot = state.snapshot();
    let query = permission_query(&snapshot, &principal, VIEW_STORAGE, &entity, "")?;
    let allowed = permitted(state, &snapshot, query).await?;
    let now = storage::now_micros();
    let target = entity.clone();
    let (usage, mut projects) = on_store(&state.store, move |store| {
        let Some(usage) = store.ledger().usage(&target, now)? else {
            return Ok::<_, crate::store::StoreError>((None, vec![]));
        };
        let mut projects = Vec::new();
        if allowed && target.type_name().to_string() == ORGANIZATION_TYPE {
            for p in store.ledger().children(&target, PROJECT_TYPE)? {
                if let Some(u) = store.ledger().usage(&p, now)? {
                    projects.push((p, u));
                }
            }
        }
        Ok((Some(usage), projects))
    })
    .await?;
    let Some(mut usage) = usage else {
        return Err(ApiError::NotFound(format!("{entity} is not stored")));
    };
    if !allowed {
        return Err(forbidden(&principal, VIEW_STORAGE, &entity));
    }
    // Fleet mode: reservations are held upstream, for the whole fleet.
    if let Some(fleet) = state.fleet.get() {
        usage.reserved = fleet.upstream().reserved(&entity, now).await?;
        for (p, u) in &mut projects {
            u.reserved = fleet.upstream().reserved(p, now).await?;
        }
    }
    let body = if ty == ORGANIZATION_TYPE {
        organization_json(&entity, &usage, projects)
    } else {
        project_json(&entity, &usage)
    };
    Ok(json::respond(StatusCode::OK, &body))
}

fn organization_json(
    entity: &EntityUid,
    usage: &Usage,
    mut projects: Vec<(EntityUid, Usage)>,
) -> Value {
    // Every item type counted in the organization appears in every project, zero or not.
    let types: Vec<&String> = usage.by_type.keys().collect();
    projects.sort_by(|(a, ua), (b, ub)| {
        ub.used()
            .cmp(&ua.used())
            .then_with(|| a.to_string().cmp(&b.to_string()))
    });
    let projects: Vec<Value> = projects
        .iter()
        .map(|(p, u)| {
            let items: BTreeMap<&str, i64> = types
                .iter()
                .map(|t| (t.as_str(), u.by_type.get(*t).map_or(0, |x| x.count)))
                .chain(u.by_type.iter().map(|(t, x)| (t.as_str(), x.count)))
                .collect();
            json!({
                "entity": uid_json(p),
                "used_bytes": u.used(),
                "reserved_bytes": u.reserved,
                "quota_bytes": u.quota,
                "items": items,
            })
        })
        .collect();
    json!({
        "entity": uid_json(entity),
        "used_bytes": usage.used(),
        "reserved_bytes": usage.reserved,
        "quota_bytes": usage.quota,
        "projects": projects,
    })
}

fn project_json(entity: &EntityUid, usage: &Usage) -> Value {
    let by_type: BTreeMap<&str, Value> = usage
        .by_type
        .iter()
        .map(|(t, u)| (t.as_str(), json!({"count": u.count, "bytes": u.bytes})))
        .collect();
    json!({
        "entity": uid_json(entity),
        "used_bytes": usage.used(),
        "reserved_bytes": usage.reserved,
        "quota_bytes": usage.quota,
        "by_type": by_type,
    })
}

/// `POST /v1/storage/check`: would adding bytes keep the project and its organization in quota?
pub async fn check(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let map = json::object(json::parse(body)?, "the body")?;
    json::deny_unknown(&map, &["project", "add_bytes"], "")?;
    let project = json::uid(map.get("project"), "project")?;
    let add = json::non_negative(map.get("add_bytes"), "add_bytes")?;
    let shown = project.to_string();
    let now = storage::now_micros();
    let checked = match state.fleet.get() {
        Some(fleet) => fleet.upstream().check_quota(&project, add, now).await?,
        None => {
            on_store(&state.store, move |s| {
                s.ledger().check_quota(&project, add, now)
            })
            .await?
        }
    };
    let checked =
        checked.ok_or_else(|| ApiError::NotFound(format!("project {shown} is not stored")))?;
    Ok(json::respond(StatusCode::OK, &check_json(&checked)))
}

/// `POST /v1/storage/reservations`: check and hold bytes atomically.
pub async fn reserve(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let map = json::object(json::parse(body)?, "the body")?;
    json::deny_unknown(
        &map,
        &["project", "bytes", "ttl_seconds", "idempotency_key"],
        "",
    )?;
    let project = json::uid(map.get("project"), "project")?;
    let bytes = json::non_negative(map.get("bytes"), "bytes")?;
    let ttl = json::non_negative(map.get("ttl_seconds"), "ttl_seconds")?;
    if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
        return Err(ApiError::InvalidField {
            field: "ttl_seconds".to_owned(),
            message: format!("must be between 1 and {MAX_TTL_SECONDS}"),
        });
    }
    let key = match map.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 256 => Some(k.clone()),
        Some(_) => {
            return Err(ApiError::InvalidField {
                field: "idempotency_key".to_owned(),
                message: "must be a string of 1 to 256 bytes".to_owned(),
            });
        }
    };
    let shown = project.to_string();
    let now = storage::now_micros();
    let outcome = match state.fleet.get() {
        Some(fleet) => {
            fleet
                .upstream()
                .reserve(&project, bytes, ttl * 1_000_000, key.as_deref(), now)
                .await?
        }
        None => {
            on_store(&state.store, move |s| {
                s.ledger()
                    .reserve(&project, bytes, ttl * 1_000_000, key.as_deref(), now)
            })
            .await?
        }
    };
    match outcome {
        ReserveOutcome::Created(r) => {
            tracing::info!(id = %r.id, project = %r.project, bytes = r.bytes, "storage reserved");
            Ok(json::respond(StatusCode::CREATED, &reservation_json(&r)))
        }
        ReserveOutcome::Existing(r) => Ok(json::respond(StatusCode::OK, &reservation_json(&r))),
        ReserveOutcome::Refused(c) => Err(ApiError::QuotaExceeded {
            message: c.reason.clone(),
            check: check_json(&c),
        }),
        ReserveOutcome::UnknownProject => {
            Err(ApiError::NotFound(format!("project {shown} is not stored")))
        }
        ReserveOutcome::KeyConflict(r) => Err(ApiError::IdempotencyConflict(format!(
            "idempotency key belongs to reservation {} of {} bytes on {}",
            r.id, r.bytes, r.project
        ))),
    }
}

/// `DELETE /v1/storage/reservations/{id}`.
pub async fn release(state: &AppState, id: &str) -> Result<hyper::Response<Body>, ApiError> {
    let owned = id.to_owned();
    let released = match state.fleet.get() {
        Some(fleet) => fleet.upstream().release(id).await?,
        None => on_store(&state.store, move |s| s.ledger().release(&owned)).await?,
    };
    if !released {
        return Err(ApiError::NotFound(format!("no reservation {id}")));
    }
    tracing::info!(%id, "storage reservation released");
    Ok(json::empty(StatusCode::NO_CONTENT))
}

fn reservation_json(r: &Reservation) -> Value {
    json!({
        "id": r.id,
        "project": uid_json(&r.project),
        "bytes": r.bytes,
        "expires_at": storage::format_micros(r.expires_at),
        "idempotency_key": r.idempotency_key,
    })
}

fn check_json(c: &QuotaCheck) -> Value {
    let side = |s: &Side| {
        json!({
            "entity": uid_json(&s.entity),
            "used_bytes": s.used,
            "reserved_bytes": s.reserved,
            "quota_bytes": s.quota,
        })
    };
    json!({
        "allowed": c.allowed,
        "project": side(&c.project),
        "organization": c.organization.as_ref().map(side),
        "reason": c.reason,
    })
}

fn uid_json(uid: &EntityUid) -> Value {
    json!({"type": uid.type_name().to_string(), "id": uid.id().unescaped()})
}

/// The `principal` query parameter, a percent-encoded Cedar uid string.
fn principal_param(query: Option<&str>) -> Result<EntityUid, ApiError> {
    let mut params = json::query_params(query, &["principal"])?;
    let Some(raw) = params.remove("principal") else {
        return Err(ApiError::InvalidField {
            field: "principal".to_owned(),
            message: "query parameter is required, like ?principal=User::%22ada%22".to_owned(),
        });
    };
    json::uid(Some(&Value::String(raw)), "principal")
}

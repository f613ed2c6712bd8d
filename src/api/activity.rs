//! `GET /v1/activity`: an organization's trail, newest first, for viewers the policies allow to
//! `view_activity` on it. In fleet mode, the merged trail of every sidecar (read upstream;
//! each record names its `sidecar`).

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use hyper::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::error::ErrorBody;
use super::json::{self, Body};
use super::openapi::{Answer, Content, Doc, Query, any_object, schema};
use super::{forbidden, permission_query, permitted};
use crate::activity::{Filter, Kind, Record};
use crate::state::AppState;
use crate::storage::{self, ORGANIZATION_TYPE};
use crate::upstream::activity::Cursor;

const PARAMS: &[&str] = &[
    "organization",
    "viewer",
    "principal",
    "resource",
    "action",
    "kind",
    "since",
    "until",
    "limit",
    "cursor",
];
const DEFAULT_LIMIT: usize = 100;
/// The action a viewer needs on the organization.
const VIEW_ACTIVITY: &str = "view_activity";
const MAX_LIMIT: usize = 1000;

/// How the OpenAPI document describes `GET /v1/activity`.
pub const DOC: Doc = Doc {
    summary: "An organization's activity trail, newest first, for a viewer the policies allow to view_activity.",
    request: None,
    query: &[
        Query {
            name: "organization",
            required: true,
            description: "The organization's id.",
        },
        Query {
            name: "viewer",
            required: true,
            description: "Who asks, a Cedar uid like User::\"ada\".",
        },
        Query {
            name: "principal",
            required: false,
            description: "Only records of this principal (uid).",
        },
        Query {
            name: "resource",
            required: false,
            description: "Only records on this resource (uid).",
        },
        Query {
            name: "action",
            required: false,
            description: "Only records of this action (uid).",
        },
        Query {
            name: "kind",
            required: false,
            description: "decision, entity_upsert, entity_delete or policy_reload.",
        },
        Query {
            name: "since",
            required: false,
            description: "RFC 3339 time, inclusive.",
        },
        Query {
            name: "until",
            required: false,
            description: "RFC 3339 time.",
        },
        Query {
            name: "limit",
            required: false,
            description: "1 to 1000 records (default 100).",
        },
        Query {
            name: "cursor",
            required: false,
            description: "next_cursor of the previous page.",
        },
    ],
    answers: &[
        Answer {
            status: 200,
            description: "`{records, next_cursor}`; in fleet mode each record also names its `sidecar`.",
            body: Content::Json(any_object),
        },
        Answer {
            status: 400,
            description: "`invalid_field`: a query parameter is missing or wrong.",
            body: Content::Json(schema::<ErrorBody>),
        },
        Answer {
            status: 403,
            description: "`forbidden`: the policies do not allow the viewer.",
            body: Content::Json(schema::<ErrorBody>),
        },
    ],
};

/// One page of the trail.
pub async fn list(
    state: &AppState,
    query: Option<&str>,
) -> Result<hyper::Response<Body>, ApiError> {
    let mut params = json::query_params(query, PARAMS)?;
    let organization = params
        .remove("organization")
        .ok_or_else(|| required("organization"))?;
    let viewer = params.remove("viewer").ok_or_else(|| required("viewer"))?;
    let viewer = json::uid(Some(&Value::String(viewer)), "viewer")?;
    let uid_param = |name: &str, params: &mut HashMap<String, String>| {
        params
            .remove(name)
            .map(|v| json::uid(Some(&Value::String(v)), name).map(|u| u.to_string()))
            .transpose()
    };
    let filter = Filter {
        principal: uid_param("principal", &mut params)?,
        resource: uid_param("resource", &mut params)?,
        action: uid_param("action", &mut params)?,
        kind: params
            .remove("kind")
            .map(|k| {
                Kind::parse(&k).ok_or_else(|| {
                    invalid(
                        "kind",
                        "must be decision, entity_upsert, entity_delete or policy_reload",
                    )
                })
            })
            .transpose()?,
        since: params
            .remove("since")
            .map(|t| micros("since", &t))
            .transpose()?,
        until: params
            .remove("until")
            .map(|t| micros("until", &t))
            .transpose()?,
        limit: params
            .remove("limit")
            .map(|l| match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(invalid(
                    "limit",
                    &format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )),
            })
            .transpose()?
            .unwrap_or(DEFAULT_LIMIT),
        before_id: None,
        organization,
    };
    let cursor = params.remove("cursor");
    let bad_cursor = || invalid("cursor", "must be a next_cursor from a previous page");

    let org = crate::uid::from_parts(ORGANIZATION_TYPE, &filter.organization)
        .map_err(ApiError::Internal)?;
    let snapshot = state.snapshot();
    let check = permission_query(&snapshot, &viewer, VIEW_ACTIVITY, &org, "viewer")?;
    if !permitted(state, &snapshot, check).await? {
        return Err(forbidden(&viewer, VIEW_ACTIVITY, &org));
    }
    if let Some(fleet) = state.fleet.get() {
        // Fleet mode: the merged trail of every sidecar, upstream.
        let cursor = cursor
            .map(|c| Cursor::parse(&c).ok_or_else(bad_cursor))
            .transpose()?;
        let page = fleet.upstream().activity(&filter, cursor.as_ref()).await?;
        let records: Vec<Value> = page
            .records
            .iter()
            .map(|s| {
                let mut record = record_json(&s.record);
                record["sidecar"] = Value::String(s.sidecar.clone());
                record
            })
            .collect();
        return Ok(json::respond(
            StatusCode::OK,
            &json!({ "records": records, "next_cursor": page.next_cursor }),
        ));
    }
    let mut filter = filter;
    filter.before_id = cursor
        .map(|c| c.parse::<i64>().map_err(|_| bad_cursor()))
        .transpose()?;
    let log = state.activity.clone();
    let page = tokio::task::spawn_blocking(move || log.query(&filter))
        .await
        .map_err(|e| ApiError::Internal(format!("activity query task failed: {e}")))??;
    let records: Vec<Value> = page.records.iter().map(record_json).collect();
    Ok(json::respond(
        StatusCode::OK,
        &json!({ "records": records, "next_cursor": page.next_cursor.map(|c| c.to_string()) }),
    ))
}

/// The JSON form of a record.
pub fn record_json(r: &Record) -> Value {
    json!({
        "id": r.id,
        "time": storage::format_micros(r.time),
        "kind": r.kind.as_str(),
        "principal": r.principal,
        "action": r.action,
        "resource": r.resource,
        "decision": r.decision,
        "reasons": r.reasons,
        "policy_revision": r.policy_revision,
        "organization": r.organization,
    })
}

fn micros(field: &str, text: &str) -> Result<i64, ApiError> {
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
        invalid(
            field,
            &format!("must be an RFC 3339 time like 2026-11-27T12:00:00Z: {e}"),
        )
    })?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| invalid(field, "must be after 1970"))?;
    i64::try_from(d.as_micros()).map_err(|_| invalid(field, "is too far in the future"))
}

fn required(field: &str) -> ApiError {
    invalid(field, "query parameter is required")
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::InvalidField {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

//! The AuthZEN 1.0 Authorization API beside the native one: `POST /access/v1/evaluation`,
//! `/access/v1/evaluations`, `/access/v1/search/{subject,resource,action}` and
//! `GET /.well-known/authzen-configuration`.
//!
//! Mapping: subject `{type, id}` is the Cedar principal `<type>::"<id>"`, resource likewise,
//! action `{name}` is `Action::"<name>"`, `context` is the Cedar context. Properties of the
//! subject and resource are merged over the stored entity for that one decision, never stored
//! (see [`super::authzen_input`]). A malformed payload is a 400; a well-formed request the
//! schema refuses is `decision: false` with the reason in `context`.

use std::sync::Arc;
use std::time::Instant;

use hyper::StatusCode;
use serde_json::{Value, json};

use super::authzen_input::{Ent, Semantic, Tuple, field, page_of, parse_body, transient, tuple};
use super::error::{ApiError, ErrorBody};
use super::json::{self, Body};
use super::openapi::{Answer, Content, Doc, any_object, schema};
use crate::activity::{Entry, Kind, Verdict};
use crate::authz;
use crate::engine::{self, Outcome};
use crate::policy::PolicySnapshot;
use crate::search::{self, SearchQuery, Side, token};
use crate::state::AppState;

/// Most answers on one search page, and the page size when none is asked.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// `GET /.well-known/authzen-configuration`: the endpoints, under `--authzen-base-url`
/// (default `http://<listen address>`; in-process, the request's Host).
pub fn configuration(state: &AppState, host: Option<&str>) -> hyper::Response<Body> {
    let base = state
        .authzen_base
        .get()
        .cloned()
        .unwrap_or_else(|| format!("http://{}", host.unwrap_or("localhost")));
    let base = base.trim_end_matches('/');
    json::respond(
        StatusCode::OK,
        &json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
            "search_subject_endpoint": format!("{base}/access/v1/search/subject"),
            "search_resource_endpoint": format!("{base}/access/v1/search/resource"),
            "search_action_endpoint": format!("{base}/access/v1/search/action"),
        }),
    )
}

/// `POST /access/v1/evaluation`.
pub async fn evaluation(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let map = parse_body(body)?;
    let t = tuple(&map, None, "")?;
    let snapshot = state.snapshot();
    let answer = decide_all(state, &snapshot, vec![Ok(t)]).await?;
    let one = answer
        .into_iter()
        .next()
        .unwrap_or_else(|| refusal("no decision"));
    Ok(json::respond(StatusCode::OK, &one))
}

/// `POST /access/v1/evaluations`: top-level fields are defaults an item's key replaces whole;
/// without `evaluations`, a single evaluation.
pub async fn evaluations(state: &AppState, body: &[u8]) -> Result<hyper::Response<Body>, ApiError> {
    let map = parse_body(body)?;
    let Some(items) = map.get("evaluations") else {
        let t = tuple(&map, None, "")?;
        let snapshot = state.snapshot();
        let answer = decide_all(state, &snapshot, vec![Ok(t)]).await?;
        let one = answer
            .into_iter()
            .next()
            .unwrap_or_else(|| refusal("no decision"));
        return Ok(json::respond(StatusCode::OK, &one));
    };
    let Value::Array(items) = items else {
        return Err(field(
            "evaluations",
            "must be an array of evaluation requests",
        ));
    };
    if items.len() > state.limits.max_batch {
        return Err(ApiError::BatchTooLarge {
            got: items.len(),
            max: state.limits.max_batch,
        });
    }
    // Defaults an item may replace must still be of the right JSON type.
    for key in ["subject", "action", "resource", "context"] {
        if map.get(key).is_some_and(|v| !v.is_object() && !v.is_null()) {
            return Err(field(key, "must be an object"));
        }
    }
    let semantic = Semantic::of(&map)?;
    // An item that is not complete answers `decision: false` in its place.
    let tuples: Vec<Result<Tuple, String>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(item) => {
                tuple(&map, Some(item), &format!("evaluations[{i}]")).map_err(|e| e.to_string())
            }
            _ => Err(format!("evaluations[{i}]: must be an object")),
        })
        .collect();
    let snapshot = state.snapshot();
    let mut answers = decide_all(state, &snapshot, tuples).await?;
    if let Some(stop) = answers.iter().position(|a| semantic.stops_at(a)) {
        answers.truncate(stop + 1);
    }
    Ok(json::respond(
        StatusCode::OK,
        &json!({ "evaluations": answers }),
    ))
}

/// Decides each well-formed tuple (one engine call, one slice), in order; a tuple that could
/// not be read, or that the schema refuses, answers `decision: false` with the reason.
async fn decide_all(
    state: &AppState,
    snapshot: &Arc<PolicySnapshot>,
    tuples: Vec<Result<Tuple, String>>,
) -> Result<Vec<Value>, ApiError> {
    let mut answers: Vec<Option<Value>> = Vec::with_capacity(tuples.len());
    let mut queries = Vec::new();
    let mut at = Vec::new();
    let mut overrides: Vec<Arc<cedar_policy_core::ast::Entity>> = Vec::new();
    for t in tuples {
        match prepare(state, snapshot, t).await? {
            Ok((q, extra)) => {
                at.push(answers.len());
                answers.push(None);
                queries.push(q);
                overrides.extend(extra);
            }
            Err(reason) => answers.push(Some(refusal(&reason))),
        }
    }
    if !queries.is_empty() {
        let deadline = state.limits.decision_deadline;
        let outcomes =
            engine::decide_overriding(&state.store, snapshot, &queries, deadline, overrides)
                .await?;
        for ((i, q), outcome) in at.into_iter().zip(queries).zip(outcomes) {
            answers[i] = Some(answer(state, snapshot, q, outcome));
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| refusal("no decision")))
        .collect())
}

type Prepared = (authz::Query, Vec<Arc<cedar_policy_core::ast::Entity>>);

/// One tuple as a query, with the entities its properties stand for; `Err(reason)` when the
/// schema refuses it (a `decision: false`).
async fn prepare(
    state: &AppState,
    snapshot: &Arc<PolicySnapshot>,
    t: Result<Tuple, String>,
) -> Result<Result<Prepared, String>, ApiError> {
    let t = match t {
        Ok(t) => t,
        Err(reason) => return Ok(Err(reason)),
    };
    let uids = t.subject.uid().and_then(|p| {
        let a = crate::uid::from_parts("Action", &t.action).map_err(|e| e.to_string())?;
        Ok((p, a, t.resource.uid()?))
    });
    let (principal, action, resource) = match uids {
        Ok(u) => u,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut q = match authz::prepare(snapshot, principal, action, resource, t.context) {
        Ok(q) => q,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut overrides = Vec::new();
    for ent in [t.subject, t.resource] {
        let Some(props) = ent.properties.clone() else {
            continue;
        };
        let snap = snapshot.clone();
        let store = state.store.clone();
        let made = super::on_store(&state.store, move |_| {
            Ok::<_, ApiError>(transient(&store, &snap, &ent, &props))
        })
        .await?;
        match made {
            Ok(Some((entity, refs))) => {
                q.roots.extend(refs);
                overrides.push(entity);
            }
            Ok(None) => {}
            Err(reason) => return Ok(Err(reason)),
        }
    }
    Ok(Ok((q, overrides)))
}

fn refusal(reason: &str) -> Value {
    json!({"decision": false, "context": {"reason": reason}})
}

fn answer(state: &AppState, snapshot: &PolicySnapshot, q: authz::Query, o: Outcome) -> Value {
    let Outcome {
        decision,
        organization,
    } = o;
    let id = state.activity.record(Entry {
        kind: Kind::Decision,
        principal: Some(q.principal),
        action: Some(q.action),
        resource: Some(q.resource),
        verdict: Some(Verdict::of(decision.allowed)),
        reasons: decision.reasons.clone(),
        policy_revision: Some(snapshot.revision.clone()),
        organization,
    });
    json!({
        "decision": decision.allowed,
        "context": {"reasons": decision.reasons, "errors": decision.errors, "decision_id": id},
    })
}

/// `POST /access/v1/search/{subject,resource}`.
pub async fn search(
    state: &AppState,
    body: &[u8],
    side: Side,
) -> Result<hyper::Response<Body>, ApiError> {
    let map = parse_body(body)?;
    let subject = Ent::read(&map, "subject", side != Side::Subject)?;
    let resource = Ent::read(&map, "resource", side != Side::Resource)?;
    let action = super::authzen_input::action(&map)?;
    let context = super::authzen_input::context(&map)?;
    let (known, open) = match side {
        Side::Resource => (subject, resource),
        Side::Subject => (resource, subject),
    };
    let ctx_text = context.as_ref().map(Value::to_string).unwrap_or_default();
    let hash = token::query_hash(&[
        side.word(),
        &known.ty,
        known.id.as_deref().unwrap_or(""),
        &action,
        &open.ty,
        &ctx_text,
    ]);
    let (limit, after) = page_of(&map, &hash, MAX_PAGE, DEFAULT_PAGE)?;
    let empty = || {
        json::respond(
            StatusCode::OK,
            &json!({"results": [], "page": {"next_token": ""}}),
        )
    };
    let (Ok(known_uid), Ok(action_uid), Ok(ty)) = (
        crate::uid::from_parts(&known.ty, known.id.as_deref().unwrap_or("")),
        crate::uid::from_parts("Action", &action),
        open.ty.parse(),
    ) else {
        return Ok(empty());
    };
    let query = SearchQuery {
        side,
        known: known_uid,
        action: action_uid,
        ty,
        context,
    };
    let snapshot = state.snapshot();
    let deadline = state.limits.decision_deadline;
    let store = state.store.clone();
    let page = super::on_store(&state.store, move |_| {
        search::search(
            &store,
            &snapshot,
            &query,
            after.as_deref(),
            limit,
            Some((Instant::now(), deadline)),
        )
    })
    .await?;
    let results: Vec<Value> = page
        .items
        .iter()
        .map(|u| json!({"type": u.type_name().to_string(), "id": u.id().unescaped()}))
        .collect();
    let next = match (page.more, page.items.last()) {
        (true, Some(last)) => token::encode(&hash, last.id().unescaped()),
        _ => String::new(),
    };
    Ok(json::respond(
        StatusCode::OK,
        &json!({"results": results, "page": {"next_token": next}}),
    ))
}

/// `POST /access/v1/search/action`: the schema actions that apply and are allowed.
pub async fn search_actions(
    state: &AppState,
    body: &[u8],
) -> Result<hyper::Response<Body>, ApiError> {
    let map = parse_body(body)?;
    let subject = Ent::read(&map, "subject", true)?;
    let resource = Ent::read(&map, "resource", true)?;
    let context = super::authzen_input::context(&map)?;
    let ctx_text = context.as_ref().map(Value::to_string).unwrap_or_default();
    let (sid, rid) = (
        subject.id.unwrap_or_default(),
        resource.id.unwrap_or_default(),
    );
    let hash = token::query_hash(&["action", &subject.ty, &sid, &resource.ty, &rid, &ctx_text]);
    let (limit, after) = page_of(&map, &hash, MAX_PAGE, DEFAULT_PAGE)?;
    let (Ok(p), Ok(r)) = (
        crate::uid::from_parts(&subject.ty, &sid),
        crate::uid::from_parts(&resource.ty, &rid),
    ) else {
        return Ok(json::respond(
            StatusCode::OK,
            &json!({"results": [], "page": {"next_token": ""}}),
        ));
    };
    let snapshot = state.snapshot();
    let store = state.store.clone();
    let allowed = super::on_store(&state.store, move |_| {
        search::actions(&store, &snapshot, &p, &r, context.as_ref())
    })
    .await?;
    let names: Vec<String> = allowed
        .iter()
        .map(|a| a.id().unescaped().to_owned())
        .filter(|n| after.as_deref().is_none_or(|a| n.as_str() > a))
        .collect();
    let more = names.len() > limit;
    let page: Vec<&String> = names.iter().take(limit).collect();
    let next = match (more, page.last()) {
        (true, Some(last)) => token::encode(&hash, last),
        _ => String::new(),
    };
    let results: Vec<Value> = page.iter().map(|n| json!({"name": n})).collect();
    Ok(json::respond(
        StatusCode::OK,
        &json!({"results": results, "page": {"next_token": next}}),
    ))
}

/// How the OpenAPI document describes an AuthZEN POST route: the bodies are the AuthZEN 1.0
/// specification's, described there.
const fn authzen_doc(summary: &'static str) -> Doc {
    Doc {
        summary,
        request: Some(any_object),
        query: &[],
        answers: &[
            Answer {
                status: 200,
                description: "The AuthZEN 1.0 answer (a request that does not fit the schema is a `decision: false` with the reason in `context`).",
                body: Content::Json(any_object),
            },
            Answer {
                status: 400,
                description: "A malformed AuthZEN request, or a page token used with another query.",
                body: Content::Json(schema::<ErrorBody>),
            },
        ],
    }
}

/// `POST /access/v1/evaluation`.
pub const DOC_EVALUATION: Doc = authzen_doc("AuthZEN 1.0: one access evaluation.");
/// `POST /access/v1/evaluations`.
pub const DOC_EVALUATIONS: Doc =
    authzen_doc("AuthZEN 1.0: several access evaluations, with defaults and a semantic.");
/// `POST /access/v1/search/subject`.
pub const DOC_SEARCH_SUBJECT: Doc = authzen_doc(
    "AuthZEN 1.0: the stored subjects of a type that may take the action on the resource.",
);
/// `POST /access/v1/search/resource`.
pub const DOC_SEARCH_RESOURCE: Doc = authzen_doc(
    "AuthZEN 1.0: the stored resources of a type on which the subject may take the action.",
);
/// `POST /access/v1/search/action`.
pub const DOC_SEARCH_ACTION: Doc =
    authzen_doc("AuthZEN 1.0: the schema actions the subject may take on the resource.");
/// `GET /.well-known/authzen-configuration`.
pub const DOC_CONFIGURATION: Doc = Doc {
    summary: "AuthZEN 1.0 metadata: the URL of each endpoint.",
    request: None,
    query: &[],
    answers: &[Answer {
        status: 200,
        description: "The policy decision point's metadata.",
        body: Content::Json(any_object),
    }],
};

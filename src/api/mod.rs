//! The HTTP API: routing, and the handlers of each route family.
//!
//! Handlers return `Result<Response, ApiError>`; [`handle`] is the only place an error becomes
//! a status code and a JSON body.

mod activity;
mod authzen;
mod authzen_input;
mod consistency;
mod decisions;
mod entities;
pub mod error;
mod health;
mod json;
mod metrics;
pub mod openapi;
mod policies;
pub mod routes;
mod storage;

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use percent_encoding::percent_decode_str;

use cedar_policy::EntityUid;

use crate::authz::{self, Query};
use crate::engine;
use crate::logging::REQUEST_TARGET;
use crate::policy::PolicySnapshot;
use crate::state::AppState;
use crate::store::Store;
pub use decisions::{parse_batch as parse_batch_request, parse_single as parse_decision_request};
pub use error::ApiError;
pub use json::Body;
use routes::{Access, Found};

/// Answers one request. Never fails: errors become JSON error responses.
///
/// With the request log on (debug on [`REQUEST_TARGET`]), each request ends in one event:
/// method, route pattern, status, latency and the decision ids. Off, it costs one check of
/// the filter: no clock read, no strings.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let started = request_log_on().then(Instant::now);
    let method = req.method().clone();
    let uri = req.uri().clone();
    let request_id = req.headers().get("x-request-id").cloned();
    let (route, served, result) = route(&state, req).await;
    let (mut resp, refused) = match result {
        Ok(resp) => (resp, None),
        Err(err) => {
            let (status, code) = err.status_and_code();
            if status.is_server_error() {
                let path = uri.path();
                tracing::error!(%method, route = route_pattern(route), %path, code, error = %err, "request failed");
            }
            let mut resp = json::respond(status, &err.body());
            match &err {
                ApiError::Unauthorized => {
                    resp.headers_mut().insert(
                        hyper::header::WWW_AUTHENTICATE,
                        hyper::header::HeaderValue::from_static("Bearer"),
                    );
                }
                ApiError::MethodNotAllowed { allow, .. } => {
                    if let Ok(v) = hyper::header::HeaderValue::from_str(allow) {
                        resp.headers_mut().insert(hyper::header::ALLOW, v);
                    }
                }
                _ => {}
            }
            (resp, Some((code, err)))
        }
    };
    // AuthZEN: the caller's request id is echoed (on every route, harmlessly).
    if let Some(id) = request_id {
        resp.headers_mut().insert("x-request-id", id);
    }
    state.metrics.answered(
        route.filter(|_| served),
        method.as_str(),
        route_pattern(route),
        resp.status().as_u16(),
    );
    if let Some(started) = started {
        log_request(&method, route, &resp, started, refused.as_ref());
    }
    resp
}

/// Whether the request log is on.
fn request_log_on() -> bool {
    tracing::enabled!(target: REQUEST_TARGET, tracing::Level::DEBUG)
}

/// The activity record ids of a response's decisions, attached (as a response extension) by
/// the decision routes while the request log is on.
#[derive(Debug, Clone)]
struct DecisionIds(Vec<i64>);

/// The request log's event for one answered request.
fn log_request(
    method: &Method,
    route: Option<usize>,
    resp: &Response<Body>,
    started: Instant,
    refused: Option<&(&'static str, ApiError)>,
) {
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let ids = resp
        .extensions()
        .get::<DecisionIds>()
        .map(|d| d.0.as_slice());
    let (decision_id, decision_ids) = match ids {
        Some([one]) => (Some(*one), None),
        Some(many) if !many.is_empty() => {
            let joined: Vec<String> = many.iter().map(i64::to_string).collect();
            (None, Some(joined.join(",")))
        }
        _ => (None, None),
    };
    tracing::debug!(
        target: REQUEST_TARGET,
        %method,
        route = route_pattern(route),
        status = resp.status().as_u16(),
        latency_us,
        decision_id,
        decision_ids,
        code = refused.map(|(code, _)| *code),
        error = refused.map(|(_, e)| tracing::field::display(e)),
        "request"
    );
}

/// The pattern of the route a request reached, ids left out (`/v1/entities/{type}/{id}`),
/// for the log and the metrics; `unmatched` for a path no route serves.
pub fn route_pattern(route: Option<usize>) -> &'static str {
    route
        .and_then(|i| routes::ROUTES.get(i))
        .map_or(UNMATCHED, |r| r.pattern)
}

/// The route label of a path no route serves.
pub const UNMATCHED: &str = "unmatched";

/// Attaches the decisions' activity record ids to a response, for the request log (only
/// while it is on).
fn with_decision_ids(
    mut resp: Response<Body>,
    ids: impl Iterator<Item = Option<i64>>,
) -> Response<Body> {
    if request_log_on() {
        resp.extensions_mut()
            .insert(DecisionIds(ids.flatten().collect()));
    }
    resp
}

/// Checks the bearer token in constant time, when one is configured.
fn authorize(state: &AppState, req: &Request<Incoming>, access: Access) -> Result<(), ApiError> {
    let Some(token) = &state.auth.token else {
        return Ok(());
    };
    match access {
        Access::Open => return Ok(()),
        Access::Decision if state.auth.open_decisions => return Ok(()),
        Access::Decision | Access::Admin => {}
    }
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if bool::from(subtle::ConstantTimeEq::ct_eq(given, token.as_slice())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Reads a JSON body within the size and time limits.
async fn body(state: &AppState, req: Request<Incoming>) -> Result<hyper::body::Bytes, ApiError> {
    if let Some(ct) = req.headers().get(hyper::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("(not text)");
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(ct.to_owned()));
        }
    }
    let limits = &state.limits;
    tokio::time::timeout(
        limits.body_timeout,
        json::read_body(req, limits.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError::RequestTimeout(limits.body_timeout))?
}

/// Finds the request's route in [`routes::ROUTES`], checks the token, and calls its handler.
/// Returns the index of the route the path reached (also on a `405`) and whether that route
/// served it, for the log and the metrics.
async fn route(
    state: &AppState,
    req: Request<Incoming>,
) -> (Option<usize>, bool, Result<Response<Body>, ApiError>) {
    let segments = match segments(req.uri().path()) {
        Ok(s) => s,
        // An undecodable path matches no route; the token still guards the answer.
        Err(e) => {
            return (
                None,
                false,
                authorize(state, &req, Access::Admin).and(Err(e)),
            );
        }
    };
    match routes::find(req.method(), &segments) {
        Found::Route(i) => {
            let r = &routes::ROUTES[i];
            if let Err(e) = authorize(state, &req, r.access) {
                return (Some(i), true, Err(e));
            }
            let call = routes::Call {
                state,
                req,
                params: routes::params(r.pattern, segments),
                route: i,
            };
            let Some(series) = state.metrics.decisions(i) else {
                return (Some(i), true, (r.handler)(call).await);
            };
            let started = Instant::now();
            let result = (r.handler)(call).await;
            series.seconds.observe(started.elapsed().as_secs_f64());
            if result.is_err() {
                series.error.inc();
            }
            (Some(i), true, result)
        }
        Found::OtherMethods(i) => {
            let refused = authorize(state, &req, routes::ROUTES[i].access).and_then(|()| {
                Err(ApiError::MethodNotAllowed {
                    method: req.method().to_string(),
                    allow: routes::allowed_methods(i),
                })
            });
            (Some(i), false, refused)
        }
        Found::Nothing => {
            let refused = authorize(state, &req, Access::Admin).and_then(|()| {
                Err(ApiError::NotFound(format!(
                    "no route for {}",
                    req.uri().path()
                )))
            });
            (None, false, refused)
        }
    }
}

/// The query asking the loaded policies whether `principal` may take the platform action
/// `action` on `resource` (storage and activity routes guard themselves with it).
fn permission_query(
    snapshot: &PolicySnapshot,
    principal: &EntityUid,
    action: &str,
    resource: &EntityUid,
    field: &str,
) -> Result<Query, ApiError> {
    let action = crate::uid::from_parts("Action", action).map_err(ApiError::Internal)?;
    authz::prepare(snapshot, principal.clone(), action, resource.clone(), None).map_err(|source| {
        ApiError::InvalidRequest {
            field: field.to_owned(),
            source,
        }
    })
}

/// The refusal when the policies deny a [`permission_query`].
fn forbidden(principal: &EntityUid, action: &str, resource: &EntityUid) -> ApiError {
    ApiError::Forbidden(format!("{principal} may not {action} on {resource}"))
}

/// Whether the policies allow a [`permission_query`], decided by the engine like any decision
/// (same slice, same deadline).
async fn permitted(
    state: &AppState,
    snapshot: &PolicySnapshot,
    query: Query,
) -> Result<bool, ApiError> {
    let deadline = state.limits.decision_deadline;
    let outcomes = engine::decide(&state.store, snapshot, &[query], deadline).await?;
    Ok(outcomes.first().is_some_and(|o| o.decision.allowed))
}

/// Runs blocking store work off the async runtime.
async fn on_store<T, E>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
        .map_err(Into::into)
}

/// Splits a path into percent-decoded segments; an empty last segment is kept (empty ids).
fn segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ApiError::InvalidField {
                    field: "path".to_owned(),
                    message: format!("segment `{s}` is not percent-encoded UTF-8"),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_and_keep_empty_ids() {
        assert_eq!(
            segments("/v1/entities/Acme%3A%3AThing/").unwrap(),
            ["v1", "entities", "Acme::Thing", ""]
        );
        assert_eq!(
            segments("/v1/entities/User/caf%C3%A9%2Fx").unwrap(),
            ["v1", "entities", "User", "café/x"]
        );
        assert!(segments("/v1/entities/User/%FF").is_err());
    }

    #[test]
    fn route_patterns_leave_ids_out() {
        let pattern = |method: Method, path: &str| {
            let found = match routes::find(&method, &segments(path).unwrap()) {
                Found::Route(i) | Found::OtherMethods(i) => Some(i),
                Found::Nothing => None,
            };
            route_pattern(found)
        };
        assert_eq!(
            pattern(Method::GET, "/v1/entities/User/caf%C3%A9"),
            "/v1/entities/{type}/{id}"
        );
        assert_eq!(
            pattern(Method::DELETE, "/v1/storage/reservations/r-1"),
            "/v1/storage/reservations/{id}"
        );
        assert_eq!(
            pattern(Method::GET, "/v1/storage/Project/p"),
            "/v1/storage/{type}/{id}"
        );
        assert_eq!(
            pattern(Method::GET, "/v1/is_authorized"),
            "/v1/is_authorized"
        );
        assert_eq!(pattern(Method::GET, "/v1/secret/alice"), "unmatched");
    }
}

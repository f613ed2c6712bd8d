//! API errors and the one place they become HTTP statuses and JSON bodies.

use hyper::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::authz::RequestError;
use crate::engine::EngineError;
use crate::search::SearchError;
use crate::search::token::TokenError;
use crate::store::StoreError;
use crate::store::codec::EntityError;
use crate::upstream::UpstreamError;
use crate::upstream::fleet::FleetError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("malformed JSON: {0}")]
    BadJson(String),
    /// A field is missing or has the wrong shape.
    #[error("{field}: {message}")]
    InvalidField {
        /// Path of the field, like `requests[2].principal`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request does not fit the schema.
    #[error("{prefix}{source}", prefix = field_prefix(.field))]
    InvalidRequest {
        /// Where in the body the request is (empty for a single request).
        field: String,
        /// What is wrong.
        source: RequestError,
    },
    /// An entity in a write is invalid.
    #[error(transparent)]
    InvalidEntity(#[from] EntityError),
    /// A write would put an entity among its own ancestors.
    #[error("{0}")]
    HierarchyCycle(String),
    /// A batch holds more requests than allowed.
    #[error("batch holds {got} requests; the limit is {max}")]
    BatchTooLarge {
        /// Requests submitted.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The body exceeds the size limit.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A reload refused the policy sources; the previous snapshot is still served.
    #[error("policy reload refused ({} error(s)); still serving revision {revision}", errors.len())]
    InvalidPolicies {
        /// Each problem, as JSON.
        errors: Vec<serde_json::Value>,
        /// The revision still served.
        revision: String,
    },
    /// `--reload-guard refuse-widening` refused a reload that widens access; the previous
    /// snapshot is still served.
    #[error("{message}")]
    WideningRefused {
        /// What widened, and how to apply it on purpose.
        message: String,
        /// The revision still served.
        revision: String,
        /// The analysis (the shape of `policyd diff --json`).
        changes: serde_json::Value,
    },
    /// The policies do not allow the caller this.
    #[error("{0}")]
    Forbidden(String),
    /// A reservation would exceed a quota.
    #[error("{message}")]
    QuotaExceeded {
        /// Which quota, and by how much.
        message: String,
        /// The quota check, as JSON.
        check: serde_json::Value,
    },
    /// An idempotency key was reused with different parameters.
    #[error("{0}")]
    IdempotencyConflict(String),
    /// The route needs the bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The body is not declared as JSON.
    #[error("content type must be application/json, not {0}")]
    UnsupportedMediaType(String),
    /// The client took too long to send its body.
    #[error("request body not received within {0:?}")]
    RequestTimeout(std::time::Duration),
    /// A decision did not finish in time; never an Allow.
    #[error("decision did not finish within {0:?}")]
    DeadlineExceeded(std::time::Duration),
    /// A write holds more entities than allowed.
    #[error("write holds {got} entities; the limit is {max}")]
    TooManyEntities {
        /// Entities submitted.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// No such route or entity.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed {
        /// The method asked for.
        method: String,
        /// The methods the path serves, as an `Allow` header value.
        allow: String,
    },
    /// The daemon cannot serve yet.
    #[error("{0}")]
    NotReady(String),
    /// Fleet mode: the replica is not known to be caught up; never a stale answer.
    #[error("{0}")]
    Stale(String),
    /// Fleet mode: the replica has not applied a token's revision within the wait.
    #[error("{0}")]
    RevisionNotApplied(String),
    /// Fleet mode: the upstream did not take a write (nothing, or possibly everything, was
    /// committed when it timed out).
    #[error("{0}")]
    UpstreamUnavailable(String),
    /// A failure inside the daemon; details are logged, not leaked.
    #[error("internal error: {0}")]
    Internal(String),
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Cycle(_) => ApiError::HierarchyCycle(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Deadline(d) => ApiError::DeadlineExceeded(d),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Engine(e) => e.into(),
            SearchError::Store(e) => e.into(),
        }
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Stale(m) => ApiError::Stale(m),
            e @ FleetError::NotApplied { .. } => ApiError::RevisionNotApplied(e.to_string()),
            FleetError::BadToken(message) => ApiError::InvalidField {
                field: "consistency.at_least".to_owned(),
                message,
            },
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::InvalidField {
            field: "page.token".to_owned(),
            message: e.to_string(),
        }
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Cycle(_) => ApiError::HierarchyCycle(e.to_string()),
            UpstreamError::Store(s) => s.into(),
            UpstreamError::Schema(_) | UpstreamError::Tls(_) => ApiError::Internal(e.to_string()),
            other => ApiError::UpstreamUnavailable(other.to_string()),
        }
    }
}

/// An error answer: `{"error": {"code", "message", ...}}`, rendered by
/// [`ApiError::body`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code (`bad_json`, `invalid_field`, `not_found`, ...).
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    /// `invalid_policies`: each problem, with file, line and column.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub errors: Option<Vec<serde_json::Value>>,
    /// `invalid_policies`, `widening_refused`: the revision still served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `widening_refused`: what the new policies would grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub changes: Option<serde_json::Value>,
    /// `quota_exceeded`: the quota check that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub check: Option<serde_json::Value>,
}

impl ApiError {
    /// The HTTP status and stable error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_json"),
            ApiError::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            ApiError::InvalidRequest { source, .. } => (
                StatusCode::BAD_REQUEST,
                match source {
                    RequestError::UnknownAction(_) => "unknown_action",
                    RequestError::Context(_) => "invalid_context",
                    RequestError::Request(_) => "invalid_request",
                },
            ),
            ApiError::InvalidEntity(_) => (StatusCode::BAD_REQUEST, "invalid_entity"),
            ApiError::HierarchyCycle(_) => (StatusCode::BAD_REQUEST, "hierarchy_cycle"),
            ApiError::BatchTooLarge { .. } => (StatusCode::BAD_REQUEST, "batch_too_large"),
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::InvalidPolicies { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_policies")
            }
            ApiError::WideningRefused { .. } => (StatusCode::CONFLICT, "widening_refused"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::DeadlineExceeded(_) => (StatusCode::SERVICE_UNAVAILABLE, "deadline_exceeded"),
            ApiError::TooManyEntities { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_many_entities")
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::QuotaExceeded { .. } => (StatusCode::CONFLICT, "quota_exceeded"),
            ApiError::IdempotencyConflict(_) => (StatusCode::CONFLICT, "idempotency_conflict"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Stale(_) => (StatusCode::SERVICE_UNAVAILABLE, "stale"),
            ApiError::RevisionNotApplied(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "revision_not_applied")
            }
            ApiError::UpstreamUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The `{"error": {"code", "message"}}` body.
    pub fn body(&self) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        let message = match self {
            // The cause is in the log; callers only learn that it was not their fault.
            ApiError::Internal(_) => "internal error; see the policyd log".to_owned(),
            other => other.to_string(),
        };
        let mut error = ErrorDetail {
            code: code.to_owned(),
            message,
            errors: None,
            revision: None,
            changes: None,
            check: None,
        };
        match self {
            ApiError::InvalidPolicies { errors, revision } => {
                error.errors = Some(errors.clone());
                error.revision = Some(revision.clone());
            }
            ApiError::WideningRefused {
                revision, changes, ..
            } => {
                error.revision = Some(revision.clone());
                error.changes = Some(changes.clone());
            }
            ApiError::QuotaExceeded { check, .. } => error.check = Some(check.clone()),
            _ => {}
        }
        // An error body holds strings and JSON values, which always render.
        serde_json::to_value(ErrorBody { error }).unwrap_or_else(
            |_| serde_json::json!({ "error": { "code": code, "message": "internal error" } }),
        )
    }
}

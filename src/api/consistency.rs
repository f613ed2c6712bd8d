//! Fleet-mode consistency on decision routes: `"consistency": {"at_least": "<token>"}` in the
//! body or the `Policyd-At-Least` header (the header alone on the storage and activity reads,
//! whose permission checks are decisions too).
//!
//! In fleet mode a decision first waits (at most `--consistency-wait`) until the replica has
//! applied the token's revision, refuses while the replica is stale, and reports the revision
//! it was made at. Without `--upstream` a token is refused (it cannot be honoured) and a
//! request without one costs an atomic load.

use hyper::header::HeaderValue;
use serde::Deserialize;

use super::error::ApiError;
use crate::state::AppState;

/// The header carrying a revision token.
pub const HEADER: &str = "policyd-at-least";

/// `"consistency"` in a decision body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    /// The revision token the answer must reflect at least.
    #[serde(default)]
    at_least: Option<String>,
}

/// The token header of a request, if any.
pub fn header<B>(req: &hyper::Request<B>) -> Option<HeaderValue> {
    req.headers().get(HEADER).cloned()
}

/// Holds a decision to its token and to freshness (fleet mode); the revision token the
/// decision is made at, `None` when standalone.
pub async fn gate(
    state: &AppState,
    body: Option<Consistency>,
    header: Option<HeaderValue>,
) -> Result<Option<String>, ApiError> {
    let from_body = body.and_then(|c| c.at_least);
    let Some(fleet) = state.fleet.get() else {
        if from_body.is_some() || header.is_some() {
            return Err(ApiError::InvalidField {
                field: "consistency.at_least".to_owned(),
                message: "this policyd has no --upstream: revision tokens apply in fleet mode only"
                    .to_owned(),
            });
        }
        return Ok(None);
    };
    let token = match (from_body, header) {
        (Some(t), _) => Some(t),
        (None, Some(h)) => Some(
            h.to_str()
                .map_err(|_| ApiError::InvalidField {
                    field: HEADER.to_owned(),
                    message: "is not a revision token".to_owned(),
                })?
                .to_owned(),
        ),
        (None, None) => None,
    };
    if let Some(token) = token {
        fleet.at_least(&token).await?;
    }
    fleet.fresh()?;
    Ok(fleet.token())
}

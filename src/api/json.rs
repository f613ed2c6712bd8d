//! JSON in and out: reading bodies, parsing entity uids and decision requests, rendering
//! responses.

use cedar_policy::EntityUid;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::authz::Decision;
use crate::store::codec::uid_from_strs;

/// The response body type of every route.
pub type Body = Full<Bytes>;

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => Err(ApiError::BadJson(format!("cannot read body: {e}"))),
    }
}

/// Parses a body as JSON.
pub fn parse(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}

/// Takes the body's top-level object, refusing anything else.
pub fn object(value: Value, what: &str) -> Result<Map<String, Value>, ApiError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::BadJson(format!("{what} must be a JSON object"))),
    }
}

/// Refuses fields outside `allowed`, so a misspelt field is an error rather than ignored.
pub fn deny_unknown(map: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::InvalidField {
            field: join(at, k),
            message: format!("unknown field; expected one of: {}", allowed.join(", ")),
        }),
        None => Ok(()),
    }
}

/// `at.field`, or `field` at the top level.
pub fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// Parses an entity uid given as `{"type", "id"}` or as a Cedar string like `User::"alice"`.
pub fn uid(value: Option<&Value>, field: &str) -> Result<EntityUid, ApiError> {
    let invalid = |message: String| ApiError::InvalidField {
        field: field.to_owned(),
        message,
    };
    match value {
        None | Some(Value::Null) => Err(invalid("is required".to_owned())),
        Some(Value::String(s)) => s.parse::<EntityUid>().map_err(|e| {
            invalid(format!(
                "`{s}` is not a Cedar entity uid like User::\"alice\": {e}"
            ))
        }),
        Some(Value::Object(map)) => {
            let ty = map.get("type").and_then(Value::as_str);
            let id = map.get("id").and_then(Value::as_str);
            match (ty, id, map.len()) {
                (Some(ty), Some(id), 2) => uid_from_strs(ty, id).map_err(invalid),
                _ => Err(invalid(
                    "expected {\"type\": string, \"id\": string}".to_owned(),
                )),
            }
        }
        Some(_) => Err(invalid(
            "expected an entity uid: {\"type\", \"id\"} or a string like User::\"alice\""
                .to_owned(),
        )),
    }
}

/// A whole number from 0 to `i64::MAX` (sizes, byte counts, durations).
pub fn non_negative(value: Option<&Value>, field: &str) -> Result<i64, ApiError> {
    let invalid = |message: &str| ApiError::InvalidField {
        field: field.to_owned(),
        message: message.to_owned(),
    };
    match value {
        None | Some(Value::Null) => Err(invalid("is required")),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v >= 0 => Ok(v),
            Some(_) => Err(invalid("must not be negative")),
            None if n.is_u64() => Err(invalid("is too large")),
            None => Err(invalid("must be a whole number")),
        },
        Some(_) => Err(invalid("must be a number")),
    }
}

/// A percent-decoded query parameter value (`+` is a space, as in forms).
pub fn query_value(raw: &str, field: &str) -> Result<String, ApiError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| ApiError::InvalidField {
            field: field.to_owned(),
            message: "is not percent-encoded UTF-8".to_owned(),
        })
}

/// `Allow` or `Deny`.
pub fn decision_word(d: &Decision) -> &'static str {
    if d.allowed { "Allow" } else { "Deny" }
}

/// Percent-decoded query parameters, refusing names outside `allowed` and repeated names.
pub fn query_params(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let mut out = std::collections::HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let name = query_value(name, "query")?;
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::InvalidField {
                field: name,
                message: format!(
                    "unknown query parameter; expected one of: {}",
                    allowed.join(", ")
                ),
            });
        }
        let value = query_value(raw, &name)?;
        if out.insert(name.clone(), value).is_some() {
            return Err(ApiError::InvalidField {
                field: name,
                message: "given more than once".to_owned(),
            });
        }
    }
    Ok(out)
}

/// The cedar-agent compatible rendering of a decision.
pub fn decision(d: &Decision) -> Value {
    serde_json::json!({
        "decision": decision_word(d),
        "diagnostics": { "reason": d.reasons, "errors": d.errors },
    })
}

/// A JSON response with `status`.
pub fn respond(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// An empty response with `status`.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

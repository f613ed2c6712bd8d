//! JSON in and out: reading bodies, parsing entity uids and decision requests, rendering
//! responses.

use std::fmt;

use cedar_policy::EntityUid;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::authz::Decision;

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

/// Parses a body into a typed request. Malformed JSON is `bad_json`; a body that is JSON but
/// does not fit `T` is `invalid_field`, naming the field by its path (`requests[3].principal`).
///
/// The body is parsed once without tracking paths; only a body that fails is parsed again,
/// with tracking, to name the field.
pub fn from_body<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(body) {
        Ok(value) => Ok(value),
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let value: T = serde_path_to_error::deserialize(&mut de).map_err(field_error)?;
            de.end().map_err(|e| ApiError::BadJson(e.to_string()))?;
            // Unreachable in practice: the same input cannot both fail and succeed.
            Ok(value)
        }
    }
}

fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::BadJson(inner.to_string()),
        Category::Data if path == "." => ApiError::BadJson(format!(
            "the body must be a JSON object with the request's fields: {}",
            without_position(&inner)
        )),
        Category::Data => ApiError::InvalidField {
            field: path,
            message: without_position(&inner),
        },
    }
}

/// serde_json's message without its ` at line 1 column 9` suffix (the field path says where).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => message.to_owned(),
        None => text,
    }
}

/// A request object: `T` read from a JSON object only. (A derived `Deserialize` also takes a
/// JSON array, field by field in order, which no client means.)
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapOnly<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(MapOnly(std::marker::PhantomData))
            .map(Object)
    }
}

/// An entity uid in a request: `{"type": "User", "id": "alice"}` or the Cedar text
/// `User::"alice"`.
#[derive(Debug, Clone)]
pub struct Uid(pub EntityUid);

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UidVisitor)
    }
}

impl utoipa::PartialSchema for Uid {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        super::openapi::uid_schema()
    }
}

impl utoipa::ToSchema for Uid {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("EntityUid")
    }
}

struct UidVisitor;

const UID_SHAPES: &str = r#"an entity uid: {"type", "id"} or a string like User::"alice""#;

impl<'de> Visitor<'de> for UidVisitor {
    type Value = Uid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(UID_SHAPES)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Uid, E> {
        crate::uid::from_text(s).map(Uid).map_err(|e| {
            E::custom(format!(
                "`{s}` is not a Cedar entity uid like User::\"alice\": {e}"
            ))
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Uid, A::Error> {
        let shape = || de::Error::custom(r#"expected {"type": string, "id": string}"#);
        let (mut ty, mut id): (Option<String>, Option<String>) = (None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "type" => &mut ty,
                "id" => &mut id,
                _ => return Err(shape()),
            };
            if slot.is_some() {
                return Err(shape());
            }
            *slot = Some(map.next_value::<String>().map_err(|_| shape())?);
        }
        match (ty, id) {
            (Some(ty), Some(id)) => crate::uid::from_parts(&ty, &id)
                .map(Uid)
                .map_err(de::Error::custom),
            _ => Err(shape()),
        }
    }
}

/// A uid field that must be present: `null` or absent is "is required".
pub fn required(uid: Option<Uid>, field: &str) -> Result<EntityUid, ApiError> {
    uid.map(|u| u.0).ok_or_else(|| ApiError::InvalidField {
        field: field.to_owned(),
        message: "is required".to_owned(),
    })
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

/// Parses an entity uid given as `{"type", "id"}` or as a Cedar string like `User::"alice"`
/// (a query parameter, or a field of an untyped body).
pub fn uid(value: Option<&Value>, field: &str) -> Result<EntityUid, ApiError> {
    let invalid = |message: String| ApiError::InvalidField {
        field: field.to_owned(),
        message,
    };
    match value {
        None | Some(Value::Null) => Err(invalid("is required".to_owned())),
        Some(Value::String(s)) => crate::uid::from_text(s).map_err(|e| {
            invalid(format!(
                "`{s}` is not a Cedar entity uid like User::\"alice\": {e}"
            ))
        }),
        Some(Value::Object(map)) => {
            let ty = map.get("type").and_then(Value::as_str);
            let id = map.get("id").and_then(Value::as_str);
            match (ty, id, map.len()) {
                (Some(ty), Some(id), 2) => crate::uid::from_parts(ty, id).map_err(invalid),
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

/// A JSON response with `status`, rendered straight from a typed answer.
pub fn respond_with<T: serde::Serialize>(status: StatusCode, answer: &T) -> Response<Body> {
    let (status, body) = match serde_json::to_vec(answer) {
        Ok(body) => (status, body),
        // Answer types hold strings, numbers and bools, which always render; should one
        // not, the caller gets an error, never a partial answer.
        Err(e) => {
            tracing::error!(error = %e, "cannot render an answer");
            let err = ApiError::Internal(e.to_string());
            (err.status_and_code().0, err.body().to_string().into_bytes())
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
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

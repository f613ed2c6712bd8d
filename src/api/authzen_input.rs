//! Reading AuthZEN payloads: the body object, subjects and resources (`{type, id,
//! properties}`), actions (`{name}`), context, `options.evaluations_semantic` and `page`, and
//! the transient entities that carry a request's properties.
//!
//! A payload that is malformed (a missing or mistyped member, a body that is not a JSON
//! object) is an [`ApiError`], a 400. Unknown members are ignored.

use std::sync::Arc;

use cedar_policy::{Entity, EntityUid};
use cedar_policy_core::ast;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::json;
use crate::policy::PolicySnapshot;
use crate::policy::slicing::Follow;
use crate::search::token;
use crate::store::Store;
use crate::store::codec::{collect_refs, error_chain};

/// A 400 naming the member at fault.
pub fn field(name: &str, message: &str) -> ApiError {
    ApiError::InvalidField {
        field: name.to_owned(),
        message: message.to_owned(),
    }
}

/// The body, which must be one JSON object.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadJson("the body is empty".to_owned()));
    }
    match json::parse(body)? {
        Value::Object(map) => Ok(map),
        _ => Err(field("body", "must be a JSON object")),
    }
}

/// A subject or resource as given.
#[derive(Debug, Clone)]
pub struct Ent {
    /// `type`: the Cedar entity type, verbatim.
    pub ty: String,
    /// `id`.
    pub id: Option<String>,
    /// `properties`, merged over the stored attributes for one decision.
    pub properties: Option<Map<String, Value>>,
}

impl Ent {
    /// Reads member `key` of `map`; `need_id`: the id is required.
    pub fn read(map: &Map<String, Value>, key: &str, need_id: bool) -> Result<Ent, ApiError> {
        Ent::from_value(map.get(key), key, need_id)
    }

    fn from_value(value: Option<&Value>, at: &str, need_id: bool) -> Result<Ent, ApiError> {
        let obj = match value {
            None | Some(Value::Null) => return Err(field(at, "is required")),
            Some(Value::Object(obj)) => obj,
            Some(_) => return Err(field(at, "must be an object")),
        };
        let ty = match obj.get("type") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => return Err(field(&json::join(at, "type"), "is required")),
            Some(_) => return Err(field(&json::join(at, "type"), "must be a string")),
        };
        let id = match obj.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) if !need_id => None,
            None | Some(Value::Null) => return Err(field(&json::join(at, "id"), "is required")),
            Some(_) => return Err(field(&json::join(at, "id"), "must be a string")),
        };
        let properties = match obj.get("properties") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p.clone()),
            Some(_) => {
                return Err(field(&json::join(at, "properties"), "must be an object"));
            }
        };
        Ok(Ent { ty, id, properties })
    }

    /// The Cedar uid; a type Cedar cannot name is the schema's business: a `decision: false`.
    pub fn uid(&self) -> Result<EntityUid, String> {
        crate::uid::from_parts(&self.ty, self.id.as_deref().unwrap_or(""))
            .map_err(|e| format!("`{}` is not a Cedar entity type: {e}", self.ty))
    }
}

/// The action name: member `action` of `map`, `{name}`.
pub fn action(map: &Map<String, Value>) -> Result<String, ApiError> {
    action_of(map.get("action"), "action")
}

fn action_of(value: Option<&Value>, at: &str) -> Result<String, ApiError> {
    match value {
        None | Some(Value::Null) => Err(field(at, "is required")),
        Some(Value::Object(obj)) => match obj.get("name") {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(field(&json::join(at, "name"), "is required")),
            Some(_) => Err(field(&json::join(at, "name"), "must be a string")),
        },
        Some(_) => Err(field(at, "must be an object")),
    }
}

/// The context: an object, or absent.
pub fn context(map: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    context_of(map.get("context"), "context")
}

fn context_of(value: Option<&Value>, at: &str) -> Result<Option<Value>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(field(at, "must be an object")),
    }
}

/// One evaluation: subject, action, resource, context.
#[derive(Debug, Clone)]
pub struct Tuple {
    /// The subject (principal).
    pub subject: Ent,
    /// The action name.
    pub action: String,
    /// The resource.
    pub resource: Ent,
    /// The context.
    pub context: Option<Value>,
}

/// The evaluation of `item` over the top-level `defaults`: each of an item's keys replaces the
/// default whole. `at` locates the item in errors.
pub fn tuple(
    defaults: &Map<String, Value>,
    item: Option<&Map<String, Value>>,
    at: &str,
) -> Result<Tuple, ApiError> {
    let get = |k: &str| item.and_then(|i| i.get(k)).or_else(|| defaults.get(k));
    Ok(Tuple {
        subject: Ent::from_value(get("subject"), &json::join(at, "subject"), true)?,
        action: action_of(get("action"), &json::join(at, "action"))?,
        resource: Ent::from_value(get("resource"), &json::join(at, "resource"), true)?,
        context: context_of(get("context"), &json::join(at, "context"))?,
    })
}

/// `options.evaluations_semantic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantic {
    /// Every item is answered.
    ExecuteAll,
    /// The answer ends with the first `decision: false`.
    DenyOnFirstDeny,
    /// The answer ends with the first `decision: true`.
    PermitOnFirstPermit,
}

impl Semantic {
    /// Reads `options.evaluations_semantic` (default `execute_all`).
    pub fn of(map: &Map<String, Value>) -> Result<Semantic, ApiError> {
        let options = match map.get("options") {
            None | Some(Value::Null) => return Ok(Semantic::ExecuteAll),
            Some(Value::Object(o)) => o,
            Some(_) => return Err(field("options", "must be an object")),
        };
        match options.get("evaluations_semantic") {
            None | Some(Value::Null) => Ok(Semantic::ExecuteAll),
            Some(Value::String(s)) => match s.as_str() {
                "execute_all" => Ok(Semantic::ExecuteAll),
                "deny_on_first_deny" => Ok(Semantic::DenyOnFirstDeny),
                "permit_on_first_permit" => Ok(Semantic::PermitOnFirstPermit),
                _ => Err(field(
                    "options.evaluations_semantic",
                    "must be execute_all, deny_on_first_deny or permit_on_first_permit",
                )),
            },
            Some(_) => Err(field("options.evaluations_semantic", "must be a string")),
        }
    }

    /// Whether the answer ends with `answer`.
    pub fn stops_at(self, answer: &Value) -> bool {
        let decision = answer.get("decision").and_then(Value::as_bool);
        match self {
            Semantic::ExecuteAll => false,
            Semantic::DenyOnFirstDeny => decision == Some(false),
            Semantic::PermitOnFirstPermit => decision == Some(true),
        }
    }
}

/// `page`: the page size (`limit`, at most `max`, default `default`) and the id to resume
/// after, from `token` (or `next_token`, as the specification's examples send it back),
/// checked against the query's `hash`.
pub fn page_of(
    map: &Map<String, Value>,
    hash: &str,
    max: usize,
    default: usize,
) -> Result<(usize, Option<String>), ApiError> {
    let page = match map.get("page") {
        None | Some(Value::Null) => return Ok((default, None)),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(field("page", "must be an object")),
    };
    let limit = match page.get("limit") {
        None | Some(Value::Null) => default,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(max).min(max),
            _ => return Err(field("page.limit", "must be a positive integer")),
        },
    };
    let token = page.get("token").or_else(|| page.get("next_token"));
    let after = match token {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.is_empty() => None,
        Some(Value::String(t)) => Some(token::decode(t, hash)?),
        Some(_) => return Err(field("page.token", "must be a string")),
    };
    Ok((limit, after))
}

/// An entity standing in for one decision, and the entities its properties mention.
pub type Transient = (Arc<ast::Entity>, Vec<EntityUid>);

/// The entity `ent` stands for in one decision: its stored attributes with the `properties`
/// the schema declares for its type merged over them, its stored ancestors (closed), or, when
/// it is not stored, a transient entity with those attributes and no parents. Never stored.
/// Also the entities the properties mention, which the decision's slice must hold.
pub fn transient(
    store: &Store,
    snapshot: &PolicySnapshot,
    ent: &Ent,
    props: &Map<String, Value>,
) -> Result<Option<Transient>, String> {
    let uid = ent.uid()?;
    let schema = snapshot.schema.as_ref();
    let declared: Map<String, Value> = match schema {
        Some(s) => {
            let vs: &cedar_policy_core::validator::ValidatorSchema = s.as_ref();
            let ty: &ast::EntityType = uid.type_name().as_ref();
            let Some(et) = vs.get_entity_type(ty) else {
                return Ok(None);
            };
            props
                .iter()
                .filter(|(k, _)| et.attr(k).is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
        None => props.clone(),
    };
    if declared.is_empty() {
        return Ok(None);
    }
    let stored = store
        .slice(std::slice::from_ref(&uid), Some(1), &Follow::All)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|e| e.uid() == uid.as_ref());
    let as_json =
        |a: &ast::EntityUID| json!({"type": a.entity_type().to_string(), "id": a.eid().as_ref()});
    let (mut attrs, parents, ancestors) = match &stored {
        Some(e) => {
            let public = Entity::from(e.as_ref().clone());
            let body = public.to_json_value().map_err(|e| error_chain(&e))?;
            let attrs = body
                .get("attrs")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let parents: Vec<Value> = e.parents().map(as_json).collect();
            let ancestors: Vec<Value> = e.ancestors().map(as_json).collect();
            (attrs, parents, ancestors)
        }
        None => (Map::new(), Vec::new(), Vec::new()),
    };
    let mut refs = Vec::new();
    for (k, v) in declared {
        collect_refs(&v, &mut refs);
        attrs.insert(k, v);
    }
    // Checked against the schema with its direct parents ...
    let merged = json!({
        "uid": {"type": ent.ty, "id": ent.id.as_deref().unwrap_or("")},
        "attrs": attrs,
        "parents": parents,
    });
    let checked = Entity::from_json_value(merged, schema)
        .map_err(|e| format!("properties of {uid}: {}", error_chain(&e)))?;
    // ... then given its closed ancestors, in canonical JSON that needs no schema: the
    // decision is told ancestors are closed.
    let mut canonical = checked.to_json_value().map_err(|e| error_chain(&e))?;
    canonical["parents"] = Value::Array(ancestors);
    let entity = Entity::from_json_value(canonical, None)
        .map_err(|e| format!("properties of {uid}: {}", error_chain(&e)))?;
    Ok(Some((
        Arc::new(AsRef::<ast::Entity>::as_ref(&entity).clone()),
        refs,
    )))
}

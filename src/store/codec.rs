//! Conversion between Cedar entities and what the store keeps: canonical Cedar entity JSON.
//!
//! Entities are validated against the schema once, on write; what is stored is Cedar's own JSON
//! rendering of the parsed entity, so reading it back (with or without a schema) yields the
//! same entity, every Cedar value kind included.

use std::collections::HashMap;

use cedar_policy::{Entity, EntityTypeName, EntityUid, Schema};
use cedar_policy_core::entities::conformance::EntitySchemaConformanceChecker;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::CoreSchema;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::storage::{QUOTA_ATTR, SIZE_ATTR};

/// One entity as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The entity's uid.
    pub uid: EntityUid,
    /// Its direct parents, stored as edges so ancestors resolve with indexed queries.
    pub parents: Vec<EntityUid>,
    /// Canonical Cedar entity JSON.
    pub body: String,
    /// `size_bytes`, when the entity has it as a Long: it is then an item storage counts.
    pub size: Option<i64>,
    /// `quota_bytes`, when the entity has it as a Long.
    pub quota: Option<i64>,
    /// The entities its attributes mention, for the reference index permission search reads:
    /// found here, where validation already holds the parsed JSON, not again in the writer.
    pub mentions: Vec<Mention>,
}

/// `(attribute, type, id)`: an entity that a top-level attribute's value mentions.
pub type Mention = (String, String, String);

/// The entities each top-level attribute of a canonical entity JSON mentions.
pub fn mentions(json: &Value) -> Vec<Mention> {
    let Some(attrs) = json.get("attrs").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in attrs {
        let mut uids = Vec::new();
        collect_refs(value, &mut uids);
        for uid in uids {
            out.push((
                name.clone(),
                uid.type_name().to_string(),
                uid.id().unescaped().to_owned(),
            ));
        }
    }
    out
}

/// An entity decoded from its stored record, before its ancestors are resolved.
#[derive(Debug)]
pub struct Decoded {
    /// Cedar's core entity, with its direct parents only.
    pub entity: cedar_policy_core::ast::Entity,
    /// Direct parents.
    pub parents: Vec<EntityUid>,
    /// Entities its attributes and tags refer to: where a policy may dereference next.
    pub refs: Vec<EntityUid>,
}

/// Why an entity in a write was refused.
#[derive(Debug, thiserror::Error)]
#[error("entity {index}{}: {message}", uid.as_ref().map(|u| format!(" ({u})")).unwrap_or_default())]
pub struct EntityError {
    /// Position in the submitted array.
    pub index: usize,
    /// The entity's uid, when it could be read.
    pub uid: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// What a write that lists one entity twice, differently, is refused with.
pub const LISTED_TWICE: &str = "the same entity appears twice in this write, differently";

/// Why a stored record could not be turned back into an entity (store corruption).
#[derive(Debug, thiserror::Error)]
#[error("stored entity {uid} is unreadable: {message}")]
pub struct DecodeError {
    /// The uid whose record is bad.
    pub uid: String,
    /// What is wrong.
    pub message: String,
}

/// Parses a Cedar entities JSON array, validating each entity against `schema`: the records
/// of [`parse_write`].
pub fn parse_batch(value: Value, schema: Option<&Schema>) -> Result<Vec<Record>, EntityError> {
    parse_write(value, schema).map(|write| write.records)
}

/// A parsed entity write.
#[derive(Debug)]
pub struct Write {
    /// What to store, one record per distinct entity.
    pub records: Vec<Record>,
    /// How many distinct action entities matched the schema (checked, not stored).
    pub actions: usize,
}

/// Parses a Cedar entities JSON array, validating each entity against `schema`, and accepting
/// what Cedar's `Entities::from_json_value` accepts.
///
/// With a schema, action entities are checked as Cedar's schema-based parsing checks them (see
/// [`super::actions`]) and left out of the records: the schema is their source. An entity
/// listed twice alike counts once, as in Cedar; twice differently is refused. All-or-nothing:
/// the first invalid entity fails the batch, and the error names it.
pub fn parse_write(value: Value, schema: Option<&Schema>) -> Result<Write, EntityError> {
    let Value::Array(items) = value else {
        return Err(not_an_array());
    };
    let parse = |part: &[Value], offset| parse_items(part, offset, schema);
    parse_parts(&items, schema, parse, || Ok(items.clone()))
}

fn not_an_array() -> EntityError {
    EntityError {
        index: 0,
        uid: None,
        message: "expected a JSON array of Cedar entities".to_owned(),
    }
}

/// Why a write's JSON text is not an array of items (see [`raw_items`]).
#[derive(Debug)]
pub enum NotItems {
    /// The text is not JSON.
    Malformed(serde_json::Error),
    /// JSON, but not an array: refused as [`parse_write`] refuses it.
    NotAnArray(EntityError),
}

/// The items of a write's JSON array, each left unparsed for [`parse_raw_write`], which parses
/// each share of them where it is validated: reading only the array's structure here keeps a
/// large write's parsing split across the cores.
pub fn raw_items(text: &[u8]) -> Result<Vec<&RawValue>, NotItems> {
    serde_json::from_slice(text).map_err(|unread| match serde_json::from_slice(text) {
        Err(malformed) => NotItems::Malformed(malformed),
        Ok(Value::Array(_)) => NotItems::Malformed(unread),
        Ok(_) => NotItems::NotAnArray(not_an_array()),
    })
}

/// [`parse_write`] of an array's items not parsed yet: each share of the items is parsed where
/// it is validated, so the JSON parsing (and freeing) is split across the cores too.
pub fn parse_raw_write(items: &[&RawValue], schema: Option<&Schema>) -> Result<Write, EntityError> {
    let parse = |part: &[&RawValue], offset| parse_items(&parse_raw(part, offset)?, offset, schema);
    parse_parts(items, schema, parse, || parse_raw(items, 0))
}

/// Parses raw entity JSON (already checked to be well-formed) into values.
fn parse_raw(items: &[&RawValue], offset: usize) -> Result<Vec<Value>, EntityError> {
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            serde_json::from_str(raw.get()).map_err(|e| EntityError {
                index: offset + i,
                uid: None,
                message: format!("malformed JSON: {e}"),
            })
        })
        .collect()
}

/// Validates `items` with `parse`, split across the cores, then keeps one record per distinct
/// entity and checks the action entities. `values` gives every item as JSON, for the rare
/// checks that need them all (action entities, where a duplicate is).
fn parse_parts<T: Sync>(
    items: &[T],
    schema: Option<&Schema>,
    parse: impl Fn(&[T], usize) -> Result<Vec<Record>, EntityError> + Sync,
    values: impl Fn() -> Result<Vec<Value>, EntityError>,
) -> Result<Write, EntityError> {
    // Validation is pure CPU and dominates large writes: split it across the cores (asked
    // once: the answer reads cgroup files, which cost a small write more than validating it).
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let workers = *WORKERS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8)
    });
    let chunk = items.len().div_ceil(workers).max(512);
    let parsed: Vec<Result<Vec<Record>, EntityError>> = if items.len() <= chunk {
        vec![parse(items, 0)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = items
                .chunks(chunk)
                .enumerate()
                .map(|(i, part)| {
                    let parse = &parse;
                    scope.spawn(move || parse(part, i * chunk))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EntityError {
                            index: 0,
                            uid: None,
                            message: "entity validation failed unexpectedly".to_owned(),
                        })
                    })
                })
                .collect()
        })
    };
    let mut out: Vec<Record> = Vec::with_capacity(items.len());
    let mut seen = HashMap::new();
    // Chunks are in order, so the first error met is the first offending entity.
    for part in parsed {
        for record in part? {
            match seen.get(&record.uid) {
                None => {
                    seen.insert(record.uid.clone(), out.len());
                    out.push(record);
                }
                Some(&first) if same_entity(&out[first].body, &record.body) => {}
                Some(_) => {
                    return Err(EntityError {
                        index: second_position(&values()?, &record.uid),
                        uid: Some(record.uid.to_string()),
                        message: LISTED_TWICE.to_owned(),
                    });
                }
            }
        }
    }
    let actions = match schema {
        Some(schema) if out.len() < items.len() => super::actions::check(&values()?, schema)?,
        _ => 0,
    };
    Ok(Write {
        records: out,
        actions,
    })
}

/// The uid of an entity in Cedar entity JSON, when it has a readable one.
pub fn uid_of(item: &Value) -> Option<EntityUid> {
    item.get("uid").and_then(super::materialize::uid)
}

/// Whether two canonical bodies are the same entity (parents in any order).
pub fn same_entity(a: &str, b: &str) -> bool {
    let normal = |body: &str| {
        let mut json: Value = serde_json::from_str(body).ok()?;
        if let Some(Value::Array(parents)) = json.get_mut("parents") {
            parents.sort_by_key(|p| p.to_string());
        }
        Some(json)
    };
    a == b || normal(a).is_some_and(|a| Some(a) == normal(b))
}

/// Where `uid` appears the second time in `items` (for an error message).
fn second_position(items: &[Value], uid: &EntityUid) -> usize {
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.get("uid").and_then(super::materialize::uid).as_ref() == Some(uid))
        .nth(1)
        .map_or(0, |(i, _)| i)
}

/// Validates and encodes `items`, the first of which is at `offset` in the write.
fn parse_items(
    items: &[Value],
    offset: usize,
    schema: Option<&Schema>,
) -> Result<Vec<Record>, EntityError> {
    let mut out = Vec::with_capacity(items.len());
    let core = schema.map(|s| CoreSchema::new(s.as_ref()));
    let checker = core
        .as_ref()
        .map(|core| EntitySchemaConformanceChecker::new(core, Extensions::all_available()));
    for (i, item) in items.iter().enumerate() {
        let index = offset + i;
        let uid_hint = item.get("uid").and_then(super::materialize::uid);
        let fail = |message: String| EntityError {
            index,
            uid: uid_hint.as_ref().map(ToString::to_string),
            message,
        };
        if schema.is_some() && super::actions::is_action(item, uid_hint.as_ref()) {
            // Checked against the schema with the write's other action entities (see
            // `parse_batch`), and never stored: the schema is their source.
            continue;
        }
        let fast = checker
            .as_ref()
            .and_then(|c| super::materialize::conforming(item, c));
        let entity = match fast {
            Some(entity) => Entity::from(entity),
            None => {
                Entity::from_json_value(item.clone(), schema).map_err(|e| fail(error_chain(&e)))?
            }
        };
        out.push(encode(&entity).map_err(fail)?);
    }
    Ok(out)
}

impl Record {
    /// Rebuilds a record from a stored body, reading the parents back out of it.
    pub fn from_stored(uid: EntityUid, body: String) -> Result<Record, DecodeError> {
        let json: Value = serde_json::from_str(&body).map_err(|e| DecodeError {
            uid: uid.to_string(),
            message: e.to_string(),
        })?;
        Ok(Record {
            parents: parents_of(&json),
            mentions: mentions(&json),
            size: long_attr(&json, SIZE_ATTR),
            quota: long_attr(&json, QUOTA_ATTR),
            uid,
            body,
        })
    }
}

fn long_attr(json: &Value, name: &str) -> Option<i64> {
    json.get("attrs")?.get(name)?.as_i64()
}

fn parents_of(json: &Value) -> Vec<EntityUid> {
    json.get("parents")
        .and_then(Value::as_array)
        .map(|ps| ps.iter().filter_map(super::materialize::uid).collect())
        .unwrap_or_default()
}

/// Renders a parsed entity as the record the store keeps: written directly (see
/// [`super::canonical`]) or, for a value that module leaves to Cedar, through Cedar's JSON
/// rendering; either gives the same record.
pub fn encode(entity: &Entity) -> Result<Record, String> {
    let record = match super::canonical::record(entity.as_ref()) {
        Some(record) => record,
        None => encode_through_cedar(entity)?,
    };
    for (name, value) in [(SIZE_ATTR, record.size), (QUOTA_ATTR, record.quota)] {
        if value.is_some_and(|v| v < 0) {
            return Err(format!("`{name}` must not be negative"));
        }
    }
    Ok(record)
}

/// [`encode`] through Cedar's own JSON rendering (`Entity::to_json_value`).
pub(super) fn encode_through_cedar(entity: &Entity) -> Result<Record, String> {
    let json = entity.to_json_value().map_err(|e| error_chain(&e))?;
    Ok(Record {
        uid: entity.uid(),
        parents: parents_of(&json),
        size: long_attr(&json, SIZE_ATTR),
        quota: long_attr(&json, QUOTA_ATTR),
        mentions: mentions(&json),
        body: json.to_string(),
    })
}

/// Parses the stored body of `uid` (store corruption when it is not JSON).
pub fn parse_body(uid: &EntityUid, body: &str) -> Result<Value, DecodeError> {
    serde_json::from_str(body).map_err(|e| DecodeError {
        uid: uid.to_string(),
        message: e.to_string(),
    })
}

/// Turns a stored entity's parsed body (see [`parse_body`]) back into an entity, its parents
/// and the uids it points at.
pub fn decode(uid: &EntityUid, json: Value) -> Result<Decoded, DecodeError> {
    let fail = |message: String| DecodeError {
        uid: uid.to_string(),
        message,
    };
    let parents = parents_of(&json);
    let (entity, refs) = match super::materialize::materialize(&json) {
        Some(built) => built,
        None => {
            let mut refs = Vec::new();
            for key in ["attrs", "tags"] {
                if let Some(v) = json.get(key) {
                    collect_refs(v, &mut refs);
                }
            }
            // No schema needed: the canonical JSON spells out every entity and extension value.
            let entity = Entity::from_json_value(json, None).map_err(|e| fail(error_chain(&e)))?;
            (
                AsRef::<cedar_policy_core::ast::Entity>::as_ref(&entity).clone(),
                refs,
            )
        }
    };
    Ok(Decoded {
        entity,
        parents,
        refs,
    })
}

/// Collects entity uids mentioned in a Cedar JSON value: `{"__entity": ...}` escapes, and bare
/// `{"type", "id"}` records (which a schema may read as entities). Extra uids only cost a lookup.
pub fn collect_refs(value: &Value, out: &mut Vec<EntityUid>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        Value::Object(map) => {
            if let Some(inner) = map.get("__entity") {
                if let Some(uid) = uid_from_parts(inner) {
                    out.push(uid);
                }
                return;
            }
            if map.len() == 2
                && let Some(uid) = uid_from_parts(value)
            {
                out.push(uid);
                return;
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        _ => {}
    }
}

fn uid_from_parts(value: &Value) -> Option<EntityUid> {
    let ty = value.get("type")?.as_str()?;
    let id = value.get("id")?.as_str()?;
    crate::uid::from_parts(ty, id).ok()
}

/// Whether a type is an action type (`Action` or `Namespace::Action`).
pub fn is_action_type(ty: &EntityTypeName) -> bool {
    ty.basename() == "Action"
}

/// A Cedar error with its sources, which is where Cedar puts the specific problem.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

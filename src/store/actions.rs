//! Action entities in entity writes, when there is a schema.
//!
//! Cedar entity files (from Cedar's CLI, cedar-agent, exports) usually list the action
//! entities with their action-group parents. Cedar's own schema-based parsing
//! (`Entities::from_json_value(file, Some(schema))`) accepts them when, after closing the
//! hierarchy the file describes, each one equals the schema's declaration of that action (same
//! attributes, same action groups), and rejects a contradiction. A write is checked the same
//! way, by Cedar itself, over the write's action entities together: the groups of a listed
//! group count for the actions under it. Accepted action entities are not stored: the schema
//! stays their source, and decisions take actions from it.

use std::collections::{BTreeMap, BTreeSet};

use cedar_policy::{Entities, Entity, EntityUid, Schema};
use serde_json::Value;

use super::codec::{EntityError, error_chain, is_action_type};

/// Whether `item` is an action entity (`Action` or `Namespace::Action` type). `hint` is its uid
/// when the caller already read it; otherwise the uid is read here, in any form Cedar accepts.
pub(super) fn is_action(item: &Value, hint: Option<&EntityUid>) -> bool {
    match hint {
        Some(uid) => is_action_type(uid.type_name()),
        None => item
            .get("uid")
            .and_then(|u| EntityUid::from_json(u.clone()).ok())
            .is_some_and(|uid| is_action_type(uid.type_name())),
    }
}

/// Checks the action entities among `items` as Cedar's schema-based entity parsing does;
/// returns how many distinct ones there are. The error names the first action entity that
/// disagrees with the schema and says how.
pub(super) fn check(items: &[Value], schema: &Schema) -> Result<usize, EntityError> {
    let actions: Vec<(usize, &Value)> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| is_action(item, None))
        .collect();
    if actions.is_empty() {
        return Ok(0);
    }
    let listed = Value::Array(actions.iter().map(|(_, item)| (*item).clone()).collect());
    match Entities::from_json_value(listed, Some(schema)) {
        Ok(_) => Ok(actions
            .iter()
            .filter_map(|(_, item)| EntityUid::from_json(item.get("uid")?.clone()).ok())
            .collect::<BTreeSet<_>>()
            .len()),
        Err(e) => Err(explain(&actions, schema).unwrap_or_else(|| EntityError {
            index: actions[0].0,
            uid: None,
            message: format!("action entities: {}", error_chain(&e)),
        })),
    }
}

/// One listed action entity, parsed without the schema.
struct Listed {
    index: usize,
    parents: BTreeSet<EntityUid>,
    json: Value,
}

/// Finds the first action entity that disagrees with the schema and says what disagrees;
/// `None` when none is found (the caller then reports Cedar's own error).
fn explain(actions: &[(usize, &Value)], schema: &Schema) -> Option<EntityError> {
    let declared = schema.action_entities().ok()?;
    let mut listed: BTreeMap<EntityUid, Listed> = BTreeMap::new();
    let mut order = Vec::new();
    for (index, item) in actions {
        let fail = |uid: Option<&EntityUid>, message: String| EntityError {
            index: *index,
            uid: uid.map(ToString::to_string),
            message,
        };
        let entity = match Entity::from_json_value((*item).clone(), None) {
            Ok(e) => e,
            Err(e) => return Some(fail(None, error_chain(&e))),
        };
        let uid = entity.uid();
        let json = entity.to_json_value().ok()?;
        let parents = parents(&json);
        if let Some(first) = listed.get(&uid) {
            let differ = first.parents != parents
                || ["attrs", "tags"]
                    .iter()
                    .any(|k| field(&first.json, k) != field(&json, k));
            if differ {
                return Some(fail(Some(&uid), super::codec::LISTED_TWICE.to_owned()));
            }
            continue;
        }
        order.push(uid.clone());
        listed.insert(
            uid,
            Listed {
                index: *index,
                parents,
                json,
            },
        );
    }
    for uid in &order {
        let Some(this) = listed.get(uid) else {
            continue;
        };
        let fail = |message: String| {
            Some(EntityError {
                index: this.index,
                uid: Some(uid.to_string()),
                message,
            })
        };
        let Some(schema_entity) = declared.get(uid) else {
            return fail("the schema declares no such action".to_owned());
        };
        let schema_json = schema_entity.to_json_value().ok()?;
        for key in ["attrs", "tags"] {
            if field(&this.json, key) != field(&schema_json, key) {
                return fail(format!(
                    "its {key} differ from the schema's declaration of the action ({} here, {} in the schema)",
                    field(&this.json, key),
                    field(&schema_json, key)
                ));
            }
        }
        let groups = closure(uid, &listed);
        let want: BTreeSet<EntityUid> = declared
            .ancestors(uid)
            .map(|a| a.cloned().collect())
            .unwrap_or_default();
        let extra: Vec<&EntityUid> = groups.difference(&want).collect();
        let missing: Vec<&EntityUid> = want.difference(&groups).collect();
        if !extra.is_empty() {
            return fail(format!(
                "it is in action group(s) {} here, which the schema does not declare for it (the schema declares {})",
                names(extra),
                names(want.iter().collect())
            ));
        }
        if !missing.is_empty() {
            return fail(format!(
                "the schema puts it in action group(s) {}, which neither its parents here nor the parents of the groups listed in this write include (list every group, or list the groups' own entities with their parents)",
                names(missing)
            ));
        }
    }
    None
}

/// The action groups `uid` is in according to the write: its parents, and for each parent the
/// write lists, that parent's groups.
fn closure(uid: &EntityUid, listed: &BTreeMap<EntityUid, Listed>) -> BTreeSet<EntityUid> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<&EntityUid> = vec![uid];
    let mut visited = BTreeSet::from([uid.clone()]);
    while let Some(next) = stack.pop() {
        let Some(entry) = listed.get(next) else {
            continue;
        };
        for parent in &entry.parents {
            out.insert(parent.clone());
            if visited.insert(parent.clone()) {
                stack.push(parent);
            }
        }
    }
    // Through a cycle an action is its own group: Cedar refuses the cycle, and so does the
    // comparison (the schema never declares an action in itself).
    out
}

fn parents(json: &Value) -> BTreeSet<EntityUid> {
    json.get("parents")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| EntityUid::from_json(p.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn field(json: &Value, key: &str) -> Value {
    match json.get(key) {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v) => v.clone(),
    }
}

fn names(uids: Vec<&EntityUid>) -> String {
    if uids.is_empty() {
        return "none".to_owned();
    }
    uids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

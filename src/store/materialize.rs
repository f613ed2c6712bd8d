//! Builds Cedar's core entity from the store's canonical entity JSON directly: values are
//! made straight from the parsed JSON, without Cedar's general-purpose JSON parser (~45 µs per
//! small entity), without restricted expressions to evaluate, and without a copy into the core
//! representation decisions use.
//!
//! The canonical JSON (Cedar's own `Entity::to_json_value`) only holds JSON literals, sets,
//! records, `{"__entity": ...}` and `{"__extn": {"fn", "arg"}}` escapes. Anything else makes
//! [`materialize`] return `None`, and the caller falls back to Cedar's parser, so an unusual
//! value can cost time but never meaning. Extension values are built by Cedar's own extension
//! functions.

use std::collections::HashSet;

use cedar_policy::{EntityId, EntityUid, RestrictedExpression};
use cedar_policy_core::ast;
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use serde_json::{Map, Value};
use smol_str::SmolStr;

/// A uid from `{"type", "id"}`.
pub(super) fn uid(value: &Value) -> Option<EntityUid> {
    let ty = crate::uid::type_name(value.get("type")?.as_str()?).ok()?;
    Some(EntityUid::from_type_name_and_id(
        ty,
        EntityId::new(value.get("id")?.as_str()?),
    ))
}

/// The entity (with its direct parents) and the uids its attributes and tags refer to; `None`
/// when the JSON holds anything outside the canonical forms.
pub(super) fn materialize(json: &Value) -> Option<(ast::Entity, Vec<EntityUid>)> {
    let this = uid(json.get("uid")?)?;
    let mut refs = Vec::new();
    let attrs = fields(json.get("attrs"), &mut refs)?;
    let tags = fields(json.get("tags"), &mut refs)?;
    let parents: HashSet<ast::EntityUID> = match json.get("parents") {
        None => HashSet::new(),
        Some(Value::Array(ps)) => ps
            .iter()
            .map(|p| uid(p).map(ast::EntityUID::from))
            .collect::<Option<_>>()?,
        Some(_) => return None,
    };
    let entity =
        ast::Entity::new_with_attr_partial_value(this.into(), attrs, HashSet::new(), parents, tags);
    Some((entity, refs))
}

fn fields(
    map: Option<&Value>,
    refs: &mut Vec<EntityUid>,
) -> Option<Vec<(SmolStr, ast::PartialValue)>> {
    match map {
        None => Some(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| Some((SmolStr::from(k.as_str()), value(v, refs)?.into())))
            .collect(),
        Some(_) => None,
    }
}

fn value(json: &Value, refs: &mut Vec<EntityUid>) -> Option<ast::Value> {
    Some(match json {
        Value::Bool(b) => ast::Value::from(*b),
        Value::Number(n) => ast::Value::from(n.as_i64()?),
        Value::String(s) => ast::Value::from(s.as_str()),
        Value::Array(items) => ast::Value::set(
            items
                .iter()
                .map(|v| value(v, refs))
                .collect::<Option<Vec<_>>>()?,
            None,
        ),
        Value::Object(m) => object(m, refs)?,
        Value::Null => return None,
    })
}

fn object(m: &Map<String, Value>, refs: &mut Vec<EntityUid>) -> Option<ast::Value> {
    if let Some(inner) = m.get("__entity") {
        let u = uid(inner)?;
        refs.push(u.clone());
        return Some(ast::Value::from(ast::EntityUID::from(u)));
    }
    if let Some(ext) = m.get("__extn") {
        let arg = ext.get("arg")?.as_str()?.to_owned();
        let call = match ext.get("fn")?.as_str()? {
            "ip" => RestrictedExpression::new_ip(arg),
            "decimal" => RestrictedExpression::new_decimal(arg),
            "datetime" => RestrictedExpression::new_datetime(arg),
            "duration" => RestrictedExpression::new_duration(arg),
            _ => return None,
        };
        let core: &ast::RestrictedExpr = call.as_ref();
        return RestrictedEvaluator::new(Extensions::all_available())
            .interpret(core.as_borrowed())
            .ok();
    }
    let pairs = m
        .iter()
        .map(|(k, v)| Some((SmolStr::from(k.as_str()), value(v, refs)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(ast::Value::record(pairs, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_cedar_parser_on_every_value_kind() {
        let canonical = json!({
            "uid": {"type": "Ns::Doc", "id": "caf\u{e9}\u{0}"},
            "attrs": {
                "s": "x", "l": -9223372036854775808i64, "b": true, "set": [1, 2, 3],
                "rec": {"a": {"b": [{"__entity": {"type": "User", "id": ""}}]}},
                "ip": {"__extn": {"fn": "ip", "arg": "10.0.0.1/8"}},
                "dec": {"__extn": {"fn": "decimal", "arg": "1.2300"}},
                "dt": {"__extn": {"fn": "datetime", "arg": "2024-10-15T11:35:00.123Z"}},
                "dur": {"__extn": {"fn": "duration", "arg": "1h30m"}},
                "empty": [], "er": {},
            },
            "parents": [{"type": "Group", "id": "g"}],
            "tags": {"t": ["v"]},
        });
        let cedar = cedar_policy::Entity::from_json_value(canonical.clone(), None).unwrap();
        let canonical = cedar.to_json_value().unwrap();
        let (ours, refs) = materialize(&canonical).unwrap();
        let theirs: &ast::Entity = cedar.as_ref();
        assert!(ours.deep_eq(theirs), "{ours}\n{cedar}");
        assert_eq!(refs, vec!["User::\"\"".parse::<EntityUid>().unwrap()]);
    }

    #[test]
    fn unusual_forms_are_left_to_cedar() {
        let odd = json!({"uid": {"type": "A", "id": "a"}, "attrs": {"x": {"__extn": {"fn": "offset", "args": []}}}, "parents": []});
        assert!(materialize(&odd).is_none());
        assert!(
            materialize(&json!({"uid": {"type": "A", "id": "a"}, "attrs": {"n": 1.5}})).is_none()
        );
    }
}

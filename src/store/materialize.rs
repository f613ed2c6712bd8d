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
use cedar_policy_core::entities::conformance::EntitySchemaConformanceChecker;
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::CoreSchema;
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
    // An escape is alone in its object; other `__` keys (`__expr`, a misspelling) are Cedar's to
    // judge.
    if m.keys().any(|k| k.starts_with("__")) && m.len() != 1 {
        return None;
    }
    if let Some(inner) = m.get("__entity") {
        let u = uid(inner)?;
        refs.push(u.clone());
        return Some(ast::Value::from(ast::EntityUID::from(u)));
    }
    if let Some(ext) = m.get("__extn") {
        if ext.as_object().is_none_or(|e| e.len() != 2) {
            return None;
        }
        return extension(ext.get("fn")?.as_str()?, ext.get("arg")?.as_str()?);
    }
    if m.keys().any(|k| k.starts_with("__")) {
        return None;
    }
    let pairs = m
        .iter()
        .map(|(k, v)| Some((SmolStr::from(k.as_str()), value(v, refs)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(ast::Value::record(pairs, None))
}

/// The extension value `function(arg)`, built by Cedar's own extension functions; `None` for a
/// function the canonical JSON does not use, or an argument Cedar refuses.
pub(super) fn extension(function: &str, arg: &str) -> Option<ast::Value> {
    let arg = arg.to_owned();
    let call = match function {
        "ip" => RestrictedExpression::new_ip(arg),
        "decimal" => RestrictedExpression::new_decimal(arg),
        "datetime" => RestrictedExpression::new_datetime(arg),
        "duration" => RestrictedExpression::new_duration(arg),
        _ => return None,
    };
    let core: &ast::RestrictedExpr = call.as_ref();
    RestrictedEvaluator::new(Extensions::all_available())
        .interpret(core.as_borrowed())
        .ok()
}

/// The keys of Cedar's entity JSON, and whether each must be present.
const ENTITY_KEYS: [(&str, bool); 4] = [
    ("uid", true),
    ("attrs", true),
    ("parents", true),
    ("tags", false),
];

/// An entity of a write, built directly and checked against the schema by Cedar's own
/// conformance checker: what `Entity::from_json_value(item, Some(schema))` gives, at a fraction
/// of its cost, for the JSON [`materialize`] reads without a schema's help.
///
/// `None` when the item needs the schema to be read (a string for an extension value, a bare
/// `{"type", "id"}` for an entity) or does not conform: the caller then asks Cedar's parser,
/// whose verdict and message stand. So this path can only accept what Cedar accepts.
pub(super) fn conforming(
    item: &Value,
    checker: &EntitySchemaConformanceChecker<'_, CoreSchema<'_>>,
) -> Option<ast::Entity> {
    let map = item.as_object()?;
    let known = map
        .keys()
        .all(|k| ENTITY_KEYS.iter().any(|(key, _)| key == k));
    let complete = ENTITY_KEYS
        .iter()
        .all(|(key, required)| !required || map.contains_key(*key));
    if !known || !complete {
        return None;
    }
    let (entity, _) = materialize(item)?;
    checker.validate_entity(&entity).ok()?;
    Some(entity)
}

/// An entity holding every value kind of Cedar's entity JSON (for the decoders' tests).
#[cfg(test)]
pub(super) fn every_value_kind() -> Value {
    serde_json::json!({
        "uid": {"type": "Ns::Doc", "id": "caf\u{e9}\u{0}"},
        "attrs": {
            "s": "x", "l": -9223372036854775808i64, "max": 9223372036854775807i64,
            "b": true, "f": false, "set": [1, 2, 3],
            "rec": {"a": {"b": [{"__entity": {"type": "User", "id": ""}}]}},
            "ip": {"__extn": {"fn": "ip", "arg": "10.0.0.1/8"}},
            "dec": {"__extn": {"fn": "decimal", "arg": "1.2300"}},
            "dt": {"__extn": {"fn": "datetime", "arg": "2024-10-15T11:35:00.123Z"}},
            "dur": {"__extn": {"fn": "duration", "arg": "1h30m"}},
            "empty": [], "er": {},
        },
        "parents": [{"type": "Group", "id": "g"}, {"type": "Ns::Doc", "id": "other"}],
        "tags": {"t": ["v"], "owner": {"__entity": {"type": "User", "id": "o"}}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_cedar_parser_on_every_value_kind() {
        let canonical = every_value_kind();
        let cedar = cedar_policy::Entity::from_json_value(canonical.clone(), None).unwrap();
        let canonical = cedar.to_json_value().unwrap();
        let (ours, refs) = materialize(&canonical).unwrap();
        let theirs: &ast::Entity = cedar.as_ref();
        assert!(ours.deep_eq(theirs), "{ours}\n{cedar}");
        let expected: Vec<EntityUid> = ["User::\"\"", "User::\"o\""]
            .iter()
            .map(|u| u.parse().unwrap())
            .collect();
        assert_eq!(refs, expected);
    }

    #[test]
    fn unusual_forms_are_left_to_cedar() {
        let odd = json!({"uid": {"type": "A", "id": "a"}, "attrs": {"x": {"__extn": {"fn": "offset", "args": []}}}, "parents": []});
        assert!(materialize(&odd).is_none());
        assert!(
            materialize(&json!({"uid": {"type": "A", "id": "a"}, "attrs": {"n": 1.5}})).is_none()
        );
    }

    /// The bundled schema, for the write path's checks.
    fn schema() -> cedar_policy::Schema {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/schema.cedarschema"
        ))
        .unwrap();
        cedar_policy::Schema::from_cedarschema_str(&text).unwrap().0
    }

    /// The write path's verdict on `item`: the direct build when it took the item.
    fn fast(item: &Value, schema: &cedar_policy::Schema) -> Option<ast::Entity> {
        let core = CoreSchema::new(schema.as_ref());
        let checker = EntitySchemaConformanceChecker::new(&core, Extensions::all_available());
        conforming(item, &checker)
    }

    #[test]
    fn writes_of_the_synthetic_platform_take_the_direct_path_and_equal_cedars_parse() {
        let schema = schema();
        let mut taken = 0;
        for item in crate::synth::entities(crate::synth::Shape::about(2_000), 7) {
            let cedar = cedar_policy::Entity::from_json_value(item.clone(), Some(&schema)).unwrap();
            let ours = fast(&item, &schema).expect("a plain platform entity takes the direct path");
            assert!(ours.deep_eq(cedar.as_ref()), "{ours}\n{cedar}");
            taken += 1;
        }
        assert!(taken > 1_000);
    }

    #[test]
    fn the_direct_path_accepts_only_what_cedar_accepts() {
        let schema = schema();
        let org = json!({"type": "Organization", "id": "o"});
        let cases = [
            // Conforming.
            json!({"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": [org]}),
            // Needs the schema to read (a bare uid where an entity is declared), or is wrong in
            // a way only the schema shows: Cedar decides, the direct path stands aside.
            json!({"uid": {"type": "Project", "id": "p"}, "attrs": {"visibility": "nope"}, "parents": [org]}),
            json!({"uid": {"type": "Nope", "id": "x"}, "attrs": {}, "parents": []}),
            json!({"uid": {"type": "User", "id": "u"}, "attrs": {"extra": 1}, "parents": []}),
            json!({"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": [{"type": "Dataset", "id": "d"}]}),
            json!({"uid": {"type": "User", "id": "u"}, "parents": []}),
            json!({"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": [], "other": 1}),
            json!({"uid": {"__entity": {"type": "User", "id": "u"}}, "attrs": {}, "parents": []}),
        ];
        for item in &cases {
            let cedar = cedar_policy::Entity::from_json_value(item.clone(), Some(&schema));
            match (fast(item, &schema), cedar) {
                (Some(ours), Ok(theirs)) => assert!(ours.deep_eq(theirs.as_ref()), "{item}"),
                (Some(_), Err(e)) => panic!("direct path accepted what Cedar refuses: {item}: {e}"),
                (None, _) => {}
            }
        }
        assert!(fast(&cases[0], &schema).is_some());
    }
}

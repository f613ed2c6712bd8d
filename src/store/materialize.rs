//! Builds a Cedar `Entity` from the store's canonical entity JSON without Cedar's
//! general-purpose JSON parser, which costs ~45 µs per small entity against ~3 µs here.
//!
//! The canonical JSON (Cedar's own `Entity::to_json_value`) only holds JSON literals, sets,
//! records, `{"__entity": ...}` and `{"__extn": {"fn", "arg"}}` escapes. Anything else makes
//! [`materialize`] return `None`, and the caller falls back to Cedar's parser, so an unusual
//! value can cost time but never meaning.

use cedar_policy::{Entity, EntityId, EntityUid, RestrictedExpression};
use serde_json::{Map, Value};

/// A uid from `{"type", "id"}`.
pub(super) fn uid(value: &Value) -> Option<EntityUid> {
    let ty = crate::uid::type_name(value.get("type")?.as_str()?).ok()?;
    Some(EntityUid::from_type_name_and_id(
        ty,
        EntityId::new(value.get("id")?.as_str()?),
    ))
}

/// The entity and the uids its attributes and tags refer to; `None` when the JSON holds
/// anything outside the canonical forms.
pub(super) fn materialize(json: &Value) -> Option<(Entity, Vec<EntityUid>)> {
    let uid = uid(json.get("uid")?)?;
    let mut refs = Vec::new();
    let attrs = fields(json.get("attrs"), &mut refs)?;
    let tags = fields(json.get("tags"), &mut refs)?;
    let parents = match json.get("parents") {
        None => Vec::new(),
        Some(Value::Array(ps)) => ps.iter().map(uid_of).collect::<Option<_>>()?,
        Some(_) => return None,
    };
    let entity = Entity::new_with_tags(uid, attrs, parents, tags).ok()?;
    Some((entity, refs))
}

fn uid_of(v: &Value) -> Option<EntityUid> {
    uid(v)
}

fn fields(
    map: Option<&Value>,
    refs: &mut Vec<EntityUid>,
) -> Option<Vec<(String, RestrictedExpression)>> {
    match map {
        None => Some(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| Some((k.clone(), expr(v, refs)?)))
            .collect(),
        Some(_) => None,
    }
}

fn expr(value: &Value, refs: &mut Vec<EntityUid>) -> Option<RestrictedExpression> {
    Some(match value {
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(n.as_i64()?),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => RestrictedExpression::new_set(
            items
                .iter()
                .map(|v| expr(v, refs))
                .collect::<Option<Vec<_>>>()?,
        ),
        Value::Object(m) => object(m, refs)?,
        Value::Null => return None,
    })
}

fn object(m: &Map<String, Value>, refs: &mut Vec<EntityUid>) -> Option<RestrictedExpression> {
    if let Some(inner) = m.get("__entity") {
        let u = uid(inner)?;
        refs.push(u.clone());
        return Some(RestrictedExpression::new_entity_uid(u));
    }
    if let Some(ext) = m.get("__extn") {
        let arg = ext.get("arg")?.as_str()?.to_owned();
        return Some(match ext.get("fn")?.as_str()? {
            "ip" => RestrictedExpression::new_ip(arg),
            "decimal" => RestrictedExpression::new_decimal(arg),
            "datetime" => RestrictedExpression::new_datetime(arg),
            "duration" => RestrictedExpression::new_duration(arg),
            _ => return None,
        });
    }
    let pairs = m
        .iter()
        .map(|(k, v)| Some((k.clone(), expr(v, refs)?)))
        .collect::<Option<Vec<_>>>()?;
    RestrictedExpression::new_record(pairs).ok()
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
        let cedar = Entity::from_json_value(canonical.clone(), None).unwrap();
        let canonical = cedar.to_json_value().unwrap();
        let (ours, refs) = materialize(&canonical).unwrap();
        assert!(ours.deep_eq(&cedar), "{ours}\n{cedar}");
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

//! Writes the record the store keeps for an entity straight from Cedar's core entity: its
//! canonical JSON (what `Entity::to_json_value` renders, byte for byte), and what the store
//! reads out of that JSON (parents, mentions, `size_bytes`, `quota_bytes`), without building
//! the JSON tree first.
//!
//! Cedar's rendering goes through its JSON value types and a `serde_json::Value` tree, then
//! the store serialized that tree and walked it again: about 40% of a large write's validation
//! (a profile of `policyd import`). Here one pass over the entity writes the text and collects the rest. It covers
//! the value kinds stored entities hold in practice (booleans, longs, strings, entity
//! references, sets, records); an extension value, an unknown, or a record key that reads as
//! one of Cedar's JSON escapes makes [`record`] return `None`, and the caller renders the entity
//! through Cedar, so an unusual value can cost time but never change what is stored.

use std::io::Write as _;

use cedar_policy::EntityUid;
use cedar_policy_core::ast::{self, Literal, PartialValue, ValueKind};

use super::codec::{Mention, Record};
use crate::storage::{QUOTA_ATTR, SIZE_ATTR};

/// The record of `entity`, as `codec::encode` renders it through Cedar; `None` when the
/// entity holds a value this writer leaves to Cedar.
pub(super) fn record(entity: &ast::Entity) -> Option<Record> {
    let mut out = Writer {
        body: Vec::with_capacity(256),
        mentions: Vec::new(),
    };
    out.push_str("{\"uid\":");
    out.uid(entity.uid());
    out.push_str(",\"attrs\":");
    out.fields(entity.attrs(), true)?;
    out.push_str(",\"parents\":[");
    let mut parents = Vec::new();
    for (n, parent) in entity.ancestors().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        parents.extend(out.uid(parent));
    }
    out.push(b']');
    if entity.tags_len() > 0 {
        out.push_str(",\"tags\":");
        out.fields(entity.tags(), false)?;
    }
    out.push(b'}');
    let body = String::from_utf8(out.body).ok()?;
    let long = |name: &str| match entity.get(name) {
        Some(PartialValue::Value(v)) => match v.value_kind() {
            ValueKind::Lit(Literal::Long(n)) => Some(*n),
            _ => None,
        },
        _ => None,
    };
    Some(Record {
        uid: EntityUid::from(entity.uid().clone()),
        parents,
        body,
        size: long(SIZE_ATTR),
        quota: long(QUOTA_ATTR),
        mentions: out.mentions,
    })
}

struct Writer {
    /// The JSON text; UTF-8 throughout (serde_json writes it).
    body: Vec<u8>,
    /// The entities the top-level attributes mention, as `codec::mentions` finds them.
    mentions: Vec<Mention>,
}

impl Writer {
    /// Writes `{"type":…,"id":…}`; returns `uid` as the public uid when its type name reads
    /// back as one (as the JSON readers of [`super::codec`] require).
    fn uid(&mut self, uid: &ast::EntityUID) -> Option<EntityUid> {
        let ty = uid.entity_type().to_string();
        let id = uid.eid().as_ref();
        self.push_str("{\"type\":");
        self.string(&ty);
        self.push_str(",\"id\":");
        self.string(id);
        self.push(b'}');
        crate::uid::from_parts(&ty, id).ok()
    }

    fn push_str(&mut self, s: &str) {
        self.body.extend_from_slice(s.as_bytes());
    }

    fn push(&mut self, b: u8) {
        self.body.push(b);
    }

    /// A JSON string, escaped by serde_json as the tree's rendering is (writing to a `Vec`
    /// cannot fail).
    fn string(&mut self, s: &str) {
        let _ = serde_json::to_writer(&mut self.body, s);
    }

    /// An attribute or tag map, keys in order; `mentions`: whether its values' references
    /// are noted (attributes, not tags).
    fn fields<'a>(
        &mut self,
        fields: impl Iterator<Item = (&'a smol_str::SmolStr, &'a PartialValue)>,
        mentions: bool,
    ) -> Option<()> {
        self.push(b'{');
        for (n, (name, value)) in fields.enumerate() {
            let PartialValue::Value(value) = value else {
                return None;
            };
            if n > 0 {
                self.push(b',');
            }
            self.string(name);
            self.push(b':');
            let mut found = Vec::new();
            self.value(value, &mut found)?;
            if mentions {
                self.mentions.extend(found.into_iter().map(|uid| {
                    (
                        name.to_string(),
                        uid.type_name().to_string(),
                        uid.id().unescaped().to_owned(),
                    )
                }));
            }
        }
        self.push(b'}');
        Some(())
    }

    /// One value; the entities it mentions are pushed to `found`, as `codec::collect_refs`
    /// finds them in its JSON.
    fn value(&mut self, value: &ast::Value, found: &mut Vec<EntityUid>) -> Option<()> {
        match value.value_kind() {
            ValueKind::Lit(Literal::Bool(b)) => self.push_str(if *b { "true" } else { "false" }),
            ValueKind::Lit(Literal::Long(n)) => {
                let _ = write!(self.body, "{n}");
            }
            ValueKind::Lit(Literal::String(s)) => self.string(s),
            ValueKind::Lit(Literal::EntityUID(uid)) => {
                self.push_str("{\"__entity\":");
                let checked = self.uid(uid);
                self.push(b'}');
                found.extend(checked);
            }
            ValueKind::Set(set) => {
                self.push(b'[');
                for (n, v) in set.iter().enumerate() {
                    if n > 0 {
                        self.push(b',');
                    }
                    self.value(v, found)?;
                }
                self.push(b']');
            }
            ValueKind::Record(fields) => {
                // Cedar refuses keys that read as its escapes; let it say so.
                if fields.keys().any(|k| k.starts_with("__")) {
                    return None;
                }
                // A record of exactly a string `type` naming a type and a string `id` reads as
                // an entity to a schema: mentioned as one, and not looked into.
                let text = |k: &str| match fields.get(k).map(ast::Value::value_kind) {
                    Some(ValueKind::Lit(Literal::String(s))) => Some(s.as_str()),
                    _ => None,
                };
                let bare = match (fields.len(), text("type"), text("id")) {
                    (2, Some(ty), Some(id)) => crate::uid::from_parts(ty, id).ok(),
                    _ => None,
                };
                let mut inner = Vec::new();
                self.push(b'{');
                for (n, (k, v)) in fields.iter().enumerate() {
                    if n > 0 {
                        self.push(b',');
                    }
                    self.string(k);
                    self.push(b':');
                    self.value(v, &mut inner)?;
                }
                self.push(b'}');
                match bare {
                    Some(uid) => found.push(uid),
                    None => found.extend(inner),
                }
            }
            ValueKind::ExtensionValue(_) => return None,
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;
    use serde_json::json;

    /// The record `codec::encode` makes through Cedar's rendering, for comparison.
    fn through_cedar(item: serde_json::Value) -> (cedar_policy::Entity, Record) {
        let entity = cedar_policy::Entity::from_json_value(item, None).unwrap();
        let record = codec::encode_through_cedar(&entity).unwrap();
        (entity, record)
    }

    #[test]
    fn records_equal_cedars_rendering_byte_for_byte() {
        let cases = [
            json!({"uid": {"type": "Ns::Doc", "id": "caf\u{e9}\u{0}\"\\/\n"}, "attrs": {
                "s": "x\u{1F600}\t", "l": -9223372036854775808i64, "max": 9223372036854775807i64,
                "b": true, "f": false, "set": [3, 1, 2], "empty": [], "er": {},
                "size_bytes": 12, "quota_bytes": 34,
                "rec": {"a": {"b": [{"__entity": {"type": "User", "id": "x"}}, "s"]}, "z": 1},
                "bare": {"type": "User", "id": "b"},
                "bare_not": {"type": "User", "id": "b", "more": 1},
                "bare_bad": {"type": "not a type", "id": "b"},
                "owners": [{"__entity": {"type": "User", "id": "o2"}}, {"__entity": {"type": "User", "id": "o1"}}],
                "sets": [[1], [{"k": true}]],
            },
            "parents": [{"type": "Group", "id": "g"}, {"type": "Ns::Doc", "id": "other"}, {"type": "Group", "id": "h"}],
            "tags": {"t": ["v"], "owner": {"__entity": {"type": "User", "id": "o"}}}}),
            json!({"uid": {"type": "User", "id": ""}, "attrs": {}, "parents": []}),
            json!({"uid": {"type": "Item", "id": "i"}, "attrs": {"size_bytes": "12"}, "parents": []}),
        ];
        for item in cases {
            let (entity, cedar) = through_cedar(item);
            let ours = record(entity.as_ref()).expect("no value left to Cedar");
            assert_eq!(ours, cedar);
        }
        let platform = crate::synth::entities(crate::synth::Shape::about(2_000), 5);
        for item in platform {
            let (entity, cedar) = through_cedar(item);
            assert_eq!(record(entity.as_ref()).as_ref(), Some(&cedar));
        }
    }

    #[test]
    fn extension_values_and_escape_keys_are_left_to_cedar() {
        let every = crate::store::materialize::every_value_kind();
        let (entity, _) = through_cedar(every);
        assert!(record(entity.as_ref()).is_none());
        let escape = ast::Value::record(
            [(smol_str::SmolStr::from("__expr"), ast::Value::from(1))],
            None,
        );
        let entity = ast::Entity::new_with_attr_partial_value(
            "A::\"a\"".parse().unwrap(),
            [(smol_str::SmolStr::from("r"), escape.into())],
            Default::default(),
            Default::default(),
            Vec::new(),
        );
        assert!(record(&entity).is_none());
    }
}

//! The compact form of a stored entity: its canonical JSON re-encoded as a few dozen bytes, so
//! that the whole entity store of a large platform fits in memory (see [`super::arena`]) and a
//! miss of the resolved-entity cache costs a decode, not a database read and a JSON parse.
//!
//! The encoding is self-contained bytes, prefix first:
//!
//! ```text
//! key     = type symbol (varint), id length (varint), id bytes
//! entity  = key, parents (count, then a key each), attrs, tags
//! fields  = count, then (name, value) each
//! name    = varint s: s > 0 is interned name s - 1, 0 is followed by length and bytes
//! value   = tag byte, then: nothing (false, true) | zigzag varint (long) | length, bytes
//!           (string) | count, values (set) | fields (record) | key (entity) |
//!           function name, argument (extension value)
//! ```
//!
//! Type names and attribute names are interned in [`Symbols`], which only grow (up to a bound;
//! past it an entity is simply not kept compactly). The key is length-prefixed, so a stored
//! entity's bytes start with a uid's key exactly when that entity has that uid.
//!
//! [`decode`] builds exactly what [`super::materialize::materialize`] builds from the JSON (the
//! tests compare them): the same Cedar entity, parents and references, in the same order. JSON
//! that `materialize` would leave to Cedar's parser is not encoded at all.

use std::sync::{RwLock, RwLockReadGuard};

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast;
use hashbrown::HashMap;
use serde_json::{Map, Value};
use smol_str::SmolStr;

use super::codec::Decoded;

/// Distinct type names and attribute names interned, each; past it entities that need a new
/// one are not kept compactly, and names are spelled out.
const MAX_SYMBOLS: usize = 4096;

const FALSE: u8 = 0;
const TRUE: u8 = 1;
const LONG: u8 = 2;
const STRING: u8 = 3;
const SET: u8 = 4;
const RECORD: u8 = 5;
const ENTITY: u8 = 6;
const EXTENSION: u8 = 7;

/// Interned entity type names and attribute names.
#[derive(Default)]
pub struct Symbols {
    inner: RwLock<Interned>,
}

#[derive(Default)]
struct Interned {
    types: Vec<EntityTypeName>,
    type_ids: HashMap<EntityTypeName, u32>,
    names: Vec<SmolStr>,
    name_ids: HashMap<SmolStr, u32>,
}

impl Symbols {
    fn read(&self) -> RwLockReadGuard<'_, Interned> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The lookup key of `uid`; `None` when its type was never interned (so no entity of that
    /// type is kept).
    pub fn key(&self, uid: &EntityUid) -> Option<Vec<u8>> {
        let ty = *self.read().type_ids.get(uid.type_name())?;
        let id = uid.id().unescaped();
        let mut out = Vec::with_capacity(id.len() + 4);
        varint(&mut out, u64::from(ty));
        bytes(&mut out, id.as_bytes());
        Some(out)
    }

    /// The compact form of a canonical entity JSON, and the length of its key; `None` when the
    /// JSON holds anything outside the canonical forms (see `materialize`).
    pub fn encode(&self, json: &Value) -> Option<(Vec<u8>, usize)> {
        let mut encoder = Encoder {
            symbols: self,
            out: Vec::with_capacity(64),
        };
        encoder.uid(json.get("uid")?)?;
        let key = encoder.out.len();
        match json.get("parents") {
            None => varint(&mut encoder.out, 0),
            Some(Value::Array(ps)) => {
                varint(&mut encoder.out, ps.len() as u64);
                for p in ps {
                    encoder.uid(p)?;
                }
            }
            Some(_) => return None,
        }
        for key in ["attrs", "tags"] {
            match json.get(key) {
                None => varint(&mut encoder.out, 0),
                Some(Value::Object(m)) => encoder.fields(m)?,
                Some(_) => return None,
            }
        }
        Some((encoder.out, key))
    }

    /// The entity, its parents and references, from its compact form; `None` when the bytes
    /// are not a compact form made by this table.
    pub fn decode(&self, mut input: &[u8]) -> Option<Decoded> {
        let interned = self.read();
        let mut d = Decoder {
            symbols: &interned,
            input: &mut input,
            refs: Vec::new(),
        };
        let this = d.uid()?;
        let n = d.count()?;
        let mut parents = Vec::with_capacity(n);
        for _ in 0..n {
            parents.push(d.uid()?);
        }
        let attrs = d.fields()?;
        let tags = d.fields()?;
        if !d.input.is_empty() {
            return None;
        }
        let entity = ast::Entity::new_with_attr_partial_value(
            this.into(),
            attrs,
            Default::default(),
            parents.iter().cloned().map(ast::EntityUID::from).collect(),
            tags,
        );
        Some(Decoded {
            entity,
            parents,
            refs: d.refs,
        })
    }
}

struct Encoder<'a> {
    symbols: &'a Symbols,
    out: Vec<u8>,
}

impl Encoder<'_> {
    /// `{"type", "id"}`.
    fn uid(&mut self, value: &Value) -> Option<()> {
        let ty = crate::uid::type_name(value.get("type")?.as_str()?).ok()?;
        let id = value.get("id")?.as_str()?;
        let sym = self.type_symbol(ty)?;
        varint(&mut self.out, u64::from(sym));
        bytes(&mut self.out, id.as_bytes());
        Some(())
    }

    fn type_symbol(&self, ty: EntityTypeName) -> Option<u32> {
        if let Some(s) = self.symbols.read().type_ids.get(&ty) {
            return Some(*s);
        }
        let mut interned = self
            .symbols
            .inner
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(s) = interned.type_ids.get(&ty) {
            return Some(*s);
        }
        if interned.types.len() >= MAX_SYMBOLS {
            return None;
        }
        let s = interned.types.len() as u32;
        interned.types.push(ty.clone());
        interned.type_ids.insert(ty, s);
        Some(s)
    }

    fn name(&mut self, name: &str) -> Option<()> {
        let found = self.symbols.read().name_ids.get(name).copied();
        let sym = found.or_else(|| {
            let mut interned = self
                .symbols
                .inner
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(s) = interned.name_ids.get(name) {
                return Some(*s);
            }
            (interned.names.len() < MAX_SYMBOLS).then(|| {
                let s = interned.names.len() as u32;
                interned.names.push(SmolStr::from(name));
                interned.name_ids.insert(SmolStr::from(name), s);
                s
            })
        });
        match sym {
            Some(s) => varint(&mut self.out, u64::from(s) + 1),
            None => {
                varint(&mut self.out, 0);
                bytes(&mut self.out, name.as_bytes());
            }
        }
        Some(())
    }

    fn fields(&mut self, m: &Map<String, Value>) -> Option<()> {
        varint(&mut self.out, m.len() as u64);
        for (k, v) in m {
            self.name(k)?;
            self.value(v)?;
        }
        Some(())
    }

    fn value(&mut self, json: &Value) -> Option<()> {
        match json {
            Value::Bool(b) => self.out.push(if *b { TRUE } else { FALSE }),
            Value::Number(n) => {
                let n = n.as_i64()?;
                self.out.push(LONG);
                varint(&mut self.out, ((n << 1) ^ (n >> 63)) as u64);
            }
            Value::String(s) => {
                self.out.push(STRING);
                bytes(&mut self.out, s.as_bytes());
            }
            Value::Array(items) => {
                self.out.push(SET);
                varint(&mut self.out, items.len() as u64);
                for item in items {
                    self.value(item)?;
                }
            }
            Value::Object(m) => self.object(m)?,
            Value::Null => return None,
        }
        Some(())
    }

    /// The same escapes, and the same refusals, as `materialize`.
    fn object(&mut self, m: &Map<String, Value>) -> Option<()> {
        let escaped = m.keys().any(|k| k.starts_with("__"));
        if escaped && m.len() != 1 {
            return None;
        }
        if let Some(inner) = m.get("__entity") {
            self.out.push(ENTITY);
            return self.uid(inner);
        }
        if let Some(ext) = m.get("__extn") {
            if ext.as_object().is_none_or(|e| e.len() != 2) {
                return None;
            }
            let function = ext.get("fn")?.as_str()?;
            if !matches!(function, "ip" | "decimal" | "datetime" | "duration") {
                return None;
            }
            self.out.push(EXTENSION);
            bytes(&mut self.out, function.as_bytes());
            bytes(&mut self.out, ext.get("arg")?.as_str()?.as_bytes());
            return Some(());
        }
        if escaped {
            return None;
        }
        self.out.push(RECORD);
        self.fields(m)
    }
}

struct Decoder<'a, 'b> {
    symbols: &'a Interned,
    input: &'a mut &'b [u8],
    refs: Vec<EntityUid>,
}

impl Decoder<'_, '_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.input.split_first()?;
        *self.input = rest;
        Some(*first)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(out);
            }
        }
        None
    }

    fn count(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }

    fn str(&mut self) -> Option<&str> {
        let n = self.count()?;
        if n > self.input.len() {
            return None;
        }
        let (head, rest) = self.input.split_at(n);
        *self.input = rest;
        std::str::from_utf8(head).ok()
    }

    fn uid(&mut self) -> Option<EntityUid> {
        let sym = usize::try_from(self.varint()?).ok()?;
        let ty = self.symbols.types.get(sym)?.clone();
        Some(EntityUid::from_type_name_and_id(
            ty,
            EntityId::new(self.str()?),
        ))
    }

    fn name(&mut self) -> Option<SmolStr> {
        match self.count()? {
            0 => Some(SmolStr::from(self.str()?)),
            s => self.symbols.names.get(s - 1).cloned(),
        }
    }

    fn fields(&mut self) -> Option<Vec<(SmolStr, ast::PartialValue)>> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            out.push((self.name()?, self.value()?.into()));
        }
        Some(out)
    }

    fn value(&mut self) -> Option<ast::Value> {
        Some(match self.byte()? {
            FALSE => ast::Value::from(false),
            TRUE => ast::Value::from(true),
            LONG => {
                let z = self.varint()?;
                ast::Value::from(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            STRING => ast::Value::from(self.str()?),
            SET => {
                let n = self.count()?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.value()?);
                }
                ast::Value::set(items, None)
            }
            RECORD => {
                let n = self.count()?;
                let mut pairs = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    pairs.push((self.name()?, self.value()?));
                }
                ast::Value::record(pairs, None)
            }
            ENTITY => {
                let uid = self.uid()?;
                self.refs.push(uid.clone());
                ast::Value::from(ast::EntityUID::from(uid))
            }
            EXTENSION => {
                let function = self.str()?.to_owned();
                super::materialize::extension(&function, self.str()?)?
            }
            _ => return None,
        })
    }
}

/// LEB128.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Decoding the compact form gives what `materialize` gives from the JSON.
    fn round_trip(symbols: &Symbols, json: &Value) {
        let (expected, refs) = super::super::materialize::materialize(json).unwrap();
        let (bytes, key) = symbols.encode(json).unwrap();
        let decoded = symbols.decode(&bytes).unwrap();
        assert!(
            decoded.entity.deep_eq(&expected),
            "{}\n{expected}",
            decoded.entity
        );
        assert_eq!(decoded.refs, refs);
        let parents: Vec<EntityUid> = json["parents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| super::super::materialize::uid(p).unwrap())
            .collect();
        assert_eq!(decoded.parents, parents);
        let uid = super::super::materialize::uid(&json["uid"]).unwrap();
        assert_eq!(symbols.key(&uid).unwrap(), bytes[..key]);
    }

    #[test]
    fn every_value_kind_decodes_to_what_materialize_builds() {
        let symbols = Symbols::default();
        let canonical = super::super::materialize::every_value_kind();
        let canonical = cedar_policy::Entity::from_json_value(canonical, None)
            .unwrap()
            .to_json_value()
            .unwrap();
        round_trip(&symbols, &canonical);
        for item in crate::synth::entities(crate::synth::Shape::about(1_000), 3) {
            round_trip(&symbols, &item);
        }
    }

    #[test]
    fn names_past_the_symbol_bound_are_spelled_out() {
        let symbols = Symbols::default();
        let attrs: Map<String, Value> = (0..MAX_SYMBOLS + 10)
            .map(|i| (format!("a{i}"), json!(i)))
            .collect();
        let json = json!({"uid": {"type": "A", "id": "a"}, "attrs": attrs, "parents": []});
        round_trip(&symbols, &json);
    }

    #[test]
    fn what_materialize_leaves_to_cedar_is_not_encoded_and_garbage_does_not_decode() {
        let symbols = Symbols::default();
        for odd in [
            json!({"uid": {"type": "A", "id": "a"}, "attrs": {"x": {"__extn": {"fn": "offset", "args": []}}}, "parents": []}),
            json!({"uid": {"type": "A", "id": "a"}, "attrs": {"n": 1.5}, "parents": []}),
            json!({"uid": {"type": "A", "id": "a"}, "attrs": {"n": null}, "parents": []}),
            json!({"uid": {"type": "A", "id": "a"}, "attrs": {"e": {"__expr": "1", "x": 2}}, "parents": []}),
        ] {
            assert!(symbols.encode(&odd).is_none(), "{odd}");
        }
        let (bytes, _) = symbols
            .encode(&json!({"uid": {"type": "A", "id": "a"}, "attrs": {"s": "x"}, "parents": []}))
            .unwrap();
        for cut in 0..bytes.len() {
            assert!(symbols.decode(&bytes[..cut]).is_none());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(symbols.decode(&longer).is_none());
        // A type never interned has no key.
        assert!(symbols.key(&"B::\"a\"".parse().unwrap()).is_none());
    }
}

//! Resolving a stored entity for decisions: its row is decoded once into Cedar's own entity,
//! with the transitive closure of its ancestors over the store already computed.
//!
//! Cedar answers `e in g` from `e`'s ancestor set alone, and reads an entity's attributes only
//! when a policy dereferences it. So a decision needs, for each entity of its slice, the entity
//! and its complete ancestor set, never the ancestors' own data. Closing the ancestors here, once
//! per cache fill, lets every decision hand Cedar shared entities as they are: nothing is cloned
//! or re-closed per request.
//!
//! The closure is built from the parents' closures: `ancestors(e) = parents(e) ∪ ancestors(p)`
//! for every stored parent `p`. A parent that is not stored contributes only itself, exactly as
//! in Cedar's own closure over the whole store.

use std::sync::Arc;

use cedar_policy::EntityUid;
use cedar_policy_core::ast;

use super::codec::Decoded;

/// An entity ready for decisions.
#[derive(Debug)]
pub struct Resolved {
    /// Cedar's entity: attributes, tags, parents, and every other ancestor.
    pub entity: Arc<ast::Entity>,
    /// Uids its attributes and tags refer to: where a policy may dereference next.
    pub refs: Vec<EntityUid>,
    /// About how many bytes of memory this takes (see [`weight`]).
    pub weight: u64,
}

impl Resolved {
    /// The uids of every ancestor (parents included).
    pub fn ancestors(&self) -> impl Iterator<Item = &ast::EntityUID> {
        self.entity.ancestors()
    }
}

/// Closes `decoded` over its parents. `parents` holds each direct parent with its own resolved
/// form, `None` when that parent is not stored.
pub fn resolve(decoded: Decoded, parents: &[Option<Arc<Resolved>>]) -> Resolved {
    let mut entity = decoded.entity;
    for parent in parents.iter().flatten() {
        for ancestor in parent.ancestors() {
            // A no-op for a direct parent, which the entity already lists as one.
            entity.add_indirect_ancestor(ancestor.clone());
        }
    }
    let weight = weight(&entity, decoded.refs.len());
    Resolved {
        entity: Arc::new(entity),
        refs: decoded.refs,
        weight,
    }
}

/// About how many bytes a resolved entity takes. Cedar's entities are far larger than their
/// JSON (a dataset of 219 bytes of JSON takes 3.3 KB: a B-tree node for the attributes, hash
/// sets for the ancestors, a shared allocation per entity uid), so the cache is bounded by
/// this estimate, not by a count. Calibrated against a counting allocator on the platform's
/// entity kinds (users, datasets, projects, organizations), within about 10%.
pub fn weight(entity: &ast::Entity, refs: usize) -> u64 {
    const BASE: u64 = 840;
    const ATTRIBUTES: u64 = 1_300;
    const PER_REFERENCE: u64 = 400;
    const PER_SET: u64 = 600;
    const PER_ANCESTOR: u64 = 150;
    let sets = entity
        .attrs()
        .chain(entity.tags())
        .filter(|(_, v)| {
            matches!(v, ast::PartialValue::Value(v) if matches!(v.value_kind(), ast::ValueKind::Set(_)))
        })
        .count() as u64;
    let has_fields = entity.attrs_len() + entity.tags_len() > 0;
    BASE + u64::from(has_fields) * ATTRIBUTES
        + refs as u64 * PER_REFERENCE
        + sets * PER_SET
        + entity.ancestors().count() as u64 * PER_ANCESTOR
}

//! Entity slicing: the smallest set of stored entities that decides a request exactly.
//!
//! Cedar reads entity data in two ways: dereferencing (`e.attr`, `e has attr`, tags) and
//! hierarchy tests (`e in g`, answered from `e`'s ancestor set). When the policy snapshot
//! proves a depth (see `policy::slicing`), policies never dereference, nor test the ancestors
//! of, an entity more than `depth - 1` reference steps from the request's roots (principal,
//! resource, entities named in the context). So the slice holds every stored entity fewer than
//! `depth` steps from a root, each step through an attribute that some policy reads through
//! (`policy::slicing::Follow`: a reference only compared is not followed). Without a proven depth (reachable mode: the policies dereference
//! entity literals, which then count among the roots) references are followed to a fixed
//! point. Each entity comes with its ancestor closure already resolved (see
//! [`super::resolve`]), so ancestors themselves need not be in the slice unless a reference
//! reaches them. With a depth, the slice's size depends on the request and the policies, never
//! on how many entities are stored; to a fixed point, on what the roots reach.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::EntityUid;
use cedar_policy_core::ast;

use super::resolve::Resolved;
use crate::policy::slicing::Follow;

/// Gathers the slice, reading resolved entities through `fetch`: the roots and the entities
/// fewer than `depth` reference steps from them, or (`None`) every entity they reach, through
/// the references `follow` names.
pub(super) fn slice<E>(
    roots: &[EntityUid],
    depth: Option<u32>,
    follow: &Follow,
    mut fetch: impl FnMut(&EntityUid) -> Result<Option<Arc<Resolved>>, E>,
) -> Result<Vec<Arc<ast::Entity>>, E> {
    let mut seen: HashSet<&EntityUid> = HashSet::new();
    let mut out = Vec::new();
    // Owned references found at one level, walked at the next.
    let mut frontier: Vec<Arc<Resolved>> = Vec::new();
    for uid in roots {
        if seen.insert(uid)
            && let Some(found) = fetch(uid)?
        {
            out.push(found.entity.clone());
            frontier.push(found);
        }
    }
    // Roots are level 0 and always read: `in` tests on them need their ancestors at depth 0.
    let mut walked: HashSet<EntityUid> = HashSet::new();
    // Each entity is walked once, so even without a depth this ends, at a fixed point.
    let mut level = 1;
    // The references of one entity that `follow` names (when it does not name them all).
    let mut named = Vec::new();
    while depth.is_none_or(|d| level < d) {
        level += 1;
        let mut next = Vec::new();
        for entity in &frontier {
            let refs = match follow {
                Follow::All => &entity.refs,
                Follow::Attributes { .. } => {
                    named.clear();
                    followed(entity, follow, &mut named);
                    &named
                }
            };
            for uid in refs {
                if seen.contains(uid) || !walked.insert(uid.clone()) {
                    continue;
                }
                if let Some(found) = fetch(uid)? {
                    out.push(found.entity.clone());
                    next.push(found);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    Ok(out)
}

/// The references `entity` holds under the attributes (and tags) `follow` names. A residual
/// value (an unknown, which stored entities do not normally hold) could hide any reference:
/// then all of them.
fn followed(entity: &Resolved, follow: &Follow, out: &mut Vec<EntityUid>) {
    let e = &entity.entity;
    let attrs = e.attrs().filter(|(name, _)| follow.attribute(name));
    let tags = e.tags().filter(|_| follow.tags());
    for (_, value) in attrs.chain(tags) {
        match value {
            ast::PartialValue::Value(v) => uids(v, out),
            ast::PartialValue::Residual(_) => {
                out.clear();
                out.extend(entity.refs.iter().cloned());
                return;
            }
        }
    }
}

/// Every entity uid in `value`, sets and records included.
fn uids(value: &ast::Value, out: &mut Vec<EntityUid>) {
    match value.value_kind() {
        ast::ValueKind::Lit(ast::Literal::EntityUID(uid)) => {
            out.push(EntityUid::from(uid.as_ref().clone()));
        }
        ast::ValueKind::Set(set) => set.iter().for_each(|v| uids(v, out)),
        ast::ValueKind::Record(fields) => fields.values().for_each(|v| uids(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::str::FromStr;

    use cedar_policy::RestrictedExpression;

    use super::*;

    /// A chain `n0 -> n1 -> ... -> n9` (each refers to the next), plus `n3 -> n0` (a cycle).
    fn chain() -> HashMap<EntityUid, Arc<Resolved>> {
        let uid = |i: usize| EntityUid::from_str(&format!("N::\"n{i}\"")).unwrap();
        (0..10)
            .map(|i| {
                let mut refs = vec![uid(i + 1)];
                if i == 3 {
                    refs.push(uid(0));
                }
                resolved(
                    cedar_policy::Entity::new_no_attrs(uid(i), HashSet::new()),
                    refs,
                )
            })
            .collect()
    }

    /// A stored entity as the cache holds it, keyed by its uid.
    fn resolved(entity: cedar_policy::Entity, refs: Vec<EntityUid>) -> (EntityUid, Arc<Resolved>) {
        let uid = entity.uid();
        let entity = Arc::new(AsRef::<ast::Entity>::as_ref(&entity).clone());
        let weight = 0;
        (
            uid,
            Arc::new(Resolved {
                entity,
                refs,
                weight,
            }),
        )
    }

    fn ids(depth: Option<u32>) -> Vec<String> {
        let store = chain();
        let root = EntityUid::from_str("N::\"n0\"").unwrap();
        let mut fetched = 0;
        let out = slice(&[root], depth, &Follow::All, |u| {
            fetched += 1;
            Ok::<_, ()>(store.get(u).cloned())
        })
        .unwrap();
        // n10 is referenced but absent: fetched once, like every other entity.
        assert!(fetched <= 11, "{fetched} fetches");
        out.iter()
            .map(|e| e.uid().eid().as_ref().to_owned())
            .collect()
    }

    /// `n0` refers to `n1` under `a`, to `n2` under `b`, to `n3` inside the record `r` and to
    /// `n4` inside the set `s`; the others are bare.
    fn fanned() -> HashMap<EntityUid, Arc<Resolved>> {
        let uid = |i: usize| EntityUid::from_str(&format!("N::\"n{i}\"")).unwrap();
        let reference = |i: usize| RestrictedExpression::new_entity_uid(uid(i));
        let attrs = HashMap::from([
            ("a".to_owned(), reference(1)),
            ("b".to_owned(), reference(2)),
            (
                "r".to_owned(),
                RestrictedExpression::new_record([("x".to_owned(), reference(3))]).unwrap(),
            ),
            (
                "s".to_owned(),
                RestrictedExpression::new_set([reference(4)]),
            ),
        ]);
        (0..5)
            .map(|i| {
                let entity = if i == 0 {
                    cedar_policy::Entity::new(uid(0), attrs.clone(), HashSet::new()).unwrap()
                } else {
                    cedar_policy::Entity::new_no_attrs(uid(i), HashSet::new())
                };
                let refs = if i == 0 {
                    (1..5).map(uid).collect()
                } else {
                    vec![]
                };
                resolved(entity, refs)
            })
            .collect()
    }

    /// Only references under the attributes `follow` names are fetched, however deep in a
    /// record or set they lie.
    #[test]
    fn the_slice_fetches_only_the_references_it_follows() {
        let store = fanned();
        let root = EntityUid::from_str("N::\"n0\"").unwrap();
        let sliced = |follow: &Follow| {
            let mut fetched = Vec::new();
            let out = slice(std::slice::from_ref(&root), Some(2), follow, |u| {
                fetched.push(u.to_string());
                Ok::<_, ()>(store.get(u).cloned())
            })
            .unwrap();
            assert_eq!(fetched.len(), out.len());
            let mut ids: Vec<String> = out
                .iter()
                .map(|e| e.uid().eid().as_ref().to_owned())
                .collect();
            ids.sort();
            ids
        };
        let names = |names: &[&str]| Follow::Attributes {
            names: names.iter().map(|n| (*n).into()).collect(),
            tags: false,
        };
        assert_eq!(sliced(&Follow::All), ["n0", "n1", "n2", "n3", "n4"]);
        assert_eq!(sliced(&names(&["a", "r"])), ["n0", "n1", "n3"]);
        assert_eq!(sliced(&names(&["s"])), ["n0", "n4"]);
        assert_eq!(sliced(&names(&[])), ["n0"]);
    }

    #[test]
    fn a_depth_bounds_the_steps_and_none_reaches_a_fixed_point() {
        assert_eq!(ids(Some(1)), ["n0"]);
        assert_eq!(ids(Some(3)), ["n0", "n1", "n2"]);
        let all: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        assert_eq!(ids(None), all);
        assert_eq!(ids(Some(50)), all);
    }
}

//! Entity slicing: the smallest set of stored entities that decides a request exactly.
//!
//! Cedar reads entity data in two ways: dereferencing (`e.attr`, `e has attr`, tags) and
//! hierarchy tests (`e in g`, answered from `e`'s ancestor set). When the policy snapshot
//! proves a depth (see `policy::slicing`), policies never dereference, nor test the ancestors
//! of, an entity more than `depth - 1` reference steps from the request's roots (principal,
//! resource, entities named in the context). So the slice holds every stored entity fewer than
//! `depth` steps from a root. Without a proven depth (reachable mode: the policies dereference
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

/// Gathers the slice, reading resolved entities through `fetch`: the roots and the entities
/// fewer than `depth` reference steps from them, or (`None`) every entity they reach.
pub(super) fn slice<E>(
    roots: &[EntityUid],
    depth: Option<u32>,
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
    while depth.is_none_or(|d| level < d) {
        level += 1;
        let mut next = Vec::new();
        for entity in &frontier {
            for uid in &entity.refs {
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

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::str::FromStr;

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
                let entity = cedar_policy::Entity::new_no_attrs(uid(i), HashSet::new());
                let entity = Arc::new(AsRef::<ast::Entity>::as_ref(&entity).clone());
                (
                    uid(i),
                    Arc::new(Resolved {
                        entity,
                        refs,
                        weight: 0,
                    }),
                )
            })
            .collect()
    }

    fn ids(depth: Option<u32>) -> Vec<String> {
        let store = chain();
        let root = EntityUid::from_str("N::\"n0\"").unwrap();
        let mut fetched = 0;
        let out = slice(&[root], depth, |u| {
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

    #[test]
    fn a_depth_bounds_the_steps_and_none_reaches_a_fixed_point() {
        assert_eq!(ids(Some(1)), ["n0"]);
        assert_eq!(ids(Some(3)), ["n0", "n1", "n2"]);
        let all: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        assert_eq!(ids(None), all);
        assert_eq!(ids(Some(50)), all);
    }
}

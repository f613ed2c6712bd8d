//! Entity slicing: the smallest set of stored entities that decides a request exactly.
//!
//! Cedar reads entity data in two ways: dereferencing (`e.attr`, `e has attr`, tags) and
//! hierarchy tests (`e in g`, which needs `e`'s ancestors). Level validation proves that policies
//! never dereference an entity more than `depth` steps from the request's roots (principal,
//! resource, entities in the context). So the slice holds every entity at fewer than `depth`
//! reference steps from a root, plus all of their ancestors. Its size depends on the request and
//! the policies, never on how many entities are stored.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::{Entity, EntityUid};

use super::codec::Parsed;

/// Gathers the slice, reading entities through `fetch`.
pub(super) fn slice<E>(
    roots: &[EntityUid],
    depth: u32,
    mut fetch: impl FnMut(&EntityUid) -> Result<Option<Arc<Parsed>>, E>,
) -> Result<Vec<Entity>, E> {
    let mut included: HashSet<EntityUid> = HashSet::new();
    let mut expanded: HashSet<EntityUid> = HashSet::new();
    let mut out = Vec::new();
    let mut frontier: Vec<EntityUid> = roots.to_vec();

    // Roots are always read: `in` tests on them need their ancestors even at depth 0.
    for level in 0..depth.max(1) {
        let mut next = Vec::new();
        for uid in frontier {
            if !expanded.insert(uid.clone()) {
                continue;
            }
            let Some(parsed) = include(&uid, &mut included, &mut out, &mut fetch)? else {
                continue;
            };
            if level + 1 < depth {
                next.extend(parsed.refs.iter().cloned());
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    Ok(out)
}

/// Adds `uid` (if stored and not yet added) and all its ancestors to `out`.
fn include<E>(
    uid: &EntityUid,
    included: &mut HashSet<EntityUid>,
    out: &mut Vec<Entity>,
    fetch: &mut impl FnMut(&EntityUid) -> Result<Option<Arc<Parsed>>, E>,
) -> Result<Option<Arc<Parsed>>, E> {
    let first = fetch(uid)?;
    let mut stack = vec![(uid.clone(), first.clone())];
    while let Some((uid, parsed)) = stack.pop() {
        if !included.insert(uid) {
            continue;
        }
        let Some(parsed) = parsed else { continue };
        out.push(parsed.entity.clone());
        for parent in &parsed.parents {
            if !included.contains(parent) {
                stack.push((parent.clone(), fetch(parent)?));
            }
        }
    }
    Ok(first)
}

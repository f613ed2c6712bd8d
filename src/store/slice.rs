//! Entity slicing: the smallest set of stored entities that decides a request exactly.
//!
//! Cedar reads entity data in two ways: dereferencing (`e.attr`, `e has attr`, tags) and
//! hierarchy tests (`e in g`, answered from `e`'s ancestor set). Level validation proves that
//! policies never dereference, nor test the ancestors of, an entity more than `depth - 1`
//! reference steps from the request's roots (principal, resource, entities named in the
//! context). So the slice holds every stored entity fewer than `depth` steps from a root. Each
//! comes with its ancestor closure already resolved (see [`super::resolve`]), so ancestors
//! themselves need not be in the slice unless a reference reaches them. Its size depends on the
//! request and the policies, never on how many entities are stored.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::EntityUid;
use cedar_policy_core::ast;

use super::resolve::Resolved;

/// Gathers the slice, reading resolved entities through `fetch`.
pub(super) fn slice<E>(
    roots: &[EntityUid],
    depth: u32,
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
    for _level in 1..depth {
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

//! The decision core, pure and synchronous: (request, policy snapshot, entities) -> decision.
//!
//! Nothing here touches the network, the disk or a clock, so it can be unit-tested,
//! benchmarked and fuzzed on its own. [`prepare`] turns caller input into a validated Cedar
//! request plus the entity roots a slice starts from and the policies its scope can match;
//! [`entities`] joins a slice into Cedar's entity store; [`decide`] evaluates.

use std::sync::Arc;

use cedar_policy::{Context, Entities, EntityUid, PolicySet, Request};
use cedar_policy_core::ast;
use cedar_policy_core::entities::{Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use serde_json::Value;

use crate::policy::PolicySnapshot;
use crate::storage::ORGANIZATION_TYPE;
use crate::store::codec::{collect_refs, error_chain};

/// A validated request, ready to be decided once its entities are gathered.
#[derive(Debug, Clone)]
pub struct Query {
    /// The Cedar request.
    pub request: Request,
    /// The principal.
    pub principal: EntityUid,
    /// The resource.
    pub resource: EntityUid,
    /// The action, whose entity comes from the schema when there is one.
    pub action: EntityUid,
    /// Where the entity slice starts: principal, resource, context references, the action
    /// when it must come from the store (no schema), and in reachable mode the entity literals
    /// the policies dereference.
    pub roots: Vec<EntityUid>,
    /// The policies whose scope can match this request (see [`crate::policy::scope`]): the
    /// only ones Cedar is given.
    pub policies: Arc<PolicySet>,
}

/// The outcome of evaluating a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Ids of the policies that determined the decision, sorted.
    pub reasons: Vec<String>,
    /// Policy evaluation errors (such a policy is skipped, as in Cedar).
    pub errors: Vec<String>,
    /// How many policies Cedar evaluated: those whose scope can match, not the whole set.
    pub evaluated: usize,
}

/// Why a request cannot be decided: the caller's mistake.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The action is not declared by the schema.
    #[error("unknown action {0}")]
    UnknownAction(String),
    /// The context does not fit the schema or is not Cedar context JSON.
    #[error("invalid context: {0}")]
    Context(String),
    /// The request does not fit the schema (for example a principal type the action does not
    /// apply to).
    #[error("invalid request: {0}")]
    Request(String),
}

/// The entities of a decision could not be assembled; never an Allow.
#[derive(Debug, thiserror::Error)]
#[error("cannot assemble decision entities: {0}")]
pub struct EntitiesError(String);

/// Validates a request against the snapshot's schema and finds its entity roots and the
/// policies that can apply to it.
pub fn prepare(
    snapshot: &PolicySnapshot,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: Option<Value>,
) -> Result<Query, RequestError> {
    let schema = snapshot.schema.as_ref();
    if schema.is_some() && !snapshot.declares_action(&action) {
        return Err(RequestError::UnknownAction(action.to_string()));
    }
    let mut roots = vec![principal.clone(), resource.clone()];
    let shape = snapshot.shape(&principal, &action, &resource);
    let (context, empty) = match context {
        None | Some(Value::Null) => (Context::empty(), true),
        Some(v) => {
            collect_refs(&v, &mut roots);
            let context = Context::from_json_value(v, schema.map(|s| (s, &action)))
                .map_err(|e| RequestError::Context(error_chain(&e)))?;
            (context, false)
        }
    };
    if schema.is_none() {
        roots.push(action.clone());
    }
    // Reachable mode: the entity literals the policies dereference are read like the roots.
    roots.extend(snapshot.literal_roots().iter().cloned());
    // Validation reads only the shape and the context (see `scope::Shape`): a shape already
    // validated with an empty context needs no second look.
    let validate = if empty && shape.empty_context_valid() {
        None
    } else {
        schema
    };
    let request = Request::new(
        principal.clone(),
        action.clone(),
        resource.clone(),
        context,
        validate,
    )
    .map_err(|e| RequestError::Request(error_chain(&e)))?;
    if empty && validate.is_some() {
        shape.remember_empty_context_valid();
    }
    let policies = shape.policies.clone();
    Ok(Query {
        request,
        principal,
        resource,
        action,
        roots,
        policies,
    })
}

/// Joins a slice (entities with their ancestors already closed, see [`crate::store::resolve`])
/// and the schema's entities for the queries' `actions` (and for the action literals the
/// policies dereference, in reachable mode) into Cedar's entity store.
///
/// The entities are shared, not copied, and their closure is not recomputed: Cedar is told it
/// is already computed, which [`crate::store::resolve`] guarantees. They were validated when
/// written; re-validating on every decision would cost more than the evaluation itself.
pub fn entities<'a>(
    snapshot: &PolicySnapshot,
    slice: Vec<Arc<ast::Entity>>,
    actions: impl IntoIterator<Item = &'a EntityUid>,
) -> Result<Entities, EntitiesError> {
    let mut all = slice;
    let mut added: Vec<&EntityUid> = Vec::new();
    for action in actions {
        if added.contains(&action) {
            continue;
        }
        added.push(action);
        if let Some(closure) = snapshot.action_entities(action) {
            for e in closure {
                if !all.iter().any(|have| have.uid() == e.uid()) {
                    all.push(e.clone());
                }
            }
        }
    }
    // Reachable mode: the action literals the policies dereference come from the schema too.
    for literal in snapshot.literal_actions() {
        for e in snapshot.action_entities(literal).unwrap_or_default() {
            if !all.iter().any(|have| have.uid() == e.uid()) {
                all.push(e.clone());
            }
        }
    }
    CoreEntities::new()
        .add_entities(
            all,
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .map(Entities::from)
        .map_err(|e| EntitiesError(error_chain(&e)))
}

/// Evaluates one query against the policies its scope can match.
pub fn decide(snapshot: &PolicySnapshot, query: &Query, entities: &Entities) -> Decision {
    let response = snapshot
        .authorizer()
        .is_authorized(&query.request, &query.policies, entities);
    let diagnostics = response.diagnostics();
    let mut reasons: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
    reasons.sort();
    Decision {
        allowed: response.decision() == cedar_policy::Decision::Allow,
        reasons,
        errors: diagnostics.errors().map(|e| error_chain(e)).collect(),
        evaluated: query.policies.policies().count(),
    }
}

/// Id of the organization `uid` is or belongs to (through its ancestors in `entities`); the
/// smallest id when there are several.
pub fn organization_of(entities: &Entities, uid: &EntityUid) -> Option<String> {
    let is_org = |u: &EntityUid| {
        let ty = u.type_name();
        ty.basename() == ORGANIZATION_TYPE && ty.namespace_components().next().is_none()
    };
    if is_org(uid) {
        return Some(uid.id().unescaped().to_owned());
    }
    entities
        .ancestors(uid)?
        .filter(|a| is_org(a))
        .map(|a| a.id().unescaped().to_owned())
        .min()
}

/// The organization a decision belongs to: the resource's, or else the principal's.
pub fn query_organization(entities: &Entities, query: &Query) -> Option<String> {
    organization_of(entities, &query.resource)
        .or_else(|| organization_of(entities, &query.principal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled() -> PolicySnapshot {
        crate::policy::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
            .unwrap()
    }

    fn query(snapshot: &PolicySnapshot, p: &str, a: &str, r: &str) -> Query {
        prepare(
            snapshot,
            p.parse().unwrap(),
            a.parse().unwrap(),
            r.parse().unwrap(),
            None,
        )
        .unwrap()
    }

    fn snapshot_of(schema: &str) -> PolicySnapshot {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.cedarschema"), schema).unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            "permit(principal, action, resource);",
        )
        .unwrap();
        crate::policy::load_dir(dir.path()).unwrap()
    }

    /// A shape validated once with an empty context skips validation after, but only where
    /// validation cannot depend on the ids (enumerated types) and never for a context that
    /// must hold something.
    #[test]
    fn remembered_validation_never_lets_an_invalid_request_through() {
        let snapshot = snapshot_of(
            r#"entity User; entity Color enum ["red", "green"];
               action paint appliesTo { principal: User, resource: Color };
               action sign appliesTo { principal: User, resource: User, context: { pin: Long } };
               action look appliesTo { principal: User, resource: User };"#,
        );
        let try_prepare = |p: &str, a: &str, r: &str| {
            prepare(
                &snapshot,
                p.parse().unwrap(),
                a.parse().unwrap(),
                r.parse().unwrap(),
                None,
            )
        };
        for _ in 0..2 {
            assert!(try_prepare(r#"User::"a""#, r#"Action::"paint""#, r#"Color::"red""#).is_ok());
            assert!(
                try_prepare(r#"User::"a""#, r#"Action::"paint""#, r#"Color::"blue""#).is_err(),
                "an enumerated id outside the enumeration"
            );
            assert!(
                try_prepare(r#"User::"a""#, r#"Action::"sign""#, r#"User::"b""#).is_err(),
                "a context that lacks a required attribute"
            );
        }
        let shape = snapshot.shape(
            &r#"User::"a""#.parse().unwrap(),
            &r#"Action::"paint""#.parse().unwrap(),
            &r#"Color::"red""#.parse().unwrap(),
        );
        assert!(
            !shape.empty_context_valid(),
            "enumerations are never remembered"
        );
        assert!(try_prepare(r#"User::"a""#, r#"Action::"look""#, r#"User::"b""#).is_ok());
        let shape = snapshot.shape(
            &r#"User::"c""#.parse().unwrap(),
            &r#"Action::"look""#.parse().unwrap(),
            &r#"User::"d""#.parse().unwrap(),
        );
        assert!(
            shape.empty_context_valid(),
            "a plain shape is validated once"
        );
    }

    /// Cedar is handed only the policies whose scope can match: if `decide` evaluated the
    /// whole set, `evaluated` would be the set's size.
    #[test]
    fn cedar_evaluates_only_the_policies_whose_scope_can_match() {
        let snapshot = bundled();
        let all = snapshot.policies.policies().count();
        let q = query(
            &snapshot,
            r#"User::"bob""#,
            r#"Action::"create_project""#,
            r#"Organization::"acme""#,
        );
        let d = decide(&snapshot, &q, &Entities::empty());
        let mut ids: Vec<String> = q.policies.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        // The guardrail and org-member rule for organizations, plus the content rules whose
        // scope leaves the resource open (their conditions test its type).
        assert!(
            ids.contains(&"org-member.create-project".to_owned()),
            "{ids:?}"
        );
        assert!(!ids.contains(&"owner.project".to_owned()), "{ids:?}");
        assert!(
            !ids.contains(&"org-admin.organization".to_owned()),
            "{ids:?}"
        );
        assert_eq!(d.evaluated, ids.len());
        assert!(d.evaluated < all / 2, "{} of {all} evaluated", d.evaluated);
    }
}

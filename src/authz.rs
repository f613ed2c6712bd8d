//! The decision core, pure and synchronous: (request, policy snapshot, entities) -> decision.
//!
//! Nothing here touches the network, the disk or a clock, so it can be unit-tested,
//! benchmarked and fuzzed on its own. [`prepare`] turns caller input into a validated Cedar
//! request plus the entity roots a slice starts from and the policies its scope can match;
//! [`entities`] joins a slice into Cedar's entity store; [`decide`] evaluates.

use std::sync::Arc;

use cedar_policy::{Context, Entities, EntityUid, Request};
use cedar_policy_core::ast;
use cedar_policy_core::authorizer::AuthorizationError as CoreAuthorizationError;
use cedar_policy_core::entities::{Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;
use serde_json::Value;

use crate::policy::PolicySnapshot;
use crate::policy::conditions::Conditions;
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
    /// The conditions of the policies whose scope can match this request (see
    /// [`crate::policy::scope`]): the only ones evaluated.
    pub conditions: Arc<Conditions>,
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
    let conditions = shape.conditions.clone();
    Ok(Query {
        request,
        principal,
        resource,
        action,
        roots,
        conditions,
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

/// Evaluates one query against the policies its scope can match, as Cedar's authorizer does
/// (`cedar_policy_core::authorizer`), over their conditions built once (see
/// [`crate::policy::conditions`]): each condition is evaluated with Cedar's evaluator; one
/// that errs (or is not a boolean) is skipped and its error reported; any satisfied forbid
/// denies, else any satisfied permit allows, else the default deny. The reasons are the
/// satisfied forbids, or without any the satisfied permits. A condition left unevaluated (only
/// an `unknown` value, which stored entities cannot hold, leaves one) satisfies nothing and,
/// as in Cedar, a forbid left so makes the reasons the satisfied forbids.
pub fn decide(query: &Query, entities: &Entities) -> Decision {
    let evaluator = Evaluator::new(
        query.request.as_ref().clone(),
        entities.as_ref(),
        Extensions::all_available(),
    );
    let (mut permits, mut forbids, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let mut forbid_unevaluated = false;
    for c in query.conditions.iter() {
        let satisfied = match evaluator.partial_interpret(&c.expr, c.policy.env()) {
            Ok(ast::PartialValue::Value(v)) => match v.value_kind() {
                ast::ValueKind::Lit(ast::Literal::Bool(b)) => Ok(*b),
                _ => evaluator.evaluate(&c.policy),
            },
            Ok(ast::PartialValue::Residual(_)) => {
                forbid_unevaluated |= c.policy.effect() == ast::Effect::Forbid;
                Ok(false)
            }
            Err(e) => Err(e),
        };
        match satisfied {
            Ok(true) if c.policy.effect() == ast::Effect::Permit => {
                permits.push(c.policy.id().to_string())
            }
            Ok(true) => forbids.push(c.policy.id().to_string()),
            Ok(false) => {}
            Err(error) => {
                let e = cedar_policy::AuthorizationError::from(
                    CoreAuthorizationError::PolicyEvaluationError {
                        id: c.policy.id().clone(),
                        error,
                    },
                );
                errors.push(error_chain(&e));
            }
        }
    }
    let allowed = !permits.is_empty() && forbids.is_empty();
    let mut reasons = if forbids.is_empty() && !forbid_unevaluated {
        permits
    } else {
        forbids
    };
    reasons.sort();
    Decision {
        allowed,
        reasons,
        errors,
        evaluated: query.conditions.len(),
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

    /// `decide` answers as Cedar's authorizer over the same policies and entities: decision,
    /// reasons, and the text of each error (a policy that errs is skipped).
    #[test]
    fn decisions_equal_cedars_authorizer_errors_included() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            r#"@id("errs") permit(principal, action, resource) when { resource.missing == 1 };
               @id("senior") permit(principal, action, resource) when { principal.level > 3 };
               @id("blocked") forbid(principal, action, resource) when { principal.blocked };"#,
        )
        .unwrap();
        let snapshot = crate::policy::load_dir(dir.path()).unwrap();
        let entities = Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "User", "id": "a"}, "attrs": {"level": 5, "blocked": false}, "parents": []},
                {"uid": {"type": "User", "id": "b"}, "attrs": {"level": 5, "blocked": true}, "parents": []},
                {"uid": {"type": "User", "id": "c"}, "attrs": {"level": 1, "blocked": false}, "parents": []},
                {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": []}
            ]),
            None,
        )
        .unwrap();
        for user in ["a", "b", "c"] {
            let q = query(
                &snapshot,
                &format!(r#"User::"{user}""#),
                r#"Action::"read""#,
                r#"Doc::"d""#,
            );
            let ours = decide(&q, &entities);
            let cedar = cedar_policy::Authorizer::new().is_authorized(
                &q.request,
                &snapshot.policies,
                &entities,
            );
            let mut reasons: Vec<String> = cedar
                .diagnostics()
                .reason()
                .map(ToString::to_string)
                .collect();
            reasons.sort();
            let errors: Vec<String> = cedar
                .diagnostics()
                .errors()
                .map(|e| error_chain(e))
                .collect();
            assert_eq!(
                ours.allowed,
                cedar.decision() == cedar_policy::Decision::Allow,
                "{user}"
            );
            assert_eq!(ours.reasons, reasons, "{user}");
            assert_eq!(ours.errors, errors, "{user}");
            assert_eq!(ours.errors.len(), 1, "{user}: {:?}", ours.errors);
        }
    }

    /// A shape's policy conditions are built once: two requests of the same shape evaluate
    /// the same conditions, not copies rebuilt per request.
    #[test]
    fn requests_of_one_shape_share_their_conditions() {
        let snapshot = bundled();
        let q = |p: &str, r: &str| query(&snapshot, p, r#"Action::"view""#, r);
        let (a, b) = (
            q(r#"User::"bob""#, r#"Dataset::"corpus""#),
            q(r#"User::"alice""#, r#"Dataset::"speech""#),
        );
        assert!(!a.conditions.is_empty());
        assert!(Arc::ptr_eq(&a.conditions, &b.conditions));
        let other = q(r#"User::"bob""#, r#"Project::"nlp""#);
        assert!(!Arc::ptr_eq(&a.conditions, &other.conditions));
    }

    /// Only the policies whose scope can match are evaluated: if `decide` evaluated the whole
    /// set, `evaluated` would be the set's size.
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
        let d = decide(&q, &Entities::empty());
        let mut ids: Vec<String> = q
            .conditions
            .iter()
            .map(|c| c.policy.id().to_string())
            .collect();
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

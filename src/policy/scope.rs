//! Policy scoping: which policies can apply to a request shape, so Cedar evaluates only those.
//!
//! Cedar's authorizer evaluates every policy of a set. A policy whose scope cannot match
//! (another action, `resource is` another type...) neither permits nor forbids nor errs,
//! because its scope is conjoined before its conditions; leaving it out changes no decision,
//! reason or error, and saves evaluating it.
//!
//! The policies that stay are evaluated with the parts of their scope that the request
//! shape already decides taken out: `principal is User` for a `User` principal, `action in
//! [...]` for an action in one of those groups, `resource is Dataset` for a `Dataset`. Those
//! parts are true for every request of that shape and a scope test never errs, so the policy
//! permits, forbids and errs exactly as before, under the same id and with the same condition;
//! evaluation just stops testing them (an action list is a set value built anew on each
//! evaluation). Entity-specific scopes (`principal == ...`, `resource in ...`) stay. What is
//! evaluated is each remaining policy's condition, built once per shape (see
//! [`super::conditions`]).
//!
//! A shape also remembers that a request of it with an empty context passed the schema's
//! request validation: that validation reads only the entity types, the action and the
//! context, so later such requests skip it. (Enumerated entity types make it read ids too:
//! those shapes are always validated.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint, Schema,
};
use cedar_policy_core::ast::{self, PrincipalOrResourceConstraint as Scope};
use cedar_policy_core::validator::{ValidatorEntityTypeKind, ValidatorSchema};

use super::conditions::Conditions;

/// Each schema action with its action groups (see `PolicySnapshot::action_entities`).
type ActionClosures = HashMap<EntityUid, Vec<Arc<ast::Entity>>>;

/// What a policy's scope can be tested against before evaluation.
type ScopeKey = (EntityTypeName, EntityUid, EntityTypeName);

/// Most distinct scope keys remembered; beyond it (types without a schema are unbounded),
/// subsets are computed per request.
const MAX_SCOPE_KEYS: usize = 4096;

/// What a snapshot knows about one request shape (principal type, action, resource type).
#[derive(Debug)]
pub struct Shape {
    /// The conditions of the policies evaluated for requests of this shape (see the module
    /// docs), built once.
    pub conditions: Arc<Conditions>,
    /// A request of this shape with an empty context passed the schema's validation.
    empty_context_valid: AtomicBool,
    /// The schema validates ids of these entity types (enumerations): never remember.
    ids_validated: bool,
}

impl Shape {
    /// Whether a request of this shape with an empty context is known to be valid.
    pub fn empty_context_valid(&self) -> bool {
        self.empty_context_valid.load(Ordering::Relaxed)
    }

    /// Remembers that a request of this shape with an empty context passed validation.
    pub fn remember_empty_context_valid(&self) {
        if !self.ids_validated {
            self.empty_context_valid.store(true, Ordering::Relaxed);
        }
    }
}

/// The request shapes of one snapshot, computed on first use.
#[derive(Default)]
pub struct Scopes {
    shapes: Mutex<HashMap<ScopeKey, Arc<Shape>>>,
}

impl Scopes {
    /// The shape of a request of this principal, action and resource: the policies of
    /// `policies` whose scope can match it. `actions` maps each schema action to itself and
    /// its groups (empty without a schema).
    pub fn shape(
        &self,
        policies: &PolicySet,
        actions: &ActionClosures,
        schema: Option<&Schema>,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
    ) -> Arc<Shape> {
        let key = (
            principal.type_name().clone(),
            action.clone(),
            resource.type_name().clone(),
        );
        let mut cache = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shape) = cache.get(&key) {
            return shape.clone();
        }
        let enumerated = |t: &EntityTypeName| schema.is_some_and(|s| is_enumerated(s, t));
        let shape = Arc::new(Shape {
            conditions: Arc::new(Conditions::of(&subset(policies, actions, &key))),
            empty_context_valid: AtomicBool::new(false),
            ids_validated: enumerated(&key.0) || enumerated(&key.2),
        });
        if cache.len() < MAX_SCOPE_KEYS {
            cache.insert(key, shape.clone());
        }
        shape
    }
}

/// Whether the schema declares `ty` as an enumerated entity type (whose ids it validates).
fn is_enumerated(schema: &Schema, ty: &EntityTypeName) -> bool {
    let core: &ValidatorSchema = schema.as_ref();
    core.get_entity_type(ty.as_ref())
        .is_some_and(|t| matches!(t.kind, ValidatorEntityTypeKind::Enum(_)))
}

fn subset(
    policies: &PolicySet,
    actions: &ActionClosures,
    (ptype, action, rtype): &ScopeKey,
) -> PolicySet {
    // The action and its groups; without a schema, groups live in the store and are not
    // known here, so `action in [...]` scopes are kept.
    let action_closure: Option<Vec<EntityUid>> = actions
        .get(action)
        .map(|c| c.iter().map(|e| EntityUid::from(e.uid().clone())).collect());
    let action_ok = |p: &Policy| match p.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => &a == action,
        ActionConstraint::In(groups) => match &action_closure {
            Some(closure) => groups.iter().any(|g| closure.contains(g)),
            None => true,
        },
    };
    let principal_ok = |p: &Policy| match p.principal_constraint() {
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => &t == ptype,
        PrincipalConstraint::Eq(u) => u.type_name() == ptype,
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
    };
    let resource_ok = |p: &Policy| match p.resource_constraint() {
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => &t == rtype,
        ResourceConstraint::Eq(u) => u.type_name() == rtype,
        ResourceConstraint::Any | ResourceConstraint::In(_) => true,
    };
    let keep = policies
        .policies()
        .filter(|p| action_ok(p) && principal_ok(p) && resource_ok(p))
        .map(|p| decided_scope_removed(p, action_closure.is_some()));
    // Ids are unique in the full set, so the subset cannot clash.
    PolicySet::from_policies(keep).unwrap_or_else(|_| policies.clone())
}

/// `policy` (whose scope can match the request shape) without the scope constraints the shape
/// decides: entity types, and the action when the schema's action groups are known.
fn decided_scope_removed(policy: &Policy, action_groups_known: bool) -> Policy {
    let core: &ast::Policy = policy.as_ref();
    let untyped = |c: &Scope| match c {
        Scope::Is(_) => Scope::Any,
        Scope::IsIn(_, group) => Scope::In(group.clone()),
        other => other.clone(),
    };
    let action = match core.action_constraint() {
        ast::ActionConstraint::Eq(_) => ast::ActionConstraint::any(),
        ast::ActionConstraint::In(_) if action_groups_known => ast::ActionConstraint::any(),
        other => other.clone(),
    };
    let simpler = ast::StaticPolicy::new(
        core.id().clone(),
        core.loc().cloned(),
        (**core.annotations_arc()).clone(),
        core.effect(),
        ast::PrincipalConstraint::new(untyped(core.principal_constraint().as_inner())),
        action,
        ast::ResourceConstraint::new(untyped(core.resource_constraint().as_inner())),
        core.non_scope_constraints().cloned(),
    );
    match simpler {
        Ok(p) => Policy::from(ast::Policy::from(p)),
        // Static policies have no slots; were one to appear, Cedar gets the policy as written.
        Err(_) => policy.clone(),
    }
}

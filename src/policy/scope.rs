//! Policy scoping: which policies can apply to a request shape, so Cedar evaluates only those.
//!
//! Cedar evaluates every policy it is given. A policy whose scope cannot match (another action,
//! `resource is` another type...) neither permits nor forbids nor errs, because its scope is
//! conjoined before its conditions; leaving it out changes no decision, reason or error, and
//! saves evaluating it.
//!
//! The policies that stay are handed to Cedar with the parts of their scope that the request
//! shape already decides taken out: `principal is User` for a `User` principal, `action in
//! [...]` for an action in one of those groups, `resource is Dataset` for a `Dataset`. Those
//! parts are true for every request of that shape and a scope test never errs, so the policy
//! permits, forbids and errs exactly as before, under the same id and with the same condition;
//! Cedar just stops rebuilding and testing them (an action list is a set value built anew on
//! each evaluation). Entity-specific scopes (`principal == ...`, `resource in ...`) stay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};
use cedar_policy_core::ast::{self, PrincipalOrResourceConstraint as Scope};

/// Each schema action with its action groups (see `PolicySnapshot::action_entities`).
type ActionClosures = HashMap<EntityUid, Vec<Arc<ast::Entity>>>;

/// What a policy's scope can be tested against before evaluation.
type ScopeKey = (EntityTypeName, EntityUid, EntityTypeName);

/// Most distinct scope keys remembered; beyond it (types without a schema are unbounded),
/// subsets are computed per request.
const MAX_SCOPE_KEYS: usize = 4096;

/// The policy subsets of one snapshot, computed on first use per request shape.
#[derive(Default)]
pub struct Scopes {
    subsets: Mutex<HashMap<ScopeKey, Arc<PolicySet>>>,
}

impl Scopes {
    /// The policies of `policies` whose scope can match this principal, action and resource.
    /// `actions` maps each schema action to itself and its groups (empty without a schema).
    pub fn applicable(
        &self,
        policies: &PolicySet,
        actions: &ActionClosures,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
    ) -> Arc<PolicySet> {
        let key = (
            principal.type_name().clone(),
            action.clone(),
            resource.type_name().clone(),
        );
        let mut cache = self.subsets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = cache.get(&key) {
            return set.clone();
        }
        let set = Arc::new(subset(policies, actions, &key));
        if cache.len() < MAX_SCOPE_KEYS {
            cache.insert(key, set.clone());
        }
        set
    }
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

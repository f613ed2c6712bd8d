//! Request environments and the policies that can apply in each.
//!
//! An environment is one (principal type, action, resource type) that a schema allows. Within
//! one, the action is a known constant, so a policy's action scope (`action == a`,
//! `action in [groups]`) is decided by the action hierarchy of the policy's *own* schema: the
//! policy is dropped when its scope excludes the action and kept with the action scope
//! rewritten to `action` otherwise. Two sets compiled for the same environment then differ
//! only in what the solver can compare, even when an edit moved an action between groups.

use std::collections::{BTreeSet, HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, Effect, EntityUid, Policy, PolicySet, PrincipalConstraint, RequestEnv,
    ResourceConstraint, Schema,
};

use super::AnalysisError;

/// Every environment a schema allows, in a stable order.
pub fn request_envs(schema: &Schema) -> BTreeSet<RequestEnv> {
    schema.request_envs().collect()
}

/// `User Action::"view" Dataset`: how an environment is named in messages.
pub fn label(env: &RequestEnv) -> String {
    format!("{} {} {}", env.principal(), env.action(), env.resource())
}

/// Each action of a schema with itself and all its action-group ancestors.
pub struct ActionGroups(HashMap<EntityUid, HashSet<EntityUid>>);

impl ActionGroups {
    /// The action hierarchy of `schema`.
    pub fn of(schema: &Schema) -> Result<ActionGroups, AnalysisError> {
        let actions = schema
            .action_entities()
            .map_err(|e| AnalysisError::Schema(e.to_string()))?;
        let mut out = HashMap::new();
        for entity in actions.iter() {
            let uid = entity.uid();
            let mut closure: HashSet<EntityUid> = actions
                .ancestors(&uid)
                .map(|a| a.cloned().collect())
                .unwrap_or_default();
            closure.insert(uid.clone());
            out.insert(uid, closure);
        }
        Ok(ActionGroups(out))
    }

    fn covers(&self, policy: &Policy, action: &EntityUid) -> bool {
        match policy.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => &a == action,
            ActionConstraint::In(groups) => {
                let closure = self.0.get(action);
                groups
                    .iter()
                    .any(|g| g == action || closure.is_some_and(|c| c.contains(g)))
            }
        }
    }
}

/// The policies of `set` (optionally of one effect) that can apply in `env`, with their action
/// scope decided by `groups` and rewritten to `action`.
pub fn scoped(
    set: &PolicySet,
    env: &RequestEnv,
    groups: &ActionGroups,
    effect: Option<Effect>,
) -> Result<Vec<Policy>, AnalysisError> {
    let mut out = Vec::new();
    for policy in set.policies() {
        if effect.is_some_and(|e| policy.effect() != e) || !applies(policy, env, groups) {
            continue;
        }
        out.push(without_action_scope(policy)?);
    }
    Ok(out)
}

/// Whether `policy`'s scope can match a request of `env` (types and action only).
pub fn applies(policy: &Policy, env: &RequestEnv, groups: &ActionGroups) -> bool {
    let principal = match policy.principal_constraint() {
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => &t == env.principal(),
        PrincipalConstraint::Eq(u) => u.type_name() == env.principal(),
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
    };
    let resource = match policy.resource_constraint() {
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => &t == env.resource(),
        ResourceConstraint::Eq(u) => u.type_name() == env.resource(),
        ResourceConstraint::Any | ResourceConstraint::In(_) => true,
    };
    principal && resource && groups.covers(policy, env.action())
}

/// Builds a policy set from policies with unique ids.
pub fn set_of(policies: impl IntoIterator<Item = Policy>) -> Result<PolicySet, AnalysisError> {
    PolicySet::from_policies(policies).map_err(|e| AnalysisError::Internal(e.to_string()))
}

fn without_action_scope(policy: &Policy) -> Result<Policy, AnalysisError> {
    if matches!(policy.action_constraint(), ActionConstraint::Any) {
        return Ok(policy.clone());
    }
    let rewrite_err = |message: String| {
        AnalysisError::Internal(format!(
            "cannot rewrite the action scope of policy `{}`: {message}",
            policy.id()
        ))
    };
    let mut est = policy.to_json().map_err(|e| rewrite_err(e.to_string()))?;
    est["action"] = serde_json::json!({ "op": "All" });
    Policy::from_json(Some(policy.id().clone()), est).map_err(|e| rewrite_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    const SCHEMA: &str = r#"
        entity User; entity Doc;
        action read;
        action view in [read] appliesTo { principal: User, resource: Doc };
        action edit appliesTo { principal: User, resource: Doc };
    "#;

    fn env(action: &str) -> RequestEnv {
        RequestEnv::new(
            "User".parse().unwrap(),
            EntityUid::from_str(&format!("Action::\"{action}\"")).unwrap(),
            "Doc".parse().unwrap(),
        )
    }

    #[test]
    fn action_scopes_follow_the_groups_and_are_rewritten() {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).unwrap();
        let groups = ActionGroups::of(&schema).unwrap();
        let set = PolicySet::from_str(
            r#"permit(principal, action in Action::"read", resource);
               permit(principal, action == Action::"edit", resource);
               forbid(principal, action, resource is User);"#,
        )
        .unwrap();
        let view = scoped(&set, &env("view"), &groups, None).unwrap();
        assert_eq!(view.len(), 1);
        assert!(matches!(view[0].action_constraint(), ActionConstraint::Any));
        let edit = scoped(&set, &env("edit"), &groups, None).unwrap();
        assert_eq!(edit.len(), 1);
        assert_eq!(edit[0].id().to_string(), "policy1");
        assert_eq!(request_envs(&schema).len(), 2);
    }
}

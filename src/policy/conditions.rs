//! The conditions of a request shape's policies, built once per snapshot and shape.
//!
//! Cedar's `Authorizer` asks each policy for its condition on every evaluation, and a policy
//! builds it anew each time: its scope constraints and body joined into a fresh expression
//! tree (allocated, evaluated, freed), per policy per request. The expression depends only on
//! the policy, so it is built here once, when a shape is first seen (see
//! [`super::scope::Shape`]), and [`crate::authz::decide`] evaluates it in place with Cedar's
//! own evaluator. The policies are kept in the order the policy set lists them, the order
//! Cedar's authorizer visits them in.

use cedar_policy::PolicySet;
use cedar_policy_core::ast;

/// One policy's condition: what Cedar's authorizer evaluates for it.
#[derive(Debug)]
pub struct Condition {
    /// The policy: its id, effect and slots, and for Cedar to evaluate whole when its
    /// condition gives a value that is not a boolean (which Cedar's conjunction never gives),
    /// so the error is Cedar's own.
    pub policy: ast::Policy,
    /// Scope constraints and body, joined (Cedar's `Policy::condition`).
    pub expr: ast::Expr,
}

/// The conditions of a set of policies.
#[derive(Debug)]
pub struct Conditions(Vec<Condition>);

impl Conditions {
    /// The conditions of every policy of `set`, in its order.
    pub fn of(set: &PolicySet) -> Conditions {
        Conditions(
            set.policies()
                .map(|p| {
                    let core: &ast::Policy = p.as_ref();
                    Condition {
                        policy: core.clone(),
                        expr: core.condition(),
                    }
                })
                .collect(),
        )
    }

    /// Each policy's condition.
    pub fn iter(&self) -> impl Iterator<Item = &Condition> {
        self.0.iter()
    }

    /// How many policies.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

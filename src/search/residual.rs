//! From Cedar's type-aware partial evaluation (TPE) to a candidate [`Filter`].
//!
//! A search knows one side of the request (the principal for a resource search, the resource
//! for a subject search) and leaves the other open. TPE evaluates every policy with the known
//! side's stored entities and leaves a residual expression over the open variable. A request
//! can only be allowed when some permit's residual is true, so the union of what each permit
//! residual can be true for is a superset of the answer. [`permit_filter`] translates one
//! residual into such a superset: uid equality, `in` (the parent hierarchy), and entity
//! references reached through attributes (`resource.project.owner == User::"bob"`,
//! `User::"bob" in resource.project.org`, `resource.members.contains(User::"bob")`).
//! Everything else (negation, comparisons of strings or numbers, tags, context) is not
//! narrowed ([`Filter::All`]): sound, because Cedar confirms every candidate.

use cedar_policy_core::ast::{BinaryOp, EntityUID, Literal, Value, ValueKind, Var};
use cedar_policy_core::tpe::residual::{Residual, ResidualKind};
use cedar_policy_core::validator::types::Type;

use super::filter::Filter;

/// A superset of the values of `var` (the open side) for which `residual` can be true.
pub fn permit_filter(residual: &Residual, var: Var) -> Filter {
    filter(residual, var)
}

fn filter(residual: &Residual, var: Var) -> Filter {
    let kind = match residual {
        Residual::Concrete { value, .. } => {
            return match value.value_kind() {
                ValueKind::Lit(Literal::Bool(false)) => Filter::Nothing,
                // `true`, or a non-boolean a typed policy never yields: no narrowing.
                _ => Filter::All,
            };
        }
        // Always an error: the policy never applies.
        Residual::Error(_) => return Filter::Nothing,
        Residual::Partial { kind, .. } => kind,
    };
    match kind {
        ResidualKind::And { left, right } => {
            Filter::And(vec![filter(left, var), filter(right, var)])
        }
        ResidualKind::Or { left, right } => Filter::Or(vec![filter(left, var), filter(right, var)]),
        ResidualKind::If {
            test_expr,
            then_expr,
            else_expr,
        } => Filter::Or(vec![
            Filter::And(vec![filter(test_expr, var), filter(then_expr, var)]),
            filter(else_expr, var),
        ]),
        ResidualKind::BinaryApp { op, arg1, arg2 } => binary(*op, arg1, arg2, var),
        _ => Filter::All,
    }
}

fn binary(op: BinaryOp, arg1: &Residual, arg2: &Residual, var: Var) -> Filter {
    match op {
        // `var.path == E`, either way round.
        BinaryOp::Eq => match (path(arg1, var), path(arg2, var)) {
            (Some(p), None) => entity(arg2).map_or(Filter::All, |e| Filter::Is(e).behind(&p)),
            (None, Some(p)) => entity(arg1).map_or(Filter::All, |e| Filter::Is(e).behind(&p)),
            _ => Filter::All,
        },
        BinaryOp::In => {
            // `var.path in E` or `var.path in [E, ...]`.
            if let Some(p) = path(arg1, var) {
                return entities(arg2).map_or(Filter::All, |es| Filter::InAny(es).behind(&p));
            }
            // `E in var.path`: the path's value is E or one of its ancestors.
            if let Some(p) = path(arg2, var) {
                return entity(arg1).map_or(Filter::All, |e| Filter::AncestorOf(e).behind(&p));
            }
            Filter::All
        }
        BinaryOp::Contains => {
            // `var.path.contains(E)`: the path's last attribute mentions E.
            if let Some(p) = path(arg1, var).filter(|p| !p.is_empty()) {
                return entity(arg2).map_or(Filter::All, |e| Filter::Is(e).behind(&p));
            }
            // `[E, ...].contains(var.path)`.
            if let Some(p) = path(arg2, var) {
                return entities(arg1).map_or(Filter::All, |es| any_of(es).behind(&p));
            }
            Filter::All
        }
        BinaryOp::ContainsAny => match (path(arg1, var), path(arg2, var)) {
            (Some(p), None) if !p.is_empty() => {
                entities(arg2).map_or(Filter::All, |es| any_of(es).behind(&p))
            }
            (None, Some(p)) if !p.is_empty() => {
                entities(arg1).map_or(Filter::All, |es| any_of(es).behind(&p))
            }
            _ => Filter::All,
        },
        _ => Filter::All,
    }
}

fn any_of(uids: Vec<cedar_policy::EntityUid>) -> Filter {
    Filter::Or(uids.into_iter().map(Filter::Is).collect())
}

/// The entity attributes leading from `var` to `residual` (`resource.project.owner`:
/// `["project", "owner"]`); a field of a record attribute stays within that attribute.
/// `None` when `residual` is not such a path.
fn path(residual: &Residual, var: Var) -> Option<Vec<String>> {
    let Residual::Partial { kind, .. } = residual else {
        return None;
    };
    match kind {
        ResidualKind::Var(v) if *v == var => Some(Vec::new()),
        ResidualKind::GetAttr { expr, attr } => {
            let mut steps = path(expr, var)?;
            match expr.ty() {
                Type::Entity(_) => steps.push(attr.to_string()),
                // A field of a record that an entity attribute holds: the attribute mentions
                // whatever the field holds.
                Type::Record { .. } if !steps.is_empty() => {}
                _ => return None,
            }
            Some(steps)
        }
        _ => None,
    }
}

/// The entity a concrete residual is.
fn entity(residual: &Residual) -> Option<cedar_policy::EntityUid> {
    match residual {
        Residual::Concrete { value, .. } => entity_value(value),
        _ => None,
    }
}

fn entity_value(value: &Value) -> Option<cedar_policy::EntityUid> {
    match value.value_kind() {
        ValueKind::Lit(Literal::EntityUID(uid)) => Some(public(uid)),
        _ => None,
    }
}

/// The entities a concrete entity or set of entities is.
fn entities(residual: &Residual) -> Option<Vec<cedar_policy::EntityUid>> {
    let Residual::Concrete { value, .. } = residual else {
        return None;
    };
    match value.value_kind() {
        ValueKind::Set(set) => set.iter().map(entity_value).collect(),
        _ => entity_value(value).map(|e| vec![e]),
    }
}

fn public(uid: &EntityUID) -> cedar_policy::EntityUid {
    cedar_policy::EntityUid::from(uid.clone())
}

//! How far a decision's entity slice must reach for a policy set, and through which attributes
//! ([`Follow`]), proven once per snapshot.
//!
//! Cedar reads entity data in exactly these places: the target of `e.attr`, `e has attr` (also
//! `e has a.b.c`), `e.getTag(..)`, `e.hasTag(..)` (attributes and tags), and the left side of
//! `e in ..` (its ancestor set). Such a target is an entity value, and the only expressions
//! that evaluate to an entity are variables, entity literals, attribute and tag accesses, and
//! the `if` and record-literal forms that pass one through. So every entity a policy reads is
//! either a few references away from the request (principal, resource, context), or a few
//! references away from an entity literal the policies dereference.
//!
//! Three outcomes, in order of preference:
//! - **Bounded, proven by Cedar** (a schema, no dereferenced literal): level validation
//!   (`Validator::validate_with_level`, strict) proves the smallest depth `n` such that no
//!   policy reads an entity `n` or more references from the request.
//! - **Bounded, proven by syntax** (no schema, no dereferenced literal): every attribute or tag
//!   access counts as one reference step, records included. This over-counts (a record field
//!   is not an entity reference), never under-counts, so the bound is safe but can be larger
//!   than Cedar's.
//! - **Reachable** (some policy dereferences an entity literal, such as
//!   `Group::"admins".members.contains(principal)` or `Group::"g" in principal`): no depth from
//!   the request bounds what is read, so the slice starts from the request's roots *and* those
//!   literals, and follows references to a fixed point.
//!
//! Ancestors never need to join the slice in any mode: each stored entity carries its complete
//! ancestor set (see `store::resolve`), which is all that `in` reads, and no Cedar expression
//! evaluates to an ancestor of an entity (there is no "parents" operator), so an ancestor's own
//! data is read only if a reference or a literal reaches it, which the slice follows.

use std::collections::BTreeSet;
use std::fmt;

use cedar_policy::{EntityUid, PolicySet, Schema, ValidationMode, Validator};
use cedar_policy_core::ast::{self, BinaryOp, Expr, ExprKind, Literal};
use smol_str::SmolStr;

/// How a decision's entities are gathered, and why that is enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slicing {
    /// Every entity a policy reads lies fewer than `depth` references from the request's roots.
    Bounded {
        /// Reference steps the slice follows (1: the roots alone).
        depth: u32,
        /// What proved the bound.
        proof: Proof,
    },
    /// No depth is proven: the slice holds everything reachable from the request's roots and
    /// from `literals`, the entity literals the policies dereference.
    Reachable {
        /// The dereferenced entity literals, sorted.
        literals: Vec<EntityUid>,
    },
}

/// What proved a slicing bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Cedar's strict level validation against the schema.
    LevelValidation,
    /// Counting attribute and tag accesses in the policies (no schema).
    Syntax,
}

/// Which references of a sliced entity the slice follows to the next level.
///
/// An entity's data is read only where an expression that evaluates to it is the target of an
/// access (see the module's opening). Such an expression is a root, or an attribute (or tag)
/// access `x.a` on an entity or a record, through `if` and record literals. So the entities a
/// policy can read beyond the roots all lie under the attributes named in some access chain
/// that ends in a read, at the top of the entity the chain starts from (a record attribute
/// holding the reference counts by its own name): a reference under any other attribute,
/// such as an `owner` only compared with `==`, or members only tested with `contains`, is
/// never read, and the slice need not hold its entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// Every reference (a reachable slice, or a snapshot the scan cannot bound).
    All,
    /// The references held under these attribute names (sorted), and those in tags when
    /// `tags` is set.
    Attributes {
        /// Attribute names, sorted.
        names: Vec<SmolStr>,
        /// Whether some policy reads an entity found by `getTag`.
        tags: bool,
    },
}

impl Follow {
    /// Whether references held under the attribute `name` are followed.
    pub fn attribute(&self, name: &str) -> bool {
        match self {
            Follow::All => true,
            Follow::Attributes { names, .. } => {
                names.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
            }
        }
    }

    /// Whether references held in tags are followed.
    pub fn tags(&self) -> bool {
        match self {
            Follow::All => true,
            Follow::Attributes { tags, .. } => *tags,
        }
    }
}

impl Slicing {
    /// The depth handed to the store's slicer: `None` follows references to a fixed point.
    pub fn depth(&self) -> Option<u32> {
        match self {
            Slicing::Bounded { depth, .. } => Some(*depth),
            Slicing::Reachable { .. } => None,
        }
    }

    /// The entity literals a reachable slice starts from, besides the request's roots.
    pub fn literals(&self) -> &[EntityUid] {
        match self {
            Slicing::Bounded { .. } => &[],
            Slicing::Reachable { literals } => literals,
        }
    }

    /// `bounded` or `reachable`, as the API reports the mode.
    pub fn mode(&self) -> &'static str {
        match self {
            Slicing::Bounded { .. } => "bounded",
            Slicing::Reachable { .. } => "reachable",
        }
    }
}

impl Proof {
    /// `level_validation` or `syntax`, as the API reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proof::LevelValidation => "level_validation",
            Proof::Syntax => "syntax",
        }
    }
}

impl fmt::Display for Slicing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slicing::Bounded { depth, proof } => {
                write!(f, "bounded, depth {depth} ({})", proof.as_str())
            }
            Slicing::Reachable { literals } => write!(
                f,
                "reachable (to a fixed point, from the request and {} dereferenced literal(s))",
                literals.len()
            ),
        }
    }
}

/// Finds the slicing of `policies`, which strict validation against `schema` (when there is
/// one) has already accepted, and which references a slice follows.
pub(super) fn plan(schema: Option<&Schema>, policies: &PolicySet) -> (Slicing, Follow) {
    let mut reach = Reach::default();
    for policy in policies.policies() {
        let ast: &ast::Policy = policy.as_ref();
        reach.scan(&ast.condition());
    }
    if reach.opaque || !reach.literals.is_empty() {
        let literals = reach.literals.into_iter().map(EntityUid::from).collect();
        return (Slicing::Reachable { literals }, Follow::All);
    }
    let slicing = bound(schema, policies, reach.depth);
    let follow = match slicing {
        // Cedar saw a read the scan did not: its attributes are not known either.
        Slicing::Reachable { .. } => Follow::All,
        Slicing::Bounded { .. } => Follow::Attributes {
            names: reach.followed.into_iter().collect(),
            tags: reach.tags,
        },
    };
    (slicing, follow)
}

/// The depth of a bounded slice: proven by Cedar's level validation when there is a schema,
/// else the syntactic count `depth`.
fn bound(schema: Option<&Schema>, policies: &PolicySet, depth: u32) -> Slicing {
    let syntactic = depth.max(1);
    let Some(schema) = schema else {
        return Slicing::Bounded {
            depth: syntactic,
            proof: Proof::Syntax,
        };
    };
    // Cedar's levels never exceed the syntactic count, so the smallest passing level is at most
    // `syntactic`; passing is monotone in the level, so bisect.
    let validator = Validator::new(schema.clone());
    let passes = |level: u32| {
        validator
            .validate_with_level(policies, ValidationMode::Strict, level)
            .validation_passed()
    };
    if !passes(syntactic) {
        // Cedar sees a dereference the syntactic scan does not: trust neither bound.
        return Slicing::Reachable { literals: vec![] };
    }
    let (mut fails, mut holds) = (0, syntactic);
    while holds - fails > 1 {
        let mid = fails + (holds - fails) / 2;
        if passes(mid) {
            holds = mid;
        } else {
            fails = mid;
        }
    }
    Slicing::Bounded {
        depth: holds,
        proof: Proof::LevelValidation,
    }
}

/// What scanning the policies found.
#[derive(Default)]
struct Reach {
    /// Smallest slice depth that holds every dereference target, counting syntactically.
    depth: u32,
    /// Entity literals in a dereference target position.
    literals: BTreeSet<ast::EntityUID>,
    /// Something the scan cannot bound (a template slot, an unknown): follow everything.
    opaque: bool,
    /// Attribute names through which some read entity is reached (see [`Follow`]).
    followed: BTreeSet<SmolStr>,
    /// Whether some read entity is reached through a tag.
    tags: bool,
}

impl Reach {
    fn scan(&mut self, condition: &Expr) {
        for e in condition.subexpressions() {
            let needed = match e.expr_kind() {
                ExprKind::GetAttr { expr, .. } | ExprKind::HasAttr { expr, .. } => {
                    self.target(expr).saturating_add(1)
                }
                ExprKind::ExtHasAttr { expr, attrs } => {
                    // `e has a.b.c` reads `e`, `e.a` and `e.a.b`.
                    self.followed.extend(attrs.iter().cloned());
                    let steps = u32::try_from(attrs.len()).unwrap_or(u32::MAX);
                    self.target(expr).saturating_add(steps)
                }
                ExprKind::BinaryApp {
                    op: BinaryOp::In | BinaryOp::GetTag | BinaryOp::HasTag,
                    arg1,
                    ..
                } => self.target(arg1).saturating_add(1),
                ExprKind::Slot(_) | ExprKind::Unknown(_) => {
                    self.opaque = true;
                    0
                }
                _ => 0,
            };
            self.depth = self.depth.max(needed);
        }
    }

    /// How many reference steps from a root (a variable or a dereferenced literal) the entity
    /// that `e` evaluates to may lie; records literal targets on the way.
    fn target(&mut self, e: &Expr) -> u32 {
        match e.expr_kind() {
            ExprKind::Lit(Literal::EntityUID(uid)) => {
                self.literals.insert(uid.as_ref().clone());
                0
            }
            ExprKind::If {
                then_expr,
                else_expr,
                ..
            } => self.target(then_expr).max(self.target(else_expr)),
            ExprKind::GetAttr { expr, attr } => {
                self.followed.insert(attr.clone());
                self.target(expr).saturating_add(1)
            }
            ExprKind::BinaryApp {
                op: BinaryOp::GetTag,
                arg1,
                ..
            } => {
                self.tags = true;
                self.target(arg1).saturating_add(1)
            }
            ExprKind::Record(fields) => fields.values().map(|v| self.target(v)).max().unwrap_or(0),
            ExprKind::Slot(_) | ExprKind::Unknown(_) => {
                self.opaque = true;
                0
            }
            // Variables are roots; nothing else evaluates to an entity.
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    const SCHEMA: &str = r#"
        entity Group in [Group] { lead: User, next: Group };
        entity User in [Group] { manager: User, team: Group, profile: { home: Group } };
        action read appliesTo { principal: User, resource: Group, context: { who: User } };
    "#;

    fn plan_of(schema: bool, src: &str) -> Slicing {
        let policies = PolicySet::from_str(src).unwrap();
        let schema = schema.then(|| Schema::from_cedarschema_str(SCHEMA).unwrap().0);
        if let Some(s) = &schema {
            let result = Validator::new(s.clone()).validate(&policies, ValidationMode::Strict);
            assert!(result.validation_passed(), "{result}");
        }
        plan(schema.as_ref(), &policies).0
    }

    fn follow_of(src: &str) -> Follow {
        plan(None, &PolicySet::from_str(src).unwrap()).1
    }

    fn bounded(depth: u32, proof: Proof) -> Slicing {
        Slicing::Bounded { depth, proof }
    }

    #[test]
    fn cedar_proves_the_smallest_depth() {
        let p = "permit(principal, action, resource) when { principal.manager.manager.team.lead == principal };";
        assert_eq!(plan_of(true, p), bounded(4, Proof::LevelValidation));
        let p = "permit(principal, action, resource) when { principal in resource };";
        assert_eq!(plan_of(true, p), bounded(1, Proof::LevelValidation));
        let p = "permit(principal, action, resource) when { principal.team in resource.next };";
        assert_eq!(plan_of(true, p), bounded(2, Proof::LevelValidation));
    }

    #[test]
    fn records_count_for_syntax_but_not_for_cedar() {
        let p = "permit(principal, action, resource) when { principal.profile.home.lead == context.who };";
        assert_eq!(plan_of(true, p), bounded(2, Proof::LevelValidation));
        assert_eq!(plan_of(false, p), bounded(3, Proof::Syntax));
    }

    #[test]
    fn deep_chains_are_bounded_however_deep() {
        let chain = ".manager".repeat(20);
        let p = format!(
            "permit(principal, action, resource) when {{ principal{chain} == principal }};"
        );
        assert_eq!(plan_of(true, &p), bounded(20, Proof::LevelValidation));
        let p =
            format!("permit(principal, action, resource) when {{ principal{chain} has team }};");
        assert_eq!(plan_of(true, &p), bounded(21, Proof::LevelValidation));
        assert_eq!(plan_of(false, &p), bounded(21, Proof::Syntax));
    }

    #[test]
    fn nested_has_and_tags_count_every_step() {
        let p = "permit(principal, action, resource) when { principal has manager.manager.team };";
        assert!(matches!(
            plan_of(false, p),
            Slicing::Bounded { depth: 3, .. }
        ));
        let p =
            "permit(principal, action, resource) when { principal.getTag(\"x\").hasTag(\"y\") };";
        assert_eq!(plan_of(false, p), bounded(2, Proof::Syntax));
    }

    fn attributes(names: &[&str], tags: bool) -> Follow {
        Follow::Attributes {
            names: names.iter().map(|n| SmolStr::from(*n)).collect(),
            tags,
        }
    }

    /// Only attributes on the way to a read are followed: compared, tested for membership or
    /// on the right of `in`, a reference is never read.
    #[test]
    fn the_slice_follows_the_attributes_on_the_way_to_a_read() {
        let p = |body: &str| format!("permit(principal, action, resource) when {{ {body} }};");
        for (body, follow) in [
            (
                "resource.owner == principal && resource.members.contains(principal)",
                attributes(&[], false),
            ),
            (
                "principal in resource.team && resource.lead.team == principal.team",
                attributes(&["lead"], false),
            ),
            (
                "resource.manager in principal",
                attributes(&["manager"], false),
            ),
            (
                "resource.manager.manager.team.lead == principal",
                attributes(&["manager", "team"], false),
            ),
            (
                "(if principal has team then resource.lead else principal).team == resource",
                attributes(&["lead"], false),
            ),
            (
                "{k: resource.lead}.k has team",
                attributes(&["k", "lead"], false),
            ),
            (
                "principal.profile.home.lead == principal",
                attributes(&["home", "profile"], false),
            ),
            (
                "principal has manager.team",
                attributes(&["manager", "team"], false),
            ),
            (
                "principal.getTag(\"boss\").hasTag(\"x\")",
                attributes(&[], true),
            ),
            (
                "resource.lead.getTag(\"x\") == principal",
                attributes(&["lead"], false),
            ),
        ] {
            assert_eq!(follow_of(&p(body)), follow, "{body}");
        }
        // Reachable slices follow everything.
        assert_eq!(follow_of(&p("Group::\"g\".lead == principal")), Follow::All);
        let follow = attributes(&["lead", "team"], true);
        assert!(follow.attribute("lead") && follow.attribute("team") && follow.tags());
        assert!(!follow.attribute("owner") && !follow.attribute("lea"));
    }

    #[test]
    fn dereferenced_literals_make_the_slice_reachable() {
        let g = |id: &str| EntityUid::from_str(&format!("Group::\"{id}\"")).unwrap();
        for (p, lits) in [
            (
                "permit(principal, action, resource) when { Group::\"admins\".lead == principal };",
                vec![g("admins")],
            ),
            (
                "permit(principal, action, resource) when { Group::\"g\" in resource };",
                vec![g("g")],
            ),
            (
                "permit(principal, action, resource) when { (if principal in Group::\"x\" then Group::\"a\" else resource).next.lead == principal };",
                vec![g("a")],
            ),
            (
                "permit(principal, action, resource) when { {k: Group::\"r\"}.k.lead == principal };",
                vec![g("r")],
            ),
        ] {
            assert_eq!(
                plan_of(true, p),
                Slicing::Reachable {
                    literals: lits.clone()
                },
                "{p}"
            );
            assert_eq!(
                plan_of(false, p),
                Slicing::Reachable { literals: lits },
                "{p}"
            );
        }
        // Literals that are only compared or tested for membership are not read.
        let p = "permit(principal == User::\"u\", action, resource in Group::\"g\") when { principal.team == Group::\"t\" && [User::\"v\"].contains(principal) };";
        assert_eq!(plan_of(true, p), bounded(1, Proof::LevelValidation));
    }
}

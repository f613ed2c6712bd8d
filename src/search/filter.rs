//! The candidate filter: a backend-neutral description of a SUPERSET of the stored entities a
//! search may answer with, built from Cedar's residual policies (see [`super::residual`]).
//!
//! A filter only ever narrows by facts the store indexes: uid equality, the parent hierarchy
//! and the entity references held in attributes. Whatever it cannot express becomes
//! [`Filter::All`] (no narrowing); every candidate is then confirmed by Cedar, so a filter
//! may let too much through but must never leave an answer out.

use cedar_policy::EntityUid;

/// A set of entities, described by what the store can look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every entity: no narrowing.
    All,
    /// No entity.
    Nothing,
    /// Exactly this entity.
    Is(EntityUid),
    /// The entities that are `in` one of these (the entity itself or a descendant).
    InAny(Vec<EntityUid>),
    /// The entities this one is `in`: itself and its ancestors.
    AncestorOf(EntityUid),
    /// The entities whose attribute `attr` mentions (anywhere in its value: directly, in a set
    /// or in a record) some entity of the inner set.
    Refers {
        /// The top-level attribute name.
        attr: String,
        /// What the attribute must mention.
        to: Box<Filter>,
    },
    /// In every one of these sets.
    And(Vec<Filter>),
    /// In one of these sets.
    Or(Vec<Filter>),
}

impl Filter {
    /// The same set, with `All` and `Nothing` folded away: afterwards `All` and `Nothing`
    /// only appear alone, never inside another filter.
    pub fn simplify(self) -> Filter {
        match self {
            Filter::Refers { attr, to } => match to.simplify() {
                // "Mentions anything" is not indexed: no narrowing.
                Filter::All => Filter::All,
                Filter::Nothing => Filter::Nothing,
                to => Filter::Refers {
                    attr,
                    to: Box::new(to),
                },
            },
            Filter::And(parts) => {
                let mut kept = Vec::new();
                for part in parts {
                    match part.simplify() {
                        Filter::All => {}
                        Filter::Nothing => return Filter::Nothing,
                        Filter::And(inner) => kept.extend(inner),
                        other => kept.push(other),
                    }
                }
                match kept.len() {
                    0 => Filter::All,
                    1 => kept.pop().unwrap_or(Filter::All),
                    _ => Filter::And(kept),
                }
            }
            Filter::Or(parts) => {
                let mut kept = Vec::new();
                for part in parts {
                    match part.simplify() {
                        Filter::All => return Filter::All,
                        Filter::Nothing => {}
                        Filter::Or(inner) => kept.extend(inner),
                        other => kept.push(other),
                    }
                }
                kept.dedup();
                match kept.len() {
                    0 => Filter::Nothing,
                    1 => kept.pop().unwrap_or(Filter::Nothing),
                    _ => Filter::Or(kept),
                }
            }
            Filter::InAny(uids) if uids.is_empty() => Filter::Nothing,
            other => other,
        }
    }

    /// Follows `path` (entity attributes, outermost first) before `self`: the entities whose
    /// `path[0]` mentions an entity whose `path[1]` mentions ... an entity in `self`.
    pub fn behind(self, path: &[String]) -> Filter {
        path.iter().rev().fold(self, |to, attr| Filter::Refers {
            attr: attr.clone(),
            to: Box::new(to),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> EntityUid {
        s.parse().unwrap()
    }

    #[test]
    fn simplify_folds_all_and_nothing() {
        let bob = Filter::Is(uid(r#"User::"bob""#));
        assert_eq!(
            Filter::And(vec![Filter::All, bob.clone()]).simplify(),
            bob.clone()
        );
        assert_eq!(
            Filter::Or(vec![Filter::All, bob.clone()]).simplify(),
            Filter::All
        );
        assert_eq!(
            Filter::Or(vec![Filter::Nothing, bob.clone()]).simplify(),
            bob.clone()
        );
        assert_eq!(
            Filter::And(vec![Filter::Nothing, bob.clone()]).simplify(),
            Filter::Nothing
        );
        assert_eq!(bob.clone().behind(&[]).simplify(), bob.clone());
        assert_eq!(
            Filter::All.behind(&["owner".to_owned()]).simplify(),
            Filter::All,
            "an attribute mentioning anything is no narrowing"
        );
        assert_eq!(
            Filter::Or(vec![]).simplify(),
            Filter::Nothing,
            "no permit can apply"
        );
    }
}

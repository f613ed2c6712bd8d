//! Policy sets whose slice is not the usual two or three steps: attribute chains deeper than 16
//! (bounded by Cedar's level validation at their true depth), and policies that dereference
//! entity literals (no depth bounds them: the slice is followed to a fixed point from the
//! request and the literals). The stores are built so that cutting either slice short leaves
//! out an entity some policy reads, and the daemon would then disagree with Cedar.

use policyd::policy::{Proof, Slicing, load_dir};
use serde_json::{Value, json};

use super::common::policy_dir;
use super::{Gen, World, eref, run, uid};

pub const DEEP_SCHEMA: &str = r#"
entity User { manager: User, level: Long };
entity Doc { owner: User, reviewer: User };
action read appliesTo { principal: User, resource: Doc };
"#;

/// `resource.owner` then 18 managers: the last `.level` reads an entity 19 references from the
/// resource, so the slice must reach depth 20.
pub fn deep_policies() -> String {
    let chain = |n: usize| ".manager".repeat(n);
    format!(
        r#"
@id("deep-permit")
permit (principal, action == Action::"read", resource)
when {{ resource.owner{m18}.level > 5 }};

@id("deep-forbid")
forbid (principal, action == Action::"read", resource)
when {{ resource.reviewer{m17} == principal }};

@id("near")
permit (principal, action == Action::"read", resource)
when {{ resource.owner.manager == principal }};
"#,
        m18 = chain(18),
        m17 = chain(17),
    )
}

/// Users form long manager paths (`u{i}` mostly managed by `u{i+1}`), so entities 17 to 19
/// steps away are new ones, not ones a shorter walk already met.
pub fn deep_world(seed: u64) -> World {
    let mut g = Gen::new(seed);
    let n = 26 + g.below(8);
    let users: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let mut entities = Vec::new();
    for i in 0..n {
        let next = if g.chance(85) {
            (i + 1).min(n - 1)
        } else {
            g.below(n)
        };
        entities.push(json!({
            "uid": uid("User", &users[i]),
            "attrs": {"manager": eref("User", &users[next]), "level": g.below(11)},
            "parents": [],
        }));
    }
    let docs: Vec<String> = (0..4 + g.below(4)).map(|i| format!("d{i}")).collect();
    for d in &docs {
        entities.push(json!({
            "uid": uid("Doc", d),
            "attrs": {"owner": eref("User", &users[g.below(6)]), "reviewer": eref("User", &users[g.below(6)])},
            "parents": [],
        }));
    }
    let mut requests = Vec::new();
    for _ in 0..40 {
        let principal = uid("User", g.pick(&users));
        requests.push(json!({"principal": principal, "action": uid("Action", "read"), "resource": uid("Doc", g.pick(&docs))}));
    }
    World { entities, requests }
}

pub const LITERAL_SCHEMA: &str = r#"
entity Group in [Group] { members: Set<User>, next: Group, owner: User };
entity User in [Group] { manager: User, team: Group, level: Long };
entity Doc in [Group] { owner: User };
action read, edit appliesTo { principal: User, resource: Doc };
"#;

/// Every policy dereferences an entity literal: level validation proves no depth, so the slice
/// is reachable mode's.
pub const LITERAL_POLICIES: &str = r#"
@id("root-members")
permit (principal, action == Action::"read", resource)
when { Group::"root".members.contains(principal) };

@id("root-chain")
permit (principal, action, resource)
when { Group::"root".next.next.next.next.next.next.owner == principal };

@id("under-team")
permit (principal, action == Action::"edit", resource)
when { Group::"g5" in principal.team };

@id("outranked")
forbid (principal, action, resource)
when { resource.owner.manager.level > Group::"root".owner.manager.level };
"#;

/// Groups chained through `next` (mostly `g{i}` to `g{i+1}`), a group hierarchy that is a DAG,
/// users with managers and teams, and documents in groups. `root` is one of the groups.
pub fn literal_world(seed: u64) -> World {
    let mut g = Gen::new(seed);
    let n = 10 + g.below(6);
    let mut groups: Vec<String> = (0..n).map(|i| format!("g{i}")).collect();
    groups[0] = "root".to_owned();
    let users: Vec<String> = (0..4 + g.below(5)).map(|i| format!("u{i}")).collect();
    let mut entities: Vec<Value> = Vec::new();
    for (i, grp) in groups.iter().enumerate() {
        let next = if g.chance(85) {
            (i + 1).min(n - 1)
        } else {
            g.below(n)
        };
        // Parents are later groups, so the hierarchy has no cycle.
        let parents: Vec<Value> = if i + 1 < n {
            (0..g.below(3))
                .map(|_| uid("Group", &groups[i + 1 + g.below(n - i - 1)]))
                .collect()
        } else {
            vec![]
        };
        let members: Vec<Value> = g
            .subset(&users, 30)
            .iter()
            .map(|u| eref("User", u))
            .collect();
        entities.push(json!({
            "uid": uid("Group", grp),
            "attrs": {"members": members, "next": eref("Group", &groups[next]), "owner": eref("User", g.pick(&users))},
            "parents": parents,
        }));
    }
    for u in &users {
        let parents: Vec<Value> = g
            .subset(&groups, 15)
            .iter()
            .map(|x| uid("Group", x))
            .collect();
        entities.push(json!({
            "uid": uid("User", u),
            "attrs": {"manager": eref("User", g.pick(&users)), "team": eref("Group", g.pick(&groups)), "level": g.below(11)},
            "parents": parents,
        }));
    }
    let docs: Vec<String> = (0..3 + g.below(4)).map(|i| format!("d{i}")).collect();
    for d in &docs {
        let parents: Vec<Value> = g
            .subset(&groups, 20)
            .iter()
            .map(|x| uid("Group", x))
            .collect();
        entities.push(json!({
            "uid": uid("Doc", d),
            "attrs": {"owner": eref("User", g.pick(&users))},
            "parents": parents,
        }));
    }
    let mut requests = Vec::new();
    for _ in 0..40 {
        let action = if g.chance(50) { "read" } else { "edit" };
        requests.push(json!({
            "principal": uid("User", g.pick(&users)),
            "action": uid("Action", action),
            "resource": uid("Doc", g.pick(&docs)),
        }));
    }
    World { entities, requests }
}

#[test]
fn chains_deeper_than_16_decide_like_the_whole_store() {
    let policies = deep_policies();
    let dir = policy_dir(&[
        ("schema.cedarschema", DEEP_SCHEMA),
        ("deep.cedar", &policies),
    ]);
    assert_eq!(
        load_dir(dir.path()).unwrap().slicing,
        Slicing::Bounded {
            depth: 20,
            proof: Proof::LevelValidation
        }
    );
    run(12, dir.path(), deep_world);
}

#[test]
fn dereferenced_literals_decide_like_the_whole_store() {
    let dir = policy_dir(&[
        ("schema.cedarschema", LITERAL_SCHEMA),
        ("literal.cedar", LITERAL_POLICIES),
    ]);
    let literals = ["Group::\"g5\"", "Group::\"root\""].map(|u| u.parse().unwrap());
    assert_eq!(
        load_dir(dir.path()).unwrap().slicing,
        Slicing::Reachable {
            literals: literals.to_vec()
        }
    );
    run(12, dir.path(), literal_world);
}

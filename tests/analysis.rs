//! Policy change analysis (`policyd::analysis`): every kind of edit ops make shows as the right
//! change, each widening with a counterexample that Cedar itself allows under the new set and
//! denies under the old; edits that change nothing show nothing. (When the solver cannot run:
//! `analysis_failures.rs`.)

mod common;

use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, Request, Schema};
use common::{cvc5_available, policies_copy, policy_dir};
use policyd::analysis::{self, Change, DiffReport, LintKind, Options, Status};
use policyd::policy::{PolicySnapshot, load_dir};
use serde_json::Value;

fn load(dir: &Path) -> PolicySnapshot {
    load_dir(dir).unwrap_or_else(|e| panic!("{:?}", e.errors()))
}

fn diff(from: &Path, to: &Path) -> DiffReport {
    let report = analysis::diff(&load(from), &load(to), &Options::default());
    assert_eq!(report.status, Status::Complete, "{:?}", report.reason);
    report
}

fn edit(dir: &Path, file: &str, f: impl FnOnce(String) -> String) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, f(text)).unwrap();
}

/// Cedar's decision on a rendered counterexample, parsed back from its JSON with `dir`'s schema.
fn cedar_decides(dir: &Path, request: &Value, entities: &Value) -> Decision {
    let snapshot = load(dir);
    let schema: &Schema = snapshot.schema.as_ref().unwrap();
    let uid = |v: &Value| EntityUid::from_json(serde_json::json!({"__entity": v})).unwrap();
    let action = uid(&request["action"]);
    let context =
        Context::from_json_value(request["context"].clone(), Some((schema, &action))).unwrap();
    let request = Request::new(
        uid(&request["principal"]),
        action,
        uid(&request["resource"]),
        context,
        Some(schema),
    )
    .unwrap();
    let entities = Entities::from_json_value(entities.clone(), Some(schema)).unwrap();
    Authorizer::new()
        .is_authorized(&request, &snapshot.policies, &entities)
        .decision()
}

/// Exactly the environments `expected` widened, each with a counterexample Cedar allows under
/// `to` and denies under `from`.
fn assert_widens(from: &Path, to: &Path, expected: &[&str]) -> DiffReport {
    let report = diff(from, to);
    let mut widened: Vec<String> = report.widenings().map(|e| e.label()).collect();
    widened.sort();
    assert_eq!(widened, expected, "{}", analysis::diff_text(&report));
    for env in report.widenings() {
        let cex = env.widening.as_ref().unwrap();
        assert_eq!(cex.to.as_ref().unwrap().decision, "Allow");
        assert_eq!(cex.from.as_ref().unwrap().decision, "Deny");
        assert!(!cex.to.as_ref().unwrap().policies.is_empty());
        assert_eq!(
            cedar_decides(to, &cex.request, &cex.entities),
            Decision::Allow
        );
        assert_eq!(
            cedar_decides(from, &cex.request, &cex.entities),
            Decision::Deny
        );
    }
    assert!(report.changed());
    report
}

#[test]
fn adding_a_permit_is_a_widening_with_a_counterexample() {
    if !cvc5_available("adding_a_permit_is_a_widening_with_a_counterexample") {
        return;
    }
    let to = policies_copy();
    std::fs::write(
        to.path().join("careless.cedar"),
        "@id(\"careless.datasets\")\npermit (principal, action == Action::\"view\", resource is Dataset);\n\
         @id(\"careless.storage\")\npermit (principal, action == Action::\"view_storage\", resource);\n",
    )
    .unwrap();
    let report = assert_widens(
        &common::repo_policies(),
        to.path(),
        &[
            "User Action::\"view\" Dataset",
            "User Action::\"view_storage\" Organization",
            "User Action::\"view_storage\" Project",
        ],
    );
    let env = report.widenings().next().unwrap();
    assert!(
        env.widening.as_ref().unwrap().to.as_ref().unwrap().policies[0].starts_with("careless.")
    );
    assert_eq!(report.summary.environments, 20);
    assert_eq!(report.summary.narrowings, 0);
}

#[test]
fn removing_a_forbid_is_a_widening() {
    if !cvc5_available("removing_a_forbid_is_a_widening") {
        return;
    }
    let to = policies_copy();
    // Tenant isolation on organizations: an admin listed by another organization gets in.
    edit(to.path(), "guardrails.cedar", |t| {
        let start = t.find("@id(\"guardrails.tenant-organization\")").unwrap();
        let end = t[start..].find(";\n").unwrap() + start + 2;
        format!("{}{}", &t[..start], &t[end..])
    });
    let report = assert_widens(
        &common::repo_policies(),
        to.path(),
        &[
            "User Action::\"manage_users\" Organization",
            "User Action::\"view_activity\" Organization",
            "User Action::\"view_storage\" Organization",
        ],
    );
    // The forbid decided the old answer; the admin permit decides the new one.
    for env in report.widenings() {
        let cex = env.widening.clone().unwrap();
        assert_eq!(
            cex.from.unwrap().policies,
            ["guardrails.tenant-organization"]
        );
        assert_eq!(cex.to.unwrap().policies, ["org-admin.organization"]);
    }
}

#[test]
fn loosening_a_condition_is_a_widening() {
    if !cvc5_available("loosening_a_condition_is_a_widening") {
        return;
    }
    let to = policies_copy();
    // Shared projects: anyone in the organization, not only the listed members.
    edit(to.path(), "shared.cedar", |t| {
        t.replace(
            "resource.members.contains(principal)",
            "principal in resource.org",
        )
    });
    assert_widens(
        &common::repo_policies(),
        to.path(),
        &[
            "User Action::\"add_content\" Project",
            "User Action::\"view\" Project",
        ],
    );
}

const GROUP_SCHEMA: &str = r#"
entity User;
entity Doc { owner: User };
action read;
action view in [read] appliesTo { principal: User, resource: Doc };
action edit appliesTo { principal: User, resource: Doc };
"#;

const GROUP_POLICY: &str = r#"@id("readers")
permit (principal, action in Action::"read", resource) when { resource.owner == principal };
"#;

#[test]
fn changing_an_action_group_is_a_widening() {
    if !cvc5_available("changing_an_action_group_is_a_widening") {
        return;
    }
    let from = policy_dir(&[
        ("schema.cedarschema", GROUP_SCHEMA),
        ("rules.cedar", GROUP_POLICY),
    ]);
    // Same policy; `edit` joins the `read` group in the schema.
    let to = policy_dir(&[
        (
            "schema.cedarschema",
            &GROUP_SCHEMA.replace("action edit appliesTo", "action edit in [read] appliesTo"),
        ),
        ("rules.cedar", GROUP_POLICY),
    ]);
    let report = assert_widens(from.path(), to.path(), &["User Action::\"edit\" Doc"]);
    let env = report.widenings().next().unwrap();
    assert_eq!(env.change, Change::Wider);
    let same = report
        .environments
        .iter()
        .find(|e| e.action == "Action::\"view\"")
        .unwrap();
    assert_eq!(same.change, Change::Equivalent);

    // The same widening made in the policy's own action list.
    let listed = policy_dir(&[
        ("schema.cedarschema", GROUP_SCHEMA),
        (
            "rules.cedar",
            &GROUP_POLICY.replace(
                "action in Action::\"read\"",
                "action in [Action::\"read\", Action::\"edit\"]",
            ),
        ),
    ]);
    assert_widens(from.path(), listed.path(), &["User Action::\"edit\" Doc"]);
}

#[test]
fn removing_a_permit_is_a_narrowing() {
    if !cvc5_available("removing_a_permit_is_a_narrowing") {
        return;
    }
    let to = policies_copy();
    std::fs::remove_file(to.path().join("public.cedar")).unwrap();
    let report = diff(&common::repo_policies(), to.path());
    assert_eq!(
        report.widenings().count(),
        0,
        "{}",
        analysis::diff_text(&report)
    );
    let mut narrowed: Vec<String> = report
        .environments
        .iter()
        .filter(|e| e.change == Change::Narrower)
        .map(|e| e.label())
        .collect();
    narrowed.sort();
    assert_eq!(
        narrowed,
        [
            "User Action::\"duplicate\" Dataset",
            "User Action::\"view\" Dataset",
            "User Action::\"view\" Model",
            "User Action::\"view\" Project",
            "User Action::\"view\" Run",
        ]
    );
    for env in report.environments.iter().filter(|e| e.narrowing.is_some()) {
        let cex = env.narrowing.as_ref().unwrap();
        assert_eq!(cex.from.as_ref().unwrap().decision, "Allow");
        assert_eq!(cex.to.as_ref().unwrap().decision, "Deny");
        assert_eq!(
            cedar_decides(&common::repo_policies(), &cex.request, &cex.entities),
            Decision::Allow
        );
    }
    assert!(report.changed());
}

#[test]
fn reformatting_reordering_and_renaming_change_nothing() {
    if !cvc5_available("reformatting_reordering_and_renaming_change_nothing") {
        return;
    }
    let to = policies_copy();
    // Reformat: collapse white space and drop comments.
    edit(to.path(), "owner.cedar", |t| {
        t.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
    });
    // Reorder: the guardrails file's policies in reverse order.
    edit(to.path(), "guardrails.cedar", |t| {
        let mut policies: Vec<String> = t
            .split("@id(")
            .skip(1)
            .map(|p| format!("@id({p}"))
            .collect();
        policies.reverse();
        policies.join("\n")
    });
    // Rename a file, and the ids of its policies.
    let text = std::fs::read_to_string(to.path().join("public.cedar")).unwrap();
    std::fs::remove_file(to.path().join("public.cedar")).unwrap();
    std::fs::write(
        to.path().join("zz-public-rules.cedar"),
        text.replace("@id(\"public.", "@id(\"visibility.public-"),
    )
    .unwrap();
    let report = diff(&common::repo_policies(), to.path());
    assert!(!report.changed(), "{}", analysis::diff_text(&report));
    assert_eq!(report.summary.equivalent, 20);
    assert_ne!(report.from_revision, report.to_revision);
}

#[test]
fn a_schema_that_adds_an_action_reports_it() {
    if !cvc5_available("a_schema_that_adds_an_action_reports_it") {
        return;
    }
    let from = policy_dir(&[
        ("schema.cedarschema", GROUP_SCHEMA),
        ("rules.cedar", GROUP_POLICY),
    ]);
    let wider_schema = format!(
        "{GROUP_SCHEMA}\naction comment in [read] appliesTo {{ principal: User, resource: Doc }};\n"
    );
    let to = policy_dir(&[
        ("schema.cedarschema", &wider_schema),
        ("rules.cedar", GROUP_POLICY),
    ]);
    let report = diff(from.path(), to.path());
    let added = report
        .environments
        .iter()
        .find(|e| e.action == "Action::\"comment\"")
        .unwrap();
    assert_eq!(added.change, Change::Added);
    let cex = added.widening.as_ref().expect("the new action is allowed");
    assert!(cex.from.is_none());
    assert_eq!(cex.to.as_ref().unwrap().decision, "Allow");
    // Back again: the action is removed.
    let back = diff(to.path(), from.path());
    assert!(
        back.environments
            .iter()
            .any(|e| e.change == Change::Removed)
    );
    assert_eq!(back.widenings().count(), 0);
}

#[test]
fn dead_and_shadowed_policies_are_linted_with_file_and_line() {
    if !cvc5_available("dead_and_shadowed_policies_are_linted_with_file_and_line") {
        return;
    }
    let dir = policies_copy();
    std::fs::write(
        dir.path().join("lints.cedar"),
        "// A permit the private-project guardrail always overrides.\n\
         @id(\"lints.shadowed\")\n\
         permit (principal, action == Action::\"share\", resource is Project)\n\
         when { resource.visibility == \"private\" && resource.owner != principal };\n\
         \n\
         @id(\"lints.dead\")\n\
         permit (principal, action == Action::\"share\", resource is Project)\n\
         when { resource.visibility == \"x\" && resource.visibility == \"y\" };\n",
    )
    .unwrap();
    let lints = analysis::lint(&load(dir.path()), &Options::default()).unwrap();
    let found: Vec<(LintKind, &str, &str, usize)> = lints
        .iter()
        .map(|l| (l.kind, l.policy.as_str(), l.file.as_str(), l.line))
        .collect();
    assert_eq!(
        found,
        [
            (LintKind::Shadowed, "lints.shadowed", "lints.cedar", 2),
            (LintKind::Dead, "lints.dead", "lints.cedar", 6),
        ]
    );
    assert!(
        lints[0].message.contains("guardrails.private-project"),
        "{}",
        lints[0]
    );
    // The bundled policies are clean.
    let clean = analysis::lint(&load(&common::repo_policies()), &Options::default()).unwrap();
    assert!(clean.is_empty(), "{clean:?}");
}

#[test]
fn counterexample_json_is_cedar_json() {
    if !cvc5_available("counterexample_json_is_cedar_json") {
        return;
    }
    let to = policies_copy();
    std::fs::write(
        to.path().join("wide.cedar"),
        "@id(\"wide\") permit (principal, action == Action::\"view\", resource is Run);",
    )
    .unwrap();
    let report = diff(&common::repo_policies(), to.path());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["status"], "complete");
    assert_eq!(json["summary"]["widenings"], 1);
    let env = json["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["change"] == "wider")
        .unwrap();
    assert_eq!(env["principal_type"], "User");
    assert_eq!(env["action"], "Action::\"view\"");
    assert_eq!(env["resource_type"], "Run");
    let cex = &env["widening"];
    assert_eq!(cex["request"]["resource"]["type"], "Run");
    assert!(cex["entities"].is_array());
    assert_eq!(cex["to"]["policies"], serde_json::json!(["wide"]));
    assert_eq!(cex["from"]["decision"], "Deny");
    assert!(env["narrowing"].is_null());
    let _ = EntityUid::from_str("User::\"x\"").unwrap();
}

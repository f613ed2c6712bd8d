//! `policyd test`: the shipped policy tests pass through the real binary and cover every
//! bundled policy; wrong expectations fail with file and case; malformed files exit 2; and the
//! `tests/` directory beside the policies is never read as policy sources.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use common::{Daemon, Setup, policies_copy, policy_dir, repo_policies};
use hyper::StatusCode;
use serde_json::json;

fn policyd_test(args: &[&str]) -> Output {
    common::policyd_command()
        .arg("test")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last line of stdout, `N passed, M failed`, as (N, M).
fn summary(out: &Output) -> (usize, usize) {
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    let numbers: Vec<usize> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        last.ends_with(" failed") && numbers.len() == 2,
        "no summary line: {stdout}"
    );
    (numbers[0], numbers[1])
}

fn junit(path: &Path) -> (usize, usize, usize) {
    let xml = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    let n = |a: &str| root.attribute(a).unwrap().parse::<usize>().unwrap();
    (n("tests"), n("failures"), n("errors"))
}

/// A case on the bundled schema, as a test file writes it.
fn case(
    name: &str,
    principal: &str,
    action: &str,
    resource: &str,
    expect: serde_json::Value,
) -> serde_json::Value {
    json!({"name": name, "request": {"principal": principal, "action": action, "resource": resource}, "expect": expect})
}

fn carol_and_acme() -> serde_json::Value {
    json!([
        {"uid": {"type": "Organization", "id": "acme"}, "attrs": {"admins": []}, "parents": []},
        {"uid": {"type": "User", "id": "carol"}, "attrs": {}, "parents": [{"type": "Organization", "id": "acme"}]}
    ])
}

#[test]
fn the_shipped_tests_pass_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("junit.xml");
    let policies = repo_policies();
    let out = policyd_test(&[
        "--policies",
        policies.to_str().unwrap(),
        "--junit",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let (passed, failed) = summary(&out);
    assert!(
        passed >= 17 && failed == 0,
        "{passed} passed, {failed} failed"
    );
    assert!(!text(&out.stdout).contains("FAIL"));
    assert_eq!(junit(&report), (passed, 0, 0));
}

#[test]
fn every_bundled_policy_is_a_reason_in_the_shipped_tests() {
    let snapshot = policyd::policy::load_dir(&repo_policies()).unwrap();
    let files = policyd::policy_test::discover(&repo_policies(), &[]).unwrap();
    let report = policyd::policy_test::run(&snapshot, &files);
    assert_eq!(report.exit_code(), 0, "{:?}", report.failure_lines());
    let reasons: BTreeSet<&str> = report
        .files
        .iter()
        .flat_map(|f| f.cases.as_ref().unwrap())
        .flat_map(|c| c.reasons.iter().map(String::as_str))
        .collect();
    let uncovered: Vec<&str> = snapshot
        .infos
        .iter()
        .map(|i| i.id.as_str())
        .filter(|id| !reasons.contains(id))
        .collect();
    assert!(
        uncovered.is_empty(),
        "no shipped case has these policies as a reason: {uncovered:?}"
    );
}

#[test]
fn a_wrong_expectation_fails_naming_file_and_case() {
    let dir = policies_copy();
    let tests = dir.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    let file = tests.join("wrong.json");
    let body = json!({
        "entities": carol_and_acme(),
        "cases": [
            case("right", "User::\"carol\"", "Action::\"create_project\"", "Organization::\"acme\"",
                 json!({"decision": "Allow", "reasons": ["org-member.create-project"]})),
            case("wrong decision", "User::\"carol\"", "Action::\"create_project\"", "Organization::\"acme\"",
                 json!({"decision": "Deny"})),
            case("wrong reasons", "User::\"carol\"", "Action::\"create_project\"", "Organization::\"acme\"",
                 json!({"decision": "Allow", "reasons": ["org-admin.organization"]})),
        ]
    });
    std::fs::write(&file, body.to_string()).unwrap();
    let report = dir.path().join("junit.xml");
    // No PATH: the tests/ directory of --policies.
    let out = policyd_test(&[
        "--policies",
        dir.path().to_str().unwrap(),
        "--junit",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let shown = file.display();
    assert!(
        stdout.contains(&format!(
            "FAIL {shown}:wrong decision: expected Deny, got Allow [org-member.create-project]\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "FAIL {shown}:wrong reasons: expected Allow [org-admin.organization], got Allow [org-member.create-project]\n"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(":right:"), "{stdout}");
    assert_eq!(summary(&out), (1, 2));
    assert_eq!(junit(&report), (3, 2, 0));
}

#[test]
fn refused_requests_and_unexpected_errors_fail() {
    // Without a schema nothing is validated, so a policy can err at evaluation.
    let dir = policy_dir(&[(
        "p.cedar",
        "@id(\"by-level\") permit(principal, action, resource) when { principal.level > 2 };",
    )]);
    let file = dir.path().join("t.json");
    let body = json!({"entities": [
        {"uid": {"type": "User", "id": "a"}, "attrs": {}, "parents": []},
        {"uid": {"type": "User", "id": "b"}, "attrs": {"level": 3}, "parents": []}],
    "cases": [
        case("errs", "User::\"a\"", "Action::\"go\"", "Thing::\"x\"", json!({"decision": "Deny", "errors": 0})),
        case("erring is counted", "User::\"a\"", "Action::\"go\"", "Thing::\"x\"", json!({"decision": "Deny", "reasons": [], "errors": 1})),
        case("allowed", "User::\"b\"", "Action::\"go\"", "Thing::\"x\"", json!({"decision": "Allow", "reasons": ["by-level"], "errors": 0})),
    ]});
    std::fs::write(&file, body.to_string()).unwrap();
    let out = policyd_test(&[
        "--policies",
        dir.path().to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(":errs: expected Deny with 0 errors, got Deny [] with 1 error ("),
        "{stdout}"
    );
    assert_eq!(summary(&out), (2, 1));

    // On the bundled schema, an undeclared action is refused as the API would refuse it.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("refused.json");
    let body = json!({"cases": [case("no such action", "User::\"carol\"", "Action::\"fly\"", "Organization::\"acme\"", json!({"decision": "Deny"}))]});
    std::fs::write(&file, body.to_string()).unwrap();
    let policies = repo_policies();
    let out = policyd_test(&[
        "--policies",
        policies.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            ":no such action: expected Deny, got a refused request (unknown action Action::\"fly\")"
        ),
        "{stdout}"
    );
}

#[test]
fn entities_are_read_from_files_beside_the_test_and_validated() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("tests/data")).unwrap();
    std::fs::write(
        tmp.path().join("tests/data/acme.json"),
        carol_and_acme().to_string(),
    )
    .unwrap();
    let file = tmp.path().join("tests/by-file.json");
    let body = json!({"entity_files": ["data/acme.json"], "cases": [
        case("carol creates", "User::\"carol\"", "Action::\"create_project\"", "Organization::\"acme\"",
             json!({"decision": "Allow", "reasons": ["org-member.create-project"]}))]});
    std::fs::write(&file, body.to_string()).unwrap();
    let policies = repo_policies();
    let out = policyd_test(&[
        "--policies",
        policies.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(summary(&out), (1, 0));

    // An entity that does not fit the schema: the file cannot be run (exit 2), and the error
    // names the file and the entity.
    let bad = tmp.path().join("tests/bad-entity.json");
    let body = json!({"entities": [{"uid": {"type": "User", "id": "broken"}, "attrs": {"name": 1}, "parents": []}],
        "cases": [case("x", "User::\"broken\"", "Action::\"view\"", "Project::\"p\"", json!({"decision": "Deny"}))]});
    std::fs::write(&bad, body.to_string()).unwrap();
    let out = policyd_test(&[
        "--policies",
        policies.to_str().unwrap(),
        bad.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: entities: entity 0 (User::\"broken\")",
            bad.display()
        )),
        "{stderr}"
    );
    // The good file still ran.
    assert_eq!(summary(&out), (1, 0));
}

#[test]
fn a_malformed_file_exits_2_naming_the_file_and_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("typo.json");
    let body = json!({"cases": [case("x", "User::\"carol\"", "Action::\"view\"", "Project::\"p\"", json!({"decision": "allowed"}))]});
    std::fs::write(&file, body.to_string()).unwrap();
    let report = tmp.path().join("junit.xml");
    let policies = repo_policies();
    let out = policyd_test(&[
        "--policies",
        policies.to_str().unwrap(),
        "--junit",
        report.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "error: {}: cases[0].expect.decision: unknown variant `allowed`",
            file.display()
        )),
        "{stderr}"
    );
    assert_eq!(junit(&report), (1, 0, 1));

    // No test files at all is an error too, not a silent pass.
    let empty = policies_copy();
    let out = policyd_test(&["--policies", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no *.json test files in"),
        "{}",
        text(&out.stderr)
    );

    // Nor are invalid policies.
    let bad = policy_dir(&[(
        "x.cedar",
        "permit(principal, action, resource) when { 1 + };",
    )]);
    let out = policyd_test(&[
        "--policies",
        bad.path().to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("x.cedar:1:"),
        "{}",
        text(&out.stderr)
    );
}

/// Policy tests kept in `tests/` (even a stray `.cedar` file there) are not policy sources: not
/// for the loader, `check`, or a reload of the running daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tests_directory_is_not_read_as_policies() {
    let dir = policies_copy();
    let before = policyd::policy::load_dir(dir.path()).unwrap().revision;
    let d = Daemon::start(Setup {
        policies: dir.path().to_path_buf(),
        ..Setup::default()
    })
    .await;
    let tests = dir.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    std::fs::copy(
        repo_policies().join("tests/platform.json"),
        tests.join("platform.json"),
    )
    .unwrap();
    std::fs::write(
        tests.join("broken.cedar"),
        "permit(principal, action, resource) when { 1 + };",
    )
    .unwrap();
    std::fs::write(tests.join("other.cedarschema"), "entity Nope;").unwrap();
    assert_eq!(
        policyd::policy::load_dir(dir.path()).unwrap().revision,
        before
    );

    let (status, body) = d.call("POST", "/v1/policies/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["changed"], false, "{body}");
    assert_eq!(body["revision"], before.as_ref(), "{body}");

    let out = common::policyd_command()
        .args(["check", "--policies"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    d.stop().await;
}

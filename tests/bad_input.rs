//! Bad input gets a 4xx naming what is wrong, and changes nothing.

mod common;

use common::{Daemon, policy_dir, repo_policies};
use policyd::config::ServeConfig;
use serde_json::{Value, json};

fn count(d: &Daemon) -> u64 {
    d.state.store.count().unwrap()
}

async fn expect_error(
    d: &Daemon,
    method: &str,
    path: &str,
    body: Vec<u8>,
    status: u16,
    code: &str,
    mentions: &str,
) {
    let before = count(d);
    let (got, resp) = d.raw(method, path, body).await;
    assert_eq!(got.as_u16(), status, "{method} {path}: {resp}");
    assert_eq!(resp["error"]["code"], code, "{method} {path}: {resp}");
    let message = resp["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "{method} {path}: `{message}` should mention `{mentions}`"
    );
    assert_eq!(count(d), before, "{method} {path} changed the store");
}

fn bytes(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_decision_requests_are_400() {
    let d = Daemon::demo().await;
    let ok = || json!({"principal": "User::\"bob\"", "action": "Action::\"view\"", "resource": "Project::\"vision\""});
    let with = |k: &str, v: Value| {
        let mut r = ok();
        r[k] = v;
        bytes(r)
    };
    let p = "/v1/is_authorized";
    expect_error(
        &d,
        "POST",
        p,
        b"{not json".to_vec(),
        400,
        "bad_json",
        "malformed JSON",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        b"".to_vec(),
        400,
        "bad_json",
        "malformed JSON",
    )
    .await;
    expect_error(&d, "POST", p, b"[1,2]".to_vec(), 400, "bad_json", "object").await;
    expect_error(
        &d,
        "POST",
        p,
        with("principal", json!(5)),
        400,
        "invalid_field",
        "principal",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        with("principal", Value::Null),
        400,
        "invalid_field",
        "principal: is required",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        with("resource", json!("Project::vision")),
        400,
        "invalid_field",
        "resource",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        with("action", json!({"type": "Action"})),
        400,
        "invalid_field",
        "action",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        with("principal", json!({"type": "Nope", "id": "x"})),
        400,
        "invalid_request",
        "Nope",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        with("principal", json!({"type": "Project", "id": "x"})),
        400,
        "invalid_request",
        "Project",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        with("action", json!("Action::\"fly\"")),
        400,
        "unknown_action",
        "Action::\"fly\"",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        with("context", json!("text")),
        400,
        "invalid_context",
        "context",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        with("context", json!({"extra": 1})),
        400,
        "invalid_context",
        "extra",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        with("princpal", json!("User::\"bob\"")),
        400,
        "invalid_field",
        "princpal",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batches_are_400_and_name_the_request() {
    let d = Daemon::demo().await;
    let good = json!({"principal": "User::\"bob\"", "action": "Action::\"view\"", "resource": "Project::\"vision\""});
    let p = "/v1/is_authorized/batch";
    expect_error(
        &d,
        "POST",
        p,
        bytes(json!({"requests": 3})),
        400,
        "invalid_field",
        "requests",
    )
    .await;
    expect_error(
        &d,
        "POST",
        p,
        bytes(json!({})),
        400,
        "invalid_field",
        "requests",
    )
    .await;
    let bad =
        json!({"principal": 1, "action": "Action::\"view\"", "resource": "Project::\"vision\""});
    expect_error(
        &d,
        "POST",
        p,
        bytes(json!({"requests": [good, bad]})),
        400,
        "invalid_field",
        "requests[1].principal",
    )
    .await;
    let too_many = vec![good.clone(); 101];
    expect_error(
        &d,
        "POST",
        p,
        bytes(json!({"requests": too_many})),
        400,
        "batch_too_large",
        "101",
    )
    .await;
    let (status, body) = d
        .call("POST", p, Some(&json!({"requests": vec![good; 100]})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_entities_write_nothing() {
    let d = Daemon::demo().await;
    let valid = json!({"uid": {"type": "User", "id": "new"}, "attrs": {}, "parents": [{"type": "Organization", "id": "acme"}]});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"uid": {"type": "User", "id": "x"}}), "array"),
        (
            json!([valid, {"uid": {"type": "Nope", "id": "x"}, "attrs": {}, "parents": []}]),
            "entity 1 (Nope::\"x\")",
        ),
        (
            json!([valid, {"uid": {"type": "User", "id": "x"}, "attrs": {"name": 5}, "parents": []}]),
            "name",
        ),
        (
            json!([valid, {"uid": {"type": "User", "id": "x"}, "attrs": {"nick": "x"}, "parents": []}]),
            "nick",
        ),
        (
            json!([valid, {"uid": {"type": "Project", "id": "x"}, "attrs": {"visibility": "public"}, "parents": []}]),
            "Project::\"x\"",
        ),
        (
            json!([valid, {"uid": {"type": "User", "id": "x"}, "attrs": {}, "parents": [{"type": "Project", "id": "p"}]}]),
            "User::\"x\"",
        ),
        (
            json!([valid, {"uid": {"type": "Dataset", "id": "d"}, "attrs": {"project": {"__entity": {"type": "Project", "id": "p"}}, "owner": {"__entity": {"type": "User", "id": "u"}}, "size_bytes": "big"}, "parents": []}]),
            "size_bytes",
        ),
        (
            // An action entity that contradicts the schema (which puts `view` in no group).
            json!([valid, {"uid": {"type": "Action", "id": "view"}, "attrs": {}, "parents": [{"type": "Action", "id": "edit"}]}]),
            "entity 1 (Action::\"view\"): it is in action group(s) Action::\"edit\"",
        ),
        // Listed twice alike is one entity, as in Cedar; twice differently is refused.
        (
            json!([valid, {"uid": {"type": "User", "id": "new"}, "attrs": {"name": "other"}, "parents": []}]),
            "entity 1 (User::\"new\"): the same entity appears twice in this write, differently",
        ),
        (json!([valid, 7]), "entity 1"),
    ];
    for (body, mentions) in cases {
        expect_error(
            &d,
            "PUT",
            "/v1/entities",
            bytes(body),
            400,
            "invalid_entity",
            mentions,
        )
        .await;
        assert!(
            d.get("User", "new").await.is_none(),
            "a refused write must write nothing"
        );
    }
    expect_error(
        &d,
        "PUT",
        "/v1/entities",
        b"[{".to_vec(),
        400,
        "bad_json",
        "malformed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchy_cycles_are_refused() {
    let d = Daemon::dir_policies(DEEP_GROUPS).await;
    let group = |id: &str, parents: &[&str]| {
        let parents: Vec<Value> = parents
            .iter()
            .map(|p| json!({"type": "Group", "id": p}))
            .collect();
        json!({"uid": {"type": "Group", "id": id}, "attrs": {}, "parents": parents})
    };
    d.put(json!([
        group("a", &[]),
        group("b", &["a"]),
        group("c", &["b"])
    ]))
    .await;
    // Directly, across one write, and closing a loop through stored entities.
    expect_error(
        &d,
        "PUT",
        "/v1/entities",
        bytes(json!([group("x", &["x"])])),
        400,
        "hierarchy_cycle",
        "Group::\"x\"",
    )
    .await;
    expect_error(
        &d,
        "PUT",
        "/v1/entities",
        bytes(json!([group("y", &["z"]), group("z", &["y"])])),
        400,
        "hierarchy_cycle",
        "its own ancestor",
    )
    .await;
    expect_error(
        &d,
        "PUT",
        "/v1/entities",
        bytes(json!([group("a", &["c"])])),
        400,
        "hierarchy_cycle",
        "Group::\"a\"",
    )
    .await;
    assert_eq!(d.get("Group", "a").await.unwrap()["parents"], json!([]));
    // Decisions over the untouched hierarchy still work.
    let (decision, _) = d
        .decide("Group::\"c\"", "Action::\"look\"", "Group::\"a\"")
        .await;
    assert_eq!(decision, "Allow");
}

const DEEP_GROUPS: &[(&str, &str)] = &[
    (
        "schema.cedarschema",
        "entity Group in [Group]; action look appliesTo { principal: Group, resource: Group };",
    ),
    (
        "p.cedar",
        "permit(principal, action, resource) when { principal in resource };",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let d = Daemon::demo().await;
    let name = "x".repeat(1024 * 1024);
    let big =
        json!([{"uid": {"type": "User", "id": "big"}, "attrs": {"name": name}, "parents": []}]);
    expect_error(
        &d,
        "PUT",
        "/v1/entities",
        bytes(big),
        413,
        "body_too_large",
        "1048576",
    )
    .await;
    assert!(d.get("User", "big").await.is_none());
    let padding = " ".repeat(1024 * 1024 + 1);
    expect_error(
        &d,
        "POST",
        "/v1/is_authorized",
        padding.into_bytes(),
        413,
        "body_too_large",
        "bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_entities() {
    let d = Daemon::demo().await;
    expect_error(
        &d,
        "GET",
        "/v2/nothing",
        vec![],
        404,
        "not_found",
        "/v2/nothing",
    )
    .await;
    expect_error(
        &d,
        "GET",
        "/v1/is_authorized",
        vec![],
        405,
        "method_not_allowed",
        "GET",
    )
    .await;
    expect_error(
        &d,
        "DELETE",
        "/v1/policies",
        vec![],
        405,
        "method_not_allowed",
        "DELETE",
    )
    .await;
    expect_error(
        &d,
        "GET",
        "/v1/entities/User/nobody",
        vec![],
        404,
        "not_found",
        "User::\"nobody\"",
    )
    .await;
    expect_error(
        &d,
        "DELETE",
        "/v1/entities/User/nobody",
        vec![],
        404,
        "not_found",
        "User::\"nobody\"",
    )
    .await;
    expect_error(
        &d,
        "GET",
        "/v1/entities/Bad%20Type/x",
        vec![],
        400,
        "invalid_field",
        "Bad Type",
    )
    .await;
    expect_error(
        &d,
        "GET",
        "/v1/entities/User/%FF",
        vec![],
        400,
        "invalid_field",
        "UTF-8",
    )
    .await;
}

/// A 405 names, in its `Allow` header, every method the path serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_lists_the_allowed_methods() {
    let d = Daemon::demo().await;
    for (method, path, allow) in [
        ("POST", "/v1/entities/User/alice", "GET, DELETE"),
        ("GET", "/v1/is_authorized", "POST"),
        ("PUT", "/v1/policies", "GET"),
        ("GET", "/v1/storage/reservations/r-1", "DELETE"),
    ] {
        let (status, headers, body) = d.with_headers(method, path, &[], vec![]).await;
        assert_eq!(status.as_u16(), 405, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert_eq!(
            headers.get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_missing_from_the_store_are_absent_not_errors() {
    let d = Daemon::demo().await;
    let (decision, reasons) = d
        .decide("User::\"ghost\"", "Action::\"view\"", "Project::\"nlp\"")
        .await;
    assert_eq!(decision, "Deny");
    assert_eq!(reasons, ["guardrails.tenant-project"]);
    let (decision, _) = d
        .decide("User::\"bob\"", "Action::\"view\"", "Project::\"ghost\"")
        .await;
    assert_eq!(decision, "Deny");
}

#[test]
fn invalid_policies_refuse_to_start() {
    let schema = std::fs::read_to_string(repo_policies().join("schema.cedarschema")).unwrap();
    let cases = [
        (
            "permit(principal, action, resource) when { 1 + };",
            "bad.cedar:1:",
        ),
        (
            "permit(principal, action == Action::\"view\", resource is Project) when { resource.nosuch };",
            "nosuch",
        ),
        (
            "permit(principal, action == Action::\"fly\", resource);",
            "fly",
        ),
    ];
    for (policy, mentions) in cases {
        let dir = policy_dir(&[("schema.cedarschema", &schema), ("bad.cedar", policy)]);
        let tmp = tempfile::tempdir().unwrap();
        let config = ServeConfig {
            policies_dir: dir.path().to_path_buf(),
            db_path: tmp.path().join("db"),
            entities_dir: common::repo_entities(),
            listen: "127.0.0.1:0".parse().unwrap(),
            auth: Default::default(),
            entity_cache: 10,
            compact_cache: 0,
            watch: false,
            limits: Default::default(),
            activity: policyd::config::ActivityConfig::beside(&tmp.path().join("db")),
            analysis: Default::default(),
            upstream: None,
        };
        let Err(err) = policyd::daemon::open(&config) else {
            panic!("{policy} was served");
        };
        let policyd::daemon::StartError::Policies(load) = err else {
            panic!("unexpected error {err}");
        };
        let text: Vec<String> = load.errors().iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.contains(mentions)),
            "{text:?} should mention {mentions}"
        );
        assert!(
            !tmp.path().join("db").exists(),
            "the store must not be touched"
        );
    }
}

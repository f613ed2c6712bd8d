//! Action entities in entity writes: `PUT /v1/entities` and `policyd import` accept exactly the
//! files that Cedar's schema-based parsing (`Entities::from_json_value(file, Some(&schema))`)
//! accepts, store none of their action entities (the schema is their source), and refuse a
//! contradiction with a 400 that names the entity and what disagrees, writing nothing.

mod common;

use std::cell::Cell;

use cedar_policy::{Entities, Entity, EntityUid, Schema};
use common::{Daemon, policy_dir, policyd_command};
use proptest::prelude::{Rng, any};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

/// Two levels of action groups, in a namespace: `view` is in `read`, which is in `all`.
const SCHEMA: &str = r#"
namespace Photo {
  entity Group;
  entity User in [Group];
  entity Album { owner: User };
  action all;
  action read in [all];
  action write in [all];
  action view in [read] appliesTo { principal: User, resource: Album };
  action comment in [read, write] appliesTo { principal: User, resource: Album };
  action edit in [write] appliesTo { principal: User, resource: Album };
  action audit appliesTo { principal: User, resource: Album };
}
"#;

const POLICIES: &str = r#"
@id("readers") permit (principal in Photo::Group::"readers", action in Photo::Action::"read", resource);
@id("owners") permit (principal, action in Photo::Action::"all", resource) when { resource.owner == principal };
"#;

/// Each declared action with its direct groups, as the schema declares them.
const ACTIONS: [(&str, &[&str]); 7] = [
    ("all", &[]),
    ("read", &["all"]),
    ("write", &["all"]),
    ("view", &["read"]),
    ("comment", &["read", "write"]),
    ("edit", &["write"]),
    ("audit", &[]),
];

fn action(id: &str, parents: &[&str]) -> Value {
    let parents: Vec<Value> = parents
        .iter()
        .map(|p| json!({"type": "Photo::Action", "id": p}))
        .collect();
    json!({"uid": {"type": "Photo::Action", "id": id}, "attrs": {}, "parents": parents})
}

fn data() -> Vec<Value> {
    vec![
        json!({"uid": {"type": "Photo::Group", "id": "readers"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "Photo::User", "id": "ann"}, "attrs": {}, "parents": [{"type": "Photo::Group", "id": "readers"}]}),
        json!({"uid": {"type": "Photo::User", "id": "bo"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "Photo::Album", "id": "trip"}, "attrs": {"owner": {"__entity": {"type": "Photo::User", "id": "bo"}}}, "parents": []}),
    ]
}

fn schema() -> Schema {
    Schema::from_cedarschema_str(SCHEMA).unwrap().0
}

async fn daemon() -> Daemon {
    Daemon::dir_policies(&[("schema.cedarschema", SCHEMA), ("p.cedar", POLICIES)]).await
}

fn deep_eq(a: &Entity, b: &Entity) -> bool {
    AsRef::<cedar_policy_core::ast::Entity>::as_ref(a)
        .deep_eq(AsRef::<cedar_policy_core::ast::Entity>::as_ref(b))
}

/// A file in Cedar's usual shape (each action with its direct groups, the groups listed too) is
/// accepted; the data is stored and reads back equal, the actions read back as the schema
/// declares them, and decisions use the schema's groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cedar_accepts_is_accepted_and_reads_back_equal() {
    let d = daemon().await;
    let mut file = data();
    file.extend(ACTIONS.iter().map(|(id, parents)| action(id, parents)));
    let cedar = Entities::from_json_value(Value::Array(file.clone()), Some(&schema())).unwrap();

    let (status, body) = d
        .call("PUT", "/v1/entities", Some(&Value::Array(file.clone())))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"upserted": 4, "actions_matched": 7}));

    for item in &file {
        let uid = EntityUid::from_json(item["uid"].clone()).unwrap();
        let ty = uid.type_name().to_string();
        let got = d.get(&ty, uid.id().unescaped()).await.unwrap();
        let got = Entity::from_json_value(got, Some(&schema())).unwrap();
        if ty == "Photo::Action" {
            // Cedar's view of the file closes the groups: `view` is in `read` and `all`.
            assert!(deep_eq(&got, cedar.get(&uid).unwrap()), "{uid}: {got}");
        } else {
            let sent = Entity::from_json_value(item.clone(), Some(&schema())).unwrap();
            assert!(deep_eq(&got, &sent), "{uid}: {got} != {sent}");
        }
    }
    let view = d.get("Photo::Action", "view").await.unwrap();
    let mut groups: Vec<&str> = view["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    groups.sort();
    assert_eq!(groups, ["all", "read"]);

    let ask = |p: &str, a: &str| json!({"principal": {"type": "Photo::User", "id": p}, "action": {"type": "Photo::Action", "id": a}, "resource": {"type": "Photo::Album", "id": "trip"}});
    for (p, a, want) in [
        ("ann", "view", "Allow"),
        ("ann", "edit", "Deny"),
        ("bo", "edit", "Allow"),
    ] {
        let (_, body) = d.call("POST", "/v1/is_authorized", Some(&ask(p, a))).await;
        assert_eq!(body["decision"], want, "{p} {a}: {body}");
    }
    // Nothing of an action is stored: the store holds the four data entities only.
    assert_eq!(d.state.store.count().unwrap(), 4);
}

/// Contradictions are refused whole, with the entity and what disagrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contradictions_are_refused_naming_the_entity_and_the_difference() {
    let d = daemon().await;
    let probe = json!({"uid": {"type": "Photo::User", "id": "probe"}, "attrs": {}, "parents": []});
    let cases: Vec<(Value, &str)> = vec![
        (
            action("view", &["write"]),
            r#"entity 1 (Photo::Action::"view"): it is in action group(s) Photo::Action::"write" here, which the schema does not declare for it"#,
        ),
        (
            action("comment", &["read"]),
            r#"entity 1 (Photo::Action::"comment"): the schema puts it in action group(s) Photo::Action::"all", Photo::Action::"write""#,
        ),
        (
            action("fly", &[]),
            r#"entity 1 (Photo::Action::"fly"): the schema declares no such action"#,
        ),
        (
            json!({"uid": {"type": "Photo::Action", "id": "audit"}, "attrs": {"level": 3}, "parents": []}),
            r#"entity 1 (Photo::Action::"audit"): its attrs differ from the schema's declaration"#,
        ),
        (
            json!({"uid": {"type": "Photo::Action", "id": "audit"}, "attrs": {}, "parents": [{"type": "Photo::Group", "id": "readers"}]}),
            "entity 1: ",
        ),
    ];
    for (bad, message) in cases {
        let file = json!([probe, bad]);
        assert!(
            Entities::from_json_value(file.clone(), Some(&schema())).is_err(),
            "Cedar accepts {bad}"
        );
        let (status, body) = d.call("PUT", "/v1/entities", Some(&file)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_entity");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{bad}: {text}");
        assert!(d.get("Photo::User", "probe").await.is_none(), "{bad}");
    }
    // The same action twice differently is refused; twice alike counts once, as in Cedar.
    let (view, other) = (action("view", &["read", "all"]), action("view", &["read"]));
    let (status, body) = d
        .call("PUT", "/v1/entities", Some(&json!([probe, view, other])))
        .await;
    assert_eq!(status, 400, "{body}");
    let text = body["error"]["message"].as_str().unwrap();
    let twice = r#"entity 2 (Photo::Action::"view"): the same entity appears twice in this write, differently"#;
    assert!(text.contains(twice), "{text}");
    let file = json!([probe, view, probe, view]);
    assert!(Entities::from_json_value(file.clone(), Some(&schema())).is_ok());
    let (status, body) = d.call("PUT", "/v1/entities", Some(&file)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"upserted": 1, "actions_matched": 1}));
}

struct Gen(TestRng);

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.0.next_u64() % 100 < percent
    }
}

/// A Cedar-shaped file, then a few random edits: drop an action, add or drop a group, list the
/// whole closure, add an attribute, repeat an entity, add an undeclared action.
fn mutated_file(seed: u64, probe: &str) -> (Vec<Value>, usize) {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut g = Gen(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let mut actions: Vec<(String, Vec<String>)> = ACTIONS
        .iter()
        .filter(|_| g.chance(80))
        .map(|(id, ps)| (id.to_string(), ps.iter().map(|p| p.to_string()).collect()))
        .collect();
    let mut extra = Vec::new();
    for _ in 0..g.below(3) {
        if actions.is_empty() {
            break;
        }
        let i = g.below(actions.len());
        match g.below(6) {
            0 => actions[i].1.push(ACTIONS[g.below(ACTIONS.len())].0.to_owned()),
            1 => {
                actions[i].1.pop();
            }
            2 => {
                // The full closure, as some exporters write it.
                if actions[i].0 == "view" || actions[i].0 == "edit" {
                    actions[i].1.push("all".to_owned());
                }
            }
            3 => extra.push(json!({"uid": {"type": "Photo::Action", "id": actions[i].0}, "attrs": {"x": 1}, "parents": []})),
            4 => extra.push(action(&actions[i].0, &[])),
            _ => extra.push(action("undeclared", &[])),
        }
    }
    let mut file =
        vec![json!({"uid": {"type": "Photo::User", "id": probe}, "attrs": {}, "parents": []})];
    let mut ids: Vec<String> = actions.iter().map(|(id, _)| id.clone()).collect();
    ids.extend(
        extra
            .iter()
            .map(|e| e["uid"]["id"].as_str().unwrap_or("").to_owned()),
    );
    ids.sort();
    ids.dedup();
    let n = ids.len();
    for (id, parents) in &actions {
        let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
        file.push(action(id, &parents));
    }
    for e in extra {
        let at = g.below(file.len() + 1);
        file.insert(at, e);
    }
    (file, n)
}

/// Over generated files, the daemon accepts exactly what Cedar accepts.
#[test]
fn acceptance_equals_cedars_on_generated_files() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = rt.block_on(daemon());
    let schema = schema();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let (accepted, refused, case) = (Cell::new(0), Cell::new(0), Cell::new(0));
    runner
        .run(&any::<u64>(), |seed| {
            case.set(case.get() + 1);
            let probe = format!("probe-{}", case.get());
            let (file, actions) = mutated_file(seed, &probe);
            let cedar_ok =
                Entities::from_json_value(Value::Array(file.clone()), Some(&schema)).is_ok();
            let (status, body) =
                rt.block_on(d.call("PUT", "/v1/entities", Some(&Value::Array(file.clone()))));
            let stored = rt.block_on(d.get("Photo::User", &probe)).is_some();
            if cedar_ok {
                accepted.set(accepted.get() + 1);
                assert_eq!(status, 200, "{file:?}: {body}");
                assert_eq!(body, json!({"upserted": 1, "actions_matched": actions}));
                assert!(stored);
            } else {
                refused.set(refused.get() + 1);
                assert_eq!(status, 400, "Cedar refuses {file:?}, daemon: {body}");
                let text = body["error"]["message"].as_str().unwrap();
                assert!(text.contains("Photo::Action::\""), "{text}");
                assert!(!stored, "a refused write stored its data");
            }
            Ok(())
        })
        .unwrap();
    let (accepted, refused) = (accepted.get(), refused.get());
    eprintln!("action entity files: {accepted} accepted and {refused} refused, as Cedar does");
    assert!(
        accepted >= 10 && refused >= 10,
        "{accepted} accepted, {refused} refused"
    );
}

/// `policyd import` takes the same files: action entities checked, not stored.
#[test]
fn import_accepts_action_entities_and_refuses_contradictions() {
    let policies = policy_dir(&[("schema.cedarschema", SCHEMA), ("p.cedar", POLICIES)]);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("import.db");
    let import = |name: &str, file: Vec<Value>| {
        let path = tmp.path().join(name);
        std::fs::write(&path, Value::Array(file).to_string()).unwrap();
        policyd_command()
            .arg("import")
            .arg("--db")
            .arg(&db)
            .arg("--policies")
            .arg(policies.path())
            .arg(&path)
            .output()
            .unwrap()
    };
    let mut good = data();
    good.extend(ACTIONS.iter().map(|(id, parents)| action(id, parents)));
    let out = import("good.json", good);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 4 entities"),
        "{out:?}"
    );

    let bad = vec![
        json!({"uid": {"type": "Photo::User", "id": "late"}, "attrs": {}, "parents": []}),
        action("edit", &["read"]),
    ];
    let out = import("bad.json", bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json"), "{err}");
    assert!(
        err.contains(r#"entity 1 (Photo::Action::"edit"): it is in action group(s) Photo::Action::"read" here"#),
        "{err}"
    );
}

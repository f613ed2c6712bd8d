//! Differential test of entity slicing: for generated stores and requests, the daemon's decision,
//! reasons and errors equal Cedar's `Authorizer` run in-process over the whole store. The
//! worlds cover the bundled platform, deep hierarchies, attribute chains deeper than 16 and
//! policies that dereference entity literals (reachable mode, see `differential/chains.rs`).

#[path = "differential/chains.rs"]
mod chains;
mod common;

use std::path::Path;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, Request};
use common::{Daemon, Setup, policy_dir, repo_policies};
use policyd::policy::{PolicySnapshot, load_dir};
use proptest::prelude::{Rng, any};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Value, json};

/// A generated world: entities and the requests to ask about them.
struct World {
    entities: Vec<Value>,
    requests: Vec<Value>,
}

struct Gen(TestRng);

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Gen(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
    }
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.0.next_u64() % 100 < percent
    }
    fn pick<'a>(&mut self, items: &'a [String]) -> &'a str {
        &items[self.below(items.len())]
    }
    fn subset(&mut self, items: &[String], percent: u64) -> Vec<String> {
        items
            .iter()
            .filter(|_| self.chance(percent))
            .cloned()
            .collect()
    }
}

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

fn eref(ty: &str, id: &str) -> Value {
    json!({"__entity": {"type": ty, "id": id}})
}

/// The ML platform: organizations, users, projects and content, with some inconsistent and
/// dangling references thrown in.
fn platform_world(seed: u64) -> World {
    let mut g = Gen::new(seed);
    let orgs: Vec<String> = (0..1 + g.below(3)).map(|i| format!("o{i}")).collect();
    let users: Vec<String> = (0..3 + g.below(6)).map(|i| format!("u{i}")).collect();
    let projects: Vec<String> = (0..2 + g.below(5)).map(|i| format!("p{i}")).collect();
    let mut users_and_ghost = users.clone();
    users_and_ghost.push("ghost".to_owned());
    let mut entities = Vec::new();
    for o in &orgs {
        let admins: Vec<Value> = g
            .subset(&users_and_ghost, 30)
            .iter()
            .map(|u| eref("User", u))
            .collect();
        entities.push(
            json!({"uid": uid("Organization", o), "attrs": {"admins": admins}, "parents": []}),
        );
    }
    for u in &users {
        let parents = if g.chance(85) {
            vec![uid("Organization", g.pick(&orgs))]
        } else {
            vec![]
        };
        entities.push(json!({"uid": uid("User", u), "attrs": {}, "parents": parents}));
    }
    let mut project_of = Vec::new();
    for p in &projects {
        let parent = g.pick(&orgs).to_owned();
        let org_attr = if g.chance(90) {
            parent.clone()
        } else {
            g.pick(&orgs).to_owned()
        };
        let vis = ["private", "public", "shared", "unlisted"][g.below(4)];
        let members: Vec<Value> = g
            .subset(&users_and_ghost, 40)
            .iter()
            .map(|u| eref("User", u))
            .collect();
        entities.push(json!({
            "uid": uid("Project", p),
            "attrs": {"org": eref("Organization", &org_attr), "owner": eref("User", g.pick(&users_and_ghost)),
                      "visibility": vis, "members": members},
            "parents": [uid("Organization", &parent)],
        }));
        project_of.push(p.clone());
    }
    let mut content = Vec::new();
    for i in 0..3 + g.below(8) {
        let ty = ["Dataset", "Run", "Model"][g.below(3)];
        let id = format!("c{i}");
        let parent = g.pick(&project_of).to_owned();
        let attr = if g.chance(90) {
            parent.clone()
        } else {
            g.pick(&project_of).to_owned()
        };
        entities.push(json!({
            "uid": uid(ty, &id),
            "attrs": {"project": eref("Project", &attr), "owner": eref("User", g.pick(&users_and_ghost)),
                      "size_bytes": g.below(1_000_000)},
            "parents": [uid("Project", &parent)],
        }));
        content.push((ty, id));
    }
    let mut requests = Vec::new();
    for _ in 0..60 {
        let principal = g.pick(&users_and_ghost).to_owned();
        let (ty, id, actions): (&str, String, &[&str]) = match g.below(4) {
            0 => (
                "Organization",
                g.pick(&orgs).to_owned(),
                &[
                    "view_storage",
                    "view_activity",
                    "manage_users",
                    "create_project",
                ],
            ),
            1 => (
                "Project",
                g.pick(&projects).to_owned(),
                &[
                    "view",
                    "edit",
                    "delete",
                    "share",
                    "add_content",
                    "view_storage",
                ],
            ),
            _ => {
                let (ty, id) = content[g.below(content.len())].clone();
                let actions: &[&str] = if ty == "Dataset" {
                    &["view", "edit", "delete", "duplicate"]
                } else {
                    &["view", "edit", "delete"]
                };
                (ty, id, actions)
            }
        };
        let action = actions[g.below(actions.len())];
        requests.push(json!({"principal": uid("User", &principal), "action": uid("Action", action), "resource": uid(ty, &id)}));
    }
    World { entities, requests }
}

const DEEP_SCHEMA: &str = r#"
entity Group in [Group] { lead?: User };
entity User in [Group] { boss?: User, team?: Group, clearance: Long };
entity Folder in [Folder] { owner: User };
entity Doc in [Folder] { owner: User, folder: Folder, reviewers: Set<User> };
action read appliesTo { principal: User, resource: Doc, context: { delegate?: User } };
action write appliesTo { principal: User, resource: [Doc, Folder] };
"#;

/// Long attribute chains, context references, and deep group and folder hierarchies.
const DEEP_POLICIES: &str = r#"
@id("chain")
permit (principal, action == Action::"read", resource is Doc)
when {
  resource.folder.owner has boss &&
  resource.folder.owner.boss has team &&
  principal in resource.folder.owner.boss.team
};

@id("group")
permit (principal, action, resource) when { principal in Group::"g0" };

@id("delegate")
permit (principal, action == Action::"read", resource is Doc)
when { context has delegate && context.delegate has boss && context.delegate.boss == resource.owner };

@id("reviewer")
permit (principal, action == Action::"read", resource is Doc)
when { resource.reviewers.contains(principal) && resource in Folder::"f0" };

@id("lead")
permit (principal, action == Action::"write", resource is Folder)
when { resource.owner has team && resource.owner.team has lead && resource.owner.team.lead == principal };

@id("clearance")
forbid (principal, action == Action::"write", resource)
when { principal.clearance < 2 };

@id("scoped")
permit (
  principal is User in Group::"g1",
  action in [Action::"read", Action::"write"],
  resource is Doc in Folder::"f1"
)
when { resource.reviewers.contains(principal) };

@id("boss-clearance")
forbid (principal, action == Action::"read", resource is Doc)
when { resource.owner has boss && resource.owner.boss.clearance > 8 && !(principal in resource.folder) };
"#;

fn deep_world(seed: u64) -> World {
    let mut g = Gen::new(seed);
    let groups: Vec<String> = (0..4 + g.below(10)).map(|i| format!("g{i}")).collect();
    let users: Vec<String> = (0..3 + g.below(6)).map(|i| format!("u{i}")).collect();
    let folders: Vec<String> = (0..3 + g.below(8)).map(|i| format!("f{i}")).collect();
    let mut users_and_ghost = users.clone();
    users_and_ghost.push("ghost".to_owned());
    let mut entities = Vec::new();
    // Groups and folders point at earlier ones: a DAG (the store refuses cycles).
    for (i, grp) in groups.iter().enumerate() {
        let parents: Vec<Value> = if i == 0 {
            vec![]
        } else {
            (0..g.below(3))
                .map(|_| uid("Group", &groups[g.below(i)]))
                .collect()
        };
        let mut attrs = json!({});
        if g.chance(60) {
            attrs["lead"] = eref("User", g.pick(&users_and_ghost));
        }
        entities.push(json!({"uid": uid("Group", grp), "attrs": attrs, "parents": parents}));
    }
    for u in &users {
        let parents: Vec<Value> = g
            .subset(&groups, 20)
            .iter()
            .map(|x| uid("Group", x))
            .collect();
        let mut attrs = json!({"clearance": g.below(11)});
        if g.chance(70) {
            attrs["boss"] = eref("User", g.pick(&users_and_ghost));
        }
        if g.chance(70) {
            attrs["team"] = eref("Group", g.pick(&groups));
        }
        entities.push(json!({"uid": uid("User", u), "attrs": attrs, "parents": parents}));
    }
    for (i, f) in folders.iter().enumerate() {
        let parents: Vec<Value> = if i > 0 && g.chance(85) {
            vec![uid("Folder", &folders[g.below(i)])]
        } else {
            vec![]
        };
        entities.push(json!({"uid": uid("Folder", f), "attrs": {"owner": eref("User", g.pick(&users_and_ghost))}, "parents": parents}));
    }
    let docs: Vec<String> = (0..3 + g.below(6)).map(|i| format!("d{i}")).collect();
    for d in &docs {
        let folder = g.pick(&folders).to_owned();
        let parent = if g.chance(85) {
            folder.clone()
        } else {
            g.pick(&folders).to_owned()
        };
        let reviewers: Vec<Value> = g
            .subset(&users_and_ghost, 30)
            .iter()
            .map(|u| eref("User", u))
            .collect();
        entities.push(json!({
            "uid": uid("Doc", d),
            "attrs": {"owner": eref("User", g.pick(&users_and_ghost)), "folder": eref("Folder", &folder), "reviewers": reviewers},
            "parents": [uid("Folder", &parent)],
        }));
    }
    let mut requests = Vec::new();
    for _ in 0..60 {
        let principal = uid("User", g.pick(&users_and_ghost));
        let request = if g.chance(60) {
            let mut r = json!({"principal": principal, "action": uid("Action", "read"), "resource": uid("Doc", g.pick(&docs))});
            if g.chance(60) {
                r["context"] = json!({"delegate": eref("User", g.pick(&users_and_ghost))});
            }
            r
        } else if g.chance(50) {
            json!({"principal": principal, "action": uid("Action", "write"), "resource": uid("Doc", g.pick(&docs))})
        } else {
            json!({"principal": principal, "action": uid("Action", "write"), "resource": uid("Folder", g.pick(&folders))})
        };
        requests.push(request);
    }
    World { entities, requests }
}

/// What Cedar decides over the whole store: (decision, sorted reasons, error count).
fn reference(
    snapshot: &PolicySnapshot,
    all: &Entities,
    request: &Value,
) -> (String, Vec<String>, usize) {
    let parse = |k: &str| EntityUid::from_json(request[k].clone()).unwrap();
    let schema = snapshot.schema.as_ref().unwrap();
    let action = parse("action");
    let context = match request.get("context") {
        Some(c) => Context::from_json_value(c.clone(), Some((schema, &action))).unwrap(),
        None => Context::empty(),
    };
    let req = Request::new(
        parse("principal"),
        action,
        parse("resource"),
        context,
        Some(schema),
    )
    .unwrap();
    let resp = Authorizer::new().is_authorized(&req, &snapshot.policies, all);
    let mut reasons: Vec<String> = resp
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    reasons.sort();
    let decision = format!("{:?}", resp.decision());
    (decision, reasons, resp.diagnostics().errors().count())
}

/// One write of a mutation.
enum Change {
    Put(Value),
    Delete(Value),
}

/// Detaches some entities from their parents and deletes others, each in a write of its own, so
/// their descendants stay cached while their ancestor closures change. Returns the changed world
/// and the writes that make it, then the writes that restore the original.
fn mutate(world: &World, seed: u64) -> (World, Vec<Change>, Vec<Change>) {
    let mut g = Gen::new(seed);
    let (mut entities, mut forward, mut back) = (Vec::new(), Vec::new(), Vec::new());
    for e in &world.entities {
        let has_parents = e["parents"].as_array().is_some_and(|p| !p.is_empty());
        if g.chance(10) {
            forward.push(Change::Delete(e["uid"].clone()));
            back.push(Change::Put(e.clone()));
        } else if has_parents && g.chance(30) {
            let mut detached = e.clone();
            detached["parents"] = json!([]);
            forward.push(Change::Put(detached.clone()));
            back.push(Change::Put(e.clone()));
            entities.push(detached);
        } else {
            entities.push(e.clone());
        }
    }
    let changed = World {
        entities,
        requests: world.requests.clone(),
    };
    (changed, forward, back)
}

async fn apply(d: &Daemon, changes: &[Change]) {
    for change in changes {
        match change {
            Change::Put(e) => d.put(json!([e])).await,
            Change::Delete(uid) => {
                let path = format!(
                    "/v1/entities/{}/{}",
                    uid["type"].as_str().unwrap(),
                    uid["id"].as_str().unwrap()
                );
                let (status, body) = d.call("DELETE", &path, None).await;
                assert_eq!(status, 204, "{path}: {body}");
            }
        }
    }
}

/// Compares the daemon with Cedar on `world`, on a mutation of it (parents detached, entities
/// deleted, one write each), and on the world restored: cached entities and ancestor closures
/// must follow every write.
async fn check(policies: &Path, world: World, seed: u64) -> Result<(), TestCaseError> {
    let d = Daemon::start(Setup {
        policies: policies.to_path_buf(),
        ..Setup::default()
    })
    .await;
    d.put(Value::Array(world.entities.clone())).await;
    compare(&d, policies, &world).await?;
    let (changed, forward, back) = mutate(&world, seed);
    apply(&d, &forward).await;
    compare(&d, policies, &changed).await?;
    apply(&d, &back).await;
    compare(&d, policies, &world).await?;
    d.stop().await;
    Ok(())
}

async fn compare(d: &Daemon, policies: &Path, world: &World) -> Result<(), TestCaseError> {
    let snapshot = load_dir(policies).unwrap();
    let all = Entities::from_json_value(
        Value::Array(world.entities.clone()),
        snapshot.schema.as_ref(),
    )
    .unwrap();
    // Each request twice: cold (decoded from the entities kept in compact form, which the
    // writes put there) and warm (from the entity cache), and as a batch sharing one slice.
    for round in 0..2 {
        let (status, body) = d
            .call(
                "POST",
                "/v1/is_authorized/batch",
                Some(&json!({"requests": world.requests})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        for (i, request) in world.requests.iter().enumerate() {
            let result = &body["results"][i];
            let (decision, reasons) = common::decision_of(result);
            let errors = result["diagnostics"]["errors"].as_array().unwrap().len();
            let want = reference(&snapshot, &all, request);
            if (decision.clone(), reasons.clone(), errors) != want {
                return Err(TestCaseError::fail(format!(
                    "round {round}, {request}: daemon {decision} {reasons:?} ({errors} errors), cedar {want:?}"
                )));
            }
        }
        if round == 0 {
            // Single requests take the same path through their own slice.
            for request in world.requests.iter().take(10) {
                let (_, body) = d.call("POST", "/v1/is_authorized", Some(request)).await;
                let (decision, reasons) = common::decision_of(&body);
                let want = reference(&snapshot, &all, request);
                if (decision.clone(), reasons.clone()) != (want.0.clone(), want.1.clone()) {
                    return Err(TestCaseError::fail(format!(
                        "single {request}: daemon {decision} {reasons:?}, cedar {want:?}"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn run(cases: u32, policies: &Path, world: fn(u64) -> World) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&any::<u64>(), |seed| {
            rt.block_on(check(policies, world(seed), seed.rotate_left(17) ^ 0x5eed))
        })
        .unwrap();
}

#[test]
fn platform_slices_decide_like_the_whole_store() {
    run(32, &repo_policies(), platform_world);
}

#[test]
fn deep_chains_and_hierarchies_decide_like_the_whole_store() {
    let dir = policy_dir(&[
        ("schema.cedarschema", DEEP_SCHEMA),
        ("deep.cedar", DEEP_POLICIES),
    ]);
    assert_eq!(load_dir(dir.path()).unwrap().deref_depth, Some(4));
    run(32, dir.path(), deep_world);
}

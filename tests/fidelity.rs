//! Fidelity: for whole worlds of Cedar files (a schema, policy files, an entities file that
//! lists its action entities, requests) under `tests/fidelity/`, the daemon's answers through
//! HTTP and SQLite equal `cedar_policy::Authorizer` over the same files in memory: decision,
//! reasons and error count, and the same requests refused as invalid. Every entity reads back
//! equal, as a Cedar entity. `generated.rs` does the same over generated stores and requests.
//!
//! Each request is compared on four paths: alone on a daemon whose entity cache holds one
//! entry and keeps nothing in compact form (every decision reads SQLite), in batches on that
//! daemon, alone on a daemon whose entity cache holds one entry over the entities kept in
//! compact form (every decision decodes them from there), and in batches on a daemon with the
//! usual caches, cold then warm.

mod common;
#[path = "fidelity/generated.rs"]
mod generated;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityUid, PolicyId, PolicySet, Request, Schema,
};
use common::{Daemon, Setup};
use serde_json::{Value, json};

/// Cedar's answer: decision, sorted reasons, number of errors.
type Answer = (String, Vec<String>, usize);

/// One world, read from its directory as Cedar would read it.
pub struct World {
    pub dir: PathBuf,
    pub schema: Option<Schema>,
    pub policies: PolicySet,
    pub entities_json: Vec<Value>,
    pub entities: Entities,
}

impl World {
    /// Reads the schema and policies of `dir` (every policy carries an `@id`, policyd's id for
    /// it) and the entities in `entities`.
    pub fn new(dir: &Path, entities_json: Vec<Value>) -> World {
        let mut schema = None;
        let mut policies = PolicySet::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            match path.extension().and_then(|e| e.to_str()) {
                Some("cedarschema") => {
                    schema = Some(Schema::from_cedarschema_str(&text).unwrap().0)
                }
                Some("cedar") => {
                    for p in PolicySet::from_str(&text).unwrap().policies() {
                        let id = p.annotation("id").expect("fixture policies carry @id");
                        policies.add(p.new_id(PolicyId::new(id))).unwrap();
                    }
                }
                _ => {}
            }
        }
        // The file must be one that Cedar itself accepts.
        let entities =
            Entities::from_json_value(Value::Array(entities_json.clone()), schema.as_ref())
                .unwrap_or_else(|e| panic!("{}: Cedar refuses the entities: {e}", dir.display()));
        World {
            dir: dir.to_path_buf(),
            schema,
            policies,
            entities_json,
            entities,
        }
    }

    /// Cedar's answer, or `None` when Cedar refuses to build the request.
    pub fn cedar(&self, request: &Value) -> Option<Answer> {
        let uid = |k: &str| EntityUid::from_json(request.get(k)?.clone()).ok();
        let (p, a, r) = (uid("principal")?, uid("action")?, uid("resource")?);
        let schema = self.schema.as_ref();
        let context = match request.get("context") {
            None | Some(Value::Null) => Context::empty(),
            Some(c) => Context::from_json_value(c.clone(), schema.map(|s| (s, &a))).ok()?,
        };
        let request = Request::new(p, a, r, context, schema).ok()?;
        let response = Authorizer::new().is_authorized(&request, &self.policies, &self.entities);
        let mut reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        reasons.sort();
        let decision = format!("{:?}", response.decision());
        Some((decision, reasons, response.diagnostics().errors().count()))
    }
}

/// A daemon's answer in an `is_authorized` result.
fn answer(body: &Value) -> Answer {
    let (decision, reasons) = common::decision_of(body);
    let errors = body["diagnostics"]["errors"].as_array().map_or(0, Vec::len);
    (decision, reasons, errors)
}

/// Starts a daemon on the world's policies, with these cache sizes, and writes its entities
/// file, whole.
pub async fn load(world: &World, entity_cache: u64, compact_cache: u64) -> Daemon {
    let d = Daemon::start(Setup {
        policies: world.dir.clone(),
        entity_cache,
        compact_cache,
        ..Setup::default()
    })
    .await;
    let file = Value::Array(world.entities_json.clone());
    let (status, body) = d.call("PUT", "/v1/entities", Some(&file)).await;
    assert_eq!(status, 200, "{}: {body}", world.dir.display());
    let uids: BTreeSet<EntityUid> = world
        .entities_json
        .iter()
        .map(|e| EntityUid::from_json(e["uid"].clone()).unwrap())
        .collect();
    let actions = uids
        .iter()
        .filter(|u| world.schema.is_some() && u.type_name().basename() == "Action")
        .count();
    assert_eq!(
        body,
        json!({"upserted": uids.len() - actions, "actions_matched": actions})
    );
    d
}

/// Every entity of the file reads back equal, as a Cedar entity: data as written, actions as
/// the schema declares them (which is what Cedar's view of the file holds). Returns how many.
pub async fn read_back(d: &Daemon, world: &World) -> usize {
    for item in &world.entities_json {
        let uid = EntityUid::from_json(item["uid"].clone()).unwrap();
        let ty = uid.type_name().to_string();
        let got = d
            .get(&ty, uid.id().unescaped())
            .await
            .unwrap_or_else(|| panic!("{uid} is not read back"));
        let got = Entity::from_json_value(got, world.schema.as_ref()).unwrap();
        let schema_action = world.schema.is_some() && uid.type_name().basename() == "Action";
        let want = if schema_action {
            world.entities.get(&uid).unwrap().clone()
        } else {
            Entity::from_json_value(item.clone(), world.schema.as_ref()).unwrap()
        };
        let (got, want): (
            &cedar_policy_core::ast::Entity,
            &cedar_policy_core::ast::Entity,
        ) = (got.as_ref(), want.as_ref());
        assert!(got.deep_eq(want), "{uid}: read back {got:?}, want {want:?}");
    }
    world.entities_json.len()
}

/// Compares every request on every path; returns how many comparisons were made.
pub async fn compare(world: &World, requests: &[Value]) -> usize {
    let name = world.dir.display().to_string();
    let want: Vec<Option<Answer>> = requests.iter().map(|r| world.cedar(r)).collect();
    let valid: Vec<usize> = (0..requests.len()).filter(|i| want[*i].is_some()).collect();
    let mut compared = 0;

    let sqlite = load(world, 1, 0).await;
    read_back(&sqlite, world).await;
    compared += singles(&sqlite, &name, requests, &want).await;
    compared += batches(&sqlite, world, requests, &valid, &want).await;
    let (_, status) = sqlite.call("GET", "/v1/policies", None).await;
    assert_eq!(status["entity_cache"]["compact"]["hits"], 0, "{name}");
    sqlite.stop().await;

    let compact = load(world, 1, 16 << 20).await;
    compared += singles(&compact, &name, requests, &want).await;
    let (_, status) = compact.call("GET", "/v1/policies", None).await;
    let compact_hits = &status["entity_cache"]["compact"]["hits"];
    let stored = world.entities_json.len();
    // Every entity is kept compactly (action entities are not stored), and decisions read
    // them from there.
    assert!(
        stored == 0 || compact_hits.as_u64() > Some(0),
        "{name}: {status}"
    );
    compact.stop().await;

    let cached = load(world, 16 << 20, 16 << 20).await;
    for _round in 0..2 {
        compared += batches(&cached, world, requests, &valid, &want).await;
    }
    cached.stop().await;
    compared
}

/// Each request alone, compared with Cedar's answer (`None`: Cedar refuses it).
async fn singles(d: &Daemon, name: &str, requests: &[Value], want: &[Option<Answer>]) -> usize {
    for (request, want) in requests.iter().zip(want) {
        let (status, body) = d.call("POST", "/v1/is_authorized", Some(request)).await;
        match want {
            Some(want) => {
                assert_eq!(status, 200, "{name}: {request}: {body}");
                assert_eq!(&answer(&body), want, "{name}: single {request}");
            }
            None => {
                assert_eq!(
                    status, 400,
                    "{name}: Cedar refuses {request}, daemon: {body}"
                );
            }
        }
    }
    requests.len()
}

async fn batches(
    d: &Daemon,
    world: &World,
    requests: &[Value],
    valid: &[usize],
    want: &[Option<Answer>],
) -> usize {
    for chunk in valid.chunks(100) {
        let batch: Vec<&Value> = chunk.iter().map(|i| &requests[*i]).collect();
        let (status, body) = d
            .call(
                "POST",
                "/v1/is_authorized/batch",
                Some(&json!({"requests": batch})),
            )
            .await;
        assert_eq!(status, 200, "{}: {body}", world.dir.display());
        for (k, i) in chunk.iter().enumerate() {
            assert_eq!(
                Some(answer(&body["results"][k])),
                want[*i],
                "{}: batch {}",
                world.dir.display(),
                requests[*i]
            );
        }
    }
    valid.len()
}

/// The requests of a world's `requests.json`: the listed ones, then each matrix expanded to
/// every (principal, action, resource, context) of its types, plus an absent entity per type.
fn requests(dir: &Path, entities: &[Value]) -> Vec<Value> {
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("requests.json")).unwrap()).unwrap();
    let action_type = spec["action_type"].as_str().unwrap();
    let of_types = |types: &Value| -> Vec<Value> {
        let mut out = Vec::new();
        for ty in types.as_array().unwrap() {
            out.extend(
                entities
                    .iter()
                    .filter(|e| &e["uid"]["type"] == ty)
                    .map(|e| e["uid"].clone()),
            );
            out.push(json!({"type": ty, "id": "ghost"}));
        }
        out
    };
    let mut out: Vec<Value> = spec["requests"].as_array().unwrap().clone();
    for m in spec["matrix"].as_array().unwrap() {
        for principal in of_types(&m["principals"]) {
            for action in m["actions"].as_array().unwrap() {
                for resource in of_types(&m["resources"]) {
                    for context in m["contexts"].as_array().unwrap() {
                        out.push(json!({
                            "principal": principal,
                            "action": {"type": action_type, "id": action},
                            "resource": resource,
                            "context": context,
                        }));
                    }
                }
            }
        }
    }
    out
}

/// Says how many requests were compared, past the test harness's capture so that every run
/// shows it.
pub fn report(line: &str) {
    println!("{line}");
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_worlds_decide_like_cedar() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fidelity");
    let mut total = 0;
    let mut distinct = 0;
    for (name, mode) in [
        ("photos", "bounded"),
        ("documents", "reachable"),
        ("extensions", "bounded"),
        ("schemaless", "bounded"),
    ] {
        let dir = root.join(name);
        let entities: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("entities.json")).unwrap())
                .unwrap();
        let world = World::new(&dir, entities.clone());
        let requests = requests(&dir, &entities);
        let refused = requests.iter().filter(|r| world.cedar(r).is_none()).count();
        assert!(
            refused * 10 < requests.len(),
            "{name}: {refused} invalid requests"
        );

        let d = load(&world, 16 << 20, 16 << 20).await;
        let (_, status) = d.call("GET", "/v1/policies", None).await;
        assert_eq!(status["slicing"]["mode"], mode, "{name}: {status}");
        d.stop().await;

        let compared = compare(&world, &requests).await;
        report(&format!(
            "fidelity: {name}: {} requests ({refused} refused as invalid by both), {compared} comparisons with Cedar, {} entities read back, slicing {}",
            requests.len(),
            entities.len(),
            status["slicing"]
        ));
        distinct += requests.len();
        total += compared;
    }
    report(&format!(
        "fidelity: hand-written worlds: {distinct} requests, {total} comparisons with Cedar, all equal"
    ));
    assert!(distinct >= 2000, "{distinct} requests");
}

#[test]
fn generated_worlds_decide_like_cedar() {
    generated::run(12);
}

//! Differential property test of permission search: over generated platforms (every
//! visibility, memberships, owners, principals of other organizations and without one), every
//! resource, subject and action search answer, page by page, equals what plain
//! `cedar_policy::Authorizer` decides for every stored candidate over the whole store. Policies
//! are reloaded between pages: each page must be exact for the snapshot it was served with.
//! Then the same comparison is shown to FAIL when the candidate query is made narrower than the
//! residuals (the test-only hook `search::NARROW_FOR_TEST`).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use cedar_policy::{Authorizer, Context, Entities, EntityTypeName, EntityUid, Request};
use policyd::policy::{PolicySnapshot, load_dir};
use policyd::search::{self, SearchQuery, Side};
use policyd::store::sqlite::SqliteStore;
use policyd::store::{Store, codec};
use proptest::prelude::*;
use serde_json::{Value, json};

/// The narrowing hook is process-wide: the tests take turns.
static HOOK: Mutex<()> = Mutex::new(());

const ACTIONS: &[&str] = &[
    "view",
    "edit",
    "delete",
    "duplicate",
    "share",
    "view_storage",
];
const TYPES: &[&str] = &["Dataset", "Project", "Run", "Organization"];

fn snapshot(extra: Option<&str>, drop_public: bool) -> PolicySnapshot {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&repo).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && !(drop_public && path.ends_with("public.cedar")) {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    if let Some(text) = extra {
        std::fs::write(dir.path().join("extra.cedar"), text).unwrap();
    }
    load_dir(dir.path()).unwrap()
}

/// The snapshots pages alternate between: the bundled policies; without the public rules; and
/// with rules whose residuals narrow by conjunction, condition and set membership, and rules no
/// residual translation narrows (a string comparison, a negation).
fn snapshots() -> Vec<PolicySnapshot> {
    vec![
        snapshot(None, false),
        snapshot(None, true),
        snapshot(
            Some(
                r#"permit (principal, action == Action::"view", resource)
                   when { resource has name && resource.name like "open*" };
                   permit (principal, action == Action::"edit", resource is Project)
                   when { resource.members.contains(principal) && principal in resource.org };
                   permit (principal, action == Action::"share", resource is Project)
                   when {
                     if resource.visibility == "shared"
                     then resource.members.containsAny([principal])
                     else resource.org.admins.contains(principal)
                   };
                   permit (principal, action == Action::"view_storage", resource)
                   when { resource in principal || !(principal in resource) };"#,
            ),
            false,
        ),
    ]
}

/// A generated platform: `orgs` organizations; per org users, projects (visibility, owner,
/// members from any organization), and items; some users belong to no organization.
#[derive(Debug, Clone)]
struct World {
    entities: Vec<Value>,
}

fn eref(ty: &str, id: &str) -> Value {
    json!({"__entity": {"type": ty, "id": id}})
}

fn world() -> impl Strategy<Value = World> {
    (1usize..=2, 1usize..=3, 1usize..=3, 0usize..=3, any::<u64>()).prop_map(
        |(orgs, users, projects, items, seed)| {
            let mut rng = policyd::synth::Rng::new(seed);
            let mut out = Vec::new();
            let user = |o: usize, u: usize| format!("u{o}-{u}");
            let any_user = |rng: &mut policyd::synth::Rng| {
                // Mostly of the same org; sometimes another org's, or an org-less one.
                (rng.below(orgs + 1), rng.below(users))
            };
            out.push(json!({"uid": {"type": "User", "id": "drifter"}, "attrs": {}, "parents": []}));
            for o in 0..orgs {
                let org = format!("org{o}");
                out.push(json!({"uid": {"type": "Organization", "id": org},
                    "attrs": {"admins": [eref("User", &user(o, rng.below(users)))]}, "parents": []}));
                for u in 0..users {
                    out.push(json!({"uid": {"type": "User", "id": user(o, u)}, "attrs": {},
                        "parents": [{"type": "Organization", "id": org}]}));
                }
                for p in 0..projects {
                    let project = format!("p{o}-{p}");
                    let (oo, ou) = any_user(&mut rng);
                    let owner = if oo == orgs { "drifter".to_owned() } else { user(oo, ou) };
                    let members: Vec<Value> = (0..rng.below(3))
                        .map(|_| {
                            let (mo, mu) = any_user(&mut rng);
                            eref("User", &user(mo.min(orgs - 1), mu))
                        })
                        .collect();
                    let visibility = ["private", "public", "shared"][rng.below(3)];
                    let mut attrs = json!({"org": eref("Organization", &org), "owner": eref("User", &owner),
                        "visibility": visibility, "members": members});
                    if rng.below(3) == 0 {
                        attrs["name"] = json!("open project");
                    }
                    out.push(json!({"uid": {"type": "Project", "id": project}, "attrs": attrs,
                        "parents": [{"type": "Organization", "id": org}]}));
                    for i in 0..items {
                        let ty = ["Dataset", "Run", "Model"][rng.below(3)];
                        let (io, iu) = any_user(&mut rng);
                        let owner = user(io.min(orgs - 1), iu);
                        let mut attrs = json!({"project": eref("Project", &project),
                            "owner": eref("User", &owner), "size_bytes": 1});
                        if rng.below(3) == 0 {
                            attrs["name"] = json!("open data");
                        }
                        out.push(json!({"uid": {"type": ty, "id": format!("i{o}-{p}-{i}")},
                            "attrs": attrs, "parents": [{"type": "Project", "id": project}]}));
                    }
                }
            }
            World { entities: out }
        },
    )
}

struct Loaded {
    _dir: tempfile::TempDir,
    store: Store,
    uids: Vec<EntityUid>,
}

fn load(world: &World, snapshot: &PolicySnapshot) -> Loaded {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(
        Box::new(SqliteStore::open(&dir.path().join("s.db")).unwrap()),
        1 << 20,
        1 << 20,
    );
    let records = codec::parse_batch(
        Value::Array(world.entities.clone()),
        snapshot.schema.as_ref(),
    )
    .unwrap();
    store.upsert(&records).unwrap();
    let uids = records.into_iter().map(|r| r.uid).collect();
    Loaded {
        _dir: dir,
        store,
        uids,
    }
}

/// Plain Cedar over the whole store: the oracle.
fn allowed(
    snapshot: &PolicySnapshot,
    all: &Entities,
    p: &EntityUid,
    a: &EntityUid,
    r: &EntityUid,
) -> bool {
    let schema = snapshot.schema.as_ref().unwrap();
    let Ok(req) = Request::new(
        p.clone(),
        a.clone(),
        r.clone(),
        Context::empty(),
        Some(schema),
    ) else {
        return false;
    };
    Authorizer::new()
        .is_authorized(&req, &snapshot.policies, all)
        .decision()
        == cedar_policy::Decision::Allow
}

fn whole_store(world: &World, snapshot: &PolicySnapshot) -> Entities {
    Entities::from_json_value(
        Value::Array(world.entities.clone()),
        snapshot.schema.as_ref(),
    )
    .unwrap()
}

fn action(name: &str) -> EntityUid {
    format!("Action::\"{name}\"").parse().unwrap()
}

/// Pages through one search with `limit`, switching snapshots between pages; checks each page
/// against the oracle of its snapshot. Returns the first mismatch.
fn check_search(
    loaded: &Loaded,
    snaps: &[(PolicySnapshot, Entities)],
    query: &SearchQuery,
    limit: usize,
    start: usize,
) -> Result<(), String> {
    let mut after: Option<String> = None;
    for page_no in 0.. {
        let (snapshot, all) = &snaps[(start + page_no) % snaps.len()];
        let page = search::search(
            &loaded.store,
            snapshot,
            query,
            after.as_deref(),
            limit,
            None,
        )
        .map_err(|e| e.to_string())?;
        let expected: Vec<EntityUid> = {
            let mut ids: Vec<&EntityUid> = loaded
                .uids
                .iter()
                .filter(|u| u.type_name() == &query.ty)
                .filter(|u| after.as_deref().is_none_or(|a| u.id().unescaped() > a))
                .collect();
            ids.sort_by(|a, b| a.id().unescaped().cmp(b.id().unescaped()));
            ids.into_iter()
                .filter(|u| match query.side {
                    Side::Resource => allowed(snapshot, all, &query.known, &query.action, u),
                    Side::Subject => allowed(snapshot, all, u, &query.action, &query.known),
                })
                .cloned()
                .collect()
        };
        let want: Vec<EntityUid> = expected.iter().take(limit).cloned().collect();
        if page.items != want || page.more != (expected.len() > limit) {
            return Err(format!(
                "{query:?} page {page_no} after {after:?} (snapshot {}): got {:?} more={}, want {:?} of {}",
                (start + page_no) % snaps.len(),
                page.items
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                page.more,
                want.iter().map(ToString::to_string).collect::<Vec<_>>(),
                expected.len(),
            ));
        }
        if !page.more {
            return Ok(());
        }
        after = page.items.last().map(|u| u.id().unescaped().to_owned());
    }
    Ok(())
}

/// Every resource, subject and action search of a world; the first mismatch.
fn check_world(
    world: &World,
    snaps: &[(PolicySnapshot, Entities)],
    limit: usize,
) -> Result<(), String> {
    let loaded = load(world, &snaps[0].0);
    let of_type = |ty: &str| -> Vec<EntityUid> {
        loaded
            .uids
            .iter()
            .filter(|u| u.type_name().to_string() == ty)
            .cloned()
            .collect()
    };
    let users = of_type("User");
    for (n, a) in ACTIONS.iter().enumerate() {
        let a = action(a);
        for ty in TYPES {
            let ty: EntityTypeName = ty.parse().unwrap();
            for u in &users {
                let q = SearchQuery {
                    side: Side::Resource,
                    known: u.clone(),
                    action: a.clone(),
                    ty: ty.clone(),
                    context: None,
                };
                check_search(&loaded, snaps, &q, limit, n)?;
            }
            for r in of_type(&ty.to_string()) {
                let q = SearchQuery {
                    side: Side::Subject,
                    known: r,
                    action: a.clone(),
                    ty: "User".parse().unwrap(),
                    context: None,
                };
                check_search(&loaded, snaps, &q, limit, n + 1)?;
            }
        }
    }
    // Action search: every schema action, each decided by plain Cedar.
    let (snapshot, all) = &snaps[0];
    let schema = snapshot.schema.as_ref().unwrap();
    for u in &users {
        for r in loaded
            .uids
            .iter()
            .filter(|r| r.type_name().to_string() != "User")
        {
            let got =
                search::actions(&loaded.store, snapshot, u, r, None).map_err(|e| e.to_string())?;
            let mut want: Vec<EntityUid> = schema
                .actions()
                .filter(|a| allowed(snapshot, all, u, a, r))
                .cloned()
                .collect();
            want.sort_by_key(ToString::to_string);
            if got != want {
                return Err(format!("actions of {u} on {r}: got {got:?}, want {want:?}"));
            }
        }
    }
    Ok(())
}

fn with_oracles(world: &World, snaps: Vec<PolicySnapshot>) -> Vec<(PolicySnapshot, Entities)> {
    snaps
        .into_iter()
        .map(|s| {
            let all = whole_store(world, &s);
            (s, all)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_search_answer_equals_deciding_every_candidate(w in world(), limit in 1usize..4) {
        let _turn = HOOK.lock().unwrap_or_else(|p| p.into_inner());
        let snaps = with_oracles(&w, snapshots());
        if let Err(mismatch) = check_world(&w, &snaps, limit) {
            prop_assert!(false, "{}", mismatch);
        }
    }
}

/// A fixed world where every kind of access occurs: the comparison holds with the real
/// candidate query, and fails once the candidate query drops one residual's candidates.
#[test]
fn a_candidate_query_narrower_than_the_residuals_is_caught() {
    let _turn = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    // A small synthetic platform: every visibility, owners and members in each org.
    let w = World {
        entities: policyd::synth::entities(
            policyd::synth::Shape {
                orgs: 2,
                users_per_org: 3,
                projects_per_org: 3,
                items_per_project: 3,
            },
            7,
        )
        .collect(),
    };
    let snaps = with_oracles(&w, vec![snapshot(None, false)]);
    check_world(&w, &snaps, 2).expect("exact with the real candidate query");
    search::NARROW_FOR_TEST.store(true, Ordering::Relaxed);
    let narrowed = check_world(&w, &snaps, 2);
    search::NARROW_FOR_TEST.store(false, Ordering::Relaxed);
    let mismatch = narrowed.expect_err("a narrower candidate query must be caught");
    assert!(mismatch.contains("want"), "{mismatch}");
}

/// A selective search does not scan its type: the candidate filter narrows, and the store's
/// candidates are a small part of the type (the principal's organization).
#[test]
fn selective_searches_are_narrowed_by_the_residuals() {
    let shape = policyd::synth::Shape {
        orgs: 6,
        users_per_org: 4,
        projects_per_org: 4,
        items_per_project: 6,
    };
    let w = World {
        entities: policyd::synth::entities(shape, 3).collect(),
    };
    let snapshot = snapshot(None, false);
    let loaded = load(&w, &snapshot);
    let count = |ty: &str| {
        loaded
            .uids
            .iter()
            .filter(|u| u.type_name().to_string() == ty)
            .count()
    };
    let resources = SearchQuery {
        side: Side::Resource,
        known: r#"User::"u2-1""#.parse().unwrap(),
        action: action("view"),
        ty: "Dataset".parse().unwrap(),
        context: None,
    };
    let subjects = SearchQuery {
        side: Side::Subject,
        known: r#"Dataset::"i2-1-0""#.parse().unwrap(),
        action: action("view"),
        ty: "User".parse().unwrap(),
        context: None,
    };
    for (query, ty) in [(&resources, "Dataset"), (&subjects, "User")] {
        let filter = search::candidate_filter(&loaded.store, &snapshot, query);
        assert_ne!(filter, search::Filter::All, "{query:?}");
        let candidates = loaded
            .store
            .candidates(ty, &filter, None, usize::MAX)
            .unwrap();
        assert!(
            !candidates.is_empty() && candidates.len() * 3 <= count(ty),
            "{} of {} {ty} candidates for {query:?}: {filter:?}",
            candidates.len(),
            count(ty)
        );
    }
}

//! `policyd search resources|subjects|actions` over the demo store: the printed table lists
//! exactly what deciding every stored candidate (the library's decision path) allows, and
//! `serve --authzen-base-url` names the AuthZEN endpoints under that URL.

mod common;

use std::path::Path;

use cedar_policy::EntityUid;
use common::{policyd_command, repo_entities, repo_policies};
use policyd::authz;
use policyd::engine;
use policyd::policy::load_dir;
use policyd::store::Store;
use policyd::store::sqlite::SqliteStore;

fn run(args: &[&str]) -> String {
    let out = policyd_command().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The rows of a printed table, header left out, cells split on runs of spaces.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn allowed(db: &Path, p: &EntityUid, a: &str, r: &EntityUid) -> bool {
    let snapshot = load_dir(&repo_policies()).unwrap();
    let store = Store::new(Box::new(SqliteStore::open(db).unwrap()), 1 << 20, 0);
    let action = policyd::uid::from_parts("Action", a).unwrap();
    let Ok(q) = authz::prepare(&snapshot, p.clone(), action, r.clone(), None) else {
        return false;
    };
    engine::decide_blocking(&store, &snapshot, &[q]).unwrap()[0]
        .decision
        .allowed
}

#[test]
fn search_commands_print_what_each_decision_allows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let db_s = db.to_str().unwrap();
    let policies = repo_policies();
    let pol = policies.to_str().unwrap();
    run(&[
        "import",
        "--db",
        db_s,
        "--policies",
        pol,
        repo_entities().join("demo.json").to_str().unwrap(),
    ]);
    let stored = |ty: &str| -> Vec<EntityUid> {
        let store = SqliteStore::open(&db).unwrap();
        let mut out = Vec::new();
        policyd::store::EntityStore::scan(&store, &mut |r| {
            if r.uid.type_name().to_string() == ty {
                out.push(r.uid);
            }
            true
        })
        .unwrap();
        out.sort_by(|a, b| a.id().unescaped().cmp(b.id().unescaped()));
        out
    };
    for user in ["bob", "carol", "eve", "frank"] {
        let p = policyd::uid::from_parts("User", user).unwrap();
        let table = run(&[
            "search",
            "resources",
            "--db",
            db_s,
            "--policies",
            pol,
            "--principal",
            &p.to_string(),
            "--action",
            "view",
            "--type",
            "Dataset",
        ]);
        assert!(table.starts_with("TYPE"), "{table}");
        let want: Vec<Vec<String>> = stored("Dataset")
            .into_iter()
            .filter(|d| allowed(&db, &p, "view", d))
            .map(|d| vec!["Dataset".to_owned(), d.id().unescaped().to_owned()])
            .collect();
        assert_eq!(rows(&table), want, "{user}");
    }
    let mut some = false;
    for d in stored("Dataset") {
        let table = run(&[
            "search",
            "subjects",
            "--db",
            db_s,
            "--policies",
            pol,
            "--resource",
            &d.to_string(),
            "--action",
            "Action::\"view\"",
            "--type",
            "User",
        ]);
        let want: Vec<Vec<String>> = stored("User")
            .into_iter()
            .filter(|u| allowed(&db, u, "view", &d))
            .map(|u| vec!["User".to_owned(), u.id().unescaped().to_owned()])
            .collect();
        some |= !want.is_empty();
        assert_eq!(rows(&table), want, "{d}");
        let bob = policyd::uid::from_parts("User", "bob").unwrap();
        let table = run(&[
            "search",
            "actions",
            "--db",
            db_s,
            "--policies",
            pol,
            "--principal",
            &bob.to_string(),
            "--resource",
            &d.to_string(),
        ]);
        assert!(table.starts_with("ACTION"), "{table}");
        let want: Vec<Vec<String>> = ["delete", "duplicate", "edit", "view"]
            .into_iter()
            .filter(|a| allowed(&db, &bob, a, &d))
            .map(|a| vec![format!("Action::\"{a}\"")])
            .collect();
        assert_eq!(rows(&table), want, "bob on {d}");
    }
    assert!(some, "the demo store lets someone view some dataset");
}

#[test]
fn serve_names_the_authzen_endpoints_under_the_base_url() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = common::spawn_logged(
        policyd_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--watch", "false"])
            .arg("--policies")
            .arg(repo_policies())
            .arg("--db")
            .arg(dir.path().join("p.db"))
            .arg("--entities")
            .arg(dir.path().join("none"))
            .args(["--authzen-base-url", "https://pdp.example.com/"]),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, meta) = rt.block_on(common::Client(addr.parse().unwrap()).call(
        "GET",
        "/.well-known/authzen-configuration",
        vec![],
    ));
    assert_eq!(status, hyper::StatusCode::OK);
    assert_eq!(meta["policy_decision_point"], "https://pdp.example.com");
    assert_eq!(
        meta["search_resource_endpoint"],
        "https://pdp.example.com/access/v1/search/resource"
    );
    let _ = child.kill();
}

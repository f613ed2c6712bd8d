//! The `policyd` binary: `serve` on the bundled demo, `check`, `import`, and signals.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{policy_dir, repo_entities, repo_policies};

fn policyd() -> Command {
    common::policyd_command()
}

/// Starts `serve` on a random port and returns the child and the address it logged.
fn spawn_serve(db: &Path, extra_env: &[(&str, &str)]) -> (common::Spawned, SocketAddr) {
    spawn_serve_with(db, &repo_policies(), &[], extra_env)
}

fn spawn_serve_with(
    db: &Path,
    policies: &Path,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> (common::Spawned, SocketAddr) {
    let mut cmd = policyd();
    cmd.arg("serve")
        .args(args)
        .arg("--db")
        .arg(db)
        .arg("--policies")
        .arg(policies)
        .arg("--entities")
        .arg(repo_entities());
    if !extra_env.iter().any(|(k, _)| *k == "POLICYD_LISTEN") && !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let (child, addr) = common::spawn_logged(&mut cmd);
    // A Unix socket logs `unix:/path`; callers that use it do not need a TCP address.
    let addr = addr
        .parse()
        .unwrap_or_else(|_| "0.0.0.0:0".parse().unwrap());
    (child, addr)
}

/// `policyd import` of one file into `db`, validated by the bundled schema.
fn import(db: &Path, file: &Path) -> std::process::Output {
    policyd()
        .arg("import")
        .arg("--db")
        .arg(db)
        .arg("--policies")
        .arg(repo_policies())
        .arg(file)
        .output()
        .unwrap()
}

fn get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn post(addr: SocketAddr, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "policyd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_seeds_the_demo_answers_and_exits_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("nested/dir/policyd.db");
    let (mut child, addr) = spawn_serve(&db, &[]);
    assert!(get(addr, "/readyz").starts_with("HTTP/1.1 200"));
    let resp = post(
        addr,
        "/v1/is_authorized",
        r#"{"principal": "User::\"carol\"", "action": "Action::\"view\"", "resource": "Dataset::\"speech-audio\""}"#,
    );
    assert!(resp.contains(r#""decision":"Allow""#), "{resp}");
    signal(&child, "TERM");
    assert!(wait(&mut child).success());
    assert!(db.exists());
}

#[test]
fn serve_reads_flags_from_the_environment_and_stops_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("policyd.db");
    let (mut child, addr) = spawn_serve(&db, &[("POLICYD_LISTEN", "127.0.0.1:0")]);
    assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
    signal(&child, "INT");
    assert!(wait(&mut child).success());
}

#[test]
fn serve_refuses_invalid_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = policy_dir(&[(
        "x.cedar",
        "permit(principal, action, resource) when { 1 + };",
    )]);
    let out = policyd()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--policies")
        .arg(bad.path())
        .arg("--db")
        .arg(tmp.path().join("db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("x.cedar:1:"), "{stderr}");
}

#[test]
fn check_reports_each_error_with_file_and_line() {
    let ok = policyd()
        .arg("check")
        .arg("--policies")
        .arg(repo_policies())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok: 17 policies"));

    let schema = std::fs::read_to_string(repo_policies().join("schema.cedarschema")).unwrap();
    let bad = policy_dir(&[
        ("schema.cedarschema", &schema),
        (
            "a.cedar",
            "permit(principal, action == Action::\"view\", resource is Project)\nwhen { resource.colour == \"red\" };",
        ),
        (
            "b.cedar",
            "\npermit(principal, action == Action::\"view\", resource is Dataset)\nwhen { resource.size_bytes == \"big\" };",
        ),
    ]);
    let out = policyd()
        .arg("check")
        .arg("--policies")
        .arg(bad.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("a.cedar:2:"), "{stdout}");
    assert!(stdout.contains("colour"), "{stdout}");
    assert!(stdout.contains("b.cedar:3:"), "{stdout}");
}

#[test]
fn import_writes_valid_files_and_nothing_from_invalid_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("import.db");
    let demo = repo_entities().join("demo.json");
    let out = import(&db, &demo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 24 entities"));

    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"uid": {"type": "User", "id": "new"}, "attrs": {}, "parents": []},
            {"uid": {"type": "User", "id": "broken"}, "attrs": {"name": 1}, "parents": []}]"#,
    )
    .unwrap();
    let out = import(&db, &bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.json") && stderr.contains("User::\"broken\""),
        "{stderr}"
    );

    // The imported store serves as is (not re-seeded), and holds nothing from the bad file.
    let (mut child, addr) = spawn_serve(&db, &[]);
    assert!(get(addr, "/v1/entities/User/bob").starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/v1/entities/User/new").starts_with("HTTP/1.1 404"));
    signal(&child, "TERM");
    assert!(wait(&mut child).success());
}

#[test]
fn sighup_reloads_the_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    common::copy_policy_files(&repo_policies(), &policies);
    let (mut child, addr) = spawn_serve_with(
        &tmp.path().join("db"),
        &policies,
        &["--watch", "false"],
        &[],
    );
    let ask = || {
        post(
            addr,
            "/v1/is_authorized",
            r#"{"principal": "User::\"carol\"", "action": "Action::\"view\"", "resource": "Project::\"speech\""}"#,
        )
    };
    assert!(ask().contains(r#""decision":"Allow""#));
    std::fs::remove_file(policies.join("shared.cedar")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        ask().contains(r#""decision":"Allow""#),
        "not watching: unchanged until SIGHUP"
    );
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ask().contains(r#""decision":"Deny""#) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The reload's own record is written a moment after its snapshot is served.
    while !get(addr, "/v1/policies").contains(r#""trigger":"sighup""#) {
        assert!(
            Instant::now() < deadline,
            "the reload was not recorded as SIGHUP's"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, "TERM");
    assert!(wait(&mut child).success());
}

#[test]
fn storage_prints_totals_for_admins() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let out = import(&db, &repo_entities().join("demo.json"));
    assert!(out.status.success());
    let out = policyd()
        .args(["storage", "--db"])
        .arg(&db)
        .arg("Organization::\"acme\"")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("Organization::\"acme\": 15.5 GiB of 18.6 GiB (83.4%) used"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("PROJECT") && lines[2].contains("% QUOTA"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("Project::\"speech\"") && lines[3].contains("93.4%"),
        "{text}"
    );
    let out = policyd()
        .args(["storage", "--db"])
        .arg(&db)
        .arg("Organization::\"nope\"")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn sigterm_under_load_flushes_every_answered_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("policyd.db");
    let (mut child, addr) = spawn_serve(&db, &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                let body = r#"{"requests": [
                    {"principal": "User::\"dave\"", "action": "Action::\"view\"", "resource": "Project::\"nlp\""},
                    {"principal": "User::\"eve\"", "action": "Action::\"view\"", "resource": "Project::\"nlp\""}]}"#;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Connection refused or reset once the daemon stops: that request was not answered.
                    let Ok(resp) = std::panic::catch_unwind(|| post(addr, "/v1/is_authorized/batch", body)) else { break };
                    let Some(json) = resp.split("\r\n\r\n").nth(1) else { break };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { break };
                    for r in v["results"].as_array().into_iter().flatten() {
                        ids.push(r["decision_id"].as_i64().expect("decision_id"));
                    }
                }
                ids
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    signal(&child, "TERM");
    assert!(wait(&mut child).success());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ids: Vec<i64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(ids.len() > 100, "only {} decisions answered", ids.len());
    let log = rusqlite::Connection::open(tmp.path().join("activity.db")).unwrap();
    let mut missing = 0;
    for id in &ids {
        let n: i64 = log
            .query_row("SELECT count(*) FROM records WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        missing += usize::from(n == 0);
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} answered decisions were not flushed",
        ids.len()
    );
}

#[test]
fn activity_prints_the_trail() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("policyd.db");
    let (mut child, addr) = spawn_serve(&db, &[]);
    let resp = post(
        addr,
        "/v1/is_authorized",
        r#"{"principal": "User::\"carol\"", "action": "Action::\"view\"", "resource": "Dataset::\"speech-audio\""}"#,
    );
    assert!(resp.contains("decision_id"));
    signal(&child, "TERM");
    assert!(wait(&mut child).success());
    let out = policyd()
        .args(["activity", "--org", "acme", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TIME")
            && text.contains("User::\"carol\"")
            && text.contains("shared.content"),
        "{text}"
    );
}

#[cfg(unix)]
#[test]
fn serves_on_a_unix_socket_with_mode_0660() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("policyd.sock");
    let listen = format!("unix:{}", socket.display());
    let (mut child, _) = spawn_serve_with(
        &tmp.path().join("db"),
        &repo_policies(),
        &["--listen", &listen],
        &[],
    );
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    signal(&child, "TERM");
    assert!(wait(&mut child).success());
    assert!(!socket.exists(), "the socket file is removed on exit");
}

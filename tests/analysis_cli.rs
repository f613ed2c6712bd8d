//! `policyd diff` and the lints of `policyd check` as ops run them: exit codes, text and JSON,
//! and every command working without the solver.

mod common;

use std::process::Output;

use common::{cvc5_available, policies_copy, policy_dir, policyd_command, repo_policies};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = policyd_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn diff_exits_0_when_nothing_changed_and_1_when_something_did() {
    if !cvc5_available("diff_exits_0_when_nothing_changed_and_1_when_something_did") {
        return;
    }
    let repo = repo_policies();
    let repo = repo.to_str().unwrap();
    let same = run(&["diff", "--from", repo, "--to", repo], &[]);
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    assert!(stdout(&same).contains("20 equivalent"), "{}", stdout(&same));

    let to = policies_copy();
    std::fs::write(
        to.path().join("careless.cedar"),
        "@id(\"careless\") permit (principal, action == Action::\"view\", resource is Model);",
    )
    .unwrap();
    let to = to.path().to_str().unwrap();
    let text = run(&["diff", "--from", repo, "--to", to], &[]);
    assert_eq!(text.status.code(), Some(1));
    let shown = stdout(&text);
    assert!(
        shown.contains("WIDER: User Action::\"view\" Model"),
        "{shown}"
    );
    assert!(shown.contains("Allow by careless after"), "{shown}");

    let json = run(&["diff", "--from", repo, "--to", to, "--json"], &[]);
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["status"], "complete");
    assert_eq!(report["summary"]["wider"], 1);
    assert_eq!(report["summary"]["environments"], 20);
}

#[test]
fn diff_exits_2_when_it_cannot_analyse() {
    let repo = repo_policies();
    let repo = repo.to_str().unwrap();
    // No solver.
    let out = run(
        &[
            "diff",
            "--from",
            repo,
            "--to",
            repo,
            "--cvc5",
            "/nonexistent/cvc5",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("analysis unavailable: cvc5 not found"));
    // The same through the CVC5 variable, as JSON.
    let out = run(
        &["diff", "--from", repo, "--to", repo, "--json"],
        &[("CVC5", "/nonexistent/cvc5")],
    );
    assert_eq!(out.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "unavailable");
    assert!(report["reason"].as_str().unwrap().contains("CVC5"));
    // Invalid policies on one side.
    let bad = policy_dir(&[(
        "bad.cedar",
        "permit(principal, action, resource) when { 1 + };",
    )]);
    let out = run(
        &["diff", "--from", repo, "--to", bad.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot load --to"), "{err}");
    assert!(err.contains("bad.cedar:1:"), "{err}");
}

#[test]
fn check_warns_about_dead_and_shadowed_policies() {
    if !cvc5_available("check_warns_about_dead_and_shadowed_policies") {
        return;
    }
    let dir = policies_copy();
    std::fs::write(
        dir.path().join("zz.cedar"),
        "\n@id(\"zz.dead\")\npermit (principal, action == Action::\"share\", resource is Project)\n\
         when { 1 > 2 };\n",
    )
    .unwrap();
    let out = run(&["check", "--policies", dir.path().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "lints are warnings");
    let text = stdout(&out);
    assert!(
        text.contains(
            "warning: zz.cedar:2: policy `zz.dead` can never match a valid request (dead)"
        ),
        "{text}"
    );
    let clean = run(
        &["check", "--policies", repo_policies().to_str().unwrap()],
        &[],
    );
    assert!(!stdout(&clean).contains("warning"), "{}", stdout(&clean));
}

#[test]
fn check_runs_without_the_solver() {
    let out = run(
        &["check", "--policies", repo_policies().to_str().unwrap()],
        &[("CVC5", "/nonexistent/cvc5")],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.starts_with("ok: 17 policies"), "{text}");
    assert!(text.contains("lints skipped: cvc5 not found"), "{text}");
}

#[test]
fn serve_runs_without_the_solver() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = policyd_command();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--reload-guard",
        "refuse-widening",
    ])
    .arg("--policies")
    .arg(repo_policies())
    .arg("--db")
    .arg(tmp.path().join("db"))
    .env("CVC5", "/nonexistent/cvc5")
    .env("PATH", "/nonexistent");
    let (_child, addr) = common::spawn_logged(&mut cmd);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /v1/policies HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"guard\":\"refuse-widening\""), "{out}");
}

fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[cfg(unix)]
#[test]
fn sighup_reload_that_widens_is_refused_by_the_binary() {
    if !cvc5_available("sighup_reload_that_widens_is_refused_by_the_binary") {
        return;
    }
    let policies = policies_copy();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = policyd_command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--watch", "false"])
        .args(["--reload-guard", "refuse-widening"])
        .arg("--policies")
        .arg(policies.path())
        .arg("--entities")
        .arg(common::repo_entities())
        .arg("--db")
        .arg(tmp.path().join("db"));
    let (child, addr) = common::spawn_logged(&mut cmd);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let decide = || {
        let (code, body) = http(
            addr,
            "POST",
            "/v1/is_authorized",
            r#"{"principal": "User::\"dave\"", "action": "Action::\"view\"", "resource": "Dataset::\"speech-audio\""}"#,
        );
        assert_eq!(code, 200, "{body}");
        body["decision"].as_str().unwrap().to_owned()
    };
    assert_eq!(decide(), "Deny");
    std::fs::write(
        policies.path().join("careless.cedar"),
        "@id(\"careless\") permit (principal, action == Action::\"view\", resource is Dataset);",
    )
    .unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        let (_, status) = http(addr, "GET", "/v1/policies", "");
        if !status["last_reload"].is_null() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let reload = &status["last_reload"];
    assert_eq!(reload["trigger"], "sighup", "{status}");
    assert_eq!(reload["ok"], false);
    assert_eq!(reload["widening_refused"], true);
    assert_eq!(reload["changes"]["summary"]["widenings"], 1);
    assert_eq!(decide(), "Deny", "the old set stays live");
    let (code, body) = http(
        addr,
        "POST",
        "/v1/policies/reload",
        r#"{"accept_widening": true}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(decide(), "Allow");
}

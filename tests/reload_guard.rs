//! The reload guard on a running daemon: in `warn` mode an edit goes live at once and its
//! analysis follows in `last_reload.changes`; in `refuse-widening` mode a widening edit keeps the
//! old set live until an explicit reload accepts it. A missing, crashing or hanging solver never
//! refuses or delays a reload.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, Setup, cvc5_available, drop_in, policies_copy, repo_entities};
use policyd::config::{AnalysisConfig, ReloadGuard};
use serde_json::{Value, json};

const DAVE: &str = "User::\"dave\"";
const VIEW: &str = "Action::\"view\"";
/// In the shared project `speech`, which dave is not a member of: denied by the bundled set.
const AUDIO: &str = "Dataset::\"speech-audio\"";

const CARELESS: &str = "@id(\"careless.datasets\")\n\
    permit (principal, action == Action::\"view\", resource is Dataset);\n";

async fn daemon(dir: &Path, analysis: AnalysisConfig) -> Daemon {
    Daemon::start(Setup {
        policies: dir.to_path_buf(),
        entities: Some(repo_entities()),
        analysis,
        ..Setup::default()
    })
    .await
}

fn guard(mode: ReloadGuard) -> AnalysisConfig {
    AnalysisConfig {
        guard: mode,
        ..AnalysisConfig::default()
    }
}

/// Polls `GET /v1/policies` until `pred` holds, and returns it.
async fn until(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, status) = d.call("GET", "/v1/policies", None).await;
        if pred(&status) {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never {what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn analysed(status: &Value) -> bool {
    !status["last_reload"]["changes"].is_null()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_applies_the_edit_then_reports_the_widening() {
    if !cvc5_available("warn_applies_the_edit_then_reports_the_widening") {
        return;
    }
    let dir = policies_copy();
    let d = daemon(dir.path(), guard(ReloadGuard::Warn)).await;
    assert_eq!(d.decide(DAVE, VIEW, AUDIO).await.0, "Deny");
    drop_in(dir.path(), "careless.cedar", CARELESS);
    let status = until(&d, "analysed", analysed).await;
    let reload = &status["last_reload"];
    assert_eq!(reload["ok"], true, "{status}");
    assert_eq!(reload["changed"], true);
    let changes = &reload["changes"];
    assert_eq!(changes["status"], "complete", "{changes}");
    assert_eq!(changes["summary"]["widenings"], 1);
    assert_eq!(changes["to_revision"], status["revision"]);
    let wider: Vec<&Value> = changes["environments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["change"] != "equivalent")
        .collect();
    assert_eq!(wider.len(), 1, "{changes}");
    assert_eq!(wider[0]["action"], "Action::\"view\"");
    assert_eq!(wider[0]["resource_type"], "Dataset");
    assert_eq!(
        wider[0]["widening"]["to"]["policies"],
        json!(["careless.datasets"])
    );
    assert_eq!(status["analysis"]["guard"], "warn");
    assert_eq!(status["analysis"]["widenings"], 1);
    assert_eq!(status["analysis"]["completed"], 1);
    assert_eq!(
        d.decide(DAVE, VIEW, AUDIO).await,
        ("Allow".to_owned(), vec!["careless.datasets".to_owned()])
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_widening_keeps_the_old_set_until_accepted() {
    if !cvc5_available("refuse_widening_keeps_the_old_set_until_accepted") {
        return;
    }
    let dir = policies_copy();
    let d = daemon(dir.path(), guard(ReloadGuard::RefuseWidening)).await;
    let (_, before) = d.call("GET", "/v1/policies", None).await;
    drop_in(dir.path(), "careless.cedar", CARELESS);
    let status = until(&d, "refused", |s| s["last_reload"]["ok"] == false).await;
    let reload = &status["last_reload"];
    assert_eq!(reload["widening_refused"], true, "{status}");
    assert_eq!(reload["trigger"], "watch");
    assert_eq!(status["revision"], before["revision"], "the old set stays");
    assert_eq!(reload["changes"]["summary"]["widenings"], 1);
    let message = reload["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("accept_widening"), "{message}");
    assert!(
        message.contains("User Action::\"view\" Dataset"),
        "{message}"
    );
    assert_eq!(d.decide(DAVE, VIEW, AUDIO).await.0, "Deny");
    assert_eq!(status["analysis"]["refused"], 1);

    // A plain API reload is refused too, with the changes.
    let (code, body) = d.call("POST", "/v1/policies/reload", None).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "widening_refused");
    assert_eq!(body["error"]["revision"], before["revision"]);
    assert_eq!(body["error"]["changes"]["summary"]["widenings"], 1);
    assert_eq!(d.decide(DAVE, VIEW, AUDIO).await.0, "Deny");

    // Accepting it on purpose applies it.
    let (code, body) = d
        .call(
            "POST",
            "/v1/policies/reload",
            Some(&json!({"accept_widening": true})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["changed"], true);
    assert_eq!(body["changes"]["summary"]["widenings"], 1);
    assert_eq!(d.decide(DAVE, VIEW, AUDIO).await.0, "Allow");

    // Narrowing is never refused: drop the careless permit again.
    std::fs::remove_file(dir.path().join("careless.cedar")).unwrap();
    // Wait on the reload's own status, not the served revision: the snapshot is swapped a
    // moment before the reload's status is recorded.
    let status = until(&d, "narrowed", |s| {
        s["last_reload"]["revision"] == before["revision"]
    })
    .await;
    assert_eq!(status["revision"], before["revision"]);
    assert_eq!(status["last_reload"]["ok"], true);
    assert_eq!(status["last_reload"]["changes"]["summary"]["narrowings"], 1);
    assert_eq!(d.decide(DAVE, VIEW, AUDIO).await.0, "Deny");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_body_is_checked() {
    let dir = policies_copy();
    let d = daemon(dir.path(), guard(ReloadGuard::Warn)).await;
    let cases: [(&[u8], u16, &str); 4] = [
        (br#"{"accept_widenin": true}"#, 400, "invalid_field"),
        (br#"{"accept_widening": "yes"}"#, 400, "invalid_field"),
        (b"[true]", 400, "bad_json"),
        (b"{", 400, "bad_json"),
    ];
    for (body, status, code) in cases {
        let (got, answer) = d.raw("POST", "/v1/policies/reload", body.to_vec()).await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    for body in [&b""[..], br#"{}"#, br#"{"accept_widening": false}"#] {
        let (got, answer) = d.raw("POST", "/v1/policies/reload", body.to_vec()).await;
        assert_eq!(got, 200, "{answer}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_solver_refuse_widening_still_applies_and_says_why() {
    let dir = policies_copy();
    let d = daemon(
        dir.path(),
        AnalysisConfig {
            guard: ReloadGuard::RefuseWidening,
            cvc5: Some("/nonexistent/cvc5".into()),
            ..AnalysisConfig::default()
        },
    )
    .await;
    drop_in(dir.path(), "careless.cedar", CARELESS);
    let status = until(&d, "reloaded", analysed).await;
    let reload = &status["last_reload"];
    assert_eq!(reload["ok"], true, "{status}");
    assert_eq!(reload["changes"]["status"], "unavailable");
    let reason = reload["changes"]["reason"].as_str().unwrap();
    assert!(reason.contains("cvc5 not found"), "{reason}");
    assert_eq!(status["analysis"]["unavailable"], 1);
    assert_eq!(d.decide(DAVE, VIEW, AUDIO).await.0, "Allow");
    d.stop().await;
}

/// A solver that never answers: `warn` applies the edit at once, and the analysis reports
/// "unavailable" at the time limit.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_solver_never_delays_a_reload() {
    use std::os::unix::fs::PermissionsExt;
    let dir = policies_copy();
    let bin = tempfile::tempdir().unwrap();
    let solver = bin.path().join("cvc5");
    std::fs::write(&solver, "#!/bin/sh\nsleep 30\n").unwrap();
    std::fs::set_permissions(&solver, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = daemon(
        dir.path(),
        AnalysisConfig {
            guard: ReloadGuard::Warn,
            timeout: Duration::from_secs(2),
            cvc5: Some(solver),
        },
    )
    .await;
    drop_in(dir.path(), "careless.cedar", CARELESS);
    let start = Instant::now();
    loop {
        if d.decide(DAVE, VIEW, AUDIO).await.0 == "Allow" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let live_after = start.elapsed();
    let (_, pending) = d.call("GET", "/v1/policies", None).await;
    assert!(
        pending["last_reload"]["changes"].is_null(),
        "still pending: {pending}"
    );
    assert!(live_after < Duration::from_secs(2), "{live_after:?}");
    let status = until(&d, "timed out", analysed).await;
    let changes = &status["last_reload"]["changes"];
    assert_eq!(changes["status"], "unavailable");
    assert!(
        changes["reason"]
            .as_str()
            .unwrap()
            .contains("did not finish"),
        "{changes}"
    );
    d.stop().await;
}

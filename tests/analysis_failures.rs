//! Policy change analysis when it cannot run: a solver that is missing, crashes or hangs, a
//! policy set without a schema, a daemon stopping. Each makes the report "unavailable" with a
//! reason, in bounded time, and never panics. None of these needs the real cvc5.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{policies_copy, policy_dir};
use policyd::analysis::{self, Options, Status};
use policyd::policy::{PolicySnapshot, load_dir};

fn load(dir: &Path) -> PolicySnapshot {
    load_dir(dir).unwrap_or_else(|e| panic!("{:?}", e.errors()))
}

#[test]
fn no_schema_means_no_analysis() {
    let dir = policy_dir(&[("a.cedar", "permit(principal, action, resource);")]);
    let snap = load(dir.path());
    let report = analysis::diff(&snap, &snap, &Options::default());
    assert_eq!(report.status, Status::Unavailable);
    let reason = report.reason.unwrap();
    // Without cvc5 the solver is what is missing; with it, the schema.
    assert!(
        reason.contains("schema") || reason.contains("cvc5 not found"),
        "{reason}"
    );
}

/// A stand-in solver: a shell script.
#[cfg(unix)]
fn fake_solver(dir: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-cvc5");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The bundled policies and a copy with one more permit: the solver has work to do.
fn two_sets() -> (PolicySnapshot, PolicySnapshot) {
    let to = policies_copy();
    std::fs::write(
        to.path().join("wide.cedar"),
        "permit (principal, action == Action::\"view\", resource is Run);",
    )
    .unwrap();
    (load(&common::repo_policies()), load(to.path()))
}

fn unavailable_with(cvc5: Option<std::path::PathBuf>, timeout: Duration) -> (String, Duration) {
    let (from, to) = two_sets();
    let started = Instant::now();
    let report = analysis::diff(
        &from,
        &to,
        &Options {
            cvc5,
            timeout,
            cancel: None,
        },
    );
    assert_eq!(report.status, Status::Unavailable);
    assert!(report.environments.is_empty());
    (report.reason.unwrap(), started.elapsed())
}

#[test]
fn a_missing_solver_is_reported_not_fatal() {
    let (reason, _) = unavailable_with(Some("/nonexistent/cvc5".into()), Duration::from_secs(5));
    assert!(reason.contains("cvc5 not found"), "{reason}");
    assert!(reason.contains("/nonexistent/cvc5"), "{reason}");
}

#[cfg(unix)]
#[test]
fn a_crashing_solver_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let solver = fake_solver(dir.path(), "echo 'Segmentation fault' >&2; exit 139");
    let (reason, _) = unavailable_with(Some(solver), Duration::from_secs(5));
    assert!(reason.contains("solver failed"), "{reason}");
}

#[cfg(unix)]
#[test]
fn a_hanging_solver_is_killed_at_the_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("still-running");
    // Reads nothing and never answers; touches a file if it survives past the kill.
    let solver = fake_solver(dir.path(), &format!("sleep 3; touch {}", marker.display()));
    let (reason, took) = unavailable_with(Some(solver), Duration::from_millis(300));
    assert!(reason.contains("did not finish within 300ms"), "{reason}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    std::thread::sleep(Duration::from_millis(3500));
    assert!(!marker.exists(), "the solver outlived its analysis");
}

#[test]
fn cancelling_stops_an_analysis() {
    let (from, to) = two_sets();
    let (stop, cancel) = tokio::sync::watch::channel(true);
    let report = analysis::diff(
        &from,
        &to,
        &Options {
            cvc5: None,
            timeout: Duration::from_secs(30),
            cancel: Some(cancel),
        },
    );
    drop(stop);
    assert_eq!(report.status, Status::Unavailable);
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("cancelled") || reason.contains("cvc5 not found"),
        "{reason}"
    );
}

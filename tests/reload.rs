//! Hot reload against a running daemon: every way ops change the policy directory, bad edits
//! refused without changing a decision, and no failed or mixed answer while reloading under load.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, Setup, repo_entities, repo_policies};
use serde_json::{Value, json};
use tempfile::TempDir;

const DAVE: &str = "User::\"dave\"";
const CAROL: &str = "User::\"carol\"";
const VIEW: &str = "Action::\"view\"";
const CORPUS: &str = "Dataset::\"nlp-corpus\""; // in public nlp: dave may view it via public.content
const SPEECH: &str = "Project::\"speech\""; // shared with carol via shared.project

/// A copy of the bundled policies that a test may edit.
fn policies_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_policy_files(&repo_policies(), dir.path());
    dir
}

async fn daemon_on(dir: &Path, watch: bool) -> Daemon {
    Daemon::start(Setup {
        policies: dir.to_path_buf(),
        entities: Some(repo_entities()),
        watch,
        ..Setup::default()
    })
    .await
}

/// Polls until the decision is `want`, returning how long it took.
async fn until_decision(d: &Daemon, p: &str, a: &str, r: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        if d.decide(p, a, r).await.0 == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{p} {a} {r} never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `GET /v1/policies` until its `last_reload` satisfies `pred`, and returns the status.
async fn until_reload(d: &Daemon, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, status) = d.call("GET", "/v1/policies", None).await;
        if pred(&status["last_reload"]) {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no such reload: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn last_reload(d: &Daemon) -> Value {
    d.call("GET", "/v1/policies", None).await.1["last_reload"].clone()
}

fn public_without_content(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("public.cedar")).unwrap();
    let cut = text.find("@id(\"public.content\")").unwrap();
    text[..cut].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_in_place_is_live() {
    let dir = policies_copy();
    let d = daemon_on(dir.path(), true).await;
    assert_eq!(d.decide(DAVE, VIEW, CORPUS).await.0, "Allow");
    let edited = public_without_content(dir.path());
    std::fs::write(dir.path().join("public.cedar"), edited).unwrap();
    let took = until_decision(&d, DAVE, VIEW, CORPUS, "Deny").await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    let status = last_reload(&d).await;
    assert_eq!(status["ok"], true);
    assert_eq!(status["trigger"], "watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_by_rename_is_live() {
    let dir = policies_copy();
    let d = daemon_on(dir.path(), true).await;
    let tmp = dir.path().join("public.cedar.tmp");
    std::fs::write(&tmp, public_without_content(dir.path())).unwrap();
    std::fs::rename(&tmp, dir.path().join("public.cedar")).unwrap();
    until_decision(&d, DAVE, VIEW, CORPUS, "Deny").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_is_live() {
    let dir = policies_copy();
    let d = daemon_on(dir.path(), true).await;
    let file = dir.path().join("shared.cedar");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(d.decide(CAROL, VIEW, SPEECH).await.0, "Allow");
    std::fs::remove_file(&file).unwrap();
    until_decision(&d, CAROL, VIEW, SPEECH, "Deny").await;
    std::fs::write(&file, text).unwrap();
    until_decision(&d, CAROL, VIEW, SPEECH, "Allow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_file_is_live() {
    let dir = policies_copy();
    let d = daemon_on(dir.path(), true).await;
    assert_eq!(d.decide(DAVE, VIEW, SPEECH).await.0, "Deny");
    std::fs::write(
        dir.path().join("extra.cedar"),
        "@id(\"extra.dave-speech\")\npermit(principal == User::\"dave\", action == Action::\"view\", resource == Project::\"speech\");",
    )
    .unwrap();
    until_decision(&d, DAVE, VIEW, SPEECH, "Allow").await;
    assert_eq!(d.decide(DAVE, VIEW, SPEECH).await.1, ["extra.dave-speech"]);
}

/// Lays out `files` the way a Kubernetes ConfigMap volume does: `name -> ..data/name`,
/// `..data -> ..<version>`.
fn configmap_version(dir: &Path, version: &str, files: &[(String, String)]) -> PathBuf {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
    }
    data
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_live() {
    use std::os::unix::fs::symlink;
    let source = policies_copy();
    let mut files: Vec<(String, String)> = std::fs::read_dir(source.path())
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let v1 = configmap_version(dir.path(), "2026_11_27_v1", &files);
    symlink(v1.file_name().unwrap(), dir.path().join("..data")).unwrap();
    for (name, _) in &files {
        symlink(Path::new("..data").join(name), dir.path().join(name)).unwrap();
    }
    let d = daemon_on(dir.path(), true).await;
    assert_eq!(d.decide(DAVE, VIEW, CORPUS).await.0, "Allow");

    // The kubelet's update: new version dir, new `..data_tmp` link renamed over `..data`,
    // old version removed.
    for (name, text) in &mut files {
        if name == "public.cedar" {
            *text = public_without_content(source.path());
        }
    }
    let v2 = configmap_version(dir.path(), "2026_11_27_v2", &files);
    symlink(v2.file_name().unwrap(), dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    until_decision(&d, DAVE, VIEW, CORPUS, "Deny").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_removed_and_recreated_is_watched_again() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("policies");
    let source = policies_copy();
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(source.path()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let d = daemon_on(&dir, true).await;
    // Remove the whole directory and create it anew, as a deploy tool might.
    let staged = parent.path().join("staged");
    std::fs::create_dir(&staged).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, staged.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(staged.join("public.cedar"), public_without_content(&staged)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::rename(&staged, &dir).unwrap();
    until_decision(&d, DAVE, VIEW, CORPUS, "Deny").await;
    // Moved away and back (same inode), with an edit in between.
    std::fs::rename(&dir, &staged).unwrap();
    let public = staged.join("public.cedar");
    let text = std::fs::read_to_string(repo_policies().join("public.cedar")).unwrap();
    std::fs::write(&public, text).unwrap();
    std::fs::rename(&staged, &dir).unwrap();
    until_decision(&d, DAVE, VIEW, CORPUS, "Allow").await;
    // And the new directory is watched.
    std::fs::remove_file(dir.join("shared.cedar")).unwrap();
    until_decision(&d, CAROL, VIEW, SPEECH, "Deny").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_is_refused_and_visible() {
    let dir = policies_copy();
    let d = daemon_on(dir.path(), true).await;
    let (_, before) = d.call("GET", "/v1/policies", None).await;
    // Saved as editors save (written aside, renamed over): a reload that runs meanwhile (the
    // one the watcher asks for when it is armed) reads the old file or the new, never an empty
    // one, which is valid Cedar and would change the revision.
    let aside = dir.path().join("public.cedar.saving");
    std::fs::write(&aside, "permit(principal, action, resource)\nwhen { 1 + };").unwrap();
    std::fs::rename(&aside, dir.path().join("public.cedar")).unwrap();
    let status = until_reload(&d, |r| r["ok"] == false).await;
    let reload = &status["last_reload"];
    assert_eq!(reload["ok"], false, "{status}");
    assert_eq!(
        status["revision"], before["revision"],
        "the old snapshot stays"
    );
    assert_eq!(reload["revision"], before["revision"]);
    assert_eq!(reload["errors"][0]["file"], "public.cedar");
    assert_eq!(reload["errors"][0]["line"], 2);
    assert_eq!(
        d.decide(DAVE, VIEW, CORPUS).await,
        ("Allow".to_owned(), vec!["public.content".to_owned()])
    );
    let (ready, _) = d.call("GET", "/readyz", None).await;
    assert_eq!(ready, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_the_policies_break_is_refused() {
    let dir = policies_copy();
    let d = daemon_on(dir.path(), false).await;
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    std::fs::write(&schema, text.replace("  visibility: String,\n", "")).unwrap();
    let (status, body) = d.call("POST", "/v1/policies/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_policies");
    let texts: Vec<&str> = body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("visibility") && t.contains(".cedar:")),
        "{texts:?}"
    );
    assert_eq!(d.decide(DAVE, VIEW, CORPUS).await.0, "Allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_the_stored_entities_break_is_refused() {
    let dir = policies_copy();
    let d = daemon_on(dir.path(), false).await;
    let (_, before) = d.call("GET", "/v1/policies", None).await;
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    // Every stored user lacks a now-required email.
    std::fs::write(
        &schema,
        text.replace("  email?: String,", "  email: String,"),
    )
    .unwrap();
    let (status, body) = d.call("POST", "/v1/policies/reload", None).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("stored entity User::") && message.contains("email"),
        "{message}"
    );
    assert_eq!(body["error"]["revision"], before["revision"]);
    // Writes still validate against the schema being served.
    d.put(json!([{"uid": {"type": "User", "id": "gina"}, "attrs": {}, "parents": [{"type": "Organization", "id": "acme"}]}])).await;

    // A compatible change is accepted.
    std::fs::write(
        &schema,
        text.replace("  email?: String,", "  email?: String,\n  team?: String,"),
    )
    .unwrap();
    let (status, body) = d.call("POST", "/v1/policies/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_ne!(body["revision"], before["revision"]);
    d.put(json!([{"uid": {"type": "User", "id": "hal"}, "attrs": {"team": "ml"}, "parents": []}]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_endpoint_applies_edits_when_watching_is_off() {
    let dir = policies_copy();
    let d = daemon_on(dir.path(), false).await;
    std::fs::write(
        dir.path().join("public.cedar"),
        public_without_content(dir.path()),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        d.decide(DAVE, VIEW, CORPUS).await.0,
        "Allow",
        "not watching: nothing changes yet"
    );
    let (status, body) = d.call("POST", "/v1/policies/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["ok"].clone(),
            body["changed"].clone(),
            body["trigger"].clone()
        ),
        (json!(true), json!(true), json!("api"))
    );
    assert_eq!(d.decide(DAVE, VIEW, CORPUS).await.0, "Deny");
    let (_, policies) = d.call("GET", "/v1/policies", None).await;
    assert_eq!(policies["revision"], body["revision"]);
    // Reloading unchanged sources changes nothing.
    let (status, body) = d.call("POST", "/v1/policies/reload", None).await;
    assert_eq!(
        (status.as_u16(), body["changed"].clone()),
        (200, json!(false))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reload_requests_coalesce_and_all_get_the_outcome() {
    let dir = policies_copy();
    let d = Arc::new(daemon_on(dir.path(), false).await);
    std::fs::write(
        dir.path().join("public.cedar"),
        public_without_content(dir.path()),
    )
    .unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move { d.call("POST", "/v1/policies/reload", None).await })
        })
        .collect();
    let mut changed = 0;
    let mut revisions = std::collections::HashSet::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        changed += usize::from(body["changed"] == true);
        revisions.insert(body["revision"].as_str().unwrap().to_owned());
    }
    assert!(changed >= 1, "a reload applied the edit");
    assert_eq!(
        revisions.len(),
        1,
        "everyone sees the same outcome: {revisions:?}"
    );
}

/// The answers under the two policy sets the load test flips between.
const OLD: [&str; 2] = ["Allow", "Allow"];
const NEW: [&str; 2] = ["Deny", "Deny"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_or_mixes_snapshots_while_reloading_under_load() {
    let dir = policies_copy();
    let d = Arc::new(daemon_on(dir.path(), true).await);
    let file = dir.path().join("public.cedar");
    let full = std::fs::read_to_string(&file).unwrap();
    let empty = "// public projects closed for maintenance\n".to_owned();
    let batch = json!({"requests": [
        {"principal": DAVE, "action": VIEW, "resource": CORPUS},
        {"principal": DAVE, "action": VIEW, "resource": "Project::\"nlp\""},
    ]});

    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (d, done, answered, batch) =
                (d.clone(), done.clone(), answered.clone(), batch.clone());
            tokio::spawn(async move {
                let mut seen = std::collections::HashSet::new();
                while !done.load(Ordering::Relaxed) {
                    let (status, body) = d
                        .call("POST", "/v1/is_authorized/batch", Some(&batch))
                        .await;
                    assert_eq!(status, 200, "a request failed during reload: {body}");
                    let got: Vec<String> = body["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| common::decision_of(r).0)
                        .collect();
                    assert!(
                        got == OLD || got == NEW,
                        "a batch mixed two snapshots: {got:?}"
                    );
                    seen.insert(got);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();

    for i in 0..40 {
        let text = if i % 2 == 0 { &empty } else { &full };
        if i % 4 < 2 {
            std::fs::write(&file, text).unwrap();
        } else {
            let tmp = dir.path().join("public.cedar.new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // Rapid edits may each be reloaded after the next one landed (a slow machine, reloads
    // coalesced): hold the closed set until requests that started under it have answered, so
    // both sets are certainly served while the workers run.
    std::fs::write(&file, &empty).unwrap();
    until_decision(&d, DAVE, VIEW, CORPUS, "Deny").await;
    let under_new = answered.load(Ordering::Relaxed) + 8;
    while answered.load(Ordering::Relaxed) < under_new {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(&file, &full).unwrap();
    until_decision(&d, DAVE, VIEW, CORPUS, "Allow").await;
    done.store(true, Ordering::Relaxed);
    let mut seen = std::collections::HashSet::new();
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    assert!(answered.load(Ordering::Relaxed) > 100);
    assert_eq!(
        seen.len(),
        2,
        "both policy sets were served during the test: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_policies_does_not_trigger_more_reloads() {
    let dir = policies_copy();
    let d = daemon_on(dir.path(), true).await;
    // The watcher reloads once when it arms; that reload reads every file.
    let first = until_reload(&d, |r| r["ok"] == true).await["last_reload"].clone();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        last_reload(&d).await["at"],
        first["at"],
        "a reload's own reads set off another"
    );
}

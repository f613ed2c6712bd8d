//! The activity log: a record for every decision, entity write and reload, queryable per
//! organization by its admins, paginated without gaps while records keep arriving.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, Setup, encode, repo_entities, repo_policies};
use serde_json::{Value, json};

const ADA: &str = "User::\"ada\""; // acme's admin

async fn activity(d: &Daemon, params: &[(&str, &str)]) -> (u16, Value) {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let (s, b) = d
        .call("GET", &format!("/v1/activity?{}", query.join("&")), None)
        .await;
    (s.as_u16(), b)
}

/// Waits until everything queued so far is committed.
async fn settled(d: &Daemon) {
    let start = Instant::now();
    while d.state.activity.stats().queued > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "activity never settled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn record(d: &Daemon, org: &str, id: i64) -> Value {
    settled(d).await;
    let (status, page) = activity(
        d,
        &[("organization", org), ("viewer", ADA), ("limit", "1000")],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no record {id} for {org}: {page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_recorded_with_their_organization() {
    let d = Daemon::demo().await;
    let (_, resp) = d
        .call("POST", "/v1/is_authorized", Some(&json!({"principal": "User::\"carol\"", "action": "Action::\"view\"", "resource": "Dataset::\"speech-audio\""})))
        .await;
    let id = resp["decision_id"].as_i64().expect("decision_id");
    let r = record(&d, "acme", id).await;
    let (_, policies) = d.call("GET", "/v1/policies", None).await;
    assert_eq!(r["kind"], "decision");
    assert_eq!(r["principal"], "User::\"carol\"");
    assert_eq!(r["action"], "Action::\"view\"");
    assert_eq!(r["resource"], "Dataset::\"speech-audio\"");
    assert_eq!(r["decision"], "Allow");
    assert_eq!(r["reasons"], json!(["shared.content"]));
    assert_eq!(r["policy_revision"], policies["revision"]);
    assert_eq!(
        r["organization"], "acme",
        "resolved through Dataset -> Project -> Organization"
    );
    let time = r["time"].as_str().unwrap();
    assert!(
        time.ends_with('Z') && time.len() == "2026-11-27T19:43:49.123456Z".len(),
        "{time}"
    );

    // No stored resource: the principal's organization.
    let (_, resp) = d
        .call("POST", "/v1/is_authorized", Some(&json!({"principal": "User::\"bob\"", "action": "Action::\"view\"", "resource": "Project::\"ghost\""})))
        .await;
    let r = record(&d, "acme", resp["decision_id"].as_i64().unwrap()).await;
    assert_eq!(
        (r["decision"].as_str(), r["organization"].as_str()),
        (Some("Deny"), Some("acme"))
    );

    // Each request of a batch has its own record.
    let (_, batch) = d
        .call("POST", "/v1/is_authorized/batch", Some(&json!({"requests": [
            {"principal": "User::\"eve\"", "action": "Action::\"view\"", "resource": "Project::\"ads\""},
            {"principal": "User::\"eve\"", "action": "Action::\"view\"", "resource": "Project::\"speech\""},
        ]})))
        .await;
    let ids: Vec<i64> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["decision_id"].as_i64().unwrap())
        .collect();
    assert_ne!(ids[0], ids[1]);
    settled(&d).await;
    let (_, globex) = activity(
        &d,
        &[("organization", "globex"), ("viewer", "User::\"eve\"")],
    )
    .await;
    assert_eq!(globex["records"][0]["id"], ids[0], "{globex}");
    // eve's attempt on acme's project is acme's activity.
    assert_eq!(record(&d, "acme", ids[1]).await["decision"], "Deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_writes_and_reloads_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_policy_files(&repo_policies(), dir.path());
    let d = Daemon::start(Setup {
        policies: dir.path().to_path_buf(),
        entities: Some(repo_entities()),
        watch: false,
        ..Setup::default()
    })
    .await;
    d.put(json!([{"uid": {"type": "Dataset", "id": "fresh"},
        "attrs": {"project": {"__entity": {"type": "Project", "id": "nlp"}}, "owner": {"__entity": {"type": "User", "id": "dave"}}, "size_bytes": 5},
        "parents": [{"type": "Project", "id": "nlp"}]}]))
        .await;
    let (status, _) = d.call("DELETE", "/v1/entities/Dataset/fresh", None).await;
    assert_eq!(status, 204);
    std::fs::write(dir.path().join("extra.cedar"), "@id(\"extra\") permit(principal == User::\"dave\", action == Action::\"view\", resource == Project::\"vision\");").unwrap();
    let (status, reload) = d.call("POST", "/v1/policies/reload", None).await;
    assert_eq!(status, 200);
    settled(&d).await;

    let (_, writes) = activity(
        &d,
        &[
            ("organization", "acme"),
            ("viewer", ADA),
            ("resource", "Dataset::\"fresh\""),
        ],
    )
    .await;
    let kinds: Vec<&str> = writes["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["entity_delete", "entity_upsert"], "{writes}");
    assert_eq!(
        writes["records"][0]["organization"], "acme",
        "resolved before the delete"
    );
    assert_eq!(writes["records"][0]["principal"], Value::Null);

    // Reloads concern every organization.
    let (_, reloads) = activity(
        &d,
        &[
            ("organization", "globex"),
            ("viewer", "User::\"eve\""),
            ("kind", "policy_reload"),
        ],
    )
    .await;
    let r = &reloads["records"][0];
    assert_eq!(
        (r["kind"].as_str(), r["decision"].as_str()),
        (Some("policy_reload"), Some("applied")),
        "{reloads}"
    );
    assert_eq!(r["policy_revision"], reload["revision"]);
    assert_eq!(r["organization"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_viewers_allowed_by_the_policies_see_the_trail() {
    let d = Daemon::demo().await;
    for (viewer, org, status) in [
        (ADA, "acme", 200),
        ("User::\"bob\"", "acme", 403),
        ("User::\"eve\"", "acme", 403),
        ("User::\"eve\"", "globex", 200),
        (ADA, "nowhere", 403),
    ] {
        let (got, body) = activity(&d, &[("organization", org), ("viewer", viewer)]).await;
        assert_eq!(got, status, "{viewer} on {org}: {body}");
    }
    for (params, field) in [
        (vec![("organization", "acme")], "viewer"),
        (vec![("viewer", ADA)], "organization"),
        (
            vec![("organization", "acme"), ("viewer", ADA), ("kind", "nope")],
            "kind",
        ),
        (
            vec![
                ("organization", "acme"),
                ("viewer", ADA),
                ("since", "yesterday"),
            ],
            "since",
        ),
        (
            vec![("organization", "acme"), ("viewer", ADA), ("limit", "0")],
            "limit",
        ),
        (
            vec![("organization", "acme"), ("viewer", ADA), ("cursor", "x")],
            "cursor",
        ),
        (
            vec![("organization", "acme"), ("viewer", ADA), ("colour", "red")],
            "colour",
        ),
    ] {
        let (got, body) = activity(&d, &params).await;
        assert_eq!(got, 400, "{params:?}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_what_they_name() {
    let d = Daemon::demo().await;
    let ask = |p: &str, a: &str, r: &str| json!({"principal": p, "action": a, "resource": r});
    let start = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reqs = [
        ask("User::\"bob\"", "Action::\"view\"", "Project::\"vision\""),
        ask("User::\"carol\"", "Action::\"view\"", "Project::\"vision\""),
        ask("User::\"carol\"", "Action::\"edit\"", "Project::\"nlp\""),
    ];
    d.call(
        "POST",
        "/v1/is_authorized/batch",
        Some(&json!({"requests": reqs})),
    )
    .await;
    settled(&d).await;
    let count = |page: &Value| page["records"].as_array().unwrap().len();
    let base = [
        ("organization", "acme"),
        ("viewer", ADA),
        ("since", start.as_str()),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut p = base.to_vec();
        p.push(extra);
        p
    };
    assert_eq!(count(&activity(&d, &base).await.1), 3);
    assert_eq!(
        count(
            &activity(&d, &with(("principal", "User::\"carol\"")))
                .await
                .1
        ),
        2
    );
    assert_eq!(
        count(
            &activity(&d, &with(("resource", "Project::\"vision\"")))
                .await
                .1
        ),
        2
    );
    assert_eq!(
        count(&activity(&d, &with(("action", "Action::\"edit\""))).await.1),
        1
    );
    assert_eq!(
        count(&activity(&d, &with(("kind", "entity_upsert"))).await.1),
        0
    );
    assert_eq!(
        count(
            &activity(&d, &with(("until", "2000-01-01T00:00:00Z")))
                .await
                .1
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_have_no_duplicates_and_no_gaps_while_records_arrive() {
    let d = Arc::new(Daemon::demo().await);
    let ask = json!({"principal": "User::\"dave\"", "action": "Action::\"view\"", "resource": "Project::\"nlp\""});
    for _ in 0..40 {
        d.call("POST", "/v1/is_authorized", Some(&ask)).await;
    }
    settled(&d).await;
    // Keep writing while paging.
    let writer = {
        let (d, ask) = (d.clone(), ask.clone());
        tokio::spawn(async move {
            for _ in 0..60 {
                d.call("POST", "/v1/is_authorized", Some(&ask)).await;
            }
        })
    };
    let mut seen: Vec<i64> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut params = vec![("organization", "acme"), ("viewer", ADA), ("limit", "7")];
        let c;
        if let Some(cur) = &cursor {
            c = cur.clone();
            params.push(("cursor", c.as_str()));
        }
        let (status, page) = activity(&d, &params).await;
        assert_eq!(status, 200);
        seen.extend(
            page["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.await.unwrap();
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates across pages");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    // No gaps: every record older than the first one seen was listed.
    let first = seen[0];
    settled(&d).await;
    let (_, all) = activity(
        &d,
        &[("organization", "acme"), ("viewer", ADA), ("limit", "1000")],
    )
    .await;
    let expected: Vec<i64> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .filter(|id| *id <= first)
        .collect();
    assert_eq!(seen, expected);
    assert!(seen.len() >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_records() {
    let d = Daemon::demo().await;
    let ask = json!({"principal": "User::\"dave\"", "action": "Action::\"view\"", "resource": "Project::\"nlp\""});
    for _ in 0..5 {
        d.call("POST", "/v1/is_authorized", Some(&ask)).await;
    }
    settled(&d).await;
    let cutoff = policyd::storage::now_micros() + 1;
    let log = d.state.activity.clone();
    let expired = tokio::task::spawn_blocking(move || log.expire(cutoff))
        .await
        .unwrap()
        .unwrap();
    assert!(expired >= 5, "{expired}");
    let (_, page) = activity(&d, &[("organization", "acme"), ("viewer", ADA)]).await;
    // Only the viewer check made after the cutoff may remain.
    assert!(page["records"].as_array().unwrap().len() <= 1, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_bound_prunes_the_oldest_records_and_counts_them() {
    const MAX: u64 = 96 * 1024;
    let d = Daemon::start(Setup {
        entities: Some(repo_entities()),
        activity_max_bytes: MAX,
        ..Setup::default()
    })
    .await;
    let ask = json!({"principal": "User::\"dave\"", "action": "Action::\"view\"", "resource": "Project::\"nlp\""});
    let batch = json!({"requests": vec![ask; 100]});
    let mut first_ids = Vec::new();
    for _ in 0..60 {
        let (status, body) = d
            .call("POST", "/v1/is_authorized/batch", Some(&batch))
            .await;
        assert_eq!(status, 200, "{body}");
        first_ids.push(body["results"][0]["decision_id"].as_i64().unwrap());
    }
    settled(&d).await;
    // An empty queue may still mean a commit in progress; the writer checks the bound right
    // after each commit.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.state.activity.stats().written < 6_000 {
        assert!(std::time::Instant::now() < deadline, "never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let log = d.state.activity.clone();
        let used = tokio::task::spawn_blocking(move || log.used_bytes())
            .await
            .unwrap()
            .unwrap();
        let pruned = d.state.activity.stats().pruned;
        if used <= MAX && pruned > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{used} bytes used, bound {MAX}, {pruned} pruned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, status) = d.call("GET", "/v1/policies", None).await;
    let pruned = status["activity"]["pruned"].as_u64().unwrap();
    assert!(pruned > 0, "6,000 records fit in {MAX} bytes? {status}");
    // The oldest went first: the newest batch is all there, the first is gone, and every
    // written record is either still listed or counted as pruned.
    let mut ids: Vec<i64> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut params = vec![("organization", "acme"), ("viewer", ADA), ("limit", "1000")];
        if let Some(c) = &cursor {
            params.push(("cursor", c));
        }
        let (_, page) = activity(&d, &params).await;
        ids.extend(
            page["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(ids.contains(&(first_ids[59] + 99)), "newest kept");
    assert!(!ids.contains(&first_ids[0]), "oldest pruned");
    assert!(ids.iter().all(|id| *id > first_ids[0]));
    // The listing also holds the viewer checks made while paging (and their records), and
    // their commits may have pruned more: count what was pruned by the end of the listing.
    let written = status["activity"]["written"].as_u64().unwrap();
    let (_, after) = d.call("GET", "/v1/policies", None).await;
    let pruned = after["activity"]["pruned"].as_u64().unwrap();
    assert!(
        pruned + ids.len() as u64 >= written,
        "{pruned} pruned + {} listed < {written} written",
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_log_off_decisions_have_no_id() {
    let d = Daemon::start(Setup {
        entities: Some(repo_entities()),
        activity: false,
        ..Setup::default()
    })
    .await;
    let (_, resp) = d
        .call("POST", "/v1/is_authorized", Some(&json!({"principal": "User::\"dave\"", "action": "Action::\"view\"", "resource": "Project::\"nlp\""})))
        .await;
    assert_eq!(resp["decision"], "Allow");
    assert_eq!(resp["decision_id"], Value::Null);
    let (_, policies) = d.call("GET", "/v1/policies", None).await;
    assert_eq!(policies["activity"]["enabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_records_visibly_and_decisions_go_on() {
    let d = Arc::new(
        Daemon::start(Setup {
            entities: Some(repo_entities()),
            activity_queue: 1,
            ..Setup::default()
        })
        .await,
    );
    let ask = json!({"principal": "User::\"dave\"", "action": "Action::\"view\"", "resource": "Project::\"nlp\""});
    let batch = json!({"requests": vec![ask; 100]});
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (d, batch) = (d.clone(), batch.clone());
            tokio::spawn(async move {
                for _ in 0..5 {
                    let (status, body) = d
                        .call("POST", "/v1/is_authorized/batch", Some(&batch))
                        .await;
                    assert_eq!(status, 200);
                    assert!(
                        body["results"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .all(|r| r["decision"] == "Allow")
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (_, policies) = d.call("GET", "/v1/policies", None).await;
    let a = &policies["activity"];
    assert!(a["dropped"].as_u64().unwrap() > 0, "{a}");
    settled(&d).await;
    let (_, policies) = d.call("GET", "/v1/policies", None).await;
    let a = &policies["activity"];
    assert_eq!(
        a["written"].as_u64().unwrap() + a["dropped"].as_u64().unwrap(),
        2000,
        "every decision is written or counted: {a}"
    );
}

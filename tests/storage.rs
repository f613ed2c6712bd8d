//! Storage totals, quota checks and reservations over HTTP, on the demo organization.
//!
//! Demo numbers: acme (quota 20 GB) holds vision 5.14 GB, nlp 3.13 GB and speech 8.41 GB
//! (quota 9 GB).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, encode};
use serde_json::{Value, json};

const GB: i64 = 1_000_000_000;

async fn storage(d: &Daemon, ty: &str, id: &str, principal: &str) -> (u16, Value) {
    let path = format!(
        "/v1/storage/{ty}/{}?principal={}",
        encode(id),
        encode(principal)
    );
    let (status, body) = d.call("GET", &path, None).await;
    (status.as_u16(), body)
}

fn project_used(org: &Value, id: &str) -> i64 {
    org["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["entity"]["id"] == id)
        .unwrap_or_else(|| panic!("no project {id} in {org}"))["used_bytes"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_admins_see_the_distribution_across_projects() {
    let d = Daemon::demo().await;
    let (status, org) = storage(&d, "Organization", "acme", "User::\"ada\"").await;
    assert_eq!(status, 200, "{org}");
    assert_eq!(org["entity"], json!({"type": "Organization", "id": "acme"}));
    assert_eq!(org["used_bytes"], 16_680_000_000i64);
    assert_eq!(org["quota_bytes"], 20 * GB);
    let ids: Vec<&str> = org["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["entity"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["speech", "vision", "nlp"], "largest first");
    let speech = &org["projects"][0];
    assert_eq!(speech["used_bytes"], 8_410_000_000i64);
    assert_eq!(speech["quota_bytes"], 9 * GB);
    assert_eq!(speech["items"], json!({"Dataset": 2, "Model": 1, "Run": 0}));
    assert_eq!(
        org["projects"][2]["items"],
        json!({"Dataset": 2, "Model": 1, "Run": 2})
    );
    assert_eq!(org["projects"][1]["quota_bytes"], Value::Null);

    let (status, project) = storage(&d, "Project", "nlp", "User::\"ada\"").await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["used_bytes"], 3_130_000_000i64);
    assert_eq!(
        project["by_type"]["Run"],
        json!({"count": 2, "bytes": 130_000_000})
    );
    assert_eq!(
        project["by_type"]["Dataset"],
        json!({"count": 2, "bytes": 2_300_000_000i64})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_queries_follow_the_policies() {
    let d = Daemon::demo().await;
    let cases = [
        ("Organization", "acme", "User::\"ada\"", 200),
        ("Organization", "acme", "User::\"bob\"", 403),
        ("Organization", "acme", "User::\"eve\"", 403),
        ("Organization", "globex", "User::\"eve\"", 200),
        ("Organization", "globex", "User::\"ada\"", 403),
        ("Project", "vision", "User::\"ada\"", 200),
        ("Project", "vision", "User::\"bob\"", 200),
        ("Project", "vision", "User::\"carol\"", 403),
        ("Project", "speech", "User::\"eve\"", 403),
        ("Organization", "nowhere", "User::\"ada\"", 404),
        ("Dataset", "nlp-corpus", "User::\"carol\"", 404),
    ];
    for (ty, id, principal, want) in cases {
        let (status, body) = storage(&d, ty, id, principal).await;
        assert_eq!(status, want, "{principal} on {ty} {id}: {body}");
        if want == 403 {
            assert_eq!(body["error"]["code"], "forbidden");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("view_storage")
            );
        }
    }
    let (status, body) = d.call("GET", "/v1/storage/Organization/acme", None).await;
    assert_eq!(
        (status.as_u16(), body["error"]["field"].clone()),
        (400, Value::Null)
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("principal")
    );
    let (status, _) = d
        .call("GET", "/v1/storage/Organization/acme?principal=bob", None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_follow_every_write_at_once() {
    let d = Daemon::demo().await;
    let ada = "User::\"ada\"";
    let dataset = |id: &str, project: &str, size: i64| {
        json!({"uid": {"type": "Dataset", "id": id},
               "attrs": {"project": {"__entity": {"type": "Project", "id": project}},
                         "owner": {"__entity": {"type": "User", "id": "carol"}}, "size_bytes": size},
               "parents": [{"type": "Project", "id": project}]})
    };
    // A shared member adds content to bob's project: the project (and acme) pay.
    d.put(json!([dataset("upload", "speech", GB)])).await;
    let (_, org) = storage(&d, "Organization", "acme", ada).await;
    assert_eq!(org["used_bytes"], 17_680_000_000i64);
    assert_eq!(project_used(&org, "speech"), 9_410_000_000);
    // Resize.
    d.put(json!([dataset("upload", "speech", 2 * GB)])).await;
    let (_, org) = storage(&d, "Organization", "acme", ada).await;
    assert_eq!(project_used(&org, "speech"), 10_410_000_000);
    // Move to another project.
    d.put(json!([dataset("upload", "nlp", 2 * GB)])).await;
    let (_, org) = storage(&d, "Organization", "acme", ada).await;
    assert_eq!(
        (project_used(&org, "speech"), project_used(&org, "nlp")),
        (8_410_000_000, 5_130_000_000)
    );
    assert_eq!(org["used_bytes"], 18_680_000_000i64);
    // A project moving to another organization takes its items with it.
    let mut nlp = d.get("Project", "nlp").await.unwrap();
    nlp["parents"] = json!([{"type": "Organization", "id": "globex"}]);
    nlp["attrs"]["org"] = json!({"__entity": {"type": "Organization", "id": "globex"}});
    d.put(json!([nlp])).await;
    let (_, org) = storage(&d, "Organization", "acme", ada).await;
    assert_eq!(org["used_bytes"], 13_550_000_000i64);
    let (_, globex) = storage(&d, "Organization", "globex", "User::\"eve\"").await;
    assert_eq!(globex["used_bytes"], 6_130_000_000i64);
    // Delete.
    let (status, _) = d.call("DELETE", "/v1/entities/Dataset/upload", None).await;
    assert_eq!(status, 204);
    let (_, globex) = storage(&d, "Organization", "globex", "User::\"eve\"").await;
    assert_eq!(globex["used_bytes"], 4_130_000_000i64);
}

async fn check(d: &Daemon, project: &str, add: Value) -> (u16, Value) {
    let (s, b) = d
        .call(
            "POST",
            "/v1/storage/check",
            Some(&json!({"project": project, "add_bytes": add})),
        )
        .await;
    (s.as_u16(), b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_checks_name_the_quota_that_would_break() {
    let d = Daemon::demo().await;
    let (status, ok) = check(&d, "Project::\"speech\"", json!(500_000_000)).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["allowed"], true);
    assert_eq!(ok["project"]["used_bytes"], 8_410_000_000i64);
    assert_eq!(ok["project"]["quota_bytes"], 9 * GB);
    assert_eq!(ok["organization"]["entity"]["id"], "acme");
    let (_, over_project) = check(&d, "Project::\"speech\"", json!(600_000_000)).await;
    assert_eq!(over_project["allowed"], false);
    assert!(
        over_project["reason"]
            .as_str()
            .unwrap()
            .contains("Project::\"speech\""),
        "{over_project}"
    );
    let (_, over_org) = check(&d, "Project::\"nlp\"", json!(4 * GB)).await;
    assert_eq!(over_org["allowed"], false);
    assert!(
        over_org["reason"]
            .as_str()
            .unwrap()
            .contains("Organization::\"acme\""),
        "{over_org}"
    );
    let (_, unlimited) = check(&d, "Project::\"ads\"", json!(i64::MAX)).await;
    assert_eq!(unlimited["allowed"], true);
    assert_eq!(unlimited["organization"]["quota_bytes"], Value::Null);

    for (add, status) in [
        (json!(-1), 400),
        (json!(1.5), 400),
        (json!("10"), 400),
        (json!(u64::MAX), 400),
        (Value::Null, 400),
    ] {
        let (got, body) = check(&d, "Project::\"speech\"", add.clone()).await;
        assert_eq!(got, status, "{add}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field");
    }
    let (status, _) = check(&d, "Project::\"ghost\"", json!(1)).await;
    assert_eq!(status, 404);
}

async fn reserve(d: &Daemon, body: Value) -> (u16, Value) {
    let (s, b) = d
        .call("POST", "/v1/storage/reservations", Some(&body))
        .await;
    (s.as_u16(), b)
}

async fn reserved(d: &Daemon, project: &str) -> (i64, i64) {
    let (_, c) = check(d, project, json!(0)).await;
    (
        c["project"]["reserved_bytes"].as_i64().unwrap(),
        c["organization"]["reserved_bytes"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_hold_quota_until_released_and_retries_are_idempotent() {
    let d = Daemon::demo().await;
    let speech = "Project::\"speech\"";
    let (status, r) = reserve(&d, json!({"project": speech, "bytes": 400_000_000, "ttl_seconds": 600, "idempotency_key": "upload-1"})).await;
    assert_eq!(status, 201, "{r}");
    assert!(r["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(reserved(&d, speech).await, (400_000_000, 400_000_000));
    // The retry gets the same reservation and holds nothing more.
    let (status, again) = reserve(&d, json!({"project": speech, "bytes": 400_000_000, "ttl_seconds": 600, "idempotency_key": "upload-1"})).await;
    assert_eq!((status, &again["id"]), (200, &r["id"]));
    assert_eq!(reserved(&d, speech).await.0, 400_000_000);
    // The same key with other parameters is a conflict.
    let (status, conflict) = reserve(
        &d,
        json!({"project": speech, "bytes": 1, "ttl_seconds": 600, "idempotency_key": "upload-1"}),
    )
    .await;
    assert_eq!(
        (status, conflict["error"]["code"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    // What is reserved counts: 590 MB free minus 400 MB held leaves 190 MB.
    let (status, refused) = reserve(
        &d,
        json!({"project": speech, "bytes": 200_000_000, "ttl_seconds": 600}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "quota_exceeded");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Project::\"speech\"")
    );
    assert_eq!(
        refused["error"]["check"]["project"]["reserved_bytes"],
        400_000_000
    );
    // Release frees it.
    let id = r["id"].as_str().unwrap();
    let (status, _) = d
        .call("DELETE", &format!("/v1/storage/reservations/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(reserved(&d, speech).await, (0, 0));
    let (status, _) = d
        .call("DELETE", &format!("/v1/storage/reservations/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = reserve(
        &d,
        json!({"project": speech, "bytes": 200_000_000, "ttl_seconds": 600}),
    )
    .await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_expire() {
    let d = Daemon::demo().await;
    let nlp = "Project::\"nlp\"";
    let (status, r) = reserve(&d, json!({"project": nlp, "bytes": GB, "ttl_seconds": 1})).await;
    assert_eq!(status, 201);
    assert_eq!(reserved(&d, nlp).await.0, GB);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        reserved(&d, nlp).await.0,
        0,
        "expired reservations stop counting at once"
    );
    // The background sweep (every second) reclaims its row; look in the database itself.
    let db = rusqlite::Connection::open(d.dir.path().join("data/policyd.db")).unwrap();
    let id = r["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while db
        .query_row(
            "SELECT count(*) FROM reservations WHERE id = ?1",
            [id],
            |row| row.get::<_, i64>(0),
        )
        .unwrap()
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep never removed the expired reservation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = d
        .call("DELETE", &format!("/v1/storage/reservations/{id}"), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reservations_are_4xx_and_hold_nothing() {
    let d = Daemon::demo().await;
    let speech = "Project::\"speech\"";
    let cases = [
        (
            json!({"project": speech, "bytes": -5, "ttl_seconds": 60}),
            400,
            "bytes",
        ),
        (
            json!({"project": speech, "bytes": 2.5, "ttl_seconds": 60}),
            400,
            "bytes",
        ),
        (json!({"project": speech, "bytes": 5}), 400, "ttl_seconds"),
        (
            json!({"project": speech, "bytes": 5, "ttl_seconds": 0}),
            400,
            "ttl_seconds",
        ),
        (
            json!({"project": speech, "bytes": 5, "ttl_seconds": 60, "idempotency_key": 7}),
            400,
            "idempotency_key",
        ),
        (
            json!({"project": "Project::\"ghost\"", "bytes": 5, "ttl_seconds": 60}),
            404,
            "ghost",
        ),
        (
            json!({"project": 3, "bytes": 5, "ttl_seconds": 60}),
            400,
            "project",
        ),
        (
            json!({"project": speech, "bytes": 5, "ttl_seconds": 60, "extra": 1}),
            400,
            "extra",
        ),
    ];
    for (body, status, mentions) in cases {
        let (got, resp) = reserve(&d, body.clone()).await;
        assert_eq!(got, status, "{body}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .unwrap()
                .contains(mentions),
            "{resp}"
        );
    }
    assert_eq!(reserved(&d, speech).await, (0, 0));
    // Negative sizes are refused on entity writes too.
    let (status, body) = d
        .call("PUT", "/v1/entities", Some(&json!([{"uid": {"type": "Dataset", "id": "neg"},
            "attrs": {"project": {"__entity": {"type": "Project", "id": "nlp"}}, "owner": {"__entity": {"type": "User", "id": "dave"}}, "size_bytes": -1},
            "parents": [{"type": "Project", "id": "nlp"}]}])))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("size_bytes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_exceed_the_quota() {
    let d = Arc::new(Daemon::demo().await);
    // speech has 590 MB free: at most 5 reservations of 100 MB fit.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                reserve(&d, json!({"project": "Project::\"speech\"", "bytes": 100_000_000, "ttl_seconds": 600, "idempotency_key": format!("k{i}")})).await
            })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => granted += 1,
            409 => assert_eq!(body["error"]["code"], "quota_exceeded"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(granted, 5);
    assert_eq!(reserved(&d, "Project::\"speech\"").await.0, 500_000_000);
}

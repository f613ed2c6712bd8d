//! Fleet mode against a real PostgreSQL (`POLICYD_TEST_POSTGRES`): several real `policyd serve
//! --upstream` processes on one upstream, revision tokens, staleness, import and re-copy.
//! Without the variable these tests skip and say so; with `CI=true` they fail instead.

mod common;
mod upstream_support;

use std::time::{Duration, Instant};

use hyper::StatusCode;
use policyd::upstream::token;
use serde_json::json;
use upstream_support::{Fleet, Proxy, Sidecar, policies, revision_of, test_db, upstream_cli, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_sidecar_is_decided_on_another_at_its_token() {
    let Some(fleet) = Fleet::migrated("tokens", policies()).await else {
        return;
    };
    let db = &fleet.db;
    let wait = ["--consistency-wait", "1s"];
    let a = fleet.sidecar("a", &db.url, &wait);
    let b = fleet.sidecar("b", &db.url, &wait);
    a.ready().await;
    b.ready().await;

    // The new-enemy case, both ways, 1,000 grant/revoke cycles: every answer on B reflects the
    // write just made on A.
    for i in 0..1_000 {
        let reader = i % 2 == 0;
        let written = a.put(user("alice", reader)).await;
        let (status, body) = b.read("alice", Some(&written)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let expected = if reader { "Allow" } else { "Deny" };
        assert_eq!(body["decision"], expected, "cycle {i}: {body}");
        assert!(revision_of(&body) >= token::decode(&written).unwrap().revision);
    }

    // The header works like the body; a delete on B is seen on A at its token.
    let written = a.put(user("bob", true)).await;
    let bob = json!({"principal": "User::\"bob\"", "action": "Action::\"read\"", "resource": "Doc::\"d\""});
    let (status, body) = b
        .call(
            "POST",
            "/v1/is_authorized",
            &[("Policyd-At-Least", &written)],
            Some(&bob),
        )
        .await;
    assert_eq!(
        (status, body["decision"].as_str()),
        (StatusCode::OK, Some("Allow")),
        "{body}"
    );
    let (status, deleted) = b.call("DELETE", "/v1/entities/User/bob", &[], None).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    let gone = deleted["revision"].as_str().unwrap().to_owned();
    let (status, body) = a
        .call(
            "POST",
            "/v1/is_authorized/batch",
            &[],
            Some(&json!({
                "requests": [bob],
                "consistency": {"at_least": gone},
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["decision"], "Deny", "{body}");
    assert!(revision_of(&body) >= token::decode(&gone).unwrap().revision);
    let (status, _) = b.call("DELETE", "/v1/entities/User/bob", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Without a token the write arrives soon anyway.
    a.put(user("carol", true)).await;
    let started = Instant::now();
    loop {
        let (status, body) = b.read("carol", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["decision"] == "Allow" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never propagated"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Tokens that cannot be honoured are refused, never answered stale.
    let foreign = token::encode("another-upstream", 1);
    let (status, body) = b.read("alice", Some(&foreign)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another-upstream"),
        "{body}"
    );
    let (status, body) = b.read("alice", Some("not-a-token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let mine = token::decode(&written).unwrap();
    let future = token::encode(&mine.upstream, mine.revision + 1_000);
    let (status, body) = b.read("alice", Some(&future)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "revision_not_applied", "{body}");

    // The storage and activity reads honour the header too.
    let reads = [
        "/v1/storage/Project/p?principal=User::%22alice%22",
        "/v1/activity?organization=o&viewer=User::%22alice%22",
    ];
    for path in reads {
        let (status, body) = b
            .call("GET", path, &[("Policyd-At-Least", &future)], None)
            .await;
        assert_eq!(
            body["error"]["code"], "revision_not_applied",
            "{path}: {body}"
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, body) = b
            .call("GET", path, &[("Policyd-At-Least", &foreign)], None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let (status, body) = b
            .call("GET", path, &[("Policyd-At-Least", &written)], None)
            .await;
        assert!(
            status == StatusCode::NOT_FOUND
                || status == StatusCode::FORBIDDEN
                || status == StatusCode::OK,
            "{path}: {status} {body}"
        );
    }

    // A cycle is refused upstream, and nothing of the write lands.
    let cycle = json!([
        {"uid": {"type": "Group", "id": "g1"}, "attrs": {}, "parents": [{"type": "Group", "id": "g2"}]},
        {"uid": {"type": "Group", "id": "g2"}, "attrs": {}, "parents": [{"type": "Group", "id": "g1"}]},
    ]);
    let (status, body) = a.call("PUT", "/v1/entities", &[], Some(&cycle)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "hierarchy_cycle");
    let (status, _) = a.call("GET", "/v1/entities/Group/g1", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A cycle closed through entities of earlier writes, and a self-loop, are refused too.
    let group = |id: &str, parent: &str| json!([{"uid": {"type": "Group", "id": id}, "attrs": {}, "parents": [{"type": "Group", "id": parent}]}]);
    for (id, parent) in [("g1", "g2"), ("g2", "g3")] {
        let (status, body) = a
            .call("PUT", "/v1/entities", &[], Some(&group(id, parent)))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for (id, parent) in [("g3", "g1"), ("g4", "g4")] {
        let (status, body) = a
            .call("PUT", "/v1/entities", &[], Some(&group(id, parent)))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}: {body}");
        assert_eq!(body["error"]["code"], "hierarchy_cycle", "{id}: {body}");
        let path = format!("/v1/entities/Group/{id}");
        let (status, _) = a.call("GET", &path, &[], None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_cut_off_its_upstream_turns_stale_then_recovers() {
    let Some(fleet) = Fleet::migrated("stale", policies()).await else {
        return;
    };
    let db = &fleet.db;
    let proxy = Proxy::to(&db.url).await;
    let s = fleet.sidecar("s", &db.via(proxy.addr), &["--max-staleness", "1s"]);
    s.ready().await;
    s.put(user("alice", true)).await;
    assert_eq!(s.read("alice", None).await.1["decision"], "Allow");

    proxy.cut();
    let started = Instant::now();
    loop {
        let (status, body) = s.read("alice", None).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["error"]["code"], "stale", "{body}");
            break;
        }
        assert_eq!(body["decision"], "Allow", "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never turned stale"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = s.call("GET", "/readyz", &[], None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("stale"))
    );
    assert_eq!(s.metric("policyd_fleet_stale").await, 1.0);
    assert!(s.metric("policyd_fleet_caught_up_age_seconds").await >= 1.0);
    let (status, body) = s
        .call("PUT", "/v1/entities", &[], Some(&user("bob", true)))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    proxy.restore();
    let started = Instant::now();
    loop {
        let (status, body) = s.read("alice", None).await;
        if status == StatusCode::OK {
            assert_eq!(body["decision"], "Allow", "{body}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never recovered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.call("GET", "/readyz", &[], None).await.0, StatusCode::OK);
    assert_eq!(s.metric("policyd_fleet_stale").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_store_is_served_by_the_fleet() {
    let Some(db) = test_db("import").await else {
        return;
    };
    let (dir, pol) = (tempfile::tempdir().unwrap(), policies());
    let file = dir.path().join("entities.json");
    let mut entities = user("alice", true);
    entities
        .as_array_mut()
        .unwrap()
        .extend(user("bob", false).as_array().unwrap().clone());
    std::fs::write(&file, entities.to_string()).unwrap();
    let old = dir.path().join("old/policyd.db");
    let out = common::policyd_command()
        .args(["import", "--db"])
        .arg(&old)
        .arg("--policies")
        .arg(pol.path())
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let said = upstream_cli(&db.url, &["import", "--db", old.to_str().unwrap()]);
    assert!(said.contains("imported 2 entities"), "{said}");

    let s = Sidecar::start(pol.path(), &dir.path().join("new/p.db"), &db.url, &[]);
    s.ready().await;
    assert_eq!(s.read("alice", None).await.1["decision"], "Allow");
    assert_eq!(s.read("bob", None).await.1["decision"], "Deny");
    let (status, body) = s.call("GET", "/v1/entities/User/bob", &[], None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_behind_the_pruned_log_copies_again() {
    let Some(fleet) = Fleet::migrated("prune", policies()).await else {
        return;
    };
    let db = &fleet.db;
    let a = fleet.sidecar("a", &db.url, &[]);
    let mut b = fleet.sidecar("b", &db.url, &[]);
    a.ready().await;
    b.ready().await;
    let written = a.put(user("u1", true)).await;
    assert_eq!(b.read("u1", Some(&written)).await.1["decision"], "Allow");

    b.process.kill().unwrap();
    b.process.wait().unwrap();
    a.put(user("u2", true)).await;
    let (status, _) = a.call("DELETE", "/v1/entities/User/u1", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    let last = a.put(user("u3", false)).await;
    let said = upstream_cli(&db.url, &["prune", "--keep", "1"]);
    assert!(said.contains("starts at revision"), "{said}");

    b = fleet.sidecar("b", &db.url, &[]);
    b.ready().await;
    let (status, body) = b.read("u2", Some(&last)).await;
    assert_eq!(
        (status, body["decision"].as_str()),
        (StatusCode::OK, Some("Allow")),
        "{body}"
    );
    assert_eq!(b.read("u1", None).await.1["decision"], "Deny");
    for (id, stored) in [("u1", false), ("u2", true), ("u3", true)] {
        let (status, _) = b
            .call("GET", &format!("/v1/entities/User/{id}"), &[], None)
            .await;
        assert_eq!(status == StatusCode::OK, stored, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_racing_for_one_quota_take_exactly_what_fits() {
    let Some(fleet) = Fleet::migrated("quota", policies()).await else {
        return;
    };
    let db = &fleet.db;
    let sidecars: Vec<Sidecar> = ["a", "b", "c"]
        .iter()
        .map(|n| fleet.sidecar(n, &db.url, &[]))
        .collect();
    for s in &sidecars {
        s.ready().await;
    }
    sidecars[0]
        .put(json!([
            {"uid": {"type": "Organization", "id": "o"}, "attrs": {"quota_bytes": 100_000}, "parents": []},
            {"uid": {"type": "Project", "id": "p"}, "attrs": {"quota_bytes": 1_000},
             "parents": [{"type": "Organization", "id": "o"}]},
            {"uid": {"type": "Dataset", "id": "d"}, "attrs": {"size_bytes": 500},
             "parents": [{"type": "Project", "id": "p"}]},
        ]))
        .await;
    // 500 bytes left; 3 sidecars x 4 concurrent reservations of 100 bytes: exactly 5 fit.
    let mut racers = tokio::task::JoinSet::new();
    for (i, s) in sidecars.iter().enumerate() {
        for j in 0..4 {
            let addr = s.addr;
            racers.spawn(async move {
                let body = json!({"project": "Project::\"p\"", "bytes": 100, "ttl_seconds": 60,
                                  "idempotency_key": format!("{i}-{j}")});
                common::Client(addr)
                    .call(
                        "POST",
                        "/v1/storage/reservations",
                        body.to_string().into_bytes(),
                    )
                    .await
            });
        }
    }
    let (mut won, mut refused) = (0, 0);
    while let Some(done) = racers.join_next().await {
        let (status, body) = done.unwrap();
        match status {
            StatusCode::CREATED => won += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((won, refused), (5, 7));
    // Every sidecar sees the same, global, state.
    for s in &sidecars {
        let (status, body) = s
            .call(
                "POST",
                "/v1/storage/check",
                &[],
                Some(&json!({"project": "Project::\"p\"", "add_bytes": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["allowed"], false, "{body}");
        assert_eq!(body["project"]["reserved_bytes"], 500, "{body}");
        assert_eq!(body["project"]["used_bytes"], 500, "{body}");
    }
    // A release on one frees the bytes for another.
    let (status, body) = sidecars[1]
        .call("POST", "/v1/storage/reservations", &[], Some(&json!({"project": "Project::\"p\"", "bytes": 100, "ttl_seconds": 60, "idempotency_key": "0-0"})))
        .await;
    let id = match status {
        StatusCode::OK => body["id"].as_str().unwrap().to_owned(),
        _ => {
            // 0-0 lost the race: take any winner's key instead.
            let mut found = None;
            for i in 0..3 {
                for j in 0..4 {
                    let (st, b) = sidecars[2]
                        .call("POST", "/v1/storage/reservations", &[], Some(&json!({"project": "Project::\"p\"", "bytes": 100, "ttl_seconds": 60, "idempotency_key": format!("{i}-{j}")})))
                        .await;
                    if st == StatusCode::OK && found.is_none() {
                        found = b["id"].as_str().map(str::to_owned);
                    }
                }
            }
            found.expect("some reservation won")
        }
    };
    let (status, _) = sidecars[2]
        .call(
            "DELETE",
            &format!("/v1/storage/reservations/{id}"),
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = sidecars[0]
        .call(
            "POST",
            "/v1/storage/reservations",
            &[],
            Some(&json!({"project": "Project::\"p\"", "bytes": 100, "ttl_seconds": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_daemon_refuses_revision_tokens() {
    let d =
        common::Daemon::dir_policies(&[("p.cedar", r#"permit (principal, action, resource);"#)])
            .await;
    let request = json!({
        "principal": "User::\"a\"", "action": "Action::\"read\"", "resource": "Doc::\"d\"",
        "consistency": {"at_least": token::encode("u", 1)},
    });
    let (status, body) = d.call("POST", "/v1/is_authorized", Some(&request)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_field");
    let (status, _, body) = d
        .with_headers(
            "POST",
            "/v1/is_authorized",
            &[("Policyd-At-Least", "x"), ("content-type", "application/json")],
            json!({"principal": "User::\"a\"", "action": "Action::\"read\"", "resource": "Doc::\"d\""})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let plain =
        json!({"principal": "User::\"a\"", "action": "Action::\"read\"", "resource": "Doc::\"d\""});
    let (status, body) = d.call("POST", "/v1/is_authorized", Some(&plain)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("revision").is_none(), "{body}");
    d.stop().await;
}

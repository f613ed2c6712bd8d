//! `GET /metrics`: scraped before and after a known sequence of requests on the real daemon,
//! every counter moves by exactly what the sequence did; the route needs the admin token.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Daemon, Setup, policies_copy, repo_entities};
use serde_json::{Value, json};

const TOKEN: &str = "metrics-test-token";

/// One scrape: every sample, keyed by name and its sorted labels.
#[derive(Debug)]
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once("=\"").expect("label");
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            samples.insert((name.to_owned(), labels), value.parse().expect("value"));
        }
        Scrape(samples)
    }

    /// The sample's value; 0 when absent (a series not created yet).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.0.keys().any(|(n, _)| n == name)
    }
}

async fn scrape(d: &Daemon) -> Scrape {
    let auth = format!("Bearer {TOKEN}");
    let stream = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
        .header("host", "policyd")
        .header("authorization", auth)
        .body(http_body_util::Full::new(hyper::body::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    Scrape::parse(std::str::from_utf8(&body).unwrap())
}

async fn call(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let (status, _, value) = d
        .with_headers(
            method,
            path,
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            bytes,
        )
        .await;
    (status.as_u16(), value)
}

fn ask(principal: &str, action: &str, resource: &str) -> Value {
    json!({"principal": principal, "action": action, "resource": resource})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_requests_made() {
    let policies = policies_copy();
    let d = Daemon::start(Setup {
        policies: policies.path().to_path_buf(),
        entities: Some(repo_entities()),
        watch: false,
        auth: policyd::config::Auth {
            token: Some(TOKEN.as_bytes().to_vec()),
            open_decisions: false,
        },
        ..Setup::default()
    })
    .await;

    // The admin token guards the route.
    let (status, _) = d.raw("GET", "/metrics", vec![]).await;
    assert_eq!(status, 401);

    let before = scrape(&d).await;
    let single = [("route", "/v1/is_authorized")];
    let batch = [("route", "/v1/is_authorized/batch")];

    // Decisions: two single allows, one single deny, one single error, a batch of an allow
    // and two denies.
    let allow = ask(
        r#"User::"bob""#,
        r#"Action::"view""#,
        r#"Project::"vision""#,
    );
    let deny = ask(
        r#"User::"eve""#,
        r#"Action::"view""#,
        r#"Project::"speech""#,
    );
    for body in [&allow, &allow, &deny] {
        let (status, answer) = call(&d, "POST", "/v1/is_authorized", Some(body.clone())).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, _) = call(
        &d,
        "POST",
        "/v1/is_authorized",
        Some(json!({"principal": "User::\"bob\""})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, answer) = call(
        &d,
        "POST",
        "/v1/is_authorized/batch",
        Some(json!({"requests": [allow, deny, deny]})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    // A refused reload: a policy file that does not parse.
    std::fs::write(policies.path().join("broken.cedar"), "permit(principal,").unwrap();
    let (status, answer) = call(&d, "POST", "/v1/policies/reload", None).await;
    assert_eq!(status, 422, "{answer}");
    std::fs::remove_file(policies.path().join("broken.cedar")).unwrap();

    // Writes: two new users, one deleted again; one reservation held.
    let (status, answer) = call(
        &d,
        "PUT",
        "/v1/entities",
        Some(json!([
            {"uid": {"type": "User", "id": "m1"}, "attrs": {"name": "M1"}, "parents": []},
            {"uid": {"type": "User", "id": "m2"}, "attrs": {"name": "M2"}, "parents": []},
        ])),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = call(&d, "DELETE", "/v1/entities/User/m2", None).await;
    assert_eq!(status, 204);
    let (status, answer) = call(
        &d,
        "POST",
        "/v1/storage/reservations",
        Some(json!({"project": "Project::\"speech\"", "bytes": 1000, "ttl_seconds": 600})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    // A path no route serves, and a method the path does not serve.
    assert_eq!(call(&d, "GET", "/v1/nothing", None).await.0, 404);
    assert_eq!(call(&d, "DELETE", "/v1/policies", None).await.0, 405);

    // The activity log writes in the background: wait until every record above is written
    // (6 decisions, 2 upserts, 1 delete, 1 refused reload).
    let expected_records = 6.0 + 2.0 + 1.0 + 1.0;
    let written = "policyd_activity_records_written_total";
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = scrape(&d).await;
        if s.get(written, &[]) - before.get(written, &[]) >= expected_records
            || Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let with = |base: &[(&'static str, &'static str)], more: (&'static str, &'static str)| {
        let mut v = base.to_vec();
        v.push(more);
        v
    };

    assert_eq!(moved(written, &[]), expected_records);
    assert_eq!(moved("policyd_activity_records_dropped_total", &[]), 0.0);
    assert_eq!(after.get("policyd_activity_records_queued", &[]), 0.0);

    let decisions = "policyd_decisions_total";
    assert_eq!(moved(decisions, &with(&single, ("result", "allow"))), 2.0);
    assert_eq!(moved(decisions, &with(&single, ("result", "deny"))), 1.0);
    assert_eq!(moved(decisions, &with(&single, ("result", "error"))), 1.0);
    assert_eq!(moved(decisions, &with(&batch, ("result", "allow"))), 1.0);
    assert_eq!(moved(decisions, &with(&batch, ("result", "deny"))), 2.0);
    assert_eq!(moved(decisions, &with(&batch, ("result", "error"))), 0.0);
    let latency = "policyd_decision_duration_seconds_count";
    assert_eq!(moved(latency, &single), 4.0);
    assert_eq!(moved(latency, &batch), 1.0);
    assert_eq!(
        moved(
            "policyd_decision_duration_seconds_bucket",
            &with(&single, ("le", "+Inf"))
        ),
        4.0
    );

    let http = |method: &'static str, route: &'static str, status: &'static str| {
        moved(
            "policyd_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http("POST", "/v1/is_authorized", "200"), 3.0);
    assert_eq!(http("POST", "/v1/is_authorized", "400"), 1.0);
    assert_eq!(http("POST", "/v1/is_authorized/batch", "200"), 1.0);
    assert_eq!(http("POST", "/v1/policies/reload", "422"), 1.0);
    assert_eq!(http("PUT", "/v1/entities", "200"), 1.0);
    assert_eq!(http("DELETE", "/v1/entities/{type}/{id}", "204"), 1.0);
    assert_eq!(http("POST", "/v1/storage/reservations", "201"), 1.0);
    assert_eq!(http("GET", "unmatched", "404"), 1.0);
    assert_eq!(http("DELETE", "/v1/policies", "405"), 1.0);
    // The scrapes after the first (each counted once answered) and the refused one.
    let scrapes = http("GET", "/metrics", "200");
    assert!(scrapes >= 1.0, "{scrapes}");
    assert_eq!(
        before.get(
            "policyd_http_requests_total",
            &[("method", "GET"), ("route", "/metrics"), ("status", "401")]
        ),
        1.0
    );

    let reloads = "policyd_policy_reloads_total";
    let reload =
        |outcome: &'static str| moved(reloads, &[("trigger", "api"), ("outcome", outcome)]);
    assert_eq!(reload("refused"), 1.0);
    assert_eq!(reload("applied"), 0.0);
    assert_eq!(reload("unchanged"), 0.0);
    assert_eq!(
        moved(reloads, &[("trigger", "watch"), ("outcome", "refused")]),
        0.0
    );

    let users = [("type", "User")];
    assert_eq!(moved("policyd_entities_stored", &users), 1.0);
    assert_eq!(moved("policyd_storage_reservations_open", &[]), 1.0);

    // Read-at-scrape values agree with the status route, read with nothing in between.
    let (_, status) = call(&d, "GET", "/v1/policies", None).await;
    let now = scrape(&d).await;
    let cache = &status["entity_cache"];
    assert_eq!(
        now.get("policyd_entity_cache_hits_total", &[]),
        cache["hits"].as_f64().unwrap()
    );
    assert_eq!(
        now.get("policyd_entity_cache_misses_total", &[]),
        cache["misses"].as_f64().unwrap()
    );
    assert!(now.get("policyd_entity_cache_misses_total", &[]) > 0.0);
    assert_eq!(
        now.get("policyd_policies", &[]),
        status["policies"].as_array().unwrap().len() as f64
    );
    let revision = status["revision"].as_str().unwrap();
    assert_eq!(
        now.get("policyd_policy_revision_info", &[("revision", revision)]),
        1.0
    );
    let analysis = &status["analysis"];
    assert_eq!(
        now.get("policyd_policy_analysis_widenings_total", &[]),
        analysis["widenings"].as_f64().unwrap()
    );
    assert_eq!(
        now.get("policyd_policy_analyses_total", &[("outcome", "completed")]),
        analysis["completed"].as_f64().unwrap()
    );
    let stored: f64 = now
        .0
        .iter()
        .filter(|((n, _), _)| n == "policyd_entities_stored")
        .map(|(_, v)| v)
        .sum();
    let counted = d.state.store.count().unwrap() as f64;
    assert_eq!(stored, counted);
    assert!(now.get("policyd_policies_loaded_timestamp_seconds", &[]) > 1.7e9);
    if cfg!(target_os = "linux") {
        assert!(now.get("policyd_process_resident_memory_bytes", &[]) > 1e6);
        assert!(now.get("policyd_process_open_fds", &[]) >= 3.0);
    }
    assert!(now.has("policyd_decision_duration_seconds_bucket"));
    d.stop().await;
}

/// Connections are dealt in turn to the serving threads (`--http-threads`), each running a
/// runtime of its own; with 0 they are served on the shared runtime. Each count includes the
/// scrape's own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_dealt_to_the_serving_threads() {
    let open = "policyd_http_connections_open";
    for threads in [2, 0] {
        let d = Daemon::start(Setup {
            watch: false,
            auth: policyd::config::Auth {
                token: Some(TOKEN.as_bytes().to_vec()),
                open_decisions: false,
            },
            limits: policyd::config::Limits {
                http_threads: threads,
                ..Default::default()
            },
            ..Setup::default()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(common::held_connection(d.addr).await);
        }
        let s = scrape(&d).await;
        let counts: Vec<f64> = ["policyd-http-0", "policyd-http-1", "runtime"]
            .iter()
            .map(|t| s.get(open, &[("thread", t)]))
            .collect();
        let expected = if threads == 2 {
            [2.0, 2.0, 0.0]
        } else {
            [0.0, 0.0, 4.0]
        };
        assert_eq!(counts, expected, "--http-threads {threads}");
        drop(held);
        d.stop().await;
    }
}

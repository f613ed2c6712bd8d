//! Property tests of the HTTP layer: whatever bytes arrive, the answer is a 4xx with a JSON
//! error, never a 5xx or a panic, and the store is unchanged. The same inputs as the fuzz
//! targets in `fuzz/`, run on stable in `cargo test`.

mod common;

use common::{Daemon, Setup, repo_entities};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let good = json!({"principal": "User::\"dave\"", "action": "Action::\"view\"", "resource": "Project::\"nlp\""}).to_string();
    prop_oneof![
        // Random bytes, including invalid UTF-8.
        proptest::collection::vec(any::<u8>(), 0..256),
        // Truncated valid JSON.
        (0..good.len()).prop_map(move |n| good.as_bytes()[..n].to_vec()),
        // Deep nesting.
        (1..5000usize).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
        (1..3000usize).prop_map(|d| format!("{{\"context\": {}1{}}}", "{\"a\":".repeat(d), "}".repeat(d)).into_bytes()),
        // Huge and odd numbers and strings in every field.
        prop_oneof![
            Just(json!(1e308)), Just(json!(u64::MAX)), Just(json!(-0.0)), Just(json!("\u{0}\u{ffff}")),
            Just(json!([])), Just(json!({})), Just(json!(null)), Just(json!(true)),
            "\\PC{0,40}".prop_map(|s| json!(s)),
        ]
        .prop_flat_map(|v| prop_oneof![Just("principal"), Just("action"), Just("resource"), Just("context"), Just("requests"), Just("project"), Just("bytes")]
            .prop_map(move |k| json!({ k: v.clone() }).to_string().into_bytes())),
        // Entity arrays with junk inside.
        "\\PC{0,60}".prop_map(|s| format!(r#"[{{"uid": {{"type": "User", "id": "x"}}, "attrs": {{"name": {s:?}, "x": [{s:?}]}}, "parents": [{s:?}]}}]"#).into_bytes()),
    ]
}

#[test]
fn any_bytes_get_a_4xx_and_change_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = rt.block_on(Daemon::start(Setup {
        entities: Some(repo_entities()),
        activity: false,
        ..Setup::default()
    }));
    let before = d.state.store.count().unwrap();
    let routes = [
        ("POST", "/v1/is_authorized"),
        ("POST", "/v1/is_authorized/batch"),
        ("PUT", "/v1/entities"),
        ("POST", "/v1/storage/check"),
        ("POST", "/v1/storage/reservations"),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(bodies(), 0..routes.len()), |(body, r)| {
            let (method, path) = routes[r];
            // The one generated body that is a valid request: an empty batch.
            let empty_batch = serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v == json!({"requests": []}));
            prop_assume!(!(path == "/v1/is_authorized/batch" && empty_batch));
            let (status, resp) = rt.block_on(d.raw(method, path, body.clone()));
            prop_assert!(
                status.is_client_error(),
                "{method} {path} {:?}: {status} {resp}",
                String::from_utf8_lossy(&body)
            );
            prop_assert!(resp["error"]["code"].is_string(), "{resp}");
            Ok(())
        })
        .unwrap();
    assert_eq!(
        d.state.store.count().unwrap(),
        before,
        "a refused request changed the store"
    );
    let (status, _) = rt.block_on(d.call("GET", "/readyz", None));
    assert_eq!(status, 200, "still serving");
}

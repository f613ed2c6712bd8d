//! The AuthZEN 1.0 API against the real daemon: the specification's own example requests
//! (evaluation, evaluations with each semantic, subject, resource and action search, paging,
//! metadata) answer as the examples say, and the error rules hold (400 for malformed payloads,
//! `decision: false` for what the schema refuses, 405, 415, X-Request-ID echo, properties
//! merged and never stored).

mod common;

use common::Daemon;
use hyper::StatusCode;
use serde_json::{Value, json};

const SCHEMA: &str = r#"
entity user;
entity account, document { readers: Set<user>, label?: String };
entity todo;
action can_read, can_write, can_edit, read
  appliesTo { principal: user, resource: [account, document, todo], context: { time?: String } };
"#;

const POLICIES: &str = r#"
@id("readers")
permit (principal, action in [Action::"can_read", Action::"read"], resource)
when { resource has readers && resource.readers.contains(principal) };

@id("todos")
permit (principal, action == Action::"can_read", resource is todo);

@id("timed")
permit (principal == user::"123", action in [Action::"can_read", Action::"can_write"], resource)
when { context has time };
"#;

fn users(ids: &[&str]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| json!({"__entity": {"type": "user", "id": id}}))
            .collect(),
    )
}

async fn daemon() -> Daemon {
    let d = Daemon::dir_policies(&[("s.cedarschema", SCHEMA), ("p.cedar", POLICIES)]).await;
    let mut entities = vec![];
    for id in [
        "alice@acmecorp.com",
        "bob@acmecorp.com",
        "carol@acmecorp.com",
        "123",
        "alice@example.com",
    ] {
        entities.push(json!({"uid": {"type": "user", "id": id}, "attrs": {}, "parents": []}));
    }
    for (ty, id, readers) in [
        (
            "account",
            "123",
            vec!["alice@acmecorp.com", "bob@acmecorp.com"],
        ),
        ("account", "456", vec!["alice@acmecorp.com"]),
        ("account", "789", vec!["carol@acmecorp.com"]),
        ("document", "boxcarring.md", vec!["alice@acmecorp.com"]),
        ("document", "subject-search.md", vec![]),
        ("document", "resource-search.md", vec!["alice@acmecorp.com"]),
        ("document", "1", vec!["alice@example.com"]),
        ("document", "2", vec![]),
        ("document", "3", vec!["alice@example.com"]),
    ] {
        entities.push(json!({"uid": {"type": ty, "id": id}, "attrs": {"readers": users(&readers)}, "parents": []}));
    }
    d.put(Value::Array(entities)).await;
    d
}

async fn post(d: &Daemon, path: &str, body: Value) -> Value {
    let (status, answer) = d.call("POST", path, Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{path} {body}: {answer}");
    answer
}

fn decisions(answer: &Value) -> Vec<bool> {
    answer["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"].as_bool().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_specifications_examples_answer_as_written() {
    let d = daemon().await;
    // Access evaluation (HTTPS binding example), with its X-Request-ID echoed.
    let body = json!({
        "subject": {"type": "user", "id": "alice@acmecorp.com"},
        "resource": {"type": "todo", "id": "1"},
        "action": {"name": "can_read"},
        "context": {"time": "1985-10-26T01:22-07:00"}
    });
    let (status, headers, answer) = d
        .with_headers(
            "POST",
            "/access/v1/evaluation",
            &[
                ("content-type", "application/json"),
                ("x-request-id", "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"),
            ],
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["decision"], json!(true), "{answer}");
    assert_eq!(
        headers["x-request-id"],
        "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"
    );

    // Access evaluations: defaults, and an item replacing the action.
    let answer = post(&d, "/access/v1/evaluations", json!({
        "subject": {"type": "user", "id": "alice@acmecorp.com"},
        "context": {"time": "2024-05-31T15:22-07:00"},
        "action": {"name": "can_read"},
        "evaluations": [
            {"resource": {"type": "document", "id": "boxcarring.md"}},
            {"resource": {"type": "document", "id": "subject-search.md"}},
            {"action": {"name": "can_edit"}, "resource": {"type": "document", "id": "resource-search.md"}}
        ]
    })).await;
    assert_eq!(decisions(&answer), [true, false, false], "{answer}");

    // The three semantics over documents 1, 2, 3.
    let semantic = |s: &str| {
        json!({
            "subject": {"type": "user", "id": "alice@example.com"},
            "action": {"name": "read"},
            "options": {"evaluations_semantic": s},
            "evaluations": [
                {"resource": {"type": "document", "id": "1"}},
                {"resource": {"type": "document", "id": "2"}},
                {"resource": {"type": "document", "id": "3"}}
            ]
        })
    };
    let all = post(&d, "/access/v1/evaluations", semantic("execute_all")).await;
    assert_eq!(decisions(&all), [true, false, true], "{all}");
    let deny = post(&d, "/access/v1/evaluations", semantic("deny_on_first_deny")).await;
    assert_eq!(decisions(&deny), [true, false], "{deny}");
    let permit = post(
        &d,
        "/access/v1/evaluations",
        semantic("permit_on_first_permit"),
    )
    .await;
    assert_eq!(decisions(&permit), [true], "{permit}");

    // Subject search.
    let answer = post(
        &d,
        "/access/v1/search/subject",
        json!({
            "subject": {"type": "user"},
            "action": {"name": "can_read"},
            "resource": {"type": "account", "id": "123"}
        }),
    )
    .await;
    assert_eq!(
        answer,
        json!({
            "results": [{"type": "user", "id": "alice@acmecorp.com"}, {"type": "user", "id": "bob@acmecorp.com"}],
            "page": {"next_token": ""}
        })
    );

    // Resource search.
    let request = json!({
        "subject": {"type": "user", "id": "alice@acmecorp.com"},
        "action": {"name": "can_read"},
        "resource": {"type": "account"}
    });
    let answer = post(&d, "/access/v1/search/resource", request.clone()).await;
    assert_eq!(
        answer,
        json!({
            "results": [{"type": "account", "id": "123"}, {"type": "account", "id": "456"}],
            "page": {"next_token": ""}
        })
    );

    // Paged: the token comes back as `page.next_token`, as in the example.
    let mut paged = request.clone();
    paged["page"] = json!({"limit": 1});
    let first = post(&d, "/access/v1/search/resource", paged.clone()).await;
    assert_eq!(first["results"], json!([{"type": "account", "id": "123"}]));
    let token = first["page"]["next_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    paged["page"] = json!({"limit": 1, "next_token": token});
    let second = post(&d, "/access/v1/search/resource", paged.clone()).await;
    assert_eq!(
        second,
        json!({"results": [{"type": "account", "id": "456"}], "page": {"next_token": ""}})
    );
    // The token with another query is refused.
    let mut other = paged.clone();
    other["action"] = json!({"name": "can_write"});
    let (status, body) = d
        .call("POST", "/access/v1/search/resource", Some(&other))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different query"),
        "{body}"
    );

    // Action search, with the example's context.
    let answer = post(
        &d,
        "/access/v1/search/action",
        json!({
            "subject": {"type": "user", "id": "123"},
            "resource": {"type": "account", "id": "123"},
            "context": {"time": "2024-10-26T01:22-07:00"}
        }),
    )
    .await;
    assert_eq!(
        answer,
        json!({"results": [{"name": "can_read"}, {"name": "can_write"}], "page": {"next_token": ""}})
    );

    // Metadata: each endpoint's URL (in-process: under the request's Host).
    let (status, meta) = d
        .call("GET", "/.well-known/authzen-configuration", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["policy_decision_point"], "http://policyd");
    assert_eq!(
        meta["access_evaluation_endpoint"],
        "http://policyd/access/v1/evaluation"
    );
    assert_eq!(
        meta["search_action_endpoint"],
        "http://policyd/access/v1/search/action"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_payloads_are_400_and_schema_misfits_are_decision_false() {
    let d = daemon().await;
    let ok = json!({
        "subject": {"type": "user", "id": "alice@acmecorp.com"},
        "action": {"name": "can_read"},
        "resource": {"type": "account", "id": "123"}
    });
    for (what, body) in [
        (
            "missing subject",
            json!({"action": ok["action"], "resource": ok["resource"]}),
        ),
        (
            "missing action",
            json!({"subject": ok["subject"], "resource": ok["resource"]}),
        ),
        (
            "missing resource",
            json!({"subject": ok["subject"], "action": ok["action"]}),
        ),
        (
            "missing type",
            json!({"subject": {"id": "x"}, "action": ok["action"], "resource": ok["resource"]}),
        ),
        (
            "missing id",
            json!({"subject": {"type": "user"}, "action": ok["action"], "resource": ok["resource"]}),
        ),
        (
            "missing name",
            json!({"subject": ok["subject"], "action": {}, "resource": ok["resource"]}),
        ),
        (
            "subject a string",
            json!({"subject": "alice", "action": ok["action"], "resource": ok["resource"]}),
        ),
        (
            "id a number",
            json!({"subject": {"type": "user", "id": 7}, "action": ok["action"], "resource": ok["resource"]}),
        ),
        (
            "context an array",
            json!({"subject": ok["subject"], "action": ok["action"], "resource": ok["resource"], "context": []}),
        ),
        ("an array body", json!([ok.clone()])),
    ] {
        for path in ["/access/v1/evaluation", "/access/v1/evaluations"] {
            let (status, body) = d.call("POST", path, Some(&body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what} at {path}: {body}");
            assert!(
                body.is_object() && body["error"]["message"].is_string(),
                "{what}: {body}"
            );
        }
    }
    for raw in [&b"{not json"[..], b"", b"  "] {
        let (status, body) = d.raw("POST", "/access/v1/evaluation", raw.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw:?}: {body}");
        assert!(body.is_object(), "{body}");
    }
    let (status, _, _) = d
        .with_headers(
            "POST",
            "/access/v1/evaluation",
            &[("content-type", "text/plain")],
            ok.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for method in ["GET", "PUT"] {
        for path in [
            "/access/v1/evaluation",
            "/access/v1/evaluations",
            "/access/v1/search/subject",
            "/access/v1/search/resource",
            "/access/v1/search/action",
        ] {
            let (status, _) = d.call(method, path, None).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    // Well-formed but refused by the schema: 200, decision false, the reason in context.
    let mut unknown_action = ok.clone();
    unknown_action["action"] = json!({"name": "fly"});
    let mut wrong_type = ok.clone();
    wrong_type["subject"] = json!({"type": "account", "id": "123"});
    let mut bad_context = ok.clone();
    bad_context["context"] = json!({"time": 5});
    for (what, body) in [
        ("unknown action", unknown_action),
        ("wrong type", wrong_type),
        ("bad context", bad_context),
    ] {
        let answer = post(&d, "/access/v1/evaluation", body).await;
        assert_eq!(answer["decision"], json!(false), "{what}: {answer}");
        assert!(answer["context"]["reason"].is_string(), "{what}: {answer}");
    }
    // Unknown fields are ignored.
    let mut extra = ok.clone();
    extra["future"] = json!({"x": 1});
    extra["subject"]["future"] = json!(true);
    extra["action"]["properties"] = json!({"method": "GET"});
    assert_eq!(
        post(&d, "/access/v1/evaluation", extra).await["decision"],
        json!(true)
    );
    // Evaluations: an incomplete item is `decision: false` in its place; none is a single one.
    let answer = post(&d, "/access/v1/evaluations", json!({
        "subject": ok["subject"], "action": ok["action"],
        "evaluations": [{"resource": {"type": "account", "id": "123"}}, {"resource": {"type": "account"}}, {}]
    })).await;
    assert_eq!(decisions(&answer), [true, false, false], "{answer}");
    let (status, body) = d
        .call(
            "POST",
            "/access/v1/evaluations",
            Some(&json!({"subject": "alice", "evaluations": [{"resource": ok["resource"]}]})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a default of the wrong type: {body}"
    );
    let single = post(&d, "/access/v1/evaluations", ok.clone()).await;
    assert_eq!(single["decision"], json!(true), "{single}");
    // Searches need their known side whole; an unknown type or id finds nothing.
    let (status, _) = d.call("POST", "/access/v1/search/subject", Some(&json!({
        "subject": {"type": "user"}, "action": {"name": "can_read"}, "resource": {"type": "account"}
    }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = d
        .call(
            "POST",
            "/access/v1/search/action",
            Some(&json!({
                "subject": {"type": "user", "id": "123"}, "resource": {"type": "account"}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for body in [
        json!({"subject": {"type": "user", "id": "alice@acmecorp.com"}, "action": {"name": "can_read"}, "resource": {"type": "spaceship"}}),
        json!({"subject": {"type": "user", "id": "nobody"}, "action": {"name": "can_read"}, "resource": {"type": "account"}}),
        json!({"subject": {"type": "user", "id": "alice@acmecorp.com"}, "action": {"name": "fly"}, "resource": {"type": "account"}}),
    ] {
        let answer = post(&d, "/access/v1/search/resource", body).await;
        assert_eq!(answer["results"], json!([]), "{answer}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_count_for_one_decision_and_are_never_stored() {
    let d = daemon().await;
    let alice = json!({"type": "user", "id": "alice@acmecorp.com"});
    let read = json!({"name": "can_read"});
    // A stored account alice may not read, with readers given as properties: allowed once.
    let given = json!({"type": "account", "id": "789", "properties": {
        "readers": [{"type": "user", "id": "alice@acmecorp.com"}], "undeclared": 1
    }});
    let answer = post(
        &d,
        "/access/v1/evaluation",
        json!({"subject": alice, "action": read, "resource": given}),
    )
    .await;
    assert_eq!(answer["decision"], json!(true), "{answer}");
    let plain = json!({"type": "account", "id": "789"});
    let answer = post(
        &d,
        "/access/v1/evaluation",
        json!({"subject": alice, "action": read, "resource": plain}),
    )
    .await;
    assert_eq!(
        answer["decision"],
        json!(false),
        "the properties were not stored: {answer}"
    );
    // An entity not in the store becomes a transient one; it stays absent.
    let new = json!({"type": "document", "id": "draft", "properties": {
        "readers": [{"type": "user", "id": "alice@acmecorp.com"}]
    }});
    let answer = post(
        &d,
        "/access/v1/evaluation",
        json!({"subject": alice, "action": read, "resource": new}),
    )
    .await;
    assert_eq!(answer["decision"], json!(true), "{answer}");
    assert!(d.get("document", "draft").await.is_none());
    // A declared property that does not type-check: decision false, with the reason.
    let bad = json!({"type": "document", "id": "draft", "properties": {"readers": "everyone"}});
    let answer = post(
        &d,
        "/access/v1/evaluation",
        json!({"subject": alice, "action": read, "resource": bad}),
    )
    .await;
    assert_eq!(answer["decision"], json!(false), "{answer}");
    assert!(
        answer["context"]["reason"]
            .as_str()
            .unwrap()
            .contains("readers"),
        "{answer}"
    );
    d.stop().await;
}

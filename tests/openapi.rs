//! `GET /v1/openapi.json`: an OpenAPI 3.1 document that parses as one, every `$ref` in it
//! resolves, and its operations are exactly the routes the daemon serves.

mod common;

use std::collections::BTreeSet;

use common::Daemon;
use policyd::api::routes::ROUTES;
use serde_json::Value;

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// A concrete path for a pattern: each `{param}` becomes `x`.
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|p| if p.starts_with('{') { "x" } else { p })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_openapi_3_1_and_matches_the_router() {
    let d = Daemon::demo().await;
    let (status, doc) = d.call("GET", "/v1/openapi.json", None).await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );

    let spec = oas3::from_json(doc.to_string()).expect("parses as OpenAPI 3.1");
    assert!(spec.openapi.starts_with("3.1"));
    let paths = spec.paths.clone().expect("paths");

    // Every operation of the document, and every route of the table.
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.methods()
                .into_iter()
                .map(move |(m, _)| (m.as_str().to_owned(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.pattern.to_owned()))
        .collect();
    assert_eq!(documented, routed);

    for (path, item) in &paths {
        for (method, op) in item.methods() {
            let responses = op.responses.as_ref().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents no success"
            );
            assert!(responses.contains_key("500"), "{method} {path}");
            let route = ROUTES
                .iter()
                .find(|r| r.pattern == path && r.method.as_str() == method.as_str())
                .unwrap();
            let guarded = route.access != policyd::api::routes::Access::Open;
            assert_eq!(responses.contains_key("401"), guarded, "{method} {path}");
            for p in path.split('/').filter(|p| p.starts_with('{')) {
                let name = p.trim_matches(['{', '}']);
                let declared = op
                    .parameters
                    .iter()
                    .any(|param| param.resolve(&spec).is_ok_and(|param| param.name == name));
                assert!(declared, "{method} {path} does not declare {name}");
            }
            if let Some(body) = &op.request_body {
                body.resolve(&spec).expect("request body resolves");
            }
            for r in responses.values() {
                r.resolve(&spec).expect("response resolves");
            }
        }
    }

    // Every schema reference resolves to a component.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r} is not a schema reference"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{r} does not resolve"
        );
    }
    let request = &doc["components"]["schemas"]["DecisionRequest"]["properties"];
    for field in ["principal", "action", "resource", "context"] {
        assert!(
            request.get(field).is_some(),
            "DecisionRequest lacks {field}"
        );
    }

    // And the router serves each documented operation: no `no route` 404 and no 405.
    for (method, path) in &documented {
        let (status, _, body) = d.with_headers(method, &concrete(path), &[], vec![]).await;
        assert_ne!(status, 405, "{method} {path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(!message.starts_with("no route"), "{method} {path}: {body}");
    }
    // While a path it does not document is not served.
    let (status, body) = d.raw("GET", "/v1/undocumented", vec![]).await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (404, &Value::from("not_found"))
    );
    d.stop().await;
}

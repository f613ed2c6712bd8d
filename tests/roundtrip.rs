//! Every Cedar value kind survives the store exactly: written, read back, and decided on.

mod common;

use cedar_policy::{Entity, Schema};
use common::{Daemon, Setup, policy_dir};
use serde_json::{Value, json};

const SCHEMA: &str = r#"
entity Color enum ["red", "green", "blue"];

entity Doc in [Doc] {
  title: String,
  count: Long,
  negative: Long,
  flag: Bool,
  labels: Set<String>,
  nums: Set<Long>,
  meta: { author: String, rev: Long, inner: { deep: Bool } },
  owner?: Doc,
  color: Color,
  colors: Set<Color>,
  addr: ipaddr,
  price: decimal,
  at: datetime,
  ttl: duration,
  maybe?: String,
  empty_set: Set<Long>,
  empty_record: {},
} tags Set<String>;

namespace Acme::Lab {
  entity Sample in [Sample] { note: String, doc: Doc };
  action touch appliesTo { principal: Sample, resource: Sample };
}

action read appliesTo { principal: Doc, resource: Doc };
"#;

/// Allows `read` only when every stored value compares equal to what was written, so a decision
/// proves the values survived with their Cedar types, not just as JSON.
const POLICY: &str = r#"
@id("values-intact")
permit (principal, action == Action::"read", resource)
when {
  resource.title == "T\u{e9}st \"quoted\"" &&
  resource.count == 9223372036854775807 &&
  resource.negative == -9223372036854775808 &&
  resource.flag &&
  resource.labels == ["a", "b"] &&
  resource.nums.containsAll([1, 2, 3]) &&
  resource.meta.inner.deep &&
  resource.color == Color::"green" &&
  resource.addr.isInRange(ip("10.0.0.0/8")) &&
  resource.price == decimal("12.3400") &&
  resource.at == datetime("2024-10-15T11:35:00.123Z") &&
  resource.ttl == duration("1h30m") &&
  resource.hasTag("k") && resource.getTag("k").contains("v") &&
  resource in Doc::"root"
};

@id("lab")
permit (principal, action == Acme::Lab::Action::"touch", resource)
when { resource.doc.flag && principal in resource };
"#;

fn doc(id: &str) -> Value {
    json!({
        "uid": {"type": "Doc", "id": id},
        "attrs": {
            "title": "T\u{e9}st \"quoted\"",
            "count": i64::MAX,
            "negative": i64::MIN,
            "flag": true,
            "labels": ["b", "a"],
            "nums": [3, 1, 2, 2],
            "meta": {"author": "ada", "rev": 7, "inner": {"deep": true}},
            "owner": {"__entity": {"type": "Doc", "id": "root"}},
            "color": {"__entity": {"type": "Color", "id": "green"}},
            "colors": [{"__entity": {"type": "Color", "id": "red"}}, {"__entity": {"type": "Color", "id": "blue"}}],
            "addr": {"__extn": {"fn": "ip", "arg": "10.1.2.3/32"}},
            "price": {"__extn": {"fn": "decimal", "arg": "12.3400"}},
            "at": {"__extn": {"fn": "datetime", "arg": "2024-10-15T11:35:00.123Z"}},
            "ttl": {"__extn": {"fn": "duration", "arg": "1h30m"}},
            "empty_set": [],
            "empty_record": {},
        },
        "parents": [{"type": "Doc", "id": "root"}],
        "tags": {"k": ["v", "w"], "": []},
    })
}

fn root() -> Value {
    let mut root = doc("root");
    root["parents"] = json!([]);
    root["attrs"].as_object_mut().unwrap().remove("owner");
    root
}

/// Ids that are hard to carry: empty, unicode, quotes, separators and control characters.
const IDS: &[&str] = &[
    "",
    "plain",
    "caf\u{e9} \u{1F680} \u{4e2d}\u{6587}",
    "with \"quotes\" and \\backslash",
    "slash/and::colons",
    "tab\tnewline\ncarriage\rbell\u{7}",
    "nul\u{0}inside",
    "Plain",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_kind_round_trips_exactly() {
    let dir = policy_dir(&[("schema.cedarschema", SCHEMA), ("p.cedar", POLICY)]);
    let d = Daemon::start(Setup {
        policies: dir.path().to_path_buf(),
        ..Setup::default()
    })
    .await;
    let (schema, _) = Schema::from_cedarschema_str(SCHEMA).unwrap();

    let mut written = vec![root()];
    written.extend(IDS.iter().map(|id| doc(id)));
    written.push(json!({
        "uid": {"type": "Acme::Lab::Sample", "id": "s\u{e9}"},
        "attrs": {"note": "", "doc": {"__entity": {"type": "Doc", "id": "plain"}}},
        "parents": [{"type": "Acme::Lab::Sample", "id": ""}],
    }));
    written.push(json!({
        "uid": {"type": "Acme::Lab::Sample", "id": ""},
        "attrs": {"note": "top", "doc": {"__entity": {"type": "Doc", "id": ""}}},
        "parents": [],
    }));
    d.put(Value::Array(written.clone())).await;

    for original in &written {
        let ty = original["uid"]["type"].as_str().unwrap();
        let id = original["uid"]["id"].as_str().unwrap();
        let stored = d
            .get(ty, id)
            .await
            .unwrap_or_else(|| panic!("{ty} {id:?} was not stored"));
        let want = Entity::from_json_value(original.clone(), Some(&schema)).unwrap();
        // Read back without a schema: the stored JSON must carry every type on its own.
        let got = Entity::from_json_value(stored.clone(), None).unwrap();
        assert!(
            want.deep_eq(&got),
            "{ty} {id:?}:\nwrote {want}\nread  {got}"
        );
        assert_eq!(stored, want.to_json_value().unwrap(), "{ty} {id:?}");
    }

    // Ids differing only in case are different entities.
    assert!(d.get("Doc", "PLAIN").await.is_none());
    assert_eq!(
        d.get("Doc", "Plain").await.unwrap()["uid"]["id"],
        json!("Plain")
    );

    // Decisions see the same values.
    for id in IDS {
        let (status, body) = d
            .call(
                "POST",
                "/v1/is_authorized",
                Some(&json!({
                    "principal": {"type": "Doc", "id": "root"},
                    "action": {"type": "Action", "id": "read"},
                    "resource": {"type": "Doc", "id": id},
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["decision"], "Allow", "Doc {id:?}: {body}");
    }
    let (decision, reasons) = d
        .decide(
            "Acme::Lab::Sample::\"s\u{e9}\"",
            r#"Acme::Lab::Action::"touch""#,
            r#"Acme::Lab::Sample::"""#,
        )
        .await;
    assert_eq!(
        (decision.as_str(), reasons),
        ("Allow", vec!["lab".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enum_entities_outside_the_enumeration_are_refused() {
    let dir = policy_dir(&[("schema.cedarschema", SCHEMA), ("p.cedar", POLICY)]);
    let d = Daemon::start(Setup {
        policies: dir.path().to_path_buf(),
        ..Setup::default()
    })
    .await;
    let mut bad = doc("x");
    bad["attrs"]["color"] = json!({"__entity": {"type": "Color", "id": "purple"}});
    let (status, body) = d
        .call("PUT", "/v1/entities", Some(&json!([root(), bad])))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_entity");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("entity 1 (Doc::\"x\")"),
        "{body}"
    );
    assert!(
        d.get("Doc", "root").await.is_none(),
        "a refused write must write nothing"
    );
}

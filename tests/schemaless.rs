//! Without a schema: policies load unvalidated, actions (and action groups) live in the store,
//! and references are followed as deep as the policies' attribute chains go.

mod common;

use common::Daemon;
use serde_json::json;

const POLICY: &str = r#"
@id("readers")
permit (principal, action in Action::"read-group", resource)
when { resource.owner.team.lead.name == "lee" };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_come_from_the_store_and_chains_are_followed() {
    let d = Daemon::dir_policies(&[("p.cedar", POLICY)]).await;
    let (_, policies) = d.call("GET", "/v1/policies", None).await;
    assert_eq!(policies["schema"], false);
    // resource.owner.team.lead.name: four dereferences, counted from the policy's syntax.
    assert_eq!(policies["deref_depth"], 4);
    assert_eq!(
        policies["slicing"],
        json!({"mode": "bounded", "depth": 4, "proof": "syntax",
               "follows": {"attributes": ["lead", "owner", "team"], "tags": false}})
    );
    d.put(json!([
        {"uid": {"type": "Action", "id": "read-group"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Action", "id": "read"}, "attrs": {}, "parents": [{"type": "Action", "id": "read-group"}]},
        {"uid": {"type": "Doc", "id": "d"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "o"}}}, "parents": []},
        {"uid": {"type": "User", "id": "o"}, "attrs": {"team": {"__entity": {"type": "Team", "id": "t"}}}, "parents": []},
        {"uid": {"type": "Team", "id": "t"}, "attrs": {"lead": {"__entity": {"type": "User", "id": "lee"}}}, "parents": []},
        {"uid": {"type": "User", "id": "lee"}, "attrs": {"name": "lee"}, "parents": []},
    ]))
    .await;
    let (decision, reasons) = d
        .decide("User::\"x\"", "Action::\"read\"", "Doc::\"d\"")
        .await;
    assert_eq!(
        (decision.as_str(), reasons),
        ("Allow", vec!["readers".to_owned()])
    );

    // Without the action group in the store, `action in Action::"read-group"` is false.
    let (status, _) = d.call("DELETE", "/v1/entities/Action/read", None).await;
    assert_eq!(status, 204);
    let (decision, _) = d
        .decide("User::\"x\"", "Action::\"read\"", "Doc::\"d\"")
        .await;
    assert_eq!(decision, "Deny");
}

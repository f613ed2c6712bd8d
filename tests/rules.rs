//! The platform's rules, over HTTP against the bundled policies and demo entities.

mod common;

use common::Daemon;
use serde_json::json;

/// (principal, action, resource, allowed, determining policies)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
);

fn uid(ty: &str, id: &str) -> String {
    format!("{ty}::\"{id}\"")
}

async fn assert_cases(daemon: &Daemon, cases: &[Case]) {
    let mut failures = Vec::new();
    for (principal, action, resource, allowed, reasons) in cases {
        let (p, a) = (uid("User", principal), uid("Action", action));
        let (decision, got) = daemon.decide(&p, &a, resource).await;
        let want = if *allowed { "Allow" } else { "Deny" };
        let mut want_reasons: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        want_reasons.sort();
        if decision != want || got != want_reasons {
            failures.push(format!(
                "{principal} {action} {resource}: got {decision} {got:?}, want {want} {want_reasons:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

const ORG: &str = r#"Organization::"acme""#;
const GLOBEX: &str = r#"Organization::"globex""#;
const VISION: &str = r#"Project::"vision""#; // private, owner bob
const NLP: &str = r#"Project::"nlp""#; // public, owner carol
const SPEECH: &str = r#"Project::"speech""#; // shared with carol and eve, owner bob
const ADS: &str = r#"Project::"ads""#; // globex, public, owner eve

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_1_tenant_isolation() {
    let d = Daemon::demo().await;
    assert_cases(
        &d,
        &[
            // eve is in speech's `members`, but belongs to globex.
            ("eve", "view", SPEECH, false, &["guardrails.tenant-project"]),
            (
                "eve",
                "view",
                r#"Dataset::"speech-audio""#,
                false,
                &["guardrails.tenant-content"],
            ),
            ("eve", "view", NLP, false, &["guardrails.tenant-project"]),
            ("bob", "view", ADS, false, &["guardrails.tenant-project"]),
            (
                "bob",
                "view",
                r#"Dataset::"ads-clicks""#,
                false,
                &["guardrails.tenant-content"],
            ),
            (
                "eve",
                "view_storage",
                ORG,
                false,
                &["guardrails.tenant-organization"],
            ),
            (
                "frank",
                "create_project",
                ORG,
                false,
                &["guardrails.tenant-organization"],
            ),
            (
                "eve",
                "create_project",
                GLOBEX,
                true,
                &["org-member.create-project"],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_2_org_admins() {
    let d = Daemon::demo().await;
    assert_cases(
        &d,
        &[
            (
                "ada",
                "view_storage",
                ORG,
                true,
                &["org-admin.organization"],
            ),
            (
                "ada",
                "view_activity",
                ORG,
                true,
                &["org-admin.organization"],
            ),
            (
                "ada",
                "manage_users",
                ORG,
                true,
                &["org-admin.organization"],
            ),
            (
                "ada",
                "view_storage",
                VISION,
                true,
                &["org-admin.project-storage"],
            ),
            (
                "ada",
                "view_storage",
                NLP,
                true,
                &["org-admin.project-storage"],
            ),
            ("bob", "view_storage", ORG, false, &[]),
            ("bob", "manage_users", ORG, false, &[]),
            ("bob", "view_storage", NLP, false, &[]),
            // Being admin does not open private content.
            (
                "ada",
                "view",
                VISION,
                false,
                &["guardrails.private-project"],
            ),
            (
                "ada",
                "view",
                r#"Dataset::"vision-images""#,
                false,
                &["guardrails.private-content"],
            ),
            (
                "ada",
                "edit",
                r#"Dataset::"nlp-corpus""#,
                false,
                &["guardrails.dataset-owner-only"],
            ),
            // Another org's admin gets nothing here.
            (
                "eve",
                "view_activity",
                ORG,
                false,
                &["guardrails.tenant-organization"],
            ),
            (
                "eve",
                "view_storage",
                VISION,
                false,
                &["guardrails.tenant-project"],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_3_members_create_projects() {
    let d = Daemon::demo().await;
    assert_cases(
        &d,
        &[
            (
                "dave",
                "create_project",
                ORG,
                true,
                &["org-member.create-project"],
            ),
            (
                "ada",
                "create_project",
                ORG,
                true,
                &["org-member.create-project"],
            ),
            (
                "dave",
                "create_project",
                GLOBEX,
                false,
                &["guardrails.tenant-organization"],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_4_project_owner() {
    let d = Daemon::demo().await;
    let mut cases: Vec<Case> = [
        "view",
        "edit",
        "delete",
        "share",
        "add_content",
        "view_storage",
    ]
    .into_iter()
    .map(|a| ("bob", a, VISION, true, &["owner.project"][..]))
    .collect();
    cases.extend_from_slice(&[
        (
            "bob",
            "view",
            r#"Dataset::"speech-notes""#,
            true,
            &["owner.project-content-view"],
        ),
        (
            "bob",
            "view",
            r#"Dataset::"vision-notes""#,
            true,
            &["owner.project-content-view"],
        ),
        (
            "carol",
            "edit",
            r#"Run::"nlp-run-2""#,
            true,
            &["owner.project-runs-models"],
        ),
        (
            "carol",
            "delete",
            r#"Run::"nlp-run-2""#,
            true,
            &["owner.project-runs-models"],
        ),
        (
            "carol",
            "view",
            r#"Run::"nlp-run-2""#,
            true,
            &["owner.project-content-view", "public.content"],
        ),
        // Rule 8: datasets stay with their owners.
        (
            "bob",
            "edit",
            r#"Dataset::"speech-notes""#,
            false,
            &["guardrails.dataset-owner-only"],
        ),
        (
            "carol",
            "delete",
            r#"Dataset::"nlp-extra""#,
            false,
            &["guardrails.dataset-owner-only"],
        ),
        (
            "carol",
            "duplicate",
            r#"Dataset::"nlp-extra""#,
            true,
            &["public.content"],
        ),
    ]);
    assert_cases(&d, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_5_content_owner() {
    let d = Daemon::demo().await;
    assert_cases(
        &d,
        &[
            (
                "dave",
                "edit",
                r#"Dataset::"nlp-extra""#,
                true,
                &["owner.content"],
            ),
            (
                "dave",
                "delete",
                r#"Dataset::"nlp-extra""#,
                true,
                &["owner.content"],
            ),
            (
                "dave",
                "duplicate",
                r#"Dataset::"nlp-extra""#,
                true,
                &["owner.content", "public.content"],
            ),
            (
                "dave",
                "delete",
                r#"Run::"nlp-run-2""#,
                true,
                &["owner.content"],
            ),
            (
                "carol",
                "edit",
                r#"Dataset::"speech-notes""#,
                true,
                &["owner.content"],
            ),
            (
                "bob",
                "delete",
                r#"Model::"speech-model""#,
                true,
                &["owner.content", "owner.project-runs-models"],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_6_public_projects() {
    let d = Daemon::demo().await;
    assert_cases(
        &d,
        &[
            ("dave", "view", NLP, true, &["public.project"]),
            ("ada", "view", NLP, true, &["public.project"]),
            (
                "dave",
                "view",
                r#"Dataset::"nlp-corpus""#,
                true,
                &["public.content"],
            ),
            (
                "dave",
                "duplicate",
                r#"Dataset::"nlp-corpus""#,
                true,
                &["public.content"],
            ),
            (
                "dave",
                "view",
                r#"Model::"nlp-model""#,
                true,
                &["public.content"],
            ),
            (
                "dave",
                "view",
                r#"Run::"nlp-run-1""#,
                true,
                &["public.content"],
            ),
            // Nothing more.
            ("dave", "edit", NLP, false, &[]),
            ("dave", "delete", NLP, false, &[]),
            ("dave", "share", NLP, false, &[]),
            ("dave", "add_content", NLP, false, &[]),
            ("dave", "view_storage", NLP, false, &[]),
            (
                "dave",
                "edit",
                r#"Dataset::"nlp-corpus""#,
                false,
                &["guardrails.dataset-owner-only"],
            ),
            ("dave", "delete", r#"Model::"nlp-model""#, false, &[]),
            ("dave", "edit", r#"Run::"nlp-run-1""#, false, &[]),
            // Not for users outside the organization.
            ("frank", "view", NLP, false, &["guardrails.tenant-project"]),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_7_shared_projects() {
    let d = Daemon::demo().await;
    assert_cases(
        &d,
        &[
            ("carol", "view", SPEECH, true, &["shared.project"]),
            ("carol", "add_content", SPEECH, true, &["shared.project"]),
            (
                "carol",
                "view",
                r#"Dataset::"speech-audio""#,
                true,
                &["shared.content"],
            ),
            (
                "carol",
                "duplicate",
                r#"Dataset::"speech-audio""#,
                true,
                &["shared.content"],
            ),
            (
                "carol",
                "view",
                r#"Model::"speech-model""#,
                true,
                &["shared.content"],
            ),
            // Nothing more.
            ("carol", "edit", SPEECH, false, &[]),
            ("carol", "share", SPEECH, false, &[]),
            ("carol", "delete", SPEECH, false, &[]),
            ("carol", "view_storage", SPEECH, false, &[]),
            (
                "carol",
                "edit",
                r#"Dataset::"speech-audio""#,
                false,
                &["guardrails.dataset-owner-only"],
            ),
            ("carol", "delete", r#"Model::"speech-model""#, false, &[]),
            // Members only.
            ("dave", "view", SPEECH, false, &[]),
            ("dave", "view", r#"Dataset::"speech-audio""#, false, &[]),
            ("dave", "add_content", SPEECH, false, &[]),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_9_private_projects() {
    let d = Daemon::demo().await;
    assert_cases(
        &d,
        &[
            (
                "carol",
                "view",
                VISION,
                false,
                &["guardrails.private-project"],
            ),
            (
                "dave",
                "view",
                r#"Run::"vision-run-1""#,
                false,
                &["guardrails.private-content"],
            ),
            // Even the owner of content inside a private project loses it to the guardrail.
            (
                "carol",
                "view",
                r#"Dataset::"vision-notes""#,
                false,
                &["guardrails.private-content"],
            ),
            (
                "bob",
                "view",
                r#"Dataset::"vision-images""#,
                true,
                &["owner.content", "owner.project-content-view"],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_entities_change_the_next_decision() {
    let d = Daemon::demo().await;
    let dataset = r#"Dataset::"nlp-corpus""#;
    assert_eq!(
        d.decide(r#"User::"dave""#, r#"Action::"view""#, dataset)
            .await
            .0,
        "Allow"
    );

    // Visibility: public -> private.
    let mut nlp = d.get("Project", "nlp").await.unwrap();
    nlp["attrs"]["visibility"] = json!("private");
    d.put(json!([nlp.clone()])).await;
    assert_eq!(
        d.decide(r#"User::"dave""#, r#"Action::"view""#, dataset)
            .await
            .0,
        "Deny"
    );
    nlp["attrs"]["visibility"] = json!("public");
    d.put(json!([nlp])).await;
    assert_eq!(
        d.decide(r#"User::"dave""#, r#"Action::"view""#, dataset)
            .await
            .0,
        "Allow"
    );

    // Members: carol removed from speech.
    assert_eq!(
        d.decide(r#"User::"carol""#, r#"Action::"view""#, SPEECH)
            .await
            .0,
        "Allow"
    );
    let mut speech = d.get("Project", "speech").await.unwrap();
    speech["attrs"]["members"] = json!([]);
    d.put(json!([speech])).await;
    assert_eq!(
        d.decide(r#"User::"carol""#, r#"Action::"view""#, SPEECH)
            .await
            .0,
        "Deny"
    );

    // A user's organization: dave moves to globex.
    let mut dave = d.get("User", "dave").await.unwrap();
    dave["parents"] = json!([{"type": "Organization", "id": "globex"}]);
    d.put(json!([dave])).await;
    assert_eq!(
        d.decide(r#"User::"dave""#, r#"Action::"view""#, NLP)
            .await
            .0,
        "Deny"
    );
    assert_eq!(
        d.decide(r#"User::"dave""#, r#"Action::"view""#, ADS)
            .await
            .0,
        "Allow"
    );

    // A new user is a member at once; a deleted one is nobody.
    d.put(json!([{"uid": {"type": "User", "id": "gina"}, "attrs": {}, "parents": [{"type": "Organization", "id": "acme"}]}])).await;
    assert_eq!(
        d.decide(r#"User::"gina""#, r#"Action::"create_project""#, ORG)
            .await
            .0,
        "Allow"
    );
    let (status, _) = d.call("DELETE", "/v1/entities/User/gina", None).await;
    assert_eq!(status, 204);
    assert_eq!(
        d.decide(r#"User::"gina""#, r#"Action::"create_project""#, ORG)
            .await
            .0,
        "Deny"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_in_order_on_one_snapshot() {
    let d = Daemon::demo().await;
    let reqs: Vec<_> = [
        ("bob", "view", VISION),
        ("carol", "view", VISION),
        ("dave", "view", NLP),
        ("eve", "view", SPEECH),
    ]
    .iter()
    .map(|(p, a, r)| json!({"principal": uid("User", p), "action": {"type": "Action", "id": a}, "resource": r}))
    .collect();
    let (status, body) = d
        .call(
            "POST",
            "/v1/is_authorized/batch",
            Some(&json!({ "requests": reqs })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let decisions: Vec<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| common::decision_of(r).0)
        .collect();
    assert_eq!(decisions, ["Allow", "Deny", "Allow", "Deny"]);
}

//! The fleet's one activity trail against a real PostgreSQL (`POLICYD_TEST_POSTGRES`): records
//! made on any sidecar are read, merged, on every other; shipping is at least once and stored
//! once, and records committed while the upstream was away survive a `kill -9`.

mod common;
mod upstream_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use policyd::activity::{Batch, Kind, Record, Row, Verdict};
use policyd::upstream::Upstream;
use serde_json::{Value, json};
use upstream_support::{Fleet, Proxy, Sidecar, test_db, upstream_cli};

/// Readers may read; the admin may view the activity of organization `o`, which holds `d`.
fn policies() -> tempfile::TempDir {
    common::policy_dir(&[(
        "rules.cedar",
        r#"
        permit (principal in Group::"readers", action == Action::"read", resource);
        permit (principal == User::"admin", action == Action::"view_activity", resource);
        "#,
    )])
}

fn world() -> Value {
    json!([
        {"uid": {"type": "Organization", "id": "o"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": [{"type": "Organization", "id": "o"}]},
        {"uid": {"type": "User", "id": "admin"}, "attrs": {}, "parents": []},
        {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [{"type": "Group", "id": "readers"}]},
    ])
}

/// Every decision record of the merged trail read on `s`, walking the pages `limit` at a time.
async fn trail(s: &Sidecar, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!(
            "/v1/activity?organization=o&viewer=User::%22admin%22&kind=decision&limit={limit}"
        );
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = s.call("GET", &path, &[], None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        out.extend(body["records"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// Waits until the merged trail read on `s` holds `n` decisions; returns them.
async fn until_trail(s: &Sidecar, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let records = trail(s, 1000).await;
        if records.len() >= n {
            assert_eq!(records.len(), n, "more decisions than were made");
            return records;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the trail holds {} of {n} decisions",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn decide(s: &Sidecar, times: usize) {
    for _ in 0..times {
        let (status, body) = s.read("alice", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["decision"], "Allow", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sidecar_reads_the_merged_trail() {
    let Some(fleet) = Fleet::migrated("activity_merged", policies()).await else {
        return;
    };
    let db = &fleet.db;
    let a = fleet.sidecar("a", &db.url, &[]);
    let b = fleet.sidecar("b", &db.url, &[]);
    a.ready().await;
    b.ready().await;
    let token = a.put(world()).await;
    b.read("alice", Some(&token)).await;
    decide(&a, 7).await;
    decide(&b, 4).await; // with the one above: 5 on B

    // Either sidecar reads all 12, each under the sidecar that made it, newest first.
    let on_b = until_trail(&b, 12).await;
    let on_a = until_trail(&a, 12).await;
    assert_eq!(on_a, on_b, "both read one trail");
    let mut per_sidecar: BTreeMap<String, usize> = BTreeMap::new();
    for r in &on_a {
        *per_sidecar
            .entry(r["sidecar"].as_str().unwrap().to_owned())
            .or_default() += 1;
        assert_eq!(r["organization"], "o", "{r}");
        assert_eq!(r["decision"], "Allow", "{r}");
    }
    let mut counts: Vec<usize> = per_sidecar.values().copied().collect();
    counts.sort_unstable();
    assert_eq!(counts, [5, 7], "{per_sidecar:?}");
    let order: Vec<(String, String, i64)> = on_a
        .iter()
        .map(|r| {
            (
                r["time"].as_str().unwrap().to_owned(),
                r["sidecar"].as_str().unwrap().to_owned(),
                r["id"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut newest_first = order.clone();
    newest_first.sort_by(|x, y| y.cmp(x));
    assert_eq!(order, newest_first);

    // Pages of 5 walk the same trail, each record once.
    assert_eq!(trail(&a, 5).await, on_a);

    // Writes are in the trail too, and filters apply upstream.
    let (status, body) = b
        .call(
            "GET",
            "/v1/activity?organization=o&viewer=User::%22admin%22&kind=entity_upsert",
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let written: BTreeSet<&str> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    assert!(written.contains("Doc::\"d\""), "{body}");
    let (status, body) = a
        .call(
            "GET",
            "/v1/activity?organization=o&viewer=User::%22admin%22&cursor=12",
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a local cursor: {body}");
    assert_eq!(body["error"]["code"], "invalid_field", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("cursor"),
        "{body}"
    );

    // The shipped records are counted in the metrics.
    assert!(a.metric("policyd_activity_records_shipped_total").await >= 7.0);
}

/// `records` as a sidecar's log would hand them to its shipper: names as ids, with their texts.
fn batch(records: &[Record]) -> Batch {
    let mut out = Batch::default();
    let mut ids: BTreeMap<String, i64> = BTreeMap::new();
    let mut name = |text: Option<String>| {
        let Some(text) = text else { return 0 };
        let next = ids.len() as i64 + 1;
        let id = *ids.entry(text.clone()).or_insert(next);
        out.names.insert(id, text);
        id
    };
    let rows: Vec<Row> = records
        .iter()
        .map(|r| Row {
            id: r.id,
            time: r.time,
            kind: r.kind,
            verdict: r.decision.as_deref().and_then(Verdict::parse),
            principal: name(r.principal.clone()),
            action: name(r.action.clone()),
            resource: name(r.resource.clone()),
            reasons: name(Some(serde_json::to_string(&r.reasons).unwrap())),
            revision: name(r.policy_revision.clone()),
            organization: name(r.organization.clone()),
        })
        .collect();
    out.rows = rows;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_shipped_twice_is_stored_once() {
    let Some(db) = test_db("activity_once").await else {
        return;
    };
    upstream_cli(&db.url, &["migrate"]);
    let upstream = Upstream::new(&db.url, Duration::from_secs(5), None).unwrap();
    let record = |id: i64| Record {
        id,
        time: 1_700_000_000_000_000 + id,
        kind: Kind::Decision,
        principal: Some("User::\"alice\"".into()),
        action: Some("Action::\"read\"".into()),
        resource: Some("Doc::\"d\"".into()),
        decision: Some("Allow".into()),
        reasons: vec!["policy0".into()],
        policy_revision: Some("r1".into()),
        organization: Some("o".into()),
    };
    let filter = |org: &str, limit| policyd::activity::Filter {
        organization: org.into(),
        limit,
        ..Default::default()
    };
    let sidecar = "00000000000000aa";
    let first = batch(&(1..=3).map(record).collect::<Vec<_>>());
    assert_eq!(upstream.ship(sidecar, &first).await.unwrap(), 3);
    let again = batch(&(2..=5).map(record).collect::<Vec<_>>());
    assert_eq!(
        upstream.ship(sidecar, &again).await.unwrap(),
        2,
        "2 and 3 are stored"
    );
    assert_eq!(upstream.ship("00000000000000bb", &first).await.unwrap(), 3);
    assert_eq!(upstream.shipped(sidecar).await.unwrap(), 5);
    let page = upstream.activity(&filter("o", 100), None).await.unwrap();
    assert_eq!(page.records.len(), 8);
    let got = page
        .records
        .iter()
        .find(|s| s.sidecar == sidecar && s.record.id == 4)
        .unwrap();
    assert_eq!(got.record, record(4), "stored as shipped");

    // A row in the first stored form (records as text) is still read.
    let legacy = json!([{"i": 9, "t": 1_700_000_000_000_009_i64, "k": "decision",
        "p": "User::\"alice\"", "a": "Action::\"read\"", "r": "Doc::\"d\"", "d": "Allow",
        "why": ["policy0"], "v": "r1"}]);
    db.client()
        .await
        .execute(
            "INSERT INTO policyd_activity (sidecar, last_id, org, newest, oldest, records)
             VALUES ('00000000000000ee', 9, 'o', $1, $1, $2)",
            &[&1_700_000_000_000_009_i64, &legacy.to_string()],
        )
        .await
        .unwrap();
    let page = upstream.activity(&filter("o", 100), None).await.unwrap();
    let got = page
        .records
        .iter()
        .find(|s| s.sidecar == "00000000000000ee")
        .unwrap();
    assert_eq!(got.record, record(9));

    // Many small batches from two sidecars, interleaved in time: pages of 7 walk all of them
    // newest first, each record once (reading spans many stored rows per page).
    let mut expected = Vec::new();
    for round in 0..40_i64 {
        for (n, sidecar) in ["00000000000000cc", "00000000000000dd"].iter().enumerate() {
            let records: Vec<Record> = (0..3)
                .map(|k| {
                    let id = 10 + round * 3 + k;
                    let mut r = record(id);
                    r.time = 1_800_000_000_000_000 + id * 10 + n as i64;
                    r.organization = Some("p".into());
                    expected.push((r.time, sidecar.to_string(), id));
                    r
                })
                .collect();
            assert_eq!(upstream.ship(sidecar, &batch(&records)).await.unwrap(), 3);
        }
    }
    expected.sort_by(|a, b| b.cmp(a));
    let mut walked = Vec::new();
    let mut cursor = None;
    loop {
        let page = upstream
            .activity(&filter("p", 7), cursor.as_ref())
            .await
            .unwrap();
        assert!(page.records.len() <= 7);
        walked.extend(
            page.records
                .iter()
                .map(|s| (s.record.time, s.sidecar.clone(), s.record.id)),
        );
        match page.next_cursor {
            Some(c) => cursor = policyd::upstream::activity::Cursor::parse(&c),
            None => break,
        }
    }
    assert_eq!(walked, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_made_while_the_upstream_was_away_survive_a_kill() {
    let Some(fleet) = Fleet::migrated("activity_kill", policies()).await else {
        return;
    };
    let db = &fleet.db;
    let proxy = Proxy::to(&db.url).await;
    let serve_stale = ["--serve-stale"];
    let mut a = fleet.sidecar("a", &db.via(proxy.addr), &serve_stale);
    let b = fleet.sidecar("b", &db.url, &[]);
    a.ready().await;
    b.ready().await;
    a.put(world()).await;
    decide(&a, 2).await;
    until_trail(&b, 2).await;

    // Cut off, A still decides (--serve-stale) and keeps the records locally...
    proxy.cut();
    decide(&a, 3).await;
    assert_eq!(a.metric("policyd_fleet_serve_stale").await, 1.0);
    assert_eq!(b.metric("policyd_fleet_serve_stale").await, 0.0);
    // ...committed by its activity writer within moments; then it dies without a shutdown.
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.process.kill().unwrap();
    a.process.wait().unwrap();
    let (status, _) = b
        .call(
            "GET",
            "/v1/activity?organization=o&viewer=User::%22admin%22&kind=decision",
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        trail(&b, 1000).await.len(),
        2,
        "the cut-off records are not upstream yet"
    );

    // Restarted with the upstream back, it ships them: each once.
    proxy.restore();
    a = fleet.sidecar("a", &db.via(proxy.addr), &serve_stale);
    a.ready().await;
    let records = until_trail(&b, 5).await;
    let keys: BTreeSet<(String, i64)> = records
        .iter()
        .map(|r| {
            (
                r["sidecar"].as_str().unwrap().to_owned(),
                r["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 5);
    let sidecars: BTreeSet<&String> = keys.iter().map(|k| &k.0).collect();
    assert_eq!(sidecars.len(), 1, "one log, one name, across the restart");
    drop(a);
}

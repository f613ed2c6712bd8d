//! The activity log's file, below the HTTP API: older formats upgraded without losing a
//! record, the bytes a decision record takes, queries by segment against a full scan, and the
//! writer keeping up with a steady stream of records.

/// A log written by the first activity format (one table of text columns) is moved into the
/// compact format when the daemon opens it: nothing acknowledged is lost in the upgrade.
#[test]
fn an_old_text_log_is_upgraded_without_losing_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activity.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            r#"CREATE TABLE activity (
                id INTEGER PRIMARY KEY, time INTEGER NOT NULL, kind TEXT NOT NULL,
                principal TEXT, action TEXT, resource TEXT, decision TEXT, reasons TEXT NOT NULL,
                policy_revision TEXT, organization TEXT);
            CREATE INDEX activity_by_org ON activity (organization, id);
            INSERT INTO activity VALUES
              (1, 1700000000000000, 'decision', 'User::"dave"', 'Action::"view"', 'Project::"nlp"',
               'Allow', '["public.project"]', 'abc', 'acme'),
              (2, 1700000000000001, 'policy_reload', NULL, NULL, NULL, 'refused',
               '["x.cedar:1:1: bad"]', 'abc', NULL),
              (3, 1700000000000002, 'entity_upsert', NULL, NULL, 'User::"new"', NULL, '[]', 'abc', 'acme');"#,
        )
        .unwrap();
    }
    let config = policyd::config::ActivityConfig {
        db_path: path.clone(),
        // The records are from 2023: kept, or the writer's first expiry pass could delete
        // them before the query.
        retention_days: 100_000,
        ..policyd::config::ActivityConfig::beside(&path)
    };
    let log = policyd::activity::ActivityLog::open(&config).unwrap();
    let page = log
        .query(&policyd::activity::Filter {
            organization: "acme".to_owned(),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let got: Vec<_> = page
        .records
        .iter()
        .map(|r| {
            (
                r.id,
                r.time,
                r.kind.as_str(),
                r.principal.clone(),
                r.resource.clone(),
                r.decision.clone(),
                r.reasons.clone(),
                r.organization.clone(),
            )
        })
        .collect();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        got,
        vec![
            (
                3,
                1700000000000002,
                "entity_upsert",
                None,
                s("User::\"new\""),
                None,
                vec![],
                s("acme")
            ),
            (
                2,
                1700000000000001,
                "policy_reload",
                None,
                None,
                s("refused"),
                vec!["x.cedar:1:1: bad".to_owned()],
                None
            ),
            (
                1,
                1700000000000000,
                "decision",
                s("User::\"dave\""),
                s("Project::\"nlp\""),
                s("Allow"),
                vec!["public.project".to_owned()],
                s("acme")
            ),
        ]
    );
    // New records continue the old ids.
    let next = log.record(policyd::activity::Entry::new(
        policyd::activity::Kind::Decision,
    ));
    assert_eq!(next, Some(4));
}

/// A log of the second form (a `UNIQUE` index over the names' texts, and index entries that
/// held the id twice) keeps every record and name id when the daemon opens it, and is then
/// found through the hashed dictionary and the new indexes.
#[test]
fn a_log_with_unique_name_texts_is_upgraded_keeping_its_ids() {
    use policyd::activity::{ActivityLog, Filter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activity.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            r#"CREATE TABLE names (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);
            CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE records (id INTEGER PRIMARY KEY, org INTEGER NOT NULL,
                time INTEGER NOT NULL, kind INTEGER NOT NULL, principal INTEGER, action INTEGER,
                resource INTEGER, reasons INTEGER, revision INTEGER);
            CREATE INDEX records_by_org ON records (id >> 16, org, id);
            CREATE INDEX records_by_principal ON records (id >> 16, org, principal, id)
                WHERE principal IS NOT NULL;
            CREATE INDEX records_by_resource ON records (id >> 16, org, resource, id)
                WHERE resource IS NOT NULL;
            CREATE INDEX org_records ON records (id >> 16, org);
            INSERT INTO names VALUES (3, 'acme'), (5, 'User::"dave"'), (8, 'Action::"view"'),
                (9, 'Project::"nlp"'), (11, '["public.project"]'), (12, 'abc'),
                (14, 'User::"erin"');
            INSERT INTO records VALUES
                (1, 3, 10, 1, 5, 8, 9, 11, 12),
                (2, 3, 20, 1, 14, 8, 9, 11, 12);"#,
        )
        .unwrap();
        // Recent, or the writer's first expiry pass would delete the records under the test.
        conn.execute(
            "INSERT INTO meta VALUES ('epoch', ?1), ('sidecar', 7)",
            [policyd::storage::now_micros() - 1_000_000],
        )
        .unwrap();
    }
    let config = policyd::config::ActivityConfig {
        db_path: path.clone(),
        ..policyd::config::ActivityConfig::beside(&path)
    };
    let log = ActivityLog::open(&config).unwrap();
    let query = |principal: Option<&str>| {
        log.query(&Filter {
            organization: "acme".to_owned(),
            principal: principal.map(str::to_owned),
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .records
        .iter()
        .map(|r| (r.id, r.principal.clone(), r.resource.clone()))
        .collect::<Vec<_>>()
    };
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        query(None),
        vec![
            (2, s("User::\"erin\""), s("Project::\"nlp\"")),
            (1, s("User::\"dave\""), s("Project::\"nlp\"")),
        ]
    );
    assert_eq!(
        query(Some("User::\"dave\"")),
        vec![(1, s("User::\"dave\""), s("Project::\"nlp\""))]
    );
    // A name written now reuses the old id of its text and takes a new one otherwise.
    let mut entry = policyd::activity::Entry::new(policyd::activity::Kind::Decision);
    entry.principal = Some("User::\"dave\"".parse().unwrap());
    entry.organization = Some("acme".to_owned());
    assert_eq!(log.record(entry), Some(3));
    log.flush_and_stop();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let principal: i64 = conn
        .query_row("SELECT principal FROM records WHERE id = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(principal, 5);
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        indexes,
        [
            "names_by_hash",
            "org_segments",
            "principal_segments",
            "resource_segments",
            "sqlite_autoindex_meta_1"
        ]
    );
}

/// An activity log at `activity.db` in `dir` whose queue holds `queue` records, and its path.
fn log_in(
    dir: &tempfile::TempDir,
    queue: usize,
) -> (std::path::PathBuf, policyd::activity::ActivityLog) {
    let path = dir.path().join("activity.db");
    let config = policyd::config::ActivityConfig {
        db_path: path.clone(),
        queue,
        ..policyd::config::ActivityConfig::beside(&path)
    };
    let log = policyd::activity::ActivityLog::open(&config).unwrap();
    (path, log)
}

/// A decision record costs well under 100 bytes on disk (issue 10's bound), its three indexes
/// and its share of the names dictionary included: on a log of 30,000 records over 4
/// organizations, 200 principals and 2,000 resources it takes about 70.5. The bound here is 75,
/// so the layout cannot slip back unseen: index entries that named the id beside the rowid
/// took 80.3 on this log.
#[test]
fn a_decision_record_takes_at_most_100_bytes_on_disk() {
    use policyd::activity::{ActivityLog, Entry, Kind, Verdict};
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = log_in(&dir, 1 << 16);
    const N: i64 = 30_000;
    for i in 0..N {
        let entry = Entry {
            principal: Some(format!("User::\"user-{}\"", i % 200).parse().unwrap()),
            action: Some("Action::\"view\"".parse().unwrap()),
            resource: Some(
                format!("Dataset::\"dataset-{}\"", i % 2_000)
                    .parse()
                    .unwrap(),
            ),
            verdict: Some(Verdict::of(i % 3 == 0)),
            reasons: vec![format!("rule-{}", i % 5)],
            policy_revision: Some("0123456789abcdef".into()),
            organization: Some(format!("org-{}", i % 4)),
            ..Entry::new(Kind::Decision)
        };
        assert!(log.record(entry).is_some());
    }
    log.flush_and_stop();
    let used = ActivityLog::reader(&path).used_bytes().unwrap();
    let per_record = used as f64 / N as f64;
    assert!(per_record <= 75.0, "{per_record:.1} bytes per record");
}

/// Pages, filters and time bounds across several index segments (4,096 records each) give
/// exactly the records a scan of everything would, newest first; and each filter is served
/// by its segment index.
#[test]
fn queries_across_segments_equal_a_full_scan() {
    use policyd::activity::{ActivityLog, Entry, Filter, Kind, Verdict};
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = log_in(&dir, 1 << 20);
    const N: i64 = 140_000;
    let orgs = ["a", "b"];
    let entry = |i: i64| Entry {
        principal: Some(format!("User::\"p{}\"", i % 3).parse().unwrap()),
        action: Some("Action::\"view\"".parse().unwrap()),
        // A rare resource: only every 5,000th record.
        resource: Some(if i % 5_000 == 0 {
            "Doc::\"rare\"".parse().unwrap()
        } else {
            format!("Doc::\"r{}\"", i % 7).parse().unwrap()
        }),
        verdict: Some(Verdict::of(i % 2 == 0)),
        organization: Some(orgs[(i % 2) as usize].to_owned()),
        ..Entry::new(Kind::Decision)
    };
    let mut times = Vec::new();
    for i in 0..N {
        if i == N / 2 {
            times.push(policyd::storage::now_micros());
        }
        assert_eq!(log.record(entry(i)), Some(i + 1));
    }
    log.flush_and_stop();
    let middle = times[0];
    let reader = ActivityLog::reader(&path);
    let all_pages = |filter: Filter| {
        let mut ids = Vec::new();
        let mut f = filter;
        loop {
            let page = reader.query(&f).unwrap();
            ids.extend(page.records.iter().map(|r| r.id));
            match page.next_cursor {
                Some(c) => f.before_id = Some(c),
                None => return ids,
            }
        }
    };
    let expect = |keep: &dyn Fn(i64) -> bool| -> Vec<i64> {
        (0..N).rev().filter(|i| keep(*i)).map(|i| i + 1).collect()
    };
    let base = Filter {
        organization: "a".to_owned(),
        limit: 997,
        ..Default::default()
    };
    assert_eq!(all_pages(base.clone()), expect(&|i| i % 2 == 0));
    assert_eq!(
        all_pages(Filter {
            principal: Some("User::\"p1\"".to_owned()),
            ..base.clone()
        }),
        expect(&|i| i % 2 == 0 && i % 3 == 1)
    );
    assert_eq!(
        all_pages(Filter {
            resource: Some("Doc::\"rare\"".to_owned()),
            limit: 3,
            ..base.clone()
        }),
        expect(&|i| i % 2 == 0 && i % 5_000 == 0)
    );
    let since_middle = all_pages(Filter {
        since: Some(middle),
        ..base.clone()
    });
    assert!(since_middle.iter().all(|id| *id > N / 2));
    assert_eq!(since_middle, expect(&|i| i % 2 == 0 && i >= N / 2));
    // The plans: each filter through its segment index, never a scan of the table, the id
    // range and the order answered by the rowid that ends each index entry (no sort).
    let conn = rusqlite::Connection::open(&path).unwrap();
    for (filter, index) in [
        ("", "org_segments"),
        (" AND principal = 2", "principal_segments"),
        (" AND resource = 3", "resource_segments"),
    ] {
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT id FROM records WHERE (id >> 12) = 1 AND org = 1 \
                 AND id >= 0 AND id < 9999{filter} ORDER BY id DESC LIMIT 10"
            ))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter()
                .any(|p| p.contains(index) && p.contains("rowid>") && p.contains("rowid<")),
            "{filter}: {plan:?}"
        );
        assert!(
            !plan.iter().any(|p| p.contains("TEMP B-TREE")),
            "{filter}: {plan:?}"
        );
    }
}

/// The writer takes queued records every few milliseconds while its transaction gathers them,
/// not only when it commits (every 200 ms): records arriving steadily at 10 a millisecond fill
/// 2,000 places in one commit interval, yet a queue of 1,000 never overflows. A writer that
/// emptied the queue only at each commit would drop records here.
#[test]
fn the_writer_drains_the_queue_between_commits() {
    use policyd::activity::{Entry, Kind};
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = log_in(&dir, 1_000);
    let start = std::time::Instant::now();
    let mut id = 0;
    for ms in 0..400u32 {
        for _ in 0..10 {
            id += 1;
            let mut entry = Entry::new(Kind::Decision);
            entry.principal = Some(format!("User::\"u{id}\"").parse().unwrap());
            entry.organization = Some("acme".to_owned());
            assert_eq!(log.record(entry), Some(id), "record {id} dropped");
        }
        let due = start + std::time::Duration::from_millis(u64::from(ms) + 1);
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
    }
    log.flush_and_stop();
    assert_eq!(log.stats().dropped, 0);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, id);
}

//! Store benchmarks: storage queries, entity upserts and the decision path, at growing store
//! sizes. `POLICYD_BENCH_SIZES=1000,100000,1000000 cargo bench --bench store` (default 1000 and
//! 100000; a million-entity store takes about a minute to build).

use std::path::Path;
use std::time::Instant;

use cedar_policy::EntityUid;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use policyd::authz::{self, Query};
use policyd::engine;
use policyd::policy::{PolicySnapshot, load_dir};
use policyd::storage::now_micros;
use policyd::store::sqlite::SqliteStore;
use policyd::store::{Store, codec};
use policyd::synth::{self, Shape};
use serde_json::Value;

fn sizes() -> Vec<usize> {
    std::env::var("POLICYD_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 100_000])
}

fn policies() -> PolicySnapshot {
    load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap()
}

/// A store filled with a synthetic platform through the real write path, in batches.
fn filled(dir: &Path, shape: Shape, snapshot: &PolicySnapshot) -> Store {
    let store = Store::new(
        Box::new(SqliteStore::open(&dir.join("bench.db")).unwrap()),
        256 << 20,
        0,
    );
    let start = Instant::now();
    let mut batch = Vec::with_capacity(5_000);
    let flush = |batch: &mut Vec<Value>| {
        let records = codec::parse_batch(
            Value::Array(std::mem::take(batch)),
            snapshot.schema.as_ref(),
        )
        .unwrap();
        store.upsert(&records).unwrap();
    };
    for e in synth::entities(shape, 42) {
        batch.push(e);
        if batch.len() == 5_000 {
            flush(&mut batch);
        }
    }
    flush(&mut batch);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "filled {} entities in {secs:.1} s ({:.0} entities/s)",
        shape.total(),
        shape.total() as f64 / secs
    );
    store
}

fn benches(c: &mut Criterion) {
    let snapshot = policies();
    for size in sizes() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape::about(size);
        let store = filled(dir.path(), shape, &snapshot);
        let org: EntityUid = format!("Organization::\"{}\"", synth::org_id(shape.orgs / 2))
            .parse()
            .unwrap();
        let project: EntityUid = format!("Project::\"{}\"", synth::project_id(shape.orgs / 2, 1))
            .parse()
            .unwrap();

        let mut group = c.benchmark_group("storage_query");
        group.bench_function(BenchmarkId::new("organization", size), |b| {
            b.iter(|| {
                let now = now_micros();
                let ledger = store.ledger();
                let usage = ledger.usage(&org, now).unwrap().unwrap();
                let projects: Vec<_> = ledger
                    .children(&org, "Project")
                    .unwrap()
                    .into_iter()
                    .map(|p| ledger.usage(&p, now).unwrap())
                    .collect();
                (usage, projects)
            })
        });
        group.bench_function(BenchmarkId::new("project", size), |b| {
            b.iter(|| store.ledger().usage(&project, now_micros()).unwrap())
        });
        group.finish();

        // The decision path: slice + Cedar evaluation for the load generator's request mix,
        // cycling through 1,000 requests so the parsed-entity cache is as warm as it gets.
        let mut rng = synth::Rng::new(7);
        let queries: Vec<Query> = (0..1_000)
            .map(|_| {
                let (p, a, r) = synth::request(&mut rng, shape);
                authz::prepare(
                    &snapshot,
                    p.parse().unwrap(),
                    a.parse().unwrap(),
                    r.parse().unwrap(),
                    None,
                )
                .unwrap()
            })
            .collect();
        let mut group = c.benchmark_group("decision");
        each_decision(&mut group, "single", size, &store, &snapshot, &queries);
        let mut i = 0;
        group.bench_function(BenchmarkId::new("slice_only", size), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                store
                    .slice(&queries[i].roots, snapshot.deref_depth, &snapshot.follow)
                    .unwrap()
            })
        });
        let slices: Vec<_> = queries
            .iter()
            .map(|q| {
                store
                    .slice(&q.roots, snapshot.deref_depth, &snapshot.follow)
                    .unwrap()
            })
            .collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("entities_only", size), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                authz::entities(&snapshot, slices[i].clone(), [&queries[i].action]).unwrap()
            })
        });
        let built: Vec<_> = queries
            .iter()
            .zip(&slices)
            .map(|(q, s)| authz::entities(&snapshot, s.clone(), [&q.action]).unwrap())
            .collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("cedar_only", size), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                authz::decide(&queries[i], &built[i])
            })
        });
        // The cold path: a store whose cache holds one entity and no compact forms, so every
        // entity of a decision is read from SQLite and resolved.
        let cold = Store::new(
            Box::new(SqliteStore::open(&dir.path().join("bench.db")).unwrap()),
            1,
            0,
        );
        each_decision(&mut group, "uncached", size, &cold, &snapshot, &queries);
        // The compact path: every entity of a decision decoded from the cache's second tier
        // (filled by a first pass), none kept resolved.
        let compact = Store::new(
            Box::new(SqliteStore::open(&dir.path().join("bench.db")).unwrap()),
            1,
            256 << 20,
        );
        for q in &queries {
            engine::decide_blocking(&compact, &snapshot, std::slice::from_ref(q)).unwrap();
        }
        each_decision(&mut group, "compact", size, &compact, &snapshot, &queries);
        let batch: Vec<Query> = queries[..50].to_vec();
        group.bench_function(BenchmarkId::new("batch_of_50", size), |b| {
            b.iter(|| engine::decide_blocking(&store, &snapshot, &batch).unwrap())
        });
        group.finish();
    }
}

/// Benchmarks `name`: one decision per iteration over `store`, the queries in turn.
fn each_decision(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    size: usize,
    store: &Store,
    snapshot: &PolicySnapshot,
    queries: &[Query],
) {
    let mut i = 0;
    group.bench_function(BenchmarkId::new(name, size), |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            engine::decide_blocking(store, snapshot, std::slice::from_ref(&queries[i])).unwrap()
        })
    });
}

criterion_group!(name = store; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(store);

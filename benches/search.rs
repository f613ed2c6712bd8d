//! Permission search benchmarks on the synthetic platform: "datasets this user may view"
//! (first page of 100), "who may view this dataset", and action search, at growing store sizes.
//! `POLICYD_BENCH_SIZES=100000,1000000 cargo bench --bench search` (default 100000).
//! Each iteration cycles through 200 users or datasets across the organizations, so the
//! entity cache is as warm as a serving daemon's.

use std::path::Path;
use std::time::Instant;

use cedar_policy::EntityUid;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use policyd::policy::{PolicySnapshot, load_dir};
use policyd::search::{self, SearchQuery, Side};
use policyd::store::sqlite::SqliteStore;
use policyd::store::{Store, codec};
use policyd::synth::{self, Shape};
use serde_json::Value;

fn sizes() -> Vec<usize> {
    std::env::var("POLICYD_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000])
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
    eprintln!(
        "filled {} entities in {:.1} s",
        shape.total(),
        start.elapsed().as_secs_f64()
    );
    store
}

fn uid(ty: &str, id: &str) -> EntityUid {
    policyd::uid::from_parts(ty, id).unwrap()
}

fn benches(c: &mut Criterion) {
    let snapshot = policies();
    let view = uid("Action", "view");
    for size in sizes() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape::about(size);
        let store = filled(dir.path(), shape, &snapshot);
        let mut rng = synth::Rng::new(11);
        let picks: Vec<(usize, usize)> = (0..200)
            .map(|_| (rng.below(shape.orgs), rng.below(shape.users_per_org)))
            .collect();
        let resource_queries: Vec<SearchQuery> = picks
            .iter()
            .map(|&(o, u)| SearchQuery {
                side: Side::Resource,
                known: uid("User", &synth::user_id(o, u)),
                action: view.clone(),
                ty: "Dataset".parse().unwrap(),
                context: None,
            })
            .collect();
        // Datasets of public, shared and private projects alike.
        let datasets: Vec<EntityUid> = picks
            .iter()
            .enumerate()
            .map(|(n, &(o, _))| {
                let p = n % shape.projects_per_org;
                uid("Dataset", &synth::item(o, p, 0).1)
            })
            .collect();
        let subject_queries: Vec<SearchQuery> = datasets
            .iter()
            .map(|d| SearchQuery {
                side: Side::Subject,
                known: d.clone(),
                action: view.clone(),
                ty: "User".parse().unwrap(),
                context: None,
            })
            .collect();
        let answers: usize = resource_queries
            .iter()
            .map(|q| {
                search::search(&store, &snapshot, q, None, 100, None)
                    .unwrap()
                    .items
                    .len()
            })
            .sum();
        eprintln!(
            "{size}: resource search answers {:.1} on average (first page of 100)",
            answers as f64 / 200.0
        );

        let mut group = c.benchmark_group("search");
        let mut i = 0;
        group.bench_function(BenchmarkId::new("resources_first_page_100", size), |b| {
            b.iter(|| {
                i = (i + 1) % resource_queries.len();
                search::search(&store, &snapshot, &resource_queries[i], None, 100, None).unwrap()
            })
        });
        let mut i = 0;
        group.bench_function(BenchmarkId::new("subjects_first_page_100", size), |b| {
            b.iter(|| {
                i = (i + 1) % subject_queries.len();
                search::search(&store, &snapshot, &subject_queries[i], None, 100, None).unwrap()
            })
        });
        let mut i = 0;
        group.bench_function(BenchmarkId::new("actions", size), |b| {
            b.iter(|| {
                i = (i + 1) % datasets.len();
                let user = &resource_queries[i].known;
                search::actions(&store, &snapshot, user, &datasets[i], None).unwrap()
            })
        });
        group.finish();
    }
}

criterion_group!(name = search_benches; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(search_benches);

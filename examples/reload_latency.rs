//! Measures how long a policy edit takes to be live: from the file write returning to the
//! daemon serving the new snapshot, through the real directory watcher.
//!
//! `cargo run --release --example reload_latency [-- ROUNDS]`

use std::path::Path;
use std::time::{Duration, Instant};

use policyd::config::{ActivityConfig, Limits, ServeConfig};

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(20), |n| n.parse())?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir()?;
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies)?;
    for entry in std::fs::read_dir(repo.join("policies"))? {
        let p = entry?.path();
        // Policy files only: `tests/` holds the policy tests.
        if let Some(name) = p.file_name().filter(|_| p.is_file()) {
            std::fs::copy(&p, policies.join(name))?;
        }
    }
    let config = ServeConfig {
        policies_dir: policies.clone(),
        db_path: tmp.path().join("policyd.db"),
        entities_dir: repo.join("entities"),
        listen: "127.0.0.1:0".parse().map_err(anyhow::Error::msg)?,
        auth: Default::default(),
        entity_cache: 16 << 20,
        compact_cache: 16 << 20,
        watch: true,
        limits: Limits::default(),
        activity: ActivityConfig::beside(&tmp.path().join("policyd.db")),
        analysis: Default::default(),
        upstream: None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let state = policyd::daemon::open(&config)?;
    let mut samples = runtime.block_on(async {
        policyd::daemon::spawn_background(&state, &config);
        // Let the watcher arm (it reloads once, a no-op, when it does).
        while state.reloader.last().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let file = policies.join("public.cedar");
        let original = std::fs::read_to_string(&file)?;
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let before = state.snapshot().revision.clone();
            let text = format!("{original}\n// edit {i}\n");
            std::fs::write(&file, text)?;
            let written = Instant::now();
            while state.snapshot().revision == before {
                anyhow::ensure!(
                    written.elapsed() < Duration::from_secs(10),
                    "edit {i} never went live"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            samples.push(written.elapsed());
            // Let the burst settle so rounds do not coalesce.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        anyhow::Ok(samples)
    })?;
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "edit-to-live over {rounds} edits: min {:?}, p50 {:?}, p95 {:?}, max {:?}",
        samples[0],
        at(0.5),
        at(0.95),
        samples[samples.len() - 1]
    );
    Ok(())
}

//! Measures the policy change analysis of the bundled policies: `analysis::diff` of the set
//! against itself and against a copy with two careless permits added, and the `check` lints,
//! each run ROUNDS times (one cvc5 process per run, as at reload).
//!
//! `cargo run --release --example analysis_time [-- ROUNDS]` (needs cvc5: `$CVC5` or on PATH)

use std::path::Path;
use std::time::{Duration, Instant};

use policyd::analysis::{self, Options};
use policyd::policy::load_dir;

/// Two permits written one token too wide: every dataset to everyone, and every storage view.
const CARELESS: &str = r#"@id("careless.datasets")
permit (principal, action == Action::"view", resource is Dataset);
@id("careless.storage")
permit (principal, action == Action::"view_storage", resource is Project);
"#;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(20), |n| n.parse())?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let tmp = tempfile::tempdir()?;
    for entry in std::fs::read_dir(&repo)? {
        let p = entry?.path();
        // Policy files only: `tests/` holds the policy tests.
        if let Some(name) = p.file_name().filter(|_| p.is_file()) {
            std::fs::copy(&p, tmp.path().join(name))?;
        }
    }
    std::fs::write(tmp.path().join("careless.cedar"), CARELESS)?;
    let load = |dir: &Path| load_dir(dir).map_err(|e| anyhow::anyhow!("{:?}", e.errors()));
    let (bundled, careless) = (load(&repo)?, load(tmp.path())?);
    let options = Options::default();
    let cvc5 = analysis::Cvc5::locate(None)?;
    println!("solver: {}", cvc5.path().display());

    let mut same = Vec::new();
    let mut wider = Vec::new();
    let mut lints = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let report = analysis::diff(&bundled, &bundled, &options);
        same.push(start.elapsed());
        anyhow::ensure!(report.is_complete() && !report.changed(), "{report:?}");

        let start = Instant::now();
        let report = analysis::diff(&bundled, &careless, &options);
        wider.push(start.elapsed());
        anyhow::ensure!(report.is_complete(), "{:?}", report.reason);
        let found: Vec<String> = report.widenings().map(|e| e.label()).collect();
        anyhow::ensure!(found.len() == 2, "expected two widenings, found {found:?}");

        let start = Instant::now();
        let found = analysis::lint(&bundled, &options)?;
        lints.push(start.elapsed());
        anyhow::ensure!(found.is_empty(), "{found:?}");
    }
    let envs = analysis::diff(&bundled, &careless, &options)
        .summary
        .environments;
    println!("{rounds} rounds, {envs} environments per diff");
    report("diff, bundled vs itself", &mut same);
    report(
        "diff, bundled vs two careless permits (2 widenings found)",
        &mut wider,
    );
    report("check lints, bundled", &mut lints);
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: min {:?}, p50 {:?}, max {:?}",
        at(0.0),
        at(0.5),
        at(1.0)
    );
}

//! Load generator: starts the release daemon on an empty store, loads a synthetic platform
//! through `PUT /v1/entities` (chunks of 1,000), then drives decision requests over keep-alive
//! connections, with a deterministic mix of allowed and denied requests across every rule.
//! With `--bare` it first drives a bare hyper server (the floor) the same way, in the same run.
//!
//! ```text
//! cargo build --release && cargo run --release --example loadgen -- \
//!     --entities 100000 --connections 16 --duration 10 [--warmup 3] [--bare] \
//!     [--batch 50 [--shape listing|mixed] | --writes] [--rate 10000] [--activity on|off] \
//!     [--seed 42] \
//!     [--serve-arg=--entity-cache=10000 ...] [--target 127.0.0.1:8180] \
//!     [--versus-arg=--upstream=postgres://... ... | --baseline-bin=/tmp/policyd-old \
//!      | --versus-entities 100000 | --bare [--bare-work 20]] [--slices 10]
//! ```
//! With `--versus-arg` (repeatable) it starts a second daemon with those extra flags as well,
//! loads both, then drives them in turns (`--slices` turns each of `--duration` seconds, a
//! pause between turns so that either daemon's background work lands in its own turn) and
//! reports each turn's pair and the ratio of the means: two configurations compared in the
//! same minutes, on a machine whose speed drifts. `--bare --slices N` compares the bare hyper
//! server (A) with the daemon (B) that way; `--versus-entities N` gives B a store of N
//! entities (uniform access over it) against A's `--entities`; `--baseline-bin` compares two
//! builds: A runs that executable (say a copy of the last commit's `target/release/policyd`),
//! B this build's. An interleaved run also prints each daemon's CPU per request while driven
//! and the activity writer's share of it (the process's CPU from `/proc`, the writer thread's
//! from its task).
//! `--bare-work N` makes the bare server busy-loop for N µs (wall time) on each request: a
//! floor that does a given amount of work, to see what latency any server with that cost per
//! request can have on this machine.
//! `--writes` drives single-entity writes instead (`PUT /v1/entities`, one new user each).
//! Prints the loading rate, decisions/s (or writes/s), latency percentiles, the servers' peak RSS (loading
//! included) and CPU, and the activity log's bytes per record: over the whole log, and over the
//! records added while driving (the decisions; loading also logs one record per entity
//! written, and names every entity).

mod drive;
mod load;
mod server;

use std::net::SocketAddr;

use anyhow::{Context, bail};
use policyd::synth::Shape;

/// What to measure.
pub struct Args {
    entities: usize,
    connections: usize,
    duration: u64,
    warmup: u64,
    batch: usize,
    shape: drive::BatchShape,
    rate: Option<u64>,
    writes: bool,
    activity: String,
    seed: u64,
    target: Option<SocketAddr>,
    bare: bool,
    serve_args: Vec<String>,
    versus_args: Vec<String>,
    baseline_bin: Option<std::path::PathBuf>,
    versus_entities: Option<usize>,
    slices: Option<usize>,
    bare_work: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        entities: 100_000,
        connections: 16,
        duration: 10,
        warmup: 3,
        batch: 0,
        shape: drive::BatchShape::Mixed,
        rate: None,
        writes: false,
        activity: "on".to_owned(),
        seed: 42,
        target: None,
        bare: false,
        serve_args: Vec::new(),
        versus_args: Vec::new(),
        baseline_bin: None,
        versus_entities: None,
        slices: None,
        bare_work: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || match &inline {
            Some(v) => Ok(v.clone()),
            None => it.next().with_context(|| format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--entities" => a.entities = value()?.parse()?,
            "--connections" => a.connections = value()?.parse()?,
            "--duration" => a.duration = value()?.parse()?,
            "--warmup" => a.warmup = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--shape" => a.shape = value()?.parse()?,
            "--rate" => a.rate = Some(value()?.parse()?),
            "--activity" => a.activity = value()?,
            "--seed" => a.seed = value()?.parse()?,
            "--target" => a.target = Some(value()?.parse()?),
            "--bare" => a.bare = true,
            "--writes" => a.writes = true,
            "--serve-arg" => a.serve_args.push(value()?),
            "--versus-arg" => a.versus_args.push(value()?),
            "--baseline-bin" => a.baseline_bin = Some(value()?.into()),
            "--versus-entities" => a.versus_entities = Some(value()?.parse()?),
            "--slices" => a.slices = Some(value()?.parse()?),
            "--bare-work" => a.bare_work = value()?.parse()?,
            "--serve-bare" => server::serve_bare(inline.as_deref().unwrap_or("0").parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let shape = Shape::about(args.entities);
    let interleaved = !args.versus_args.is_empty()
        || args.baseline_bin.is_some()
        || args.versus_entities.is_some()
        || (args.bare && args.slices.is_some());
    if interleaved {
        return versus(&args, shape);
    }
    let floor = if args.bare {
        let bare = server::Server::bare(args.bare_work)?;
        let run = drive::measure(&args, shape, bare.addr)?;
        println!("bare hyper: {run}");
        bare.report("bare hyper");
        Some(run)
    } else {
        None
    };
    let run = match args.target {
        Some(addr) => {
            let run = drive::measure(&args, shape, addr)?;
            println!("policyd at {addr}: {run}");
            run
        }
        None => {
            let mut daemon = server::Server::policyd(&args.activity, &args.serve_args, None)?;
            let loaded = load::load(daemon.addr, shape, args.seed)?;
            println!("{loaded}");
            daemon.mark_activity()?;
            let run = drive::measure(&args, shape, daemon.addr)?;
            println!("policyd: {run}");
            daemon.report("policyd");
            run
        }
    };
    if let Some(floor) = floor {
        println!(
            "policyd / bare hyper: {:.2} ({:.0} / {:.0} requests/s)",
            run.requests_per_sec / floor.requests_per_sec,
            run.requests_per_sec,
            floor.requests_per_sec
        );
    }
    Ok(())
}

/// Two servers driven in turns: A, B, B, A, A, B, ... so that a drift in the machine's speed
/// weighs on both alike. A is the daemon with the `--serve-arg` flags (run from
/// `--baseline-bin` when given), or with `--bare` the bare hyper server; B is the daemon with
/// those flags plus the `--versus-arg` flags, on a store of `--versus-entities` entities when
/// given (else the same size as A's).
fn versus(args: &Args, shape: Shape) -> anyhow::Result<()> {
    /// Lets the driven daemon's background work (activity commits, shipping) finish before
    /// the other's turn.
    const PAUSE: std::time::Duration = std::time::Duration::from_secs(2);
    let mut b_args = args.serve_args.clone();
    b_args.extend(args.versus_args.iter().cloned());
    let a = if args.bare {
        println!("A: bare hyper");
        server::Server::bare(args.bare_work)?
    } else {
        let a = server::Server::policyd(
            &args.activity,
            &args.serve_args,
            args.baseline_bin.as_deref(),
        )?;
        println!("A: {}", load::load(a.addr, shape, args.seed)?);
        a
    };
    let shape_b = args.versus_entities.map_or(shape, Shape::about);
    let b = server::Server::policyd(&args.activity, &b_args, None)?;
    println!(
        "B ({}): {}",
        args.versus_args.join(" "),
        load::load(b.addr, shape_b, args.seed)?
    );
    let slices = args.slices.unwrap_or(10);
    let (mut sum_a, mut sum_b) = (0.0, 0.0);
    let (mut p99_a, mut p99_b) = (Vec::new(), Vec::new());
    // Per server (A, B): CPU seconds of the threads while driven, and requests answered.
    let mut cpu = [server::ThreadCpu::default(); 2];
    let mut answered = [0.0; 2];
    for turn in 0..slices {
        let order = if turn % 2 == 0 {
            [(0, &a, shape), (1, &b, shape_b)]
        } else {
            [(1, &b, shape_b), (0, &a, shape)]
        };
        let mut runs = Vec::with_capacity(2);
        for (i, server, shape) in order {
            std::thread::sleep(PAUSE);
            let before = server.thread_cpu();
            let run = drive::measure(args, shape, server.addr)?;
            if let (Some(before), Some(after)) = (before, server.thread_cpu()) {
                cpu[i] = cpu[i].plus(after.minus(before));
                // The warm-up's requests are driven (and cost CPU) too.
                answered[i] += run.requests_per_sec * (args.warmup + args.duration) as f64;
            }
            runs.push(run);
        }
        if turn % 2 == 1 {
            runs.swap(0, 1);
        }
        let (ra, rb) = (runs[0].requests_per_sec, runs[1].requests_per_sec);
        sum_a += ra;
        sum_b += rb;
        p99_a.push(runs[0].p99_micros());
        p99_b.push(runs[1].p99_micros());
        println!(
            "turn {turn}: A {ra:.0} requests/s (p99 {} µs), B {rb:.0} (p99 {} µs), B/A {:.3}",
            runs[0].p99_micros(),
            runs[1].p99_micros(),
            rb / ra
        );
    }
    let n = slices.max(1) as f64;
    println!(
        "means over {} turns: A {:.0} requests/s, B {:.0}; B/A {:.3}; median p99: A {} µs, B {} µs",
        slices,
        sum_a / n,
        sum_b / n,
        sum_b / sum_a,
        median(&mut p99_a),
        median(&mut p99_b)
    );
    for (name, i) in [("A", 0), ("B", 1)] {
        if answered[i] > 0.0 {
            let per = |secs: f64| secs * 1e6 / answered[i];
            println!(
                "{name} CPU per request while driven (about: warm-ups counted at the measured rate): \
                 {:.1} µs, of which the activity writer {:.1} µs",
                per(cpu[i].writer + cpu[i].rest),
                per(cpu[i].writer)
            );
        }
    }
    a.report("A");
    b.report("B");
    Ok(())
}

/// The median of `values` (0 when empty).
fn median(values: &mut [u32]) -> u32 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

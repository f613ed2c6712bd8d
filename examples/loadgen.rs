//! Load generator: seeds a synthetic platform, starts the release daemon on it (or targets a
//! running one), and drives `POST /v1/is_authorized` (or the batch endpoint) over keep-alive
//! connections with a deterministic mix of allowed and denied requests across every rule.
//!
//! ```text
//! cargo build --release && cargo run --release --example loadgen -- \
//!     --entities 100000 --connections 16 --duration 10 [--warmup 3] [--batch 50] [--rate 10000] \
//!     [--activity on|off] [--seed 42] [--target 127.0.0.1:8180]
//! ```
//! Prints decisions/s, latency percentiles and the daemon's peak RSS.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use policyd::store::sqlite::SqliteStore;
use policyd::store::{Store, codec};
use policyd::synth::{self, Rng, Shape};
use serde_json::{Value, json};

struct Args {
    entities: usize,
    connections: usize,
    duration: u64,
    warmup: u64,
    batch: usize,
    rate: Option<u64>,
    activity: String,
    seed: u64,
    target: Option<SocketAddr>,
    bare: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        entities: 100_000,
        connections: 16,
        duration: 10,
        warmup: 3,
        batch: 0,
        rate: None,
        activity: "on".to_owned(),
        seed: 42,
        target: None,
        bare: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--entities" => a.entities = value()?.parse()?,
            "--connections" => a.connections = value()?.parse()?,
            "--duration" => a.duration = value()?.parse()?,
            "--warmup" => a.warmup = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--rate" => a.rate = Some(value()?.parse()?),
            "--activity" => a.activity = value()?,
            "--seed" => a.seed = value()?.parse()?,
            "--target" => a.target = Some(value()?.parse()?),
            "--bare" => a.bare = true,
            "--serve-bare" => serve_bare(),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let shape = Shape::about(args.entities);
    let floor = if args.bare {
        let (child, addr) =
            spawn_and_read_addr(Command::new(std::env::current_exe()?).arg("--serve-bare"))?;
        let run = measure(&args, shape, addr, Some(child), "bare hyper")?;
        Some(run)
    } else {
        None
    };
    let (daemon, addr, _dir) = match args.target {
        Some(addr) => (None, addr, None),
        None => {
            let dir = tempfile::tempdir()?;
            let db = dir.path().join("policyd.db");
            seed(&db, shape, args.seed)?;
            let (child, addr) = start_daemon(&db, &args.activity)?;
            (Some(child), addr, Some(dir))
        }
    };
    let run = measure(&args, shape, addr, daemon, "policyd")?;
    if let Some(dir) = &_dir {
        report_activity_size(&dir.path().join("activity.db"))?;
    }
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

/// What one measured run produced.
struct Run {
    requests_per_sec: f64,
}

/// Drives `addr` with the request mix, prints the report, then stops `server` (when we
/// started it) and prints its peak RSS and CPU.
fn measure(
    args: &Args,
    shape: Shape,
    addr: SocketAddr,
    mut server: Option<Child>,
    name: &str,
) -> anyhow::Result<Run> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let cpu_before = (
        cpu_secs(std::process::id()),
        server.as_ref().and_then(|c| cpu_secs(c.id())),
    );
    let result = runtime.block_on(drive(args, shape, addr));
    let cpu_after = (
        cpu_secs(std::process::id()),
        server.as_ref().and_then(|c| cpu_secs(c.id())),
    );
    let rss = server.as_ref().and_then(|c| peak_rss_kib(c.id()));
    if let Some(child) = server.as_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    let (report, run) = result?;
    println!("{name}: {report}");
    if let Some(kib) = rss {
        println!("{name} peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    if let ((Some(l0), Some(d0)), (Some(l1), Some(d1))) = (cpu_before, cpu_after) {
        println!(
            "CPU over the run (warm-up included): {name} {:.1} s, load generator {:.1} s",
            d1 - d0,
            l1 - l0
        );
    }
    Ok(run)
}

/// Bytes the daemon's activity log takes on disk (database and WAL, indexes and names
/// included) per record it holds.
fn report_activity_size(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let conn = rusqlite::Connection::open(path)?;
    let records: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    let names: i64 = conn.query_row("SELECT count(*) FROM names", [], |r| r.get(0))?;
    // Fold the WAL into the database so the file holds everything.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    let mut bytes = std::fs::metadata(path)?.len();
    let wal = path.with_extension("db-wal");
    bytes += std::fs::metadata(&wal).map_or(0, |m| m.len());
    println!(
        "activity log: {records} records, {names} names, {bytes} bytes on disk: {:.1} bytes per record",
        bytes as f64 / records.max(1) as f64
    );
    Ok(())
}

/// The floor: a bare hyper server on the same runtime and HTTP settings as the daemon, that
/// reads each body and answers a fixed decision.
fn serve_bare() -> ! {
    let code = match bare_server() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bare server: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

fn bare_server() -> anyhow::Result<()> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    const ANSWER: &[u8] =
        br#"{"decision":"Allow","diagnostics":{"reason":["owner.content"],"errors":[]},"decision_id":null}"#;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        eprintln!("bare hyper listening addr={}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(ANSWER)));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Fills a store with the synthetic platform through the import path.
fn seed(db: &Path, shape: Shape, seed: u64) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let snapshot =
        policyd::policy::load_dir(&root.join("policies")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = Store::new(Box::new(SqliteStore::open(db)?), 1);
    let start = Instant::now();
    let mut batch = Vec::with_capacity(5_000);
    let mut n = 0;
    for e in synth::entities(shape, seed) {
        batch.push(e);
        if batch.len() == 5_000 {
            n += flush(&store, &snapshot, &mut batch)?;
        }
    }
    n += flush(&store, &snapshot, &mut batch)?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "seeded {n} entities in {secs:.1} s ({:.0}/s)",
        n as f64 / secs
    );
    Ok(())
}

fn flush(
    store: &Store,
    snapshot: &policyd::policy::PolicySnapshot,
    batch: &mut Vec<Value>,
) -> anyhow::Result<usize> {
    let records = codec::parse_batch(
        Value::Array(std::mem::take(batch)),
        snapshot.schema.as_ref(),
    )?;
    store.upsert(&records)?;
    Ok(records.len())
}

fn start_daemon(db: &Path, activity: &str) -> anyhow::Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let bin: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("policyd"))
        .context("cannot locate target dir")?;
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `cargo build --release` first",
        bin.display()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--activity",
        activity,
        "--watch",
        "false",
    ])
    .arg("--db")
    .arg(db)
    .arg("--policies")
    .arg(root.join("policies"))
    .arg("--entities")
    .arg(db.with_file_name("no-entities"))
    .env("RUST_LOG", "warn,policyd=info");
    spawn_and_read_addr(&mut cmd)
}

/// Starts a server process and reads the address it logs (`addr=...`) on stderr.
fn spawn_and_read_addr(cmd: &mut Command) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = cmd.stderr(Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().context("server exited before listening")??;
        if let Some(a) = line.split("addr=").nth(1) {
            break a.split_whitespace().next().unwrap_or("").parse()?;
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, addr))
}

/// User plus system CPU seconds a process has used.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn request(rng: &mut Rng, shape: Shape) -> Value {
    let (principal, action, resource) = synth::request(rng, shape);
    json!({"principal": principal, "action": action, "resource": resource})
}

#[derive(Default)]
struct Totals {
    decisions: AtomicU64,
    allowed: AtomicU64,
    errors: AtomicU64,
}

async fn drive(args: &Args, shape: Shape, addr: SocketAddr) -> anyhow::Result<(String, Run)> {
    let totals = Arc::new(Totals::default());
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let per_conn_interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(1) as f64));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (totals, recording, stop) = (totals.clone(), recording.clone(), stop.clone());
        let (batch, seed) = (args.batch, args.seed.wrapping_add(c as u64 * 7919));
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut rng = Rng::new(seed);
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let (path, body) = if batch == 0 {
                    ("/v1/is_authorized", request(&mut rng, shape))
                } else {
                    let reqs: Vec<Value> = (0..batch).map(|_| request(&mut rng, shape)).collect();
                    ("/v1/is_authorized/batch", json!({"requests": reqs}))
                };
                // With a target rate, latency counts from when the request was due, so a
                // stalled server is not hidden by the client waiting politely.
                let due = match per_conn_interval {
                    Some(iv) => {
                        next += iv;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            tokio::time::sleep(wait).await;
                        }
                        next
                    }
                    None => Instant::now(),
                };
                let req = Request::post(path)
                    .header("host", "policyd")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))?;
                let resp = sender.send_request(req).await?;
                let ok = resp.status().is_success();
                let bytes = resp.into_body().collect().await?.to_bytes();
                let elapsed = due.elapsed();
                if !recording.load(Ordering::Relaxed) {
                    continue;
                }
                latencies.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                if !ok {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let v: Value = serde_json::from_slice(&bytes)?;
                let results: Vec<&Value> = match v.get("results") {
                    Some(Value::Array(rs)) => rs.iter().collect(),
                    _ => vec![&v],
                };
                totals
                    .decisions
                    .fetch_add(results.len() as u64, Ordering::Relaxed);
                let allowed = results.iter().filter(|r| r["decision"] == "Allow").count();
                totals.allowed.fetch_add(allowed as u64, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await; // caches, connections
    recording.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    recording.store(false, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    let pct = |q: f64| {
        all.get(((all.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    let decisions = totals.decisions.load(Ordering::Relaxed);
    let run = Run {
        requests_per_sec: all.len() as f64 / secs,
    };
    let report = format!(
        "{} entities, {} connections, batch {}, activity {}: {:.0} decisions/s ({:.0} requests/s), {:.1}% allowed, {} errors\n\
         latency per request: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        shape.total(),
        args.connections,
        args.batch,
        args.activity,
        decisions as f64 / secs,
        all.len() as f64 / secs,
        totals.allowed.load(Ordering::Relaxed) as f64 * 100.0 / decisions.max(1) as f64,
        totals.errors.load(Ordering::Relaxed),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        all.last().copied().unwrap_or(0),
    );
    Ok((report, run))
}

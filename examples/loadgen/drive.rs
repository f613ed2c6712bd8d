//! Driving decision requests (or, with `--writes`, single-entity writes): closed loop (each
//! connection sends its next request when the previous one is answered) or paced at a target
//! rate, where latency counts from when a request was due, so a stalled server is not hidden
//! by the client waiting politely.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use policyd::synth::{self, Rng, Shape};
use serde_json::{Value, json};

use super::Args;

/// What a batch holds.
#[derive(Debug, Clone, Copy)]
pub enum BatchShape {
    /// Unrelated requests of the mix.
    Mixed,
    /// One principal and action, datasets of one organization: a UI filtering a list.
    Listing,
}

impl std::str::FromStr for BatchShape {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "mixed" => Ok(BatchShape::Mixed),
            "listing" => Ok(BatchShape::Listing),
            _ => anyhow::bail!("--shape is mixed or listing"),
        }
    }
}

/// The outcome of one measured run.
pub struct Run {
    pub requests_per_sec: f64,
    decisions_per_sec: f64,
    /// What one unit of work is: "decisions" or "writes".
    unit: &'static str,
    allowed_percent: f64,
    errors: u64,
    /// Latency per request, microseconds: p50, p99, p99.9, max.
    latency: [u32; 4],
    describe: String,
}

impl Run {
    /// The 99th percentile of the latency per request, microseconds.
    pub fn p99_micros(&self) -> u32 {
        self.latency[1]
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [p50, p99, p999, max] = self.latency;
        write!(
            f,
            "{}: {:.0} {}/s ({:.0} requests/s), {:.1}% allowed, {} errors\n  \
             latency per request: p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs, max {max} µs",
            self.describe,
            self.decisions_per_sec,
            self.unit,
            self.requests_per_sec,
            self.allowed_percent,
            self.errors
        )
    }
}

#[derive(Default)]
struct Totals {
    decisions: AtomicU64,
    allowed: AtomicU64,
    errors: AtomicU64,
}

/// One request of the configured mix: method, path and body.
fn body(
    args: &Args,
    rng: &mut Rng,
    shape: Shape,
    n: usize,
) -> (&'static str, &'static str, String) {
    if args.writes {
        // A new user of a random organization: one entity, one write (one revision upstream).
        let o = rng.below(shape.orgs);
        let user = json!([{
            "uid": {"type": "User", "id": format!("w{}-{n}", rng.next_u64())},
            "attrs": {},
            "parents": [{"type": "Organization", "id": synth::org_id(o)}],
        }]);
        return ("PUT", "/v1/entities", user.to_string());
    }
    let single = |rng: &mut Rng| {
        let (principal, action, resource) = synth::request(rng, shape);
        json!({"principal": principal, "action": action, "resource": resource})
    };
    if args.batch == 0 {
        return ("POST", "/v1/is_authorized", single(rng).to_string());
    }
    let requests: Vec<Value> = match args.shape {
        BatchShape::Mixed => (0..args.batch).map(|_| single(rng)).collect(),
        BatchShape::Listing => {
            let (principal, action, resources) = synth::listing(rng, shape, args.batch);
            resources
                .into_iter()
                .map(|r| json!({"principal": principal, "action": action, "resource": r}))
                .collect()
        }
    };
    (
        "POST",
        "/v1/is_authorized/batch",
        json!({ "requests": requests }).to_string(),
    )
}

/// Drives `addr` for the warm-up and then the measured duration. Every connection is a task on
/// one client thread (as light a client as `wrk -t1`). Closed loop, each sends its next request
/// when the previous one is answered; paced, a pacer thread (see [`pace`]) says when each
/// request is due and a free connection sends it, with latency counted from when it was due.
pub fn measure(args: &Args, shape: Shape, addr: SocketAddr) -> anyhow::Result<Run> {
    let totals = Arc::new(Totals::default());
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut connections = Vec::new();
    let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let due_rx = Arc::new(tokio::sync::Mutex::new(due_rx));
    for c in 0..args.connections {
        let seed = args.seed.wrapping_add(c as u64 * 7919);
        let (totals, recording, stop) = (totals.clone(), recording.clone(), stop.clone());
        let bodies = {
            // Bodies are made up front, a few thousand per connection, cycled.
            let mut rng = Rng::new(seed);
            (0..2_000)
                .map(|n| body(args, &mut rng, shape, n))
                .collect::<Vec<_>>()
        };
        let paced = args.rate.map(|_| due_rx.clone());
        connections.push(client.spawn(async move {
            let mut sender = connect(addr).await?;
            let mut latencies = Vec::with_capacity(1 << 16);
            for (method, path, body) in bodies.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let since = match &paced {
                    None => Instant::now(),
                    // The next due request, whichever connection is free first.
                    Some(dues) => match dues.lock().await.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                };
                let answer = send(&mut sender, method, path, body).await?;
                tally(&totals, &recording, &mut latencies, since, answer)?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let pacer = args.rate.map(|rate| {
        let stop = stop.clone();
        std::thread::spawn(move || pace(rate, &due_tx, &stop))
    });
    std::thread::sleep(Duration::from_secs(args.warmup));
    recording.store(true, Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(args.duration));
    recording.store(false, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(pacer) = pacer {
        // Its end closes the channel, which ends connections waiting for a due request.
        pacer
            .join()
            .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    }
    let mut all = Vec::new();
    for c in connections {
        all.extend(client.block_on(c)??);
    }
    all.sort_unstable();
    let pct = |q: f64| {
        all.get(((all.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    let decisions = totals.decisions.load(Ordering::Relaxed);
    let describe = format!(
        "{} entities, {} connections, {}{}",
        shape.total(),
        args.connections,
        match (args.batch, args.shape) {
            _ if args.writes =>
                "single-entity writes (PUT /v1/entities, one new user each)".to_owned(),
            (0, _) => "single checks".to_owned(),
            (n, BatchShape::Mixed) => format!("batches of {n} unrelated requests"),
            (n, BatchShape::Listing) => format!("batches of {n} (one principal, {n} datasets)"),
        },
        args.rate
            .map(|r| format!(", paced at {r} requests/s"))
            .unwrap_or_default()
    );
    Ok(Run {
        requests_per_sec: all.len() as f64 / secs,
        decisions_per_sec: decisions as f64 / secs,
        unit: if args.writes { "writes" } else { "decisions" },
        allowed_percent: totals.allowed.load(Ordering::Relaxed) as f64 * 100.0
            / decisions.max(1) as f64,
        errors: totals.errors.load(Ordering::Relaxed),
        latency: [
            pct(0.50),
            pct(0.99),
            pct(0.999),
            all.last().copied().unwrap_or(0),
        ],
        describe,
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request; the status was 2xx, and the body.
async fn send(
    sender: &mut Sender,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(bool, Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "policyd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))?;
    let resp = sender.send_request(req).await?;
    let ok = resp.status().is_success();
    Ok((ok, resp.into_body().collect().await?.to_bytes()))
}

/// Counts an answer (when recording) and its latency from `since`.
fn tally(
    totals: &Totals,
    recording: &AtomicBool,
    latencies: &mut Vec<u32>,
    since: Instant,
    (ok, bytes): (bool, Bytes),
) -> anyhow::Result<()> {
    let elapsed = since.elapsed();
    if !recording.load(Ordering::Relaxed) {
        return Ok(());
    }
    latencies.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
    if !ok {
        totals.errors.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&bytes)?;
    if v.get("upserted").is_some() {
        // A write: one unit, never "allowed".
        totals.decisions.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let results: Vec<&Value> = match v.get("results") {
        Some(Value::Array(rs)) => rs.iter().collect(),
        _ => vec![&v],
    };
    totals
        .decisions
        .fetch_add(results.len() as u64, Ordering::Relaxed);
    let allowed = results.iter().filter(|r| r["decision"] == "Allow").count();
    totals.allowed.fetch_add(allowed as u64, Ordering::Relaxed);
    Ok(())
}

/// Issues `rate` due times a second until `stop`, on a thread of its own so that it can sleep
/// precisely (the runtime's timers tick in milliseconds, as long as the latency target). A
/// late wake-up issues every request that fell due meanwhile: they count as late.
fn pace(rate: u64, dues: &tokio::sync::mpsc::UnboundedSender<Instant>, stop: &AtomicBool) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut due = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        due += interval;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if dues.send(due).is_err() {
            return;
        }
    }
}

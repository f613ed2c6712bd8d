//! Loading the synthetic platform into the daemon the way a service would: `PUT /v1/entities`
//! in chunks of 1,000, parents before children, one request at a time.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use policyd::synth::{self, Shape};
use serde_json::Value;

const CHUNK: usize = 1_000;

/// How the loading went.
pub struct Loaded {
    entities: usize,
    secs: f64,
}

impl fmt::Display for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loaded {} entities through PUT /v1/entities (chunks of {CHUNK}) in {:.1} s: {:.0} entities/s",
            self.entities,
            self.secs,
            self.entities as f64 / self.secs
        )
    }
}

/// Puts every entity of `shape` into the daemon at `addr`.
pub fn load(addr: SocketAddr, shape: Shape, seed: u64) -> anyhow::Result<Loaded> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            // Bodies are rendered before the clock starts: this measures the daemon, not us.
            let mut bodies = Vec::new();
            let mut chunk = Vec::with_capacity(CHUNK);
            let mut entities = 0;
            for e in synth::entities(shape, seed) {
                chunk.push(e);
                if chunk.len() == CHUNK {
                    entities += chunk.len();
                    bodies.push(Value::Array(std::mem::take(&mut chunk)).to_string());
                }
            }
            if !chunk.is_empty() {
                entities += chunk.len();
                bodies.push(Value::Array(chunk).to_string());
            }
            let start = Instant::now();
            for body in bodies {
                let req = Request::put("/v1/entities")
                    .header("host", "policyd")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let answer = resp.into_body().collect().await?.to_bytes();
                anyhow::ensure!(
                    status.is_success(),
                    "PUT /v1/entities answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            let secs = start.elapsed().as_secs_f64();
            Ok::<_, anyhow::Error>(Loaded { entities, secs })
        })
        .context("loading the store")
}

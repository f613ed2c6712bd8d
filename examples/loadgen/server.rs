//! The servers under load: the release daemon on an empty temporary store, or a bare hyper
//! server answering a fixed decision (the floor). Each runs in its own process, so its peak
//! RSS and CPU are its own.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// A server process, stopped (SIGTERM, then waited for) when dropped.
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    /// The daemon's data directory (store and activity log), removed when dropped.
    dir: Option<tempfile::TempDir>,
    cpu_at_start: Option<f64>,
    /// The activity log's records and bytes once loading was committed (see
    /// [`Server::mark_activity`]).
    activity_at_mark: Option<(i64, u64)>,
}

impl Server {
    /// The release daemon (or the executable `bin`, another build of it) on an empty store in
    /// a temp dir, with `--activity` and `extra` flags.
    pub fn policyd(activity: &str, extra: &[String], bin: Option<&Path>) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?;
        let bin: PathBuf = match bin {
            Some(b) => b.to_owned(),
            None => exe
                .parent()
                .and_then(Path::parent)
                .map(|d| d.join("policyd"))
                .context("cannot locate target dir")?,
        };
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: run `cargo build --release` first",
            bin.display()
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir()?;
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
        .arg(dir.path().join("policyd.db"))
        .arg("--policies")
        .arg(root.join("policies"))
        .arg("--entities")
        .arg(dir.path().join("no-entities"))
        .args(extra)
        .env("RUST_LOG", "warn,policyd=info")
        // Text, whose `addr=` `spawn` reads (a piped stderr would log JSON by default).
        .env("POLICYD_LOG_FORMAT", "text");
        let mut server = Server::spawn(&mut cmd)?;
        server.dir = Some(dir);
        Ok(server)
    }

    /// This program again, as a bare hyper server that works `work_us` µs per request.
    pub fn bare(work_us: u64) -> anyhow::Result<Server> {
        Server::spawn(Command::new(std::env::current_exe()?).arg(format!("--serve-bare={work_us}")))
    }

    /// Starts a server process and reads the address it logs (`addr=...`) on stderr.
    fn spawn(cmd: &mut Command) -> anyhow::Result<Server> {
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
        let cpu_at_start = cpu_secs(child.id());
        Ok(Server {
            addr,
            child,
            dir: None,
            cpu_at_start,
            activity_at_mark: None,
        })
    }

    /// Stops the server and prints its peak RSS and CPU time, and for the daemon the activity
    /// log's size per record.
    pub fn report(mut self, name: &str) {
        let rss = peak_rss_kib(self.child.id());
        let cpu = cpu_secs(self.child.id()).zip(self.cpu_at_start);
        self.stop();
        if let Some(kib) = rss {
            println!(
                "{name} peak RSS (loading included): {:.1} MiB",
                kib as f64 / 1024.0
            );
        }
        if let Some((end, start)) = cpu {
            println!("{name} CPU: {:.1} s", end - start);
        }
        if let Some(dir) = &self.dir
            && let Err(e) =
                report_activity_size(&dir.path().join("activity.db"), self.activity_at_mark)
        {
            println!("activity log: unreadable ({e})");
        }
    }

    /// Notes the activity log's size once the records of loading are committed, so the report
    /// can give what the records added after it (the decisions) cost each.
    pub fn mark_activity(&mut self) -> anyhow::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = dir.path().join("activity.db");
        if !path.exists() {
            return Ok(());
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        // The writer commits within a second of the last write: wait until the count holds.
        let mut last = (-1, 0);
        loop {
            let now = log_size(&conn)?;
            if now.0 == last.0 {
                self.activity_at_mark = Some(now);
                return Ok(());
            }
            last = now;
            std::thread::sleep(std::time::Duration::from_millis(1_500));
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Records in the log and the bytes its pages hold (the WAL's newer pages included).
fn log_size(conn: &rusqlite::Connection) -> anyhow::Result<(i64, u64)> {
    let records: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((records, u64::try_from((pages - free) * size).unwrap_or(0)))
}

/// Bytes the daemon's activity log takes on disk (database and WAL, indexes and names
/// included) per record it holds; and, given the size at a mark, per record added since.
fn report_activity_size(path: &Path, mark: Option<(i64, u64)>) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let conn = rusqlite::Connection::open(path)?;
    // Read before the checkpoint, by the same measure as the mark.
    let (records, bytes_in_pages) = log_size(&conn)?;
    let names: i64 = conn.query_row("SELECT count(*) FROM names", [], |r| r.get(0))?;
    // Fold the WAL into the database so the file holds everything.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    let mut bytes = std::fs::metadata(path)?.len();
    bytes += std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
    println!(
        "activity log: {records} records, {names} names, {bytes} bytes on disk: {:.1} bytes per record",
        bytes as f64 / records.max(1) as f64
    );
    if let Some((records_then, bytes_then)) = mark {
        let added = records - records_then;
        println!(
            "activity log, records added while driving: {added}, {:.1} bytes each \
             ({records_then} records and {bytes_then} bytes after loading)",
            bytes_in_pages.saturating_sub(bytes_then) as f64 / added.max(1) as f64
        );
    }
    Ok(())
}

/// CPU seconds of a process's threads: its activity writer's, and all the others'.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadCpu {
    pub writer: f64,
    pub rest: f64,
}

impl ThreadCpu {
    pub fn plus(self, o: ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            writer: self.writer + o.writer,
            rest: self.rest + o.rest,
        }
    }

    pub fn minus(self, o: ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            writer: self.writer - o.writer,
            rest: self.rest - o.rest,
        }
    }
}

impl Server {
    /// The CPU it has used so far: its activity writer thread's, and the rest of the process
    /// (threads that ended included: a blocking thread that ends during a turn must not take
    /// its earlier CPU out of the turn's).
    pub fn thread_cpu(&self) -> Option<ThreadCpu> {
        let pid = self.child.id();
        let mut writer = 0.0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            // A thread may end between the listing and the read: it is not the writer.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // The writer thread is named `policyd-activity`, cut to 15 bytes by the kernel.
            if stat.contains("(policyd-activit)") {
                writer += stat_cpu_secs(&stat)?;
            }
        }
        Some(ThreadCpu {
            writer,
            rest: cpu_secs(pid)? - writer,
        })
    }
}

/// User plus system CPU seconds a process has used.
fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User plus system CPU seconds in a `/proc/.../stat` line.
fn stat_cpu_secs(stat: &str) -> Option<f64> {
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

/// The floor: a bare hyper server on the same runtime and HTTP settings as the daemon, that
/// reads each body, spends `work_us` µs of CPU (a busy loop, 0 by default), and answers a
/// fixed decision.
pub fn serve_bare(work_us: u64) -> ! {
    let code = match bare_server(std::time::Duration::from_micros(work_us)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bare server: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

fn bare_server(work: std::time::Duration) -> anyhow::Result<()> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    const ANSWER: &[u8] = br#"{"decision":"Allow","diagnostics":{"reason":["owner.content"],"errors":[]},"decision_id":null}"#;
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
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    // Measured in wall time: a busy loop the scheduler preempts ends sooner
                    // in CPU, so this floor never works more than asked.
                    let start = std::time::Instant::now();
                    while start.elapsed() < work {
                        std::hint::spin_loop();
                    }
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

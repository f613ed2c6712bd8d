//! Test harness: a real daemon on 127.0.0.1:0 over a temp dir, and a small HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use policyd::config::{ActivityConfig, AnalysisConfig, Limits, ServeConfig};
use policyd::state::AppState;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Opens a keep-alive connection to `addr` and completes one `GET /healthz` on it; the
/// connection stays open while the stream is held.
pub async fn held_connection(addr: SocketAddr) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: policyd\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    stream
}

/// The repository's bundled policies.
pub fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// The repository's demo entities.
pub fn repo_entities() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("entities")
}

/// A daemon serving on a random loopback port until dropped or stopped.
pub struct Daemon {
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub state: Arc<AppState>,
    fixtures: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Options for [`Daemon::start`].
pub struct Setup {
    pub policies: PathBuf,
    pub entities: Option<PathBuf>,
    pub limits: Limits,
    pub entity_cache: u64,
    /// `--compact-cache`.
    pub compact_cache: u64,
    pub watch: bool,
    pub activity: bool,
    pub activity_queue: usize,
    pub activity_max_bytes: u64,
    pub auth: policyd::config::Auth,
    pub analysis: AnalysisConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            policies: repo_policies(),
            entities: None,
            limits: Limits::default(),
            entity_cache: 16 << 20,
            compact_cache: 16 << 20,
            watch: true,
            activity: true,
            activity_queue: 65_536,
            activity_max_bytes: 1 << 30,
            auth: Default::default(),
            analysis: AnalysisConfig::default(),
        }
    }
}

impl Daemon {
    /// The bundled policies and demo entities.
    pub async fn demo() -> Daemon {
        Daemon::start(Setup {
            entities: Some(repo_entities()),
            ..Setup::default()
        })
        .await
    }

    /// A daemon over policy files written into a temp dir, with an empty store.
    pub async fn dir_policies(files: &[(&str, &str)]) -> Daemon {
        let dir = policy_dir(files);
        let mut d = Daemon::start(Setup {
            policies: dir.path().to_path_buf(),
            ..Setup::default()
        })
        .await;
        d.fixtures = Some(dir);
        d
    }

    /// Starts a daemon the way `serve` does, on its own temp dir.
    pub async fn start(setup: Setup) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeConfig {
            policies_dir: setup.policies,
            db_path: dir.path().join("data/policyd.db"),
            entities_dir: setup
                .entities
                .unwrap_or_else(|| dir.path().join("no-entities")),
            listen: "127.0.0.1:0".parse().unwrap(),
            auth: setup.auth,
            entity_cache: setup.entity_cache,
            compact_cache: setup.compact_cache,
            watch: setup.watch,
            limits: setup.limits,
            activity: ActivityConfig {
                enabled: setup.activity,
                queue: setup.activity_queue,
                max_bytes: setup.activity_max_bytes,
                ..ActivityConfig::beside(&dir.path().join("data/policyd.db"))
            },
            analysis: setup.analysis,
            upstream: None,
        };
        let state = tokio::task::block_in_place(|| policyd::daemon::open(&config)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        policyd::daemon::spawn_background(&state, &config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(policyd::run(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Daemon {
            addr,
            dir,
            state,
            fixtures: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops accepting and waits for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        policyd::daemon::finish(&self.state).await;
    }

    /// Sends raw bytes with a method and path; returns the status and the JSON body (Null when
    /// the body is empty).
    pub async fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        Client(self.addr).call(method, path, body).await
    }

    /// Sends a request with extra headers; returns the status, the headers and the JSON body.
    pub async fn with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, hyper::HeaderMap, Value) {
        let (status, headers, bytes) = Client(self.addr).send(method, path, headers, body).await;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, value)
    }

    /// Sends JSON (or no body).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, bytes).await
    }

    /// One decision on Cedar uid strings; returns the decision and the reasons.
    pub async fn decide(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
    ) -> (String, Vec<String>) {
        let (status, body) = self
            .call(
                "POST",
                "/v1/is_authorized",
                Some(&json!({"principal": principal, "action": action, "resource": resource})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{principal} {action} {resource}: {body}"
        );
        decision_of(&body)
    }

    /// Writes entities, asserting success.
    pub async fn put(&self, entities: Value) {
        let (status, body) = self.call("PUT", "/v1/entities", Some(&entities)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Reads an entity, `None` on 404.
    pub async fn get(&self, ty: &str, id: &str) -> Option<Value> {
        let path = format!("/v1/entities/{}/{}", encode(ty), encode(id));
        let (status, body) = self.call("GET", &path, None).await;
        match status {
            StatusCode::OK => Some(body),
            StatusCode::NOT_FOUND => None,
            other => panic!("GET {path}: {other} {body}"),
        }
    }
}

/// A client for a daemon at an address.
pub struct Client(pub SocketAddr);

impl Client {
    /// Sends raw bytes as JSON; returns the status and the JSON body (Null when empty).
    pub async fn call(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.call_with(method, path, &[], body).await
    }

    /// [`Client::call`] with extra headers.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let json = [("content-type", "application/json")];
        let all: Vec<(&str, &str)> = json.iter().chain(headers).copied().collect();
        let (status, _, bytes) = self.send(method, path, &all, body).await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "response is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, value)
    }

    /// A GET whose answer is text (`/metrics`); status and body.
    pub async fn text(&self, path: &str) -> (StatusCode, String) {
        let (status, _, bytes) = self.send("GET", path, &[], Vec::new()).await;
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Sends a request with exactly these headers (and `host`); status, headers and body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let stream = TcpStream::connect(self.0).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "policyd");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, bytes)
    }
}

/// Decision and sorted reasons of an `is_authorized` response.
pub fn decision_of(body: &Value) -> (String, Vec<String>) {
    let decision = body["decision"].as_str().unwrap().to_owned();
    let reasons = body["diagnostics"]["reason"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    (decision, reasons)
}

/// Percent-encodes a path segment.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Writes files into a fresh temp dir (for policy and schema fixtures).
pub fn policy_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// The `policyd` binary, with the test runner's `RUST_LOG` and `POLICYD_*` variables removed so
/// only what a test sets applies.
pub fn policyd_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_policyd"));
    cmd.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("POLICYD_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A spawned daemon process, killed when dropped so a failing test leaves no daemon behind.
pub struct Spawned(pub std::process::Child);

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns `policyd serve` and waits for the address it logs (`127.0.0.1:port` or `unix:/path`).
pub fn spawn_logged(cmd: &mut std::process::Command) -> (Spawned, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = logged_addr(&line) {
                let _ = tx.send(addr);
            }
        }
    });
    let child = Spawned(child);
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("serve did not log its address");
    (child, addr)
}

/// The address in serve's "policyd listening" log line, text (`addr=...`) or JSON (stderr that
/// is not a terminal logs JSON by default).
pub fn logged_addr(line: &str) -> Option<String> {
    if line.starts_with('{') {
        let event: Value = serde_json::from_str(line).ok()?;
        return event["addr"].as_str().map(str::to_owned);
    }
    let addr = line.split("addr=").nth(1)?;
    Some(addr.split_whitespace().next().unwrap_or("").to_owned())
}

/// Whether the cvc5 solver is available for a test that needs it. Without it the test skips and
/// says so, except when `CI` is set: there a missing solver fails the test.
pub fn cvc5_available(test: &str) -> bool {
    match policyd::analysis::Cvc5::locate(None) {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("{test}: cvc5 is required in CI (CI is set) but is missing: {e}")
        }
        Err(e) => {
            // Written past the test harness's capture, so the skip shows in a passing run.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipping {test}: {e}");
            false
        }
    }
}

/// Puts a policy file into a watched directory the way an editor or a deploy does: the text goes
/// to a side file the daemon ignores, then one rename makes it appear whole. A plain
/// `std::fs::write` creates the file empty before writing it, and a reload that runs in between
/// (the watcher's first one, say) would serve the empty file.
pub fn drop_in(dir: &Path, name: &str, text: &str) {
    let part = dir.join(format!("{name}.part"));
    std::fs::write(&part, text).unwrap();
    std::fs::rename(&part, dir.join(name)).unwrap();
}

/// A copy of the bundled policies in a temp dir that a test may edit.
pub fn policies_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_policy_files(&repo_policies(), dir.path());
    dir
}

/// Copies the files of a policy directory (not its `tests/` subdirectory) into `to`.
pub fn copy_policy_files(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

//! Fleet-mode test support: a throwaway PostgreSQL database per test, `policyd serve
//! --upstream` processes, and a TCP proxy that can cut a sidecar off its upstream.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::common::{Client, Spawned, policyd_command, spawn_logged};

/// A database created for one test and dropped after it.
pub struct TestDb {
    admin: String,
    pub name: String,
    pub url: String,
}

/// The test's own database on `POLICYD_TEST_POSTGRES`; `None` (the test skips, saying so) when
/// the variable is unset, except with `CI=true`, where that fails the test.
pub async fn test_db(test: &str) -> Option<TestDb> {
    let Ok(admin) = std::env::var("POLICYD_TEST_POSTGRES") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: POLICYD_TEST_POSTGRES is unset, and CI=true requires these tests");
        }
        eprintln!("skipping {test}: POLICYD_TEST_POSTGRES is unset (a postgres:// URL)");
        return None;
    };
    let name = format!("policyd_{test}_{}", std::process::id());
    let client = connect(&admin).await;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = with_database(&admin, &name);
    Some(TestDb { admin, name, url })
}

impl TestDb {
    /// The URL of this database through another `host:port` (a proxy).
    pub fn via(&self, addr: SocketAddr) -> String {
        with_host(&self.url, &addr.to_string())
    }

    /// A direct connection to this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = connect(&admin).await;
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// `host:port` of a postgres:// URL.
pub fn host_of(url: &str) -> &str {
    split(url).2
}

/// `(scheme, user, host:port)` of a URL.
fn split(url: &str) -> (&str, &str, &str) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        Some((user, host)) => (scheme, user, host),
        None => (scheme, "", authority),
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").expect("a postgres:// URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/{db}{query}")
}

/// `url` with its `host:port` replaced.
pub fn with_host(url: &str, host: &str) -> String {
    let (scheme, user, old) = split(url);
    let at = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    url.replacen(
        &format!("{scheme}://{at}{old}"),
        &format!("{scheme}://{at}{host}"),
        1,
    )
}

/// A policy set without a schema: readers (members of `Group::"readers"`) may read.
pub fn policies() -> tempfile::TempDir {
    crate::common::policy_dir(&[(
        "readers.cedar",
        r#"permit (principal in Group::"readers", action == Action::"read", resource);"#,
    )])
}

/// `policyd upstream <args>`, asserting success; returns stdout.
pub fn upstream_cli(url: &str, args: &[&str]) -> String {
    let out = policyd_command()
        .arg("upstream")
        .args(args)
        .env("POLICYD_UPSTREAM", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "policyd upstream {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What most fleet tests start from: a migrated test database (see [`test_db`]), the policies
/// its sidecars load, and a directory for their replicas.
pub struct Fleet {
    pub db: TestDb,
    pub policies: tempfile::TempDir,
    pub dir: tempfile::TempDir,
}

impl Fleet {
    /// `None` when the fleet tests are skipped (see [`test_db`]).
    pub async fn migrated(test: &str, policies: tempfile::TempDir) -> Option<Fleet> {
        let db = test_db(test).await?;
        upstream_cli(&db.url, &["migrate"]);
        Some(Fleet {
            db,
            policies,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    /// Where sidecar `name` keeps its replica.
    pub fn replica(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("p.db")
    }

    /// Starts sidecar `name` (its replica at [`Fleet::replica`]) following `url`, with extra
    /// flags.
    pub fn sidecar(&self, name: &str, url: &str, extra: &[&str]) -> Sidecar {
        Sidecar::start(self.policies.path(), &self.replica(name), url, extra)
    }
}

/// A `policyd serve --upstream` process.
pub struct Sidecar {
    pub process: Spawned,
    pub addr: SocketAddr,
}

impl Sidecar {
    /// Starts a sidecar on `db` (its replica file) following `url`, with extra flags.
    pub fn start(policies: &Path, db: &Path, url: &str, extra: &[&str]) -> Sidecar {
        let mut cmd = policyd_command();
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--policies")
            .arg(policies)
            .arg("--db")
            .arg(db)
            .arg("--entities")
            .arg(db.with_file_name("no-entities"))
            .arg("--upstream")
            .arg(url)
            .args(extra);
        let (process, addr) = spawn_logged(&mut cmd);
        Sidecar {
            process,
            addr: addr.parse().unwrap(),
        }
    }

    /// A request with JSON and extra headers; status and body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        Client(self.addr)
            .call_with(method, path, headers, body)
            .await
    }

    /// The value of an unlabelled metric in `GET /metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, text) = Client(self.addr).text("/metrics").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        for _ in 0..300 {
            if self.call("GET", "/readyz", &[], None).await.0 == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sidecar {} never became ready", self.addr);
    }

    /// Writes entities; returns the revision token.
    pub async fn put(&self, entities: Value) -> String {
        let (status, body) = self.call("PUT", "/v1/entities", &[], Some(&entities)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["revision"]
            .as_str()
            .unwrap_or_else(|| panic!("no revision in {body}"))
            .to_owned()
    }

    /// Whether `user` may read `doc`, at least at `token`; status and body.
    pub async fn read(&self, user: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = json!({
            "principal": format!("User::\"{user}\""),
            "action": "Action::\"read\"",
            "resource": "Doc::\"d\"",
        });
        if let Some(t) = token {
            request["consistency"] = json!({ "at_least": t });
        }
        self.call("POST", "/v1/is_authorized", &[], Some(&request))
            .await
    }
}

/// The revision named by the token in an answer's `"revision"`.
pub fn revision_of(body: &Value) -> i64 {
    let t = body["revision"]
        .as_str()
        .unwrap_or_else(|| panic!("no revision in {body}"));
    policyd::upstream::token::decode(t).unwrap().revision
}

/// A user entity, a member of `Group::"readers"` or of nothing.
pub fn user(id: &str, reader: bool) -> Value {
    let parents = if reader {
        json!([{"type": "Group", "id": "readers"}])
    } else {
        json!([])
    };
    json!([{"uid": {"type": "User", "id": id}, "attrs": {}, "parents": parents}])
}

/// A TCP proxy to PostgreSQL that a test can cut (every connection dropped, new ones refused)
/// and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    /// A proxy to the host of `url`.
    pub async fn to(url: &str) -> Proxy {
        let target = host_of(url).to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (target, cut) = (target.clone(), cut2.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

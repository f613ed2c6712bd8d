//! Hardening: the token on the write and admin surface, request bounds and timeouts, failing
//! closed when the store fails, and bad bytes of every kind answered with a 4xx.

mod common;

use std::time::Duration;

use cedar_policy::EntityUid;
use common::{Daemon, Setup, repo_entities};
use policyd::config::{Auth, Limits};
use policyd::storage::{QuotaCheck, ReserveOutcome, Usage};
use policyd::store::{EntityStore, Record, StorageLedger, Store, StoreError, WriteEffect};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-token-for-tests";

fn ask() -> Vec<u8> {
    json!({"principal": "User::\"dave\"", "action": "Action::\"view\"", "resource": "Project::\"nlp\""})
        .to_string()
        .into_bytes()
}

async fn with_token(open_decisions: bool) -> Daemon {
    Daemon::start(Setup {
        entities: Some(repo_entities()),
        auth: Auth {
            token: Some(TOKEN.as_bytes().to_vec()),
            open_decisions,
        },
        ..Setup::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_writes_and_admin_reads() {
    let d = with_token(false).await;
    let bearer = format!("Bearer {TOKEN}");
    let json_ct = ("content-type", "application/json");
    let user = json!([{"uid": {"type": "User", "id": "new"}, "attrs": {}, "parents": []}])
        .to_string()
        .into_bytes();
    for auth in [
        None,
        Some("Bearer wrong-token-of-same-size!"),
        Some("Basic abc"),
        Some(TOKEN),
    ] {
        let mut headers = vec![json_ct];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let (status, h, body) = d
            .with_headers("PUT", "/v1/entities", &headers, user.clone())
            .await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert_eq!(h["www-authenticate"], "Bearer");
        assert_eq!(body["error"]["code"], "unauthorized");
        for path in [
            "/v1/policies",
            "/v1/entities/User/bob",
            "/v1/activity?organization=acme&viewer=User::%22ada%22",
        ] {
            let (status, _, _) = d.with_headers("GET", path, &headers, vec![]).await;
            assert_eq!(status, 401, "{path} {auth:?}");
        }
        let (status, _, _) = d
            .with_headers("POST", "/v1/is_authorized", &headers, ask())
            .await;
        assert_eq!(status, 401, "decisions need the token unless opened");
    }
    assert!(
        d.get_with(&bearer, "User", "new").await.is_none(),
        "nothing was written"
    );
    let (status, _, _) = d
        .with_headers(
            "PUT",
            "/v1/entities",
            &[json_ct, ("authorization", &bearer)],
            user,
        )
        .await;
    assert_eq!(status, 200);
    assert!(d.get_with(&bearer, "User", "new").await.is_some());
    let (status, _, body) = d
        .with_headers(
            "POST",
            "/v1/is_authorized",
            &[json_ct, ("authorization", &bearer)],
            ask(),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["decision"].as_str()),
        (200, Some("Allow"))
    );
    for probe in ["/healthz", "/readyz"] {
        let (status, _, _) = d.with_headers("GET", probe, &[], vec![]).await;
        assert_eq!(status, 200, "{probe} stays open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_decisions_answer_without_the_token() {
    let d = with_token(true).await;
    let (status, _, body) = d
        .with_headers(
            "POST",
            "/v1/is_authorized",
            &[("content-type", "application/json")],
            ask(),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["decision"].as_str()),
        (200, Some("Allow"))
    );
    let (status, _, _) = d
        .with_headers("DELETE", "/v1/entities/User/bob", &[], vec![])
        .await;
    assert_eq!(status, 401);
}

impl Daemon {
    async fn get_with(&self, bearer: &str, ty: &str, id: &str) -> Option<Value> {
        let (status, _, body) = self
            .with_headers(
                "GET",
                &format!("/v1/entities/{ty}/{id}"),
                &[("authorization", bearer)],
                vec![],
            )
            .await;
        (status == 200).then_some(body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_must_be_json_and_writes_are_bounded() {
    let d = Daemon::start(Setup {
        entities: Some(repo_entities()),
        limits: Limits {
            max_entities_per_write: 3,
            ..Limits::default()
        },
        ..Setup::default()
    })
    .await;
    let (status, _, body) = d
        .with_headers(
            "POST",
            "/v1/is_authorized",
            &[("content-type", "application/x-www-form-urlencoded")],
            ask(),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, _, _) = d
        .with_headers(
            "POST",
            "/v1/is_authorized",
            &[("content-type", "application/json; charset=utf-8")],
            ask(),
        )
        .await;
    assert_eq!(status, 200);
    let users: Vec<Value> = (0..4)
        .map(
            |i| json!({"uid": {"type": "User", "id": format!("n{i}")}, "attrs": {}, "parents": []}),
        )
        .collect();
    let (status, body) = d
        .call("PUT", "/v1/entities", Some(&Value::Array(users)))
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (413, Some("too_many_entities"))
    );
    assert!(d.get("User", "n0").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let d = Daemon::start(Setup {
        limits: Limits {
            header_timeout: Duration::from_millis(200),
            body_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
        ..Setup::default()
    })
    .await;
    // A request head that never ends.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");
    // A body that never arrives.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"POST /v1/is_authorized HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait() {
    let d = Daemon::start(Setup {
        limits: Limits {
            max_connections: 1,
            ..Limits::default()
        },
        ..Setup::default()
    })
    .await;
    let first = common::held_connection(d.addr).await;
    // The only slot is held by the idle keep-alive connection: the next request waits...
    let waiting =
        tokio::time::timeout(Duration::from_millis(300), d.call("GET", "/healthz", None)).await;
    assert!(
        waiting.is_err(),
        "a second connection was served beyond the limit"
    );
    // ...until the slot frees.
    drop(first);
    let (status, _) = tokio::time::timeout(Duration::from_secs(3), d.call("GET", "/healthz", None))
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// A backend whose every operation fails, as a broken disk would; or, when `stall` is set,
/// whose entity reads hang that long and then find nothing.
struct Broken {
    stall: Option<Duration>,
}

fn broken<T>() -> Result<T, StoreError> {
    Err(StoreError::Open {
        path: "broken".to_owned(),
        message: "injected failure".to_owned(),
    })
}

impl EntityStore for Broken {
    fn upsert(&self, _: &[Record]) -> Result<WriteEffect, StoreError> {
        broken()
    }
    fn delete(&self, _: &EntityUid) -> Result<Option<WriteEffect>, StoreError> {
        broken()
    }
    fn get(&self, _: &EntityUid) -> Result<Option<Record>, StoreError> {
        broken()
    }
    fn body(&self, _: &EntityUid) -> Result<Option<String>, StoreError> {
        match self.stall {
            Some(d) => {
                std::thread::sleep(d);
                Ok(None)
            }
            None => broken(),
        }
    }
    fn count(&self) -> Result<u64, StoreError> {
        broken()
    }
    fn ping(&self) -> Result<(), StoreError> {
        broken()
    }
    fn scan(&self, _: &mut dyn FnMut(Record) -> bool) -> Result<(), StoreError> {
        broken()
    }
}

impl StorageLedger for Broken {
    fn usage(&self, _: &EntityUid, _: i64) -> Result<Option<Usage>, StoreError> {
        broken()
    }
    fn children(&self, _: &EntityUid, _: &str) -> Result<Vec<EntityUid>, StoreError> {
        broken()
    }
    fn check_quota(&self, _: &EntityUid, _: i64, _: i64) -> Result<Option<QuotaCheck>, StoreError> {
        broken()
    }
    fn reserve(
        &self,
        _: &EntityUid,
        _: i64,
        _: i64,
        _: Option<&str>,
        _: i64,
    ) -> Result<ReserveOutcome, StoreError> {
        broken()
    }
    fn release(&self, _: &str) -> Result<bool, StoreError> {
        broken()
    }
    fn sweep_reservations(&self, _: i64, _: i64) -> Result<usize, StoreError> {
        broken()
    }
}

/// Serves the given backend under policies that allow everything, so only a failure of the
/// daemon itself can keep a request from being allowed.
async fn serve_permit_all(
    backend: impl policyd::store::Backend + 'static,
    limits: Limits,
) -> (common::Client, tempfile::TempDir) {
    let dir = common::policy_dir(&[("all.cedar", "permit(principal, action, resource);")]);
    let snapshot = policyd::policy::load_dir(dir.path()).unwrap();
    let state = policyd::state::AppState::new(
        snapshot,
        Store::new(Box::new(backend), 10, 0),
        limits,
        Auth::default(),
        policyd::reload::Reloader::new(dir.path()),
        policyd::activity::ActivityLog::disabled(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(policyd::run(listener, state, std::future::pending()));
    (common::Client(addr), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_fails_closed() {
    let (d, _dir) = serve_permit_all(Broken { stall: None }, Limits::default()).await;
    let (status, body) = d.call("POST", "/v1/is_authorized", ask()).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal");
    assert!(body.get("decision").is_none());
    let batch = json!({"requests": [serde_json::from_slice::<Value>(&ask()).unwrap()]})
        .to_string()
        .into_bytes();
    let (status, body) = d.call("POST", "/v1/is_authorized/batch", batch).await;
    assert_eq!(status, 500, "{body}");
    let (status, _) = d.call("GET", "/readyz", vec![]).await;
    assert_eq!(status, 503, "not ready while the store fails");
}

/// Asks for a decision that must end at its deadline (503 `deadline_exceeded`, never an
/// answer); how long the answer took.
async fn answered_at_deadline(d: &common::Client, body: Vec<u8>) -> Duration {
    let started = std::time::Instant::now();
    let (status, body) = d.call("POST", "/v1/is_authorized", body).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (503, Some("deadline_exceeded")),
        "{body}"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_past_its_deadline_is_503_never_allow() {
    let limits = Limits {
        decision_deadline: Duration::from_millis(100),
        ..Limits::default()
    };
    let stall = Broken {
        stall: Some(Duration::from_secs(1)),
    };
    let (d, _dir) = serve_permit_all(stall, limits).await;
    assert!(
        answered_at_deadline(&d, ask()).await < Duration::from_secs(1),
        "answered at the deadline, not after the store"
    );
}

/// A real SQLite store whose entity reads can be made to hang, read inline like SQLite's.
struct Stalling {
    inner: policyd::store::sqlite::SqliteStore,
    stall_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl EntityStore for Stalling {
    fn upsert(&self, r: &[Record]) -> Result<WriteEffect, StoreError> {
        self.inner.upsert(r)
    }
    fn delete(&self, u: &EntityUid) -> Result<Option<WriteEffect>, StoreError> {
        self.inner.delete(u)
    }
    fn get(&self, u: &EntityUid) -> Result<Option<Record>, StoreError> {
        self.inner.get(u)
    }
    fn body(&self, u: &EntityUid) -> Result<Option<String>, StoreError> {
        let ms = self.stall_ms.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        self.inner.body(u)
    }
    fn count(&self) -> Result<u64, StoreError> {
        self.inner.count()
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping()
    }
    fn scan(&self, v: &mut dyn FnMut(Record) -> bool) -> Result<(), StoreError> {
        self.inner.scan(v)
    }
}

impl StorageLedger for Stalling {
    fn usage(&self, u: &EntityUid, now: i64) -> Result<Option<Usage>, StoreError> {
        self.inner.usage(u, now)
    }
    fn children(&self, p: &EntityUid, t: &str) -> Result<Vec<EntityUid>, StoreError> {
        self.inner.children(p, t)
    }
    fn check_quota(&self, p: &EntityUid, a: i64, n: i64) -> Result<Option<QuotaCheck>, StoreError> {
        self.inner.check_quota(p, a, n)
    }
    fn reserve(
        &self,
        p: &EntityUid,
        b: i64,
        t: i64,
        k: Option<&str>,
        n: i64,
    ) -> Result<ReserveOutcome, StoreError> {
        self.inner.reserve(p, b, t, k, n)
    }
    fn release(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.release(id)
    }
    fn sweep_reservations(&self, n: i64, l: i64) -> Result<usize, StoreError> {
        self.inner.sweep_reservations(n, l)
    }
}

/// A disk that hangs must not take the daemon with it: an entity only the store holds is read
/// on a blocking thread, never on a serving thread (each serves many connections, see
/// `server::lanes`). While reads hang, every miss is answered 503 at its deadline, health
/// checks answer at once on every serving thread, nothing is ever allowed, and once the disk is
/// fast again decisions resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_read_holds_no_serving_thread() {
    let dir = tempfile::tempdir().unwrap();
    let stall_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let backend = Stalling {
        inner: policyd::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).unwrap(),
        stall_ms: stall_ms.clone(),
    };
    let limits = Limits {
        decision_deadline: Duration::from_millis(200),
        http_threads: 2,
        ..Limits::default()
    };
    let (d, _policies) = serve_permit_all(backend, limits).await;
    let ask = |who: &str| {
        json!({"principal": format!("User::\"{who}\""), "action": "Action::\"view\"", "resource": "Project::\"p\""})
            .to_string()
            .into_bytes()
    };
    let (status, body) = d.call("POST", "/v1/is_authorized", ask("warm")).await;
    assert_eq!(
        (status.as_u16(), body["decision"].as_str()),
        (200, Some("Allow"))
    );
    stall_ms.store(1_500, std::sync::atomic::Ordering::SeqCst);
    let first = {
        let d = common::Client(d.0);
        let body = ask("a");
        tokio::spawn(async move { d.call("POST", "/v1/is_authorized", body).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Each call is a new connection, dealt to the serving threads in turn: both are probed,
    // the one serving the first request's connection included.
    for who in ["b", "c", "d", "e"] {
        let took = answered_at_deadline(&d, ask(who)).await;
        assert!(
            took < Duration::from_millis(1_000),
            "a miss waited for a hung read: {took:?}"
        );
        let started = std::time::Instant::now();
        let (status, _) = d.call("GET", "/healthz", vec![]).await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "a health check waited for a hung read: {:?}",
            started.elapsed()
        );
    }
    let (status, body) = first.await.unwrap();
    assert_eq!(
        status.as_u16(),
        503,
        "never an Allow past the deadline: {body}"
    );
    stall_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = d.call("POST", "/v1/is_authorized", ask("f")).await;
    assert_eq!(
        (status.as_u16(), body["decision"].as_str()),
        (200, Some("Allow"))
    );
}

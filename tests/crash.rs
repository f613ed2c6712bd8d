//! Crash safety: SIGKILL during concurrent entity writes and reservations loses nothing that was
//! acknowledged, and the database stays intact.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn serve(db: &Path) -> (common::Spawned, SocketAddr) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (child, addr) = common::spawn_logged(
        common::policyd_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--watch", "false"])
            .arg("--db")
            .arg(db)
            .arg("--policies")
            .arg(root.join("policies"))
            .arg("--entities")
            .arg(root.join("entities")),
    );
    (child, addr.parse().unwrap())
}

/// One request on a fresh connection; `None` when the daemon is gone mid-way.
fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1)?.to_owned();
    Some((status, body))
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("policyd.db");
    let (mut child, addr) = serve(&db);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut users, mut reservations) = (Vec::new(), Vec::new());
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let id = format!("w{w}-{i}");
                    let user = format!(r#"[{{"uid": {{"type": "User", "id": "{id}"}}, "attrs": {{"name": "{id}"}}, "parents": [{{"type": "Organization", "id": "acme"}}]}}]"#);
                    if let Some((200, _)) = send(addr, "PUT", "/v1/entities", &user) {
                        users.push(id.clone());
                    }
                    let reserve = format!(r#"{{"project": "Project::\"nlp\"", "bytes": 1, "ttl_seconds": 3600, "idempotency_key": "{id}"}}"#);
                    if let Some((201, body)) = send(addr, "POST", "/v1/storage/reservations", &reserve) {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        reservations.push(v["id"].as_str().unwrap().to_owned());
                    }
                }
                (users, reservations)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (mut users, mut reservations) = (Vec::new(), Vec::new());
    for w in writers {
        let (u, r) = w.join().unwrap();
        users.extend(u);
        reservations.extend(r);
    }
    assert!(
        users.len() > 10 && reservations.len() > 10,
        "{} writes, {} reservations acknowledged",
        users.len(),
        reservations.len()
    );

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    for id in &reservations {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM reservations WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "acknowledged reservation {id} lost");
    }
    drop(conn);

    // Restarted, the daemon serves every acknowledged entity.
    let (mut child, addr) = serve(&db);
    for id in &users {
        let (status, _) = send(addr, "GET", &format!("/v1/entities/User/{id}"), "").unwrap();
        assert_eq!(status, 200, "acknowledged write {id} lost");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

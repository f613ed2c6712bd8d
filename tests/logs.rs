//! Logs of the real binary: `--log-format json` gives one JSON object a line; with the request
//! log on, each request is one debug event with its route pattern, status, latency and
//! decision ids; a refused reload is an error event carrying file, line and column.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `policyd serve` whose stderr lines arrive on a channel.
struct Serve {
    child: common::Spawned,
    addr: SocketAddr,
    lines: Receiver<String>,
    reader: std::thread::JoinHandle<()>,
    seen: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(cmd: &mut Command) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        cmd.args(["--listen", "127.0.0.1:0", "--watch", "false", "--db"])
            .arg(dir.path().join("policyd.db"))
            .arg("--entities")
            .arg(common::repo_entities());
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut serve = Serve {
            child: common::Spawned(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            lines,
            reader,
            seen: Vec::new(),
            _dir: dir,
        };
        let line = serve.wait_for(|l| common::logged_addr(l).is_some());
        serve.addr = common::logged_addr(&line).unwrap().parse().unwrap();
        serve
    }

    /// Waits (up to 10 s) for a stderr line that satisfies `pred`, keeping every line seen.
    fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no such log line; seen:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Stops the daemon and returns every stderr line it wrote.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        // The reader ends at the end of the pipe: every line written is on the channel.
        let _ = self.reader.join();
        self.seen.extend(self.lines.try_iter());
        self.seen
    }

    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn request_events(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["target"] == policyd::logging::REQUEST_TARGET)
        .collect()
}

#[test]
fn json_request_log_has_route_status_latency_and_decision_id() {
    let mut cmd = common::policyd_command();
    // The global flag before the subcommand.
    cmd.args(["--log-format", "json", "serve", "--policies"])
        .arg(common::repo_policies())
        .env("RUST_LOG", "policyd=debug");
    let serve = Serve::start(&mut cmd);
    let (status, body) = serve.request(
        "POST",
        "/v1/is_authorized",
        r#"{"principal": "User::\"carol\"", "action": "Action::\"view\"", "resource": "Dataset::\"speech-audio\""}"#,
    );
    assert_eq!(status, 200);
    let decision_id = serde_json::from_str::<Value>(&body).unwrap()["decision_id"]
        .as_i64()
        .unwrap();
    let (status, body) = serve.request(
        "POST",
        "/v1/is_authorized/batch",
        r#"{"requests": [{"principal": "User::\"carol\"", "action": "Action::\"view\"", "resource": "Project::\"speech\""},
                         {"principal": "User::\"eve\"", "action": "Action::\"view\"", "resource": "Project::\"speech\""}]}"#,
    );
    assert_eq!(status, 200);
    let batch_ids: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["decision_id"].as_i64().unwrap().to_string())
        .collect();
    assert_eq!(serve.request("GET", "/v1/entities/User/bob", "").0, 200);
    assert_eq!(serve.request("GET", "/v1/no/such/route", "").0, 404);
    assert_eq!(serve.request("POST", "/v1/is_authorized", "{").0, 400);
    let lines = serve.stop();
    let events = json_lines(&lines);
    let requests = request_events(&events);
    assert_eq!(requests.len(), 5, "one event per request: {requests:#?}");
    for e in &requests {
        assert_eq!(e["level"], "DEBUG", "{e}");
        assert_eq!(e["message"], "request", "{e}");
        assert!(e["latency_us"].is_u64(), "{e}");
        assert!(e["timestamp"].is_string(), "{e}");
    }
    let single = requests[0];
    assert_eq!(single["method"], "POST");
    assert_eq!(single["route"], "/v1/is_authorized");
    assert_eq!(single["status"], 200);
    assert_eq!(single["decision_id"], decision_id);
    let batch = requests[1];
    assert_eq!(batch["route"], "/v1/is_authorized/batch");
    assert_eq!(batch["decision_ids"], batch_ids.join(","));
    let get = requests[2];
    assert_eq!(
        get["route"], "/v1/entities/{type}/{id}",
        "ids stay out: {get}"
    );
    assert_eq!(get["method"], "GET");
    assert!(get.get("decision_id").is_none(), "{get}");
    assert_eq!(requests[3]["route"], "unmatched");
    assert_eq!(requests[3]["status"], 404);
    assert_eq!(requests[3]["code"], "not_found");
    assert_eq!(requests[4]["status"], 400);
    assert_eq!(requests[4]["code"], "bad_json");
    assert!(requests[4]["error"].is_string());
}

#[test]
fn the_request_log_is_off_at_the_default_level_and_the_format_follows_flag_and_env() {
    // After the subcommand, text; no request events at `info`.
    let mut cmd = common::policyd_command();
    cmd.args(["serve", "--log-format", "text", "--policies"])
        .arg(common::repo_policies());
    let serve = Serve::start(&mut cmd);
    assert_eq!(serve.request("GET", "/healthz", "").0, 200);
    let lines = serve.stop();
    assert!(lines.iter().all(|l| !l.starts_with('{')), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("policyd listening") && l.contains("addr="))
    );
    assert!(
        !lines.iter().any(|l| l.contains("policyd::request")),
        "{lines:?}"
    );

    // From the environment, JSON; the request log on by itself.
    let mut cmd = common::policyd_command();
    cmd.args(["serve", "--policies"])
        .arg(common::repo_policies())
        .env("POLICYD_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,policyd::request=debug");
    let serve = Serve::start(&mut cmd);
    assert_eq!(serve.request("GET", "/readyz", "").0, 200);
    let lines = serve.stop();
    let events = json_lines(&lines);
    let requests = request_events(&events);
    assert_eq!(requests.len(), 1, "{events:#?}");
    assert_eq!(requests[0]["route"], "/readyz");
    let debug: Vec<&Value> = events.iter().filter(|e| e["level"] == "DEBUG").collect();
    assert_eq!(debug, requests, "only the request log is at debug");
}

#[test]
fn a_refused_reload_is_an_error_event_with_file_line_and_column() {
    let policies = common::policies_copy();
    let mut cmd = common::policyd_command();
    cmd.args(["serve", "--log-format", "json", "--policies"])
        .arg(policies.path());
    let mut serve = Serve::start(&mut cmd);
    std::fs::write(
        policies.path().join("zz.cedar"),
        "permit(principal, action, resource)\nwhen { 1 + };",
    )
    .unwrap();
    assert_eq!(serve.request("POST", "/v1/policies/reload", "").0, 422);
    let line = serve.wait_for(|l| l.contains("policy reload refused"));
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["level"], "ERROR", "{event}");
    assert_eq!(event["file"], "zz.cedar", "{event}");
    assert_eq!(event["line"], 2, "{event}");
    assert!(event["column"].is_u64(), "{event}");
    assert_eq!(event["trigger"], "api", "{event}");
    assert!(event["error"].is_string(), "{event}");
    serve.stop();
}

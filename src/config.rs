//! Daemon configuration: everything `serve` needs, independent of how it was given (CLI, env,
//! or a test building it directly).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the daemon serves its clients: bounds on what they may ask (bodies, batches, heads,
/// timeouts, the decision deadline, connections) and how it serves them (its serving
/// threads, the grace it gives in-flight requests at shutdown).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Most requests in one batch.
    pub max_batch: usize,
    /// Most entities in one write.
    pub max_entities_per_write: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Longest a client may take to send its request head.
    pub header_timeout: Duration,
    /// Longest a client may take to send its body.
    pub body_timeout: Duration,
    /// Longest a decision may take before it is answered with 503.
    pub decision_deadline: Duration,
    /// Most connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long SIGTERM waits for in-flight requests before closing connections.
    pub shutdown_grace: Duration,
    /// Threads serving connections, each with a single-threaded runtime (see
    /// `server::lanes`); 0 serves them on the runtime that accepts them.
    pub http_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_batch: 100,
            max_entities_per_write: 10_000,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            decision_deadline: Duration::from_secs(2),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
            http_threads: default_http_threads(),
        }
    }
}

/// One serving thread per core.
pub fn default_http_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Where the daemon listens: a TCP address, or a Unix domain socket (`unix:/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix domain socket at this path (created with mode 0660).
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(ListenAddr::Unix(PathBuf::from(path))),
            Some(_) => Err("unix: needs a socket path, like unix:/run/policyd.sock".to_owned()),
            None => s
                .parse()
                .map(ListenAddr::Tcp)
                .map_err(|e| format!("`{s}` is neither host:port nor unix:/path ({e})")),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Who may call what.
#[derive(Clone, Default)]
pub struct Auth {
    /// The bearer token required by state-changing and admin routes; `None`: no token.
    pub token: Option<Vec<u8>>,
    /// Whether decision routes are open without the token.
    pub open_decisions: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("open_decisions", &self.open_decisions)
            .finish()
    }
}

impl Auth {
    /// Reads the token from a file (surrounding white space trimmed); refuses a short one.
    pub fn from_token_file(path: &Path, open_decisions: bool) -> Result<Auth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(format!(
                "token in {} is shorter than 16 characters",
                path.display()
            ));
        }
        Ok(Auth {
            token: Some(token.as_bytes().to_vec()),
            open_decisions,
        })
    }
}

/// Configuration of the `serve` command.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Directory of `*.cedar` policies and the `*.cedarschema` schema.
    pub policies_dir: PathBuf,
    /// SQLite database file.
    pub db_path: PathBuf,
    /// Directory of `*.json` entity files seeded into an empty store.
    pub entities_dir: PathBuf,
    /// Where to listen.
    pub listen: ListenAddr,
    /// Who may call what.
    pub auth: Auth,
    /// About how many bytes of resolved entities are kept in memory.
    pub entity_cache: u64,
    /// About how many bytes of entities in compact form are kept in memory behind them (0:
    /// none).
    pub compact_cache: u64,
    /// Reload when the policy directory changes.
    pub watch: bool,
    /// Request limits.
    pub limits: Limits,
    /// The activity log.
    pub activity: ActivityConfig,
    /// Policy change analysis at reload.
    pub analysis: AnalysisConfig,
    /// Fleet mode: the upstream this daemon's store replicates; `None`: standalone.
    pub upstream: Option<crate::upstream::fleet::FleetConfig>,
}

/// What a reload does when the new policies allow something the served ones deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReloadGuard {
    /// Apply it, then analyse and log each widening at warn.
    #[default]
    Warn,
    /// Analyse first; refuse a watched or SIGHUP reload that widens anything (an API reload
    /// with `accept_widening` applies it).
    RefuseWidening,
}

impl std::str::FromStr for ReloadGuard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "warn" => Ok(ReloadGuard::Warn),
            "refuse-widening" => Ok(ReloadGuard::RefuseWidening),
            other => Err(format!(
                "`{other}` is not a reload guard: use warn or refuse-widening"
            )),
        }
    }
}

impl ReloadGuard {
    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadGuard::Warn => "warn",
            ReloadGuard::RefuseWidening => "refuse-widening",
        }
    }
}

/// Configuration of the analysis each reload runs against the set it replaces.
#[derive(Debug, Clone)]
pub struct AnalysisConfig {
    /// Warn about widenings, or refuse them.
    pub guard: ReloadGuard,
    /// Longest one analysis may take; then it is reported as unavailable.
    pub timeout: Duration,
    /// The solver (`--cvc5`); `None`: `$CVC5`, else `cvc5` on `PATH`.
    pub cvc5: Option<PathBuf>,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            guard: ReloadGuard::default(),
            timeout: crate::analysis::DEFAULT_RELOAD_TIMEOUT,
            cvc5: None,
        }
    }
}

/// Configuration of the activity log.
#[derive(Debug, Clone)]
pub struct ActivityConfig {
    /// Whether records are kept.
    pub enabled: bool,
    /// Its SQLite file.
    pub db_path: PathBuf,
    /// Records older than this many days are pruned.
    pub retention_days: u32,
    /// Records that may wait for the writer before new ones are dropped.
    pub queue: usize,
    /// The most bytes the log may hold on disk; past it the oldest records are deleted.
    pub max_bytes: u64,
}

impl ActivityConfig {
    /// The default log next to the entity store `db`: `activity.db` in the same directory.
    pub fn beside(db: &std::path::Path) -> ActivityConfig {
        ActivityConfig {
            enabled: true,
            db_path: db.with_file_name("activity.db"),
            retention_days: 90,
            queue: 65_536,
            max_bytes: 1 << 30,
        }
    }
}

/// Parses a size in bytes: a plain number, or one with a binary unit (`64MiB`, `1 GiB`, `512KiB`,
/// `10B`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 64MiB or 1073741824"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use B, KiB, MiB, GiB or TiB"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_binary_units() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1073741824"), Ok(1 << 30));
        assert_eq!(parse_bytes("10B"), Ok(10));
        assert!(parse_bytes("64MB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("MiB").is_err());
        assert!(
            parse_bytes("99999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}

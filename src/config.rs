//! Daemon configuration: everything `serve` needs, independent of how it was given (CLI, env,
//! or a test building it directly).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Bounds on what one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Most requests in one batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_batch: 100,
        }
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
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Parsed entities kept in memory.
    pub entity_cache: usize,
    /// Reload when the policy directory changes.
    pub watch: bool,
    /// Request limits.
    pub limits: Limits,
    /// The activity log.
    pub activity: ActivityConfig,
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
}

impl ActivityConfig {
    /// The default log next to the entity store `db`: `activity.db` in the same directory.
    pub fn beside(db: &std::path::Path) -> ActivityConfig {
        ActivityConfig {
            enabled: true,
            db_path: db.with_file_name("activity.db"),
            retention_days: 90,
            queue: 65_536,
        }
    }
}

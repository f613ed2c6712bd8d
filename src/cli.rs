//! Command-line arguments. Every flag can also be given as `POLICYD_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Limits, ServeConfig};

/// Cedar authorization sidecar.
#[derive(Debug, Parser)]
#[command(name = "policyd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve decisions over HTTP.
    Serve(ServeArgs),
    /// Parse and strictly validate the policies; exit 1 on any error.
    Check(CheckArgs),
    /// Validate entity files and upsert them into the store, all or nothing.
    Import(ImportArgs),
    /// Print the storage of an organization (per project) or a project (per item type).
    Storage(StorageArgs),
}

/// `policyd serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory of *.cedar policies and the *.cedarschema schema.
    #[arg(long, env = "POLICYD_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// SQLite database file (its directory is created).
    #[arg(long, env = "POLICYD_DB", default_value = "data/policyd.db")]
    pub db: PathBuf,
    /// Directory of *.json entity files imported when the store is empty.
    #[arg(long, env = "POLICYD_ENTITIES", default_value = "entities")]
    pub entities: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "POLICYD_LISTEN", default_value = "127.0.0.1:8180")]
    pub listen: SocketAddr,
    /// Parsed entities kept in memory for decisions.
    #[arg(long, env = "POLICYD_ENTITY_CACHE", default_value_t = 100_000)]
    pub entity_cache: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "POLICYD_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// Reload when the policy directory changes (SIGHUP and the API always reload).
    #[arg(long, env = "POLICYD_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch: bool,
    /// Most requests in one batch.
    #[arg(long, env = "POLICYD_MAX_BATCH", default_value_t = 100)]
    pub max_batch: usize,
}

impl ServeArgs {
    /// The daemon configuration these arguments describe.
    pub fn config(&self) -> ServeConfig {
        ServeConfig {
            policies_dir: self.policies.clone(),
            db_path: self.db.clone(),
            entities_dir: self.entities.clone(),
            listen: self.listen,
            entity_cache: self.entity_cache,
            watch: self.watch,
            limits: Limits {
                max_body_bytes: self.max_body,
                max_batch: self.max_batch,
            },
        }
    }
}

/// `policyd check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of *.cedar policies and the *.cedarschema schema.
    #[arg(long, env = "POLICYD_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
}

/// `policyd import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// SQLite database file.
    #[arg(long, env = "POLICYD_DB", default_value = "data/policyd.db")]
    pub db: PathBuf,
    /// Directory whose schema validates the entities.
    #[arg(long, env = "POLICYD_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// Cedar entity JSON files (arrays of entities).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `policyd storage`.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// SQLite database file.
    #[arg(long, env = "POLICYD_DB", default_value = "data/policyd.db")]
    pub db: PathBuf,
    /// The organization or project, as a Cedar uid: 'Organization::"acme"'.
    pub entity: String,
}

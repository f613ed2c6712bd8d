//! Command-line arguments. Every flag can also be given as `POLICYD_<FLAG>`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    ActivityConfig, AnalysisConfig, Auth, Limits, ListenAddr, ReloadGuard, ServeConfig,
};
use crate::logging::LogFormat;
use crate::upstream::fleet::FleetConfig;

/// Cedar authorization sidecar.
#[derive(Debug, Parser)]
#[command(name = "policyd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on stderr as `text` or `json` (default: text when stderr is a terminal, else
    /// json). Given before or after the subcommand.
    #[arg(long, global = true, env = "POLICYD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve decisions over HTTP.
    Serve(Box<ServeArgs>),
    /// Parse and strictly validate the policies; exit 1 on any error. Warns about dead and
    /// shadowed policies when cvc5 is available.
    Check(CheckArgs),
    /// What a policy change grants or takes away: exit 0 when nothing changed, 1 when
    /// something did, 2 when the analysis could not run.
    Diff(DiffArgs),
    /// Validate entity files and upsert them into the store, all or nothing.
    Import(ImportArgs),
    /// Print an organization's activity trail, newest first.
    Activity(ActivityArgs),
    /// Print the storage of an organization (per project) or a project (per item type).
    Storage(StorageArgs),
    /// Run policy test files (default: the policy directory's tests/*.json): exit 0 when every
    /// case passes, 1 when one fails, 2 when a file or the policies cannot be run.
    Test(TestArgs),
    /// Who may do what, from the store and the policies: the resources a principal may act
    /// on, the principals that may act on a resource, or the actions one may take on another.
    #[command(subcommand)]
    Search(SearchCommand),
    /// Fleet mode: create or update the upstream's tables, import a store into it, prune its log.
    Upstream(UpstreamArgs),
    /// Format Cedar policy files in place (default: the policy directory's *.cedar); with
    /// --check, change nothing and exit 1 naming the files that would change.
    Fmt(FmtArgs),
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
    /// Where to listen: host:port, or unix:/path for a Unix socket (mode 0660).
    #[arg(long, env = "POLICYD_LISTEN", default_value = "127.0.0.1:8180")]
    pub listen: ListenAddr,
    /// File holding the bearer token that writes and admin reads require.
    #[arg(long, env = "POLICYD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// With a token, still answer decision requests without it.
    #[arg(long, env = "POLICYD_OPEN_DECISIONS")]
    pub open_decisions: bool,
    /// Most entities in one write.
    #[arg(long, env = "POLICYD_MAX_ENTITIES_PER_WRITE", default_value_t = 10_000)]
    pub max_entities_per_write: usize,
    /// Most connections served at once.
    #[arg(long, env = "POLICYD_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Longest a client may take to send its request head (e.g. 10s).
    #[arg(long, env = "POLICYD_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Longest a client may take to send its body.
    #[arg(long, env = "POLICYD_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Longest a decision may take before it is answered with 503.
    #[arg(long, env = "POLICYD_DECISION_DEADLINE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub decision_deadline: Duration,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, env = "POLICYD_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Threads serving connections, each with a runtime of its own (default: one per core;
    /// 0 serves them on the shared runtime; at most 256).
    #[arg(long, env = "POLICYD_HTTP_THREADS", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub http_threads: Option<u16>,
    /// Memory for entities kept ready for decisions (resolved entities take about 1-5 KiB
    /// each), like 48MiB.
    #[arg(long, env = "POLICYD_ENTITY_CACHE", default_value = "48MiB", value_parser = crate::config::parse_bytes)]
    pub entity_cache: u64,
    /// Memory for entities kept in compact form behind the entity cache (about 50-100 bytes
    /// each: the default holds a million small ones), like 64MiB; 0 turns it off.
    #[arg(long, env = "POLICYD_COMPACT_CACHE", default_value = "64MiB", value_parser = crate::config::parse_bytes)]
    pub compact_cache: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "POLICYD_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// Keep the activity log: `on` or `off`.
    #[arg(long, env = "POLICYD_ACTIVITY", default_value = "on", value_parser = ["on", "off"])]
    pub activity: String,
    /// Activity log database (default: activity.db beside --db).
    #[arg(long, env = "POLICYD_ACTIVITY_DB")]
    pub activity_db: Option<PathBuf>,
    /// Days of activity kept; older records are deleted in the background.
    #[arg(long, env = "POLICYD_ACTIVITY_RETENTION_DAYS", default_value_t = 90)]
    pub activity_retention_days: u32,
    /// Activity records that may wait for the disk before new ones are dropped (and counted).
    #[arg(long, env = "POLICYD_ACTIVITY_QUEUE", default_value_t = 65_536)]
    pub activity_queue: usize,
    /// Most bytes the activity log may hold on disk; past it the oldest records are deleted
    /// (and counted), so the log never fills the disk under the entity store.
    #[arg(long, env = "POLICYD_ACTIVITY_MAX_BYTES", default_value = "1GiB", value_parser = crate::config::parse_bytes)]
    pub activity_max_bytes: u64,
    /// Reload when the policy directory changes (SIGHUP and the API always reload).
    #[arg(long, env = "POLICYD_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch: bool,
    /// Most requests in one batch.
    #[arg(long, env = "POLICYD_MAX_BATCH", default_value_t = 100)]
    pub max_batch: usize,
    /// At reload: `warn` (apply, then log each widening) or `refuse-widening` (keep the old
    /// policies when a watched or SIGHUP reload widens anything).
    #[arg(long, env = "POLICYD_RELOAD_GUARD", default_value = "warn")]
    pub reload_guard: ReloadGuard,
    /// Longest the analysis of one reload may take before it is reported as unavailable.
    #[arg(long, env = "POLICYD_ANALYSIS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub analysis_timeout: Duration,
    /// Base URL the AuthZEN metadata (`/.well-known/authzen-configuration`) names its endpoints
    /// under (default `http://<listen address>`).
    #[arg(long, env = "POLICYD_AUTHZEN_BASE_URL")]
    pub authzen_base_url: Option<String>,
    #[command(flatten)]
    pub solver: SolverArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Fleet mode: `serve --upstream` and its companions.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Fleet mode: the PostgreSQL database (postgres://...) that holds the entities; the local
    /// --db becomes its replica.
    #[arg(long, env = "POLICYD_UPSTREAM")]
    pub upstream: Option<String>,
    /// A PEM file of CA certificates to trust, beside the system's, for the upstream's TLS
    /// (the URL's `sslmode=require`).
    #[arg(long, env = "POLICYD_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Longest a decision carrying a revision token waits for the replica to apply it.
    #[arg(long, env = "POLICYD_CONSISTENCY_WAIT", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub consistency_wait: Duration,
    /// Longest the replica may go without confirming it is caught up before decisions and
    /// /readyz answer 503 `stale`.
    #[arg(long, env = "POLICYD_MAX_STALENESS", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_staleness: Duration,
    /// Answer decisions even when the replica is stale (logged at start).
    #[arg(long, env = "POLICYD_SERVE_STALE")]
    pub serve_stale: bool,
}

impl FleetArgs {
    /// The fleet settings, when `--upstream` is given.
    pub fn config(&self) -> Option<FleetConfig> {
        self.upstream.as_ref().map(|url| FleetConfig {
            url: url.clone(),
            ca: self.upstream_ca.clone(),
            consistency_wait: self.consistency_wait,
            max_staleness: self.max_staleness,
            serve_stale: self.serve_stale,
        })
    }
}

/// `policyd upstream ...`: the upstream's tables and contents.
#[derive(Debug, Args)]
pub struct UpstreamArgs {
    /// The PostgreSQL database (postgres://...).
    #[arg(long, env = "POLICYD_UPSTREAM", global = true)]
    pub upstream: Option<String>,
    /// A PEM file of CA certificates to trust, beside the system's, for the upstream's TLS
    /// (the URL's `sslmode=require`).
    #[arg(long, env = "POLICYD_UPSTREAM_CA", global = true)]
    pub upstream_ca: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: UpstreamCommand,
}

/// The `upstream` subcommands.
#[derive(Debug, Subcommand)]
pub enum UpstreamCommand {
    /// Create or update policyd's tables.
    Migrate,
    /// Copy every entity of a SQLite store up (migrating first).
    Import {
        /// The SQLite database file.
        #[arg(long)]
        db: PathBuf,
    },
    /// Drop the change log's old revisions; replicas behind them copy a snapshot instead.
    Prune {
        /// Revisions kept in the change log.
        #[arg(long)]
        keep: i64,
    },
}

/// Where the cvc5 solver is.
#[derive(Debug, Args)]
pub struct SolverArgs {
    /// The cvc5 executable (default: the CVC5 variable, else `cvc5` on PATH).
    #[arg(long, env = "POLICYD_CVC5")]
    pub cvc5: Option<PathBuf>,
}

impl ServeArgs {
    /// The daemon configuration these arguments describe.
    pub fn config(&self) -> Result<ServeConfig, String> {
        let auth = match &self.token_file {
            Some(path) => Auth::from_token_file(path, self.open_decisions)?,
            None => Auth::default(),
        };
        Ok(ServeConfig {
            policies_dir: self.policies.clone(),
            db_path: self.db.clone(),
            entities_dir: self.entities.clone(),
            listen: self.listen.clone(),
            auth,
            entity_cache: self.entity_cache,
            compact_cache: self.compact_cache,
            watch: self.watch,
            limits: Limits {
                max_body_bytes: self.max_body,
                max_batch: self.max_batch,
                max_entities_per_write: self.max_entities_per_write,
                max_header_bytes: Limits::default().max_header_bytes,
                header_timeout: self.header_timeout,
                body_timeout: self.body_timeout,
                decision_deadline: self.decision_deadline,
                max_connections: self.max_connections,
                shutdown_grace: self.shutdown_grace,
                http_threads: self
                    .http_threads
                    .map_or_else(crate::config::default_http_threads, usize::from),
            },
            activity: ActivityConfig {
                enabled: self.activity == "on",
                db_path: self
                    .activity_db
                    .clone()
                    .unwrap_or_else(|| ActivityConfig::beside(&self.db).db_path),
                retention_days: self.activity_retention_days,
                queue: self.activity_queue,
                max_bytes: self.activity_max_bytes,
            },
            analysis: AnalysisConfig {
                guard: self.reload_guard,
                timeout: self.analysis_timeout,
                cvc5: self.solver.cvc5.clone(),
            },
            upstream: self.fleet.config(),
        })
    }
}

/// `policyd check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of *.cedar policies and the *.cedarschema schema.
    #[arg(long, env = "POLICYD_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// Longest the dead and shadowed policy lints may take.
    #[arg(long, env = "POLICYD_ANALYSIS_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub analysis_timeout: Duration,
    #[command(flatten)]
    pub solver: SolverArgs,
}

/// `policyd diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The policy directory as it is (the served policies).
    #[arg(long)]
    pub from: PathBuf,
    /// The policy directory as it would be after the change.
    #[arg(long)]
    pub to: PathBuf,
    /// Print the report as JSON (the shape of `last_reload.changes`).
    #[arg(long)]
    pub json: bool,
    /// Longest the analysis may take.
    #[arg(long, env = "POLICYD_ANALYSIS_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub analysis_timeout: Duration,
    #[command(flatten)]
    pub solver: SolverArgs,
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

/// `policyd activity`.
#[derive(Debug, Args)]
pub struct ActivityArgs {
    /// SQLite database file of the entity store (the log is activity.db beside it).
    #[arg(long, env = "POLICYD_DB", default_value = "data/policyd.db")]
    pub db: PathBuf,
    /// Activity log database (default: activity.db beside --db).
    #[arg(long, env = "POLICYD_ACTIVITY_DB")]
    pub activity_db: Option<PathBuf>,
    /// Organization id.
    #[arg(long)]
    pub org: String,
    /// Only records at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records at or before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Most records printed.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// `policyd test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Directory of *.cedar policies and the *.cedarschema schema under test.
    #[arg(long, env = "POLICYD_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// Also write the results as JUnit XML to this file (for CI systems).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Test files, or directories of *.json test files (default: <policies>/tests).
    pub paths: Vec<PathBuf>,
}

/// `policyd fmt`.
#[derive(Debug, Args)]
pub struct FmtArgs {
    /// Change nothing: name each file that would be reformatted and exit 1 if there is one.
    #[arg(long)]
    pub check: bool,
    /// Directory whose *.cedar files are formatted when no path is given.
    #[arg(long, env = "POLICYD_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// Cedar policy files, or directories of *.cedar files (default: the --policies directory).
    pub paths: Vec<PathBuf>,
}

/// `policyd search`.
#[derive(Debug, Subcommand)]
pub enum SearchCommand {
    /// The stored entities of --type on which --principal may take --action.
    Resources(SearchResourcesArgs),
    /// The stored entities of --type that may take --action on --resource.
    Subjects(SearchSubjectsArgs),
    /// The schema actions --principal may take on --resource.
    Actions(SearchActionsArgs),
}

/// Where `policyd search` reads from.
#[derive(Debug, Args)]
pub struct SearchStore {
    /// SQLite database file.
    #[arg(long, env = "POLICYD_DB", default_value = "data/policyd.db")]
    pub db: PathBuf,
    /// Directory of *.cedar policies and the *.cedarschema schema.
    #[arg(long, env = "POLICYD_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// Cedar context JSON (an object) the decisions are made with.
    #[arg(long)]
    pub context: Option<String>,
    /// Most results printed (default: all).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `policyd search resources`.
#[derive(Debug, Args)]
pub struct SearchResourcesArgs {
    /// The principal, as a Cedar uid: 'User::"bob"'.
    #[arg(long)]
    pub principal: String,
    /// The action: `view` or 'Action::"view"'.
    #[arg(long)]
    pub action: String,
    /// The resource entity type, like Dataset.
    #[arg(long = "type")]
    pub ty: String,
    #[command(flatten)]
    pub from: SearchStore,
}

/// `policyd search subjects`.
#[derive(Debug, Args)]
pub struct SearchSubjectsArgs {
    /// The resource, as a Cedar uid: 'Dataset::"d1"'.
    #[arg(long)]
    pub resource: String,
    /// The action: `view` or 'Action::"view"'.
    #[arg(long)]
    pub action: String,
    /// The principal entity type, like User.
    #[arg(long = "type")]
    pub ty: String,
    #[command(flatten)]
    pub from: SearchStore,
}

/// `policyd search actions`.
#[derive(Debug, Args)]
pub struct SearchActionsArgs {
    /// The principal, as a Cedar uid: 'User::"bob"'.
    #[arg(long)]
    pub principal: String,
    /// The resource, as a Cedar uid: 'Dataset::"d1"'.
    #[arg(long)]
    pub resource: String,
    #[command(flatten)]
    pub from: SearchStore,
}

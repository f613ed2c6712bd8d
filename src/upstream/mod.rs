//! Fleet mode: PostgreSQL as the one source of truth for a fleet of sidecars.
//!
//! With `serve --upstream postgres://...` entity writes go to PostgreSQL in one transaction
//! each (writes that queue up meanwhile share the next one: [`group`]), which takes the next
//! revision from a single counter row and appends its full change rows under that revision
//! ([`write`]). The local SQLite store becomes a replica that
//! decisions keep reading: [`tail`] follows the change log by revision (LISTEN/NOTIFY only
//! wakes it), copies a consistent snapshot when the replica is new, far behind or behind the
//! pruned part of the log, and applies everything through the store's write path so the entity
//! cache invalidates as for a local write. [`token`] makes the revision tokens that let a
//! caller ask for a decision at least as fresh as a write; [`fleet`] holds the replica's state
//! (applied revision, last confirmed catch-up) that decisions consult.
//!
//! [`activity`] ships the sidecar's activity records to the fleet's one trail and reads the
//! merged trail for `GET /v1/activity`.
//!
//! [`schema`] creates and migrates policyd's tables (`policyd upstream migrate`), and
//! [`import`] moves an existing SQLite store up (`policyd upstream import`).

pub mod activity;
pub mod fleet;
pub mod group;
pub mod import;
pub mod ledger;
pub mod schema;
pub mod tail;
pub mod tls;
pub mod token;
pub mod write;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use fleet::Fleet;

/// The channel writes notify (the payload is the new revision) and replicas listen on.
pub const CHANNEL: &str = "policyd_revisions";

/// Most pooled connections a sidecar opens for writes and quota decisions.
const POOL_SIZE: usize = 8;

/// What talking to the upstream can fail with.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL is not a PostgreSQL connection string.
    #[error("upstream URL is invalid: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// PostgreSQL refused or failed a statement, or the connection broke.
    #[error("upstream database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("upstream unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The upstream failed a group of writes this one was committed with (see [`group`]).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The upstream did not answer in time.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The upstream's tables are missing, or newer than this policyd.
    #[error("upstream schema: {0}")]
    Schema(String),
    /// A write would make an entity its own ancestor.
    #[error("writing {0} would make it its own ancestor (a cycle in the parent hierarchy)")]
    Cycle(String),
    /// TLS to the upstream is misconfigured (see [`tls`]).
    #[error("upstream TLS: {0}")]
    Tls(String),
    /// The local store failed (import, replica apply).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl UpstreamError {
    /// Whether this failure of a write may come from the write itself rather than from the
    /// upstream (unreachable, timed out): a parent cycle, or a statement the server refused.
    pub fn one_write_may_cause(&self) -> bool {
        match self {
            UpstreamError::Cycle(_) => true,
            UpstreamError::Db(db) => db.code().is_some(),
            _ => false,
        }
    }
}

/// A connection pool to the upstream, for writes and quota decisions.
#[derive(Clone)]
pub struct Upstream {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: only where it points is shown.
        f.debug_struct("Upstream")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish()
    }
}

impl Upstream {
    /// A pool for `url` (no connection is made yet), over TLS when the URL says
    /// `sslmode=require` (trusting the system's roots and `ca`; see [`tls`]). `timeout` bounds
    /// each connect and each wait for a pooled connection.
    pub fn new(url: &str, timeout: Duration, ca: Option<&Path>) -> Result<Upstream, UpstreamError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(UpstreamError::Url)?;
        config.application_name("policyd");
        config.connect_timeout(timeout);
        let tls = tls::connector(&config, ca)?;
        let manager_config = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config()),
            None => Manager::from_config(config.clone(), NoTls, manager_config()),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| UpstreamError::Schema(format!("cannot build the connection pool: {e}")))?;
        Ok(Upstream {
            pool,
            config,
            tls,
            timeout,
        })
    }

    /// Whether connections to the upstream use TLS.
    pub fn encrypted(&self) -> bool {
        self.tls.is_some()
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, UpstreamError> {
        Ok(self.pool.get().await?)
    }

    /// A connection of its own, outside the pool (the replica's listening connection), and
    /// the task that drives it, which hands each notification to `on_notification`.
    pub async fn connect_listening(
        &self,
        on_notification: impl Fn() + Send + 'static,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), UpstreamError> {
        Ok(match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                (client, tokio::spawn(drive(connection, on_notification)))
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                (client, tokio::spawn(drive(connection, on_notification)))
            }
        })
    }

    /// How long one upstream operation may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `op` within the upstream timeout.
    pub async fn timed<T>(
        &self,
        op: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        tokio::time::timeout(self.timeout, op)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
    }
}

/// Polls a connection until it ends, calling `on_notification` for each notification.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, on_notification: impl Fn())
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => on_notification(),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

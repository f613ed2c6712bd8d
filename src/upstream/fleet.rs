//! A sidecar's place in the fleet: the upstream it follows, the revision its replica has
//! applied, when it last confirmed being caught up, and what decisions and writes ask of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cedar_policy::EntityUid;
use tokio::sync::{Notify, watch};

use super::token;
use super::{Upstream, UpstreamError};
use crate::store::Record;
use crate::store::replica::Position;

/// Fleet-mode settings (`serve --upstream` and its companions).
#[derive(Clone)]
pub struct FleetConfig {
    /// The PostgreSQL connection URL.
    pub url: String,
    /// A PEM file of certificates to trust for the upstream's TLS, beside the system's.
    pub ca: Option<std::path::PathBuf>,
    /// Longest a decision waits for the replica to apply a token's revision.
    pub consistency_wait: Duration,
    /// Longest the replica may go without confirming it is caught up before decisions are
    /// refused as stale.
    pub max_staleness: Duration,
    /// Answer decisions even when stale.
    pub serve_stale: bool,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("url", &"<redacted>")
            .field("ca", &self.ca)
            .field("consistency_wait", &self.consistency_wait)
            .field("max_staleness", &self.max_staleness)
            .field("serve_stale", &self.serve_stale)
            .finish()
    }
}

/// Why the fleet refused a decision or a token.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The replica has not confirmed it is caught up within `--max-staleness`.
    #[error("{0}")]
    Stale(String),
    /// A token's revision was not applied within `--consistency-wait`.
    #[error(
        "revision {wanted} is not applied here yet (applied: {applied}) after waiting {waited:?}"
    )]
    NotApplied {
        /// The token's revision.
        wanted: i64,
        /// The replica's revision.
        applied: i64,
        /// How long the request waited.
        waited: Duration,
    },
    /// The token is not a token, or names another upstream.
    #[error("{0}")]
    BadToken(String),
}

/// What the replica has applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The upstream it copies; `None` before the first copy.
    pub upstream: Option<Arc<str>>,
    /// The last revision applied.
    pub revision: i64,
    /// Its token, made once per revision rather than once per decision.
    pub token: Option<Arc<str>>,
}

/// The fleet state one sidecar shares between its handlers and its replica tail.
pub struct Fleet {
    upstream: Upstream,
    config: FleetConfig,
    applied: watch::Sender<Applied>,
    /// When the replica last confirmed it was caught up: nanoseconds after `epoch`, plus one
    /// (zero: never).
    confirmed: AtomicU64,
    epoch: Instant,
    /// Wakes the tail: a notification arrived, or a request waits for a revision.
    pub(super) wake: Notify,
    /// Activity records shipped upstream since start (a record sent twice counts twice).
    shipped: AtomicU64,
    /// Entity writes waiting to be committed together.
    group: super::group::Group,
}

impl Fleet {
    /// The fleet state of a replica at `position` (from its store), following `config.url`.
    pub fn new(config: FleetConfig, position: Option<Position>) -> Result<Fleet, UpstreamError> {
        let timeout = (config.max_staleness / 2).clamp(OP_TIMEOUT_MIN, OP_TIMEOUT_MAX);
        let upstream = Upstream::new(&config.url, timeout, config.ca.as_deref())?;
        let applied = position.map_or_else(Applied::default, |p| Applied {
            token: Some(token::encode(&p.upstream, p.revision).into()),
            upstream: Some(p.upstream.into()),
            revision: p.revision,
        });
        Ok(Fleet {
            upstream,
            config,
            applied: watch::Sender::new(applied),
            confirmed: AtomicU64::new(0),
            epoch: Instant::now(),
            wake: Notify::new(),
            shipped: AtomicU64::new(0),
            group: super::group::Group::default(),
        })
    }

    /// The upstream connection pool.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The settings.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// What the replica has applied.
    pub fn applied(&self) -> Applied {
        self.applied.borrow().clone()
    }

    /// The token of the applied revision; `None` before the first copy.
    pub fn token(&self) -> Option<String> {
        self.applied.borrow().token.as_deref().map(str::to_owned)
    }

    /// Refuses when the replica has not confirmed it is caught up within `--max-staleness`
    /// (unless `--serve-stale`).
    pub fn fresh(&self) -> Result<(), FleetError> {
        if self.config.serve_stale {
            return Ok(());
        }
        match self.since_confirmed() {
            Some(age) if age <= self.config.max_staleness => Ok(()),
            Some(age) => Err(FleetError::Stale(format!(
                "the replica last confirmed it was caught up with the upstream {age:.1?} ago \
                 (--max-staleness {:?})",
                self.config.max_staleness
            ))),
            None => Err(FleetError::Stale(
                "the replica has not caught up with the upstream since start".to_owned(),
            )),
        }
    }

    /// Whether the replica has gone past `--max-staleness` without confirming it is caught up
    /// (what [`Fleet::fresh`] refuses, unless `--serve-stale`).
    pub fn stale(&self) -> bool {
        self.since_confirmed()
            .is_none_or(|age| age > self.config.max_staleness)
    }

    /// How long ago the replica last confirmed it was caught up; `None`: never.
    pub fn since_confirmed(&self) -> Option<Duration> {
        let at = self.confirmed.load(Ordering::Acquire).checked_sub(1)?;
        Some(
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_nanos(at)),
        )
    }

    /// Waits (at most `--consistency-wait`) until the replica has applied the revision a
    /// token names. Refuses a token that is not one or names another upstream.
    pub async fn at_least(&self, text: &str) -> Result<(), FleetError> {
        let wanted = token::decode(text).map_err(FleetError::BadToken)?;
        if let Some(id) = self.applied.borrow().upstream.as_deref()
            && id != wanted.upstream
        {
            return Err(FleetError::BadToken(format!(
                "the token names upstream {}, but this policyd follows upstream {id}",
                wanted.upstream
            )));
        }
        let started = Instant::now();
        if self
            .wait_for(
                &wanted.upstream,
                wanted.revision,
                self.config.consistency_wait,
            )
            .await
        {
            return Ok(());
        }
        Err(FleetError::NotApplied {
            wanted: wanted.revision,
            applied: self.applied.borrow().revision,
            waited: started.elapsed(),
        })
    }

    /// Whether the replica applied `revision` of `upstream` within `limit`.
    async fn wait_for(&self, upstream: &str, revision: i64, limit: Duration) -> bool {
        let reached =
            |a: &Applied| a.upstream.as_deref() == Some(upstream) && a.revision >= revision;
        if reached(&self.applied.borrow()) {
            return true;
        }
        self.wake.notify_one();
        let mut rx = self.applied.subscribe();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(reached)).await,
            Ok(Ok(_))
        )
    }

    /// Writes `records` upstream as one revision, then waits (at most `--consistency-wait`)
    /// for this replica to apply it; returns the revision's token.
    pub async fn upsert(&self, records: Vec<Record>) -> Result<String, UpstreamError> {
        let committed = self.group.upsert(&self.upstream, records).await?;
        self.settle(&committed.upstream, committed.revision).await;
        Ok(token::encode(&committed.upstream, committed.revision))
    }

    /// Deletes one entity upstream as one revision, then waits like [`Fleet::upsert`];
    /// `None` when it was not stored.
    pub async fn delete(&self, uid: &EntityUid) -> Result<Option<String>, UpstreamError> {
        let Some(committed) = self.upstream.delete(uid).await? else {
            return Ok(None);
        };
        self.settle(&committed.upstream, committed.revision).await;
        Ok(Some(token::encode(&committed.upstream, committed.revision)))
    }

    /// Lets the replica catch up with a write made here, so this sidecar reads its own
    /// writes; a replica that cannot within the wait is caught by the token or staleness.
    async fn settle(&self, upstream: &str, revision: i64) {
        if !self
            .wait_for(upstream, revision, self.config.consistency_wait)
            .await
        {
            tracing::warn!(
                revision,
                wait = ?self.config.consistency_wait,
                "the replica did not apply this sidecar's own write in time"
            );
        }
    }

    /// Records that the replica applied up to `position` (the tail calls this).
    pub(super) fn advance(&self, position: &Position) {
        self.applied.send_modify(|a| {
            if a.upstream.as_deref() != Some(position.upstream.as_str()) {
                a.upstream = Some(position.upstream.as_str().into());
            }
            a.revision = position.revision;
            a.token = Some(token::encode(&position.upstream, position.revision).into());
        });
    }

    /// Records that the replica was caught up with the upstream as of `at`.
    pub(super) fn confirm(&self, at: Instant) {
        let nanos = u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX - 1);
        self.confirmed.fetch_max(nanos + 1, Ordering::AcqRel);
    }

    /// Counts activity records sent upstream.
    pub(super) fn count_shipped(&self, n: usize) {
        self.shipped.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Activity records sent upstream since start.
    pub fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Relaxed)
    }

    /// How often the tail polls when nothing wakes it: well inside `--max-staleness`.
    pub(super) fn poll_every(&self) -> Duration {
        (self.config.max_staleness / 5).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

const OP_TIMEOUT_MIN: Duration = Duration::from_millis(200);
const OP_TIMEOUT_MAX: Duration = Duration::from_secs(5);

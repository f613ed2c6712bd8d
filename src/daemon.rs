//! Start-up: turns a [`ServeConfig`] into ready-to-serve state, with the policies loaded and
//! validated and the store opened (and seeded when empty).

use std::sync::Arc;
use std::time::Duration;

use crate::activity::ActivityLog;
use crate::config::ServeConfig;
use crate::import::{self, ImportError};
use crate::policy::{self, LoadError};
use crate::reload::Reloader;
use crate::state::AppState;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::upstream::{Fleet, UpstreamError};

/// Why the daemon cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The policies are invalid; the daemon refuses to serve them.
    #[error("{0}")]
    Policies(#[from] LoadError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The upstream settings are invalid (fleet mode).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Seeding the demo entities failed.
    #[error("seeding entities: {0}")]
    Seed(#[from] ImportError),
    /// The metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Starts the background work of a serving daemon: policy reloads (worker, watcher, SIGHUP),
/// the sweep of expired storage reservations, and warming the entity cache's compact tier.
/// Call once, inside the runtime.
pub fn spawn_background(state: &Arc<AppState>, config: &ServeConfig) {
    crate::reload::spawn(state, config.watch);
    tokio::spawn(sweep_reservations(state.clone()));
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || match store.warm() {
        Ok(0) => {}
        Ok(n) => tracing::info!(entities = n, "entity cache warmed"),
        Err(e) => tracing::warn!(error = %e, "warming the entity cache failed"),
    });
    if let Some(fleet) = state.fleet.get() {
        let settings = fleet.config();
        tracing::info!(
            consistency_wait = ?settings.consistency_wait,
            max_staleness = ?settings.max_staleness,
            upstream = ?fleet.upstream(),
            tls = fleet.upstream().encrypted(),
            "fleet mode: entity writes go to the upstream; this store is its replica"
        );
        if settings.serve_stale {
            tracing::warn!(
                "--serve-stale: decisions are answered even when the replica may be behind the \
                 upstream; a removed permission can then still be granted"
            );
        }
        tokio::spawn(crate::upstream::tail::run(
            fleet.clone(),
            state.store.clone(),
        ));
        let retention = Duration::from_secs(u64::from(config.activity.retention_days) * 86_400);
        tokio::spawn(crate::upstream::activity::ship_forever(
            fleet.clone(),
            state.activity.clone(),
            retention,
        ));
    }
}

/// Stops background work that must finish cleanly: ends the entity cache's warm-up, cancels a
/// running policy change analysis (killing its solver) and commits every queued activity
/// record.
pub async fn finish(state: &Arc<AppState>) {
    state.store.stop_warming();
    state.reloader.stop();
    let st = state.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || st.activity.flush_and_stop()).await {
        tracing::error!(error = %e, "flushing the activity log failed");
    }
    if let Some(fleet) = state.fleet.get() {
        ship_last(fleet, &state.activity).await;
    }
}

/// Fleet mode: ships the records flushed at shutdown now, within a bound; what does not make
/// it is shipped by the next start (shipping resumes from what the upstream has).
async fn ship_last(fleet: &Fleet, log: &Arc<ActivityLog>) {
    const LIMIT: Duration = Duration::from_secs(2);
    let Some(follower) = crate::upstream::activity::follower(log).await else {
        return;
    };
    let mut shipped = None;
    let shipping = crate::upstream::activity::ship_pending(fleet, &follower, &mut shipped);
    match tokio::time::timeout(LIMIT, shipping).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "activity: the last records stay local until the next start")
        }
        Err(_) => tracing::warn!(
            "activity: shipping the last records timed out; the next start ships them"
        ),
    }
}

/// Deletes expired reservations in small batches. They stop counting against quotas the
/// moment they expire; this only reclaims their rows.
async fn sweep_reservations(state: Arc<AppState>) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    const BATCH: i64 = 500;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        if let Some(fleet) = state.fleet.get() {
            // Fleet mode: reservations are upstream; any sidecar's sweep serves all.
            let now = crate::storage::now_micros();
            match fleet.upstream().sweep_reservations(now, BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "swept expired storage reservations"),
                Err(e) => tracing::debug!(error = %e, "sweeping upstream reservations failed"),
            }
            continue;
        }
        let store = state.store.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let now = crate::storage::now_micros();
            let mut total = 0;
            loop {
                let n = store.ledger().sweep_reservations(now, BATCH)?;
                total += n;
                if n < BATCH as usize {
                    return Ok::<_, StoreError>(total);
                }
            }
        })
        .await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(expired = n, "swept expired storage reservations"),
            Ok(Err(e)) => tracing::error!(error = %e, "sweeping expired reservations failed"),
            Err(e) => tracing::error!(error = %e, "reservation sweep task failed"),
        }
    }
}

/// Loads policies, opens the store and seeds it if empty.
pub fn open(config: &ServeConfig) -> Result<Arc<AppState>, StartError> {
    let snapshot = policy::load_dir(&config.policies_dir)?;
    match &snapshot.schema {
        Some(_) => tracing::info!(
            revision = %snapshot.revision,
            policies = snapshot.infos.len(),
            slicing = %snapshot.slicing,
            "policies loaded and validated"
        ),
        None => tracing::warn!(
            revision = %snapshot.revision,
            policies = snapshot.infos.len(),
            slicing = %snapshot.slicing,
            "no *.cedarschema file: policies and entities are not validated"
        ),
    }
    for warning in &snapshot.warnings {
        tracing::warn!(%warning, "policy validation warning");
    }
    let guard = config.analysis.guard.as_str();
    match crate::analysis::Cvc5::locate(config.analysis.cvc5.as_deref()) {
        Ok(cvc5) => tracing::info!(
            cvc5 = %cvc5.path().display(),
            guard,
            "policy change analysis on: every reload is compared with the policies it replaces"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            guard,
            "policy change analysis unavailable: reloads are applied without it"
        ),
    }
    let store = Store::new(
        Box::new(SqliteStore::open(&config.db_path)?),
        config.entity_cache,
        config.compact_cache,
    );
    let position = match &config.upstream {
        Some(_) => store.replica_position()?,
        None => None,
    };
    if config.upstream.is_some() {
        tracing::info!("fleet mode: the store is a replica of the upstream; nothing is seeded");
    } else if config.entities_dir.is_dir() {
        if let Some(n) =
            import::seed_if_empty(&store, snapshot.schema.as_ref(), &config.entities_dir)?
        {
            tracing::info!(entities = n, dir = %config.entities_dir.display(), "seeded empty store");
        }
    } else {
        tracing::info!(dir = %config.entities_dir.display(), "no entities directory; nothing to seed");
    }
    let activity = if config.activity.enabled {
        let log = ActivityLog::open(&config.activity)?;
        tracing::info!(db = %config.activity.db_path.display(), "activity log on");
        log
    } else {
        tracing::info!("activity log off");
        ActivityLog::disabled()
    };
    let state = AppState::new(
        snapshot,
        store,
        config.limits.clone(),
        config.auth.clone(),
        Reloader::with_analysis(&config.policies_dir, config.analysis.clone()),
        activity,
    )?;
    if let Some(fleet) = &config.upstream {
        let fleet = Fleet::new(fleet.clone(), position)?;
        // Only this start-up sets it.
        let _ = state.fleet.set(Arc::new(fleet));
    }
    Ok(state)
}

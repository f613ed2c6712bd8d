//! The state every request handler shares: the current policy snapshot, the store, the limits.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::activity::ActivityLog;
use crate::config::{Auth, Limits};
use crate::metrics::{Metrics, MetricsError, RouteLabel};
use crate::policy::PolicySnapshot;
use crate::reload::Reloader;
use crate::store::Store;
use crate::upstream::Fleet;

/// Shared daemon state. Cheap to clone the `Arc` around it; never locked as a whole.
pub struct AppState {
    /// The snapshot decisions use. A request loads it once and keeps that `Arc` to the end, so a
    /// reload swapping it never splits a request between two policy sets.
    pub policies: ArcSwap<PolicySnapshot>,
    /// The entity store.
    pub store: Arc<Store>,
    /// Request limits.
    pub limits: Limits,
    /// Who may call what.
    pub auth: Auth,
    /// Reloads the policies and reports the last attempt.
    pub reloader: Reloader,
    /// Entity writes hold it shared from validation to commit; a reload that changes the
    /// schema holds it exclusively while it checks the stored entities and swaps, so no write
    /// validated against the old schema lands after the check.
    pub write_gate: tokio::sync::RwLock<()>,
    /// The activity log.
    pub activity: Arc<ActivityLog>,
    /// Base URL of the AuthZEN endpoints (`--authzen-base-url`, else `http://<listen
    /// address>`), set once the listener is bound.
    pub authzen_base: OnceLock<String>,
    /// Fleet mode (`--upstream`), set once at start; empty for a standalone daemon.
    pub fleet: OnceLock<Arc<Fleet>>,
    /// The Prometheus metrics.
    pub metrics: Metrics,
}

impl AppState {
    /// Builds the state from a loaded snapshot and an open store.
    pub fn new(
        snapshot: PolicySnapshot,
        store: Store,
        limits: Limits,
        auth: Auth,
        reloader: Reloader,
        activity: ActivityLog,
    ) -> Result<Arc<Self>, MetricsError> {
        let routes = crate::api::routes::ROUTES.iter().map(|r| RouteLabel {
            method: r.method.as_str(),
            pattern: r.pattern,
            decides: r.access == crate::api::routes::Access::Decision,
        });
        let metrics = Metrics::new(routes)?;
        Ok(Arc::new(AppState {
            policies: ArcSwap::from_pointee(snapshot),
            store: Arc::new(store),
            limits,
            auth,
            reloader,
            write_gate: tokio::sync::RwLock::new(()),
            activity: Arc::new(activity),
            authzen_base: OnceLock::new(),
            fleet: OnceLock::new(),
            metrics,
        }))
    }

    /// The snapshot to use for one whole request.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.policies.load_full()
    }
}

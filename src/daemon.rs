//! Start-up: turns a [`ServeConfig`] into ready-to-serve state, with the policies loaded and
//! validated and the store opened (and seeded when empty).

use std::sync::Arc;

use crate::config::ServeConfig;
use crate::import::{self, ImportError};
use crate::policy::{self, LoadError};
use crate::reload::Reloader;
use crate::state::AppState;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// Why the daemon cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The policies are invalid; the daemon refuses to serve them.
    #[error("{0}")]
    Policies(#[from] LoadError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Seeding the demo entities failed.
    #[error("seeding entities: {0}")]
    Seed(#[from] ImportError),
}

/// Loads policies, opens the store and seeds it if empty.
pub fn open(config: &ServeConfig) -> Result<Arc<AppState>, StartError> {
    let snapshot = policy::load_dir(&config.policies_dir)?;
    match &snapshot.schema {
        Some(_) => tracing::info!(
            revision = %snapshot.revision,
            policies = snapshot.infos.len(),
            deref_depth = snapshot.deref_depth,
            "policies loaded and validated"
        ),
        None => tracing::warn!(
            revision = %snapshot.revision,
            policies = snapshot.infos.len(),
            deref_depth = snapshot.deref_depth,
            "no *.cedarschema file: policies and entities are not validated"
        ),
    }
    for warning in &snapshot.warnings {
        tracing::warn!(%warning, "policy validation warning");
    }
    let store = Store::new(
        Box::new(SqliteStore::open(&config.db_path)?),
        config.entity_cache,
    );
    if config.entities_dir.is_dir() {
        if let Some(n) =
            import::seed_if_empty(&store, snapshot.schema.as_ref(), &config.entities_dir)?
        {
            tracing::info!(entities = n, dir = %config.entities_dir.display(), "seeded empty store");
        }
    } else {
        tracing::info!(dir = %config.entities_dir.display(), "no entities directory; nothing to seed");
    }
    Ok(AppState::new(
        snapshot,
        store,
        config.limits.clone(),
        Reloader::new(&config.policies_dir),
    ))
}

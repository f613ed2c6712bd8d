//! Watches the policy directory (not its files) and asks for a debounced reload on any change.
//!
//! Watching the directory sees editors that save by rename, files deleted and re-created, and
//! Kubernetes ConfigMap updates (a `..data` symlink swapped atomically). When the directory
//! itself is removed or replaced, the watch is re-armed on the new one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Trigger;
use crate::state::AppState;

/// Quiet time that ends a burst of events (an editor's save is several).
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Longest a burst may defer its reload: a directory that never stops changing still reloads.
pub const MAX_DEFER: Duration = Duration::from_millis(500);

/// How often the directory's identity is checked, and arming retried after a failure.
const CHECK_EVERY: Duration = Duration::from_millis(500);

struct Armed {
    _watcher: RecommendedWatcher,
    identity: Option<(u64, u64)>,
}

/// Runs until the process ends.
pub async fn watch(state: Arc<AppState>) {
    let dir = state.reloader.dir().to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<Event>>();
    let mut armed: Option<Armed> = None;
    let mut warned = false;
    loop {
        if armed.is_none() {
            match arm(&dir, tx.clone()) {
                Ok(a) => {
                    tracing::info!(dir = %dir.display(), "watching policy directory");
                    armed = Some(a);
                    warned = false;
                    // Whatever changed before the watch was up (since start-up, or while it
                    // was being re-armed) is picked up now; unchanged sources are a no-op.
                    state.reloader.request(Trigger::Watch);
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch policy directory; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(CHECK_EVERY).await;
                    continue;
                }
            }
        }
        match tokio::time::timeout(CHECK_EVERY, rx.recv()).await {
            Ok(Some(event)) => {
                let mut lost = is_lost(&event, &dir);
                let deadline = tokio::time::Instant::now() + MAX_DEFER;
                loop {
                    let quiet = DEBOUNCE
                        .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                    match tokio::time::timeout(quiet, rx.recv()).await {
                        Ok(Some(more)) => lost |= is_lost(&more, &dir),
                        _ => break,
                    }
                }
                if lost {
                    tracing::warn!(dir = %dir.display(), "policy directory watch lost; re-arming");
                    armed = None;
                }
                state.reloader.request(Trigger::Watch);
            }
            Ok(None) => return,
            Err(_elapsed) => {
                let now = identity(&dir);
                if armed.as_ref().is_some_and(|a| a.identity != now) {
                    tracing::warn!(dir = %dir.display(), "policy directory was replaced; re-arming");
                    armed = None;
                    state.reloader.request(Trigger::Watch);
                }
            }
        }
    }
}

fn arm(dir: &Path, tx: mpsc::UnboundedSender<notify::Result<Event>>) -> notify::Result<Armed> {
    let identity = identity(dir);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        // Reads (a reload opening the files) change nothing; passing them on would make every
        // reload trigger the next.
        if !matches!(&event, Ok(e) if matches!(e.kind, EventKind::Access(_))) {
            let _ = tx.send(event);
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(Armed {
        _watcher: watcher,
        identity,
    })
}

/// Device and inode of the directory: they change when it is removed and re-created.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(dir).ok().map(|_| (0, 0))
    }
}

/// Whether an event may mean the watch no longer covers the directory: an error, or anything
/// that happened to the directory itself (removed, moved) rather than to an entry in it.
/// Re-arming costs little, so any doubt re-arms.
fn is_lost(event: &notify::Result<Event>, dir: &Path) -> bool {
    match event {
        Err(_) => true,
        Ok(e) => e.paths.iter().any(|p| p == dir),
    }
}

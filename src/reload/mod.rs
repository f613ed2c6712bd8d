//! Hot reload of policies and schema: parse, validate, check the stored entities against a
//! changed schema, then swap one snapshot. Never half-applied; a failure keeps the last good
//! snapshot and is recorded for `GET /v1/policies`.
//!
//! Triggers (the directory watcher in [`watch`], SIGHUP, `POST /v1/policies/reload`) go through
//! one queue to one worker, so concurrent triggers coalesce into a single reload. Each accepted
//! set is analysed against the one it replaces by the [`guard`], which may refuse it.

pub mod guard;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use cedar_policy::Entity;
use tokio::sync::{mpsc, oneshot};

use crate::activity::{Entry, Kind, Verdict};
use crate::analysis;
use crate::config::{AnalysisConfig, ReloadGuard};
use crate::metrics::ReloadOutcome;
use crate::policy::{self, PolicySnapshot, SourceError};
use crate::state::AppState;
use crate::store::codec::error_chain;
pub use guard::{AnalysisCounts, Changes};

/// Most non-conforming stored entities listed in a refused reload.
const MAX_ENTITY_ERRORS: usize = 20;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The policy directory changed.
    Watch,
    /// The process got SIGHUP.
    Sighup,
    /// `POST /v1/policies/reload`.
    Api,
}

impl Trigger {
    /// Name used in logs and in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "watch",
            Trigger::Sighup => "sighup",
            Trigger::Api => "api",
        }
    }
}

/// The outcome of one reload attempt, as recorded and reported.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// When the attempt finished.
    pub at: SystemTime,
    /// Whether the new sources were accepted.
    pub ok: bool,
    /// The revision served after the attempt (the old one when it failed).
    pub revision: String,
    /// Whether the served snapshot changed.
    pub changed: bool,
    /// Why the sources were refused.
    pub errors: Vec<SourceError>,
    /// What triggered it (the first trigger when several coalesced).
    pub trigger: Trigger,
    /// What the new set grants or takes away compared with the one it replaced: empty while
    /// the analysis is pending, and when nothing was analysed (no change, invalid sources).
    pub changes: Changes,
    /// Refused by `--reload-guard refuse-widening` because it widens access.
    pub widening_refused: bool,
}

struct Request {
    trigger: Trigger,
    accept_widening: bool,
    reply: Option<oneshot::Sender<ReloadStatus>>,
}

/// Handle to the reload worker: request reloads and read the last outcome.
pub struct Reloader {
    dir: PathBuf,
    tx: mpsc::Sender<Request>,
    rx: Mutex<Option<mpsc::Receiver<Request>>>,
    last: ArcSwapOption<ReloadStatus>,
    guard: Arc<guard::Guard>,
}

impl Reloader {
    /// A reloader for the policy directory `dir` with the default analysis (warn, 5 s, cvc5
    /// from the environment); its worker starts with [`spawn`].
    pub fn new(dir: &Path) -> Self {
        Self::with_analysis(dir, AnalysisConfig::default())
    }

    /// A reloader for `dir` whose reloads are analysed (and guarded) as `analysis` says.
    pub fn with_analysis(dir: &Path, analysis: AnalysisConfig) -> Self {
        // One queued request is enough: a reload that has not started yet will read whatever
        // the later triggers would have read.
        let (tx, rx) = mpsc::channel(64);
        Reloader {
            dir: dir.to_path_buf(),
            tx,
            rx: Mutex::new(Some(rx)),
            last: ArcSwapOption::empty(),
            guard: Arc::new(guard::Guard::new(analysis)),
        }
    }

    /// The watched policy directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Asks for a reload without waiting for it.
    pub fn request(&self, trigger: Trigger) {
        // A full queue already holds reloads that have not started: this one coalesces.
        let _ = self.tx.try_send(Request {
            trigger,
            accept_widening: false,
            reply: None,
        });
    }

    /// Reloads and waits for the outcome (coalesced with any reload queued meanwhile).
    /// `accept_widening` applies a set that widens access even under `refuse-widening`.
    pub async fn reload(&self, trigger: Trigger, accept_widening: bool) -> Option<ReloadStatus> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Request {
                trigger,
                accept_widening,
                reply: Some(reply),
            })
            .await
            .ok()?;
        outcome.await.ok()
    }

    /// The last reload attempt, if any.
    pub fn last(&self) -> Option<Arc<ReloadStatus>> {
        self.last.load_full()
    }

    /// `warn` or `refuse-widening`.
    pub fn guard_mode(&self) -> ReloadGuard {
        self.guard.mode()
    }

    /// Analyses and widenings found since start-up.
    pub fn analysis_counts(&self) -> AnalysisCounts {
        self.guard.counts()
    }

    /// Cancels the running policy change analysis and any later one: the daemon is stopping.
    pub fn stop(&self) {
        self.guard.stop();
    }
}

/// Starts the reload worker, the SIGHUP listener and (when `watch_dir`) the directory watcher.
/// Call once, inside the runtime.
pub fn spawn(state: &Arc<AppState>, watch_dir: bool) {
    let rx = state
        .reloader
        .rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(rx) = rx else {
        tracing::warn!("reload worker already started");
        return;
    };
    tokio::spawn(worker(state.clone(), rx));
    if watch_dir {
        tokio::spawn(watch::watch(state.clone()));
    } else {
        tracing::info!("policy directory watching is off; reload with SIGHUP or the API");
    }
    #[cfg(unix)]
    tokio::spawn(sighup(state.clone()));
}

async fn worker(state: Arc<AppState>, mut rx: mpsc::Receiver<Request>) {
    while let Some(first) = rx.recv().await {
        let trigger = first.trigger;
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        // An explicit acceptance covers the directory as this reload reads it.
        let accept = waiting.iter().any(|r| r.accept_widening);
        let st = state.clone();
        let (status, swapped) =
            tokio::task::spawn_blocking(move || reload_now(&st, trigger, accept))
                .await
                .unwrap_or_else(|e| {
                    let errors = vec![message(format!("reload task failed: {e}"))];
                    (failed(&state, trigger, errors), None)
                });
        // A reload that found the served set unchanged, after one that applied or confirmed
        // that same set, tells nothing new; keeping the earlier status keeps its analysis
        // (editors' saves often fire two events, and the second reload finds nothing to do).
        let redundant = status.ok
            && !status.changed
            && state
                .reloader
                .last()
                .is_some_and(|prev| prev.ok && prev.revision == status.revision);
        if !redundant {
            state.reloader.last.store(Some(Arc::new(status.clone())));
        }
        state
            .metrics
            .reloaded(trigger.as_str(), ReloadOutcome::of(&status));
        if let Some((old, new)) = swapped {
            // `warn`: the new set is already live; the analysis fills in `changes` later.
            state.reloader.guard.spawn(old, new, status.changes.clone());
        }
        if status.changed || !status.ok {
            state.activity.record(Entry {
                policy_revision: Some(status.revision.as_str().into()),
                reasons: status.errors.iter().map(ToString::to_string).collect(),
                verdict: Some(if status.ok {
                    Verdict::Applied
                } else {
                    Verdict::Refused
                }),
                ..Entry::new(Kind::PolicyReload)
            });
        }
        for request in waiting {
            if let Some(reply) = request.reply {
                let _ = reply.send(status.clone());
            }
        }
    }
}

#[cfg(unix)]
async fn sighup(state: Arc<AppState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload by SIGHUP is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading policies");
        state.reloader.request(Trigger::Sighup);
    }
}

/// The snapshots a reload replaced and installed, still to be analysed in the background.
type Swapped = Option<(Arc<PolicySnapshot>, Arc<PolicySnapshot>)>;

/// One reload, start to finish. Blocking.
fn reload_now(
    state: &AppState,
    trigger: Trigger,
    accept_widening: bool,
) -> (ReloadStatus, Swapped) {
    let dir = state.reloader.dir();
    let next = match policy::load_dir(dir) {
        Ok(next) => Arc::new(next),
        Err(e) => return (failed(state, trigger, e.errors()), None),
    };
    let current = state.snapshot();
    if next.revision == current.revision {
        tracing::debug!(trigger = trigger.as_str(), revision = %next.revision, "policies unchanged");
        return (
            status(true, current.revision.to_string(), false, vec![], trigger),
            None,
        );
    }
    let guard = &state.reloader.guard;
    let mut analysed = None;
    if guard.mode() == ReloadGuard::RefuseWidening {
        let report = guard.analyse(&current, &next);
        let widened = report.summary.widenings;
        if report.is_complete() && widened > 0 && !accept_widening {
            guard.count_refused();
            return (refused(state, trigger, report), None);
        }
        if widened > 0 {
            tracing::warn!(
                trigger = trigger.as_str(),
                widenings = widened,
                "applying policies that widen access: the reload asked to accept it"
            );
        }
        analysed = Some(report);
    }
    let schema_changed = next.schema_revision != current.schema_revision;
    let applied = if schema_changed && next.schema.is_some() {
        // Holding the gate stops writes validated against the old schema from landing between
        // the check and the swap.
        let _writes = state.write_gate.blocking_write();
        let errors = nonconforming_entities(state, &next);
        if !errors.is_empty() {
            return (failed(state, trigger, errors), None);
        }
        swap(state, next.clone(), trigger)
    } else {
        swap(state, next.clone(), trigger)
    };
    match analysed {
        Some(report) => {
            applied.changes.store(Some(Arc::new(report)));
            (applied, None)
        }
        None => (applied, Some((current, next))),
    }
}

/// The guard refused a set that widens access: the old one stays live.
fn refused(state: &AppState, trigger: Trigger, report: analysis::DiffReport) -> ReloadStatus {
    let served = state.snapshot().revision.clone();
    let widened: Vec<String> = report.widenings().map(|e| e.label()).collect();
    let text = format!(
        "refused by --reload-guard refuse-widening: the new policies widen access in {} environment(s) ({}); still serving revision {served}. Apply them on purpose with POST /v1/policies/reload {{\"accept_widening\": true}}",
        widened.len(),
        widened.join("; ")
    );
    tracing::error!(
        trigger = trigger.as_str(),
        to_revision = %report.to_revision,
        "policy reload refused: it widens access; still serving the previous policies"
    );
    let mut out = status(
        false,
        served.to_string(),
        false,
        vec![message(text)],
        trigger,
    );
    out.changes.store(Some(Arc::new(report)));
    out.widening_refused = true;
    out
}

fn swap(state: &AppState, next: Arc<PolicySnapshot>, trigger: Trigger) -> ReloadStatus {
    let revision = next.revision.clone();
    for warning in &next.warnings {
        tracing::warn!(%warning, "policy validation warning");
    }
    tracing::info!(
        trigger = trigger.as_str(),
        %revision,
        policies = next.infos.len(),
        slicing = %next.slicing,
        "policies reloaded"
    );
    state.policies.store(next);
    status(true, revision.to_string(), true, vec![], trigger)
}

fn failed(state: &AppState, trigger: Trigger, errors: Vec<SourceError>) -> ReloadStatus {
    let served = state.snapshot().revision.clone();
    for e in &errors {
        tracing::error!(
            trigger = trigger.as_str(),
            file = %e.file,
            line = e.line,
            column = e.column,
            error = %e.message,
            "policy reload refused; still serving the previous policies"
        );
    }
    status(false, served.to_string(), false, errors, trigger)
}

fn status(
    ok: bool,
    revision: String,
    changed: bool,
    errors: Vec<SourceError>,
    trigger: Trigger,
) -> ReloadStatus {
    ReloadStatus {
        at: SystemTime::now(),
        ok,
        revision,
        changed,
        errors,
        trigger,
        changes: Arc::new(ArcSwapOption::empty()),
        widening_refused: false,
    }
}

fn message(text: String) -> SourceError {
    SourceError {
        file: String::new(),
        line: None,
        column: None,
        message: text,
    }
}

/// Stored entities that the new schema would refuse (at most [`MAX_ENTITY_ERRORS`]).
fn nonconforming_entities(state: &AppState, next: &PolicySnapshot) -> Vec<SourceError> {
    let Some(schema) = next.schema.as_ref() else {
        return vec![];
    };
    let mut errors = Vec::new();
    let scanned = state.store.scan(&mut |record| {
        let conforms = serde_json::from_str(&record.body)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                Entity::from_json_value(json, Some(schema)).map_err(|e| error_chain(&e))
            });
        if let Err(why) = conforms {
            errors.push(message(format!(
                "stored entity {} does not conform to the new schema: {why}",
                record.uid
            )));
        }
        errors.len() < MAX_ENTITY_ERRORS
    });
    if let Err(e) = scanned {
        errors.push(message(format!("cannot check stored entities: {e}")));
    }
    errors
}

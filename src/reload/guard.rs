//! The reload guard: every accepted policy set is analysed against the one it replaces
//! ([`crate::analysis::diff`]), each widening is logged at warn and counted, and with
//! `--reload-guard refuse-widening` a reload that widens anything is refused.
//!
//! The analysis runs off the async runtime, one at a time, under `--analysis-timeout`, and is
//! cancelled when the daemon stops. A solver that is missing, crashes or runs out of time makes
//! the report "unavailable"; it never refuses a reload and never takes the daemon down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::analysis::{self, DiffReport, Options};
use crate::config::{AnalysisConfig, ReloadGuard};
use crate::policy::PolicySnapshot;

/// The analysis of one reload: empty while it is pending (or when there was nothing to
/// analyse), then the report. Shared by every copy of the reload's status.
pub type Changes = Arc<ArcSwapOption<DiffReport>>;

/// Totals since start-up, for the status route (and metrics, later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnalysisCounts {
    /// Analyses run to completion.
    pub completed: u64,
    /// Environments found widened, summed over every analysed reload.
    pub widenings: u64,
    /// Analyses that could not run or finish (no solver, a crash, the time limit).
    pub unavailable: u64,
    /// Reloads refused because they widened access.
    pub refused: u64,
}

/// The guard's configuration and state, owned by the reloader.
pub struct Guard {
    config: AnalysisConfig,
    completed: AtomicU64,
    widenings: AtomicU64,
    unavailable: AtomicU64,
    refused: AtomicU64,
    stop: watch::Sender<bool>,
    /// Held while an analysis runs: they run one at a time.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Guard {
    /// A guard with this configuration.
    pub fn new(config: AnalysisConfig) -> Guard {
        Guard {
            config,
            completed: AtomicU64::new(0),
            widenings: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stop: watch::channel(false).0,
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Warn or refuse.
    pub fn mode(&self) -> ReloadGuard {
        self.config.guard
    }

    /// The totals so far.
    pub fn counts(&self) -> AnalysisCounts {
        AnalysisCounts {
            completed: self.completed.load(Ordering::Relaxed),
            widenings: self.widenings.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Counts a refused reload.
    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Cancels the running analysis and every later one (the daemon is stopping).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Analyses `new` against `old` now, on this thread, then logs and counts the result.
    /// Blocking: call it off the async runtime.
    pub fn analyse(&self, old: &PolicySnapshot, new: &PolicySnapshot) -> DiffReport {
        let options = Options {
            cvc5: self.config.cvc5.clone(),
            timeout: self.config.timeout,
            cancel: Some(self.stop.subscribe()),
        };
        let report = analysis::diff(old, new, &options);
        self.record(&report);
        report
    }

    /// Analyses in the background (after a swap, in `warn` mode) and fills `changes` when done.
    pub fn spawn(
        self: &Arc<Self>,
        old: Arc<PolicySnapshot>,
        new: Arc<PolicySnapshot>,
        changes: Changes,
    ) {
        let guard = self.clone();
        tokio::spawn(async move {
            let _one_at_a_time = guard.running.clone().lock_owned().await;
            let worker = guard.clone();
            match tokio::task::spawn_blocking(move || worker.analyse(&old, &new)).await {
                Ok(report) => changes.store(Some(Arc::new(report))),
                Err(e) => {
                    // `analyse` catches panics; this is a runtime that is going away.
                    tracing::error!(error = %e, "policy change analysis task failed");
                }
            }
        });
    }

    fn record(&self, report: &DiffReport) {
        if !report.is_complete() {
            let reason = report.reason.as_deref().unwrap_or("unknown");
            if *self.stop.borrow() {
                tracing::info!(%reason, "policy change analysis stopped");
                return;
            }
            self.unavailable.fetch_add(1, Ordering::Relaxed);
            match self.config.guard {
                ReloadGuard::Warn => tracing::warn!(
                    %reason,
                    to_revision = %report.to_revision,
                    "policy change analysis unavailable"
                ),
                ReloadGuard::RefuseWidening => tracing::error!(
                    %reason,
                    to_revision = %report.to_revision,
                    "policy change analysis unavailable: the reload guard cannot tell whether this reload widens access, so it is NOT refused"
                ),
            }
            return;
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        let mut widened = 0;
        for env in report.widenings() {
            widened += 1;
            let example = env
                .widening
                .as_ref()
                .map(|c| c.summary())
                .unwrap_or_default();
            tracing::warn!(
                environment = %env.label(),
                change = ?env.change,
                %example,
                from_revision = %report.from_revision,
                to_revision = %report.to_revision,
                "policy change widens access"
            );
        }
        self.widenings.fetch_add(widened, Ordering::Relaxed);
        let s = &report.summary;
        tracing::info!(
            environments = s.environments,
            equivalent = s.equivalent,
            widenings = s.widenings,
            narrowings = s.narrowings,
            elapsed_ms = report.elapsed_ms,
            to_revision = %report.to_revision,
            "policy change analysed"
        );
    }
}

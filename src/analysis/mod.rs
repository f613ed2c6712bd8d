//! Policy change analysis: what an edit to the policies grants or takes away, proved by the
//! cvc5 SMT solver through Cedar's symbolic compiler (`cedar-policy-symcc`).
//!
//! [`diff`] compares two [`PolicySnapshot`]s in every (principal type, action, resource type)
//! their schemas allow; [`lint`] finds dead and shadowed policies in one. `policyd diff`,
//! `policyd check` and the reload guard all call these. Both are synchronous: they start one
//! cvc5 process for the whole analysis (killed when it ends), run it on a private
//! single-threaded runtime under a time limit, and turn every failure (no solver, a crash, the
//! time limit, a panic in the compiler) into an error instead of taking the caller down.
//!
//! Everything compares meaning, not text: reformatting, reordering, renaming files or policy
//! ids changes nothing here.

mod counterexample;
mod diff;
mod envs;
mod lint;
mod solver;
mod text;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cedar_policy_symcc::CedarSymCompiler;
use cedar_policy_symcc::solver::{LocalSolver, SolverError};
use serde::Serialize;

pub use counterexample::{Counterexample, Verdict};
pub use diff::{Change, EnvChange, SchemaState};
pub use lint::{Lint, LintKind};
pub use solver::{Cvc5, ENV_VAR as CVC5_ENV_VAR};
pub use text::{diff_text, lint_text};

use crate::policy::PolicySnapshot;

/// The time limit of an analysis at reload (`--analysis-timeout`).
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The time limit of `policyd diff` and the lints of `policyd check`.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How to run an analysis.
#[derive(Debug, Clone)]
pub struct Options {
    /// The solver named by `--cvc5`; `None`: `$CVC5`, else `cvc5` on `PATH`.
    pub cvc5: Option<PathBuf>,
    /// The whole analysis is given up (and the solver killed) after this long.
    pub timeout: Duration,
    /// When it turns `true`, the analysis stops at once (the daemon is shutting down).
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cvc5: None,
            timeout: DEFAULT_COMMAND_TIMEOUT,
            cancel: None,
        }
    }
}

/// Why an analysis could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// No solver executable where it was looked for.
    #[error(
        "cvc5 not found: `{}` (from {from}); install it (Debian: apt-get install cvc5), or name it with --cvc5 PATH or the CVC5 variable",
        given.display()
    )]
    SolverNotFound {
        /// What was looked for.
        given: PathBuf,
        /// Where the name came from.
        from: &'static str,
    },
    /// The solver could not be started.
    #[error("cannot start cvc5 at {}", path.display())]
    SolverStart {
        /// The executable.
        path: PathBuf,
        /// Why.
        #[source]
        source: SolverError,
    },
    /// The solver failed (crashed, answered `unknown`, or gave an unreadable answer).
    #[error("the solver failed on {env}")]
    Solver {
        /// The environment being analysed.
        env: String,
        /// Why.
        #[source]
        source: Box<cedar_policy_symcc::err::Error>,
    },
    /// A policy set could not be compiled for the solver.
    #[error("cannot compile the policies for {env}")]
    Compile {
        /// The environment being compiled.
        env: String,
        /// Why.
        #[source]
        source: Box<cedar_policy_symcc::err::Error>,
    },
    /// The time limit passed first.
    #[error("the analysis did not finish within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The daemon is stopping.
    #[error("the analysis was cancelled: the daemon is stopping")]
    Cancelled,
    /// Analysis needs a schema to know which requests are valid.
    #[error("{0} has no schema; the analysis needs one to know which requests are valid")]
    NoSchema(&'static str),
    /// The schema's actions could not be read.
    #[error("cannot read the schema's actions: {0}")]
    Schema(String),
    /// The private runtime could not be built.
    #[error("cannot start the analysis runtime")]
    Runtime(#[source] std::io::Error),
    /// The symbolic compiler panicked (a bug there); the caller carries on.
    #[error("the analyser panicked: {0}")]
    Panicked(String),
    /// Anything else that should not happen (a policy that cannot be rewritten...).
    #[error("{0}")]
    Internal(String),
}

/// Whether the analysis ran to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every environment was analysed.
    Complete,
    /// It could not run or finish; `reason` says why.
    Unavailable,
}

/// Counts over the environments of a [`DiffReport`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Environments analysed.
    pub environments: usize,
    /// Equivalent ones.
    pub equivalent: usize,
    /// Only wider.
    pub wider: usize,
    /// Only narrower.
    pub narrower: usize,
    /// Wider and narrower.
    pub different: usize,
    /// Allowed by the new schema only.
    pub added: usize,
    /// Allowed by the old schema only.
    pub removed: usize,
    /// Not typed by both sets under either schema.
    pub not_comparable: usize,
    /// Environments with a request the new set allows and the old one did not.
    pub widenings: usize,
    /// Environments with a request the old set allowed and the new one does not.
    pub narrowings: usize,
}

/// The result of [`diff`]: the JSON of `policyd diff --json` and of `last_reload.changes`.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// Complete or unavailable.
    pub status: Status,
    /// Why it is unavailable.
    pub reason: Option<String>,
    /// Revision of the old set.
    pub from_revision: String,
    /// Revision of the new set.
    pub to_revision: String,
    /// How long the analysis took, in milliseconds.
    pub elapsed_ms: u64,
    /// Counts.
    pub summary: Summary,
    /// Every environment, in a stable order (empty when unavailable).
    pub environments: Vec<EnvChange>,
}

impl DiffReport {
    /// Whether anything changed (any environment not equivalent).
    pub fn changed(&self) -> bool {
        self.environments
            .iter()
            .any(|e| e.change != Change::Equivalent)
    }

    /// The environments where the new set allows something the old one did not.
    pub fn widenings(&self) -> impl Iterator<Item = &EnvChange> {
        self.environments.iter().filter(|e| e.widening.is_some())
    }

    /// Whether the analysis finished.
    pub fn is_complete(&self) -> bool {
        self.status == Status::Complete
    }

    fn new(from: &PolicySnapshot, to: &PolicySnapshot, started: Instant) -> Self {
        DiffReport {
            status: Status::Complete,
            reason: None,
            from_revision: from.revision.to_string(),
            to_revision: to.revision.to_string(),
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            summary: Summary::default(),
            environments: Vec::new(),
        }
    }
}

/// What `to` grants or takes away compared with `from`, in every environment either schema
/// allows. Never fails: a report that could not be made says why, with status `unavailable`.
pub fn diff(from: &PolicySnapshot, to: &PolicySnapshot, options: &Options) -> DiffReport {
    let started = Instant::now();
    let outcome = with_solver(options, |mut compiler| async move {
        diff::environments(from, to, &mut compiler).await
    });
    let mut report = DiffReport::new(from, to, started);
    match outcome {
        Ok(environments) => {
            report.summary = summarize(&environments);
            report.environments = environments;
        }
        Err(e) => {
            report.status = Status::Unavailable;
            report.reason = Some(crate::store::codec::error_chain(&e));
        }
    }
    report
}

/// The dead and shadowed policies of `snapshot`, in file order.
pub fn lint(snapshot: &PolicySnapshot, options: &Options) -> Result<Vec<Lint>, AnalysisError> {
    with_solver(options, |mut compiler| async move {
        lint::lints(snapshot, &mut compiler).await
    })
}

fn summarize(environments: &[EnvChange]) -> Summary {
    let mut s = Summary {
        environments: environments.len(),
        ..Summary::default()
    };
    for e in environments {
        match e.change {
            Change::Equivalent => s.equivalent += 1,
            Change::Wider => s.wider += 1,
            Change::Narrower => s.narrower += 1,
            Change::Different => s.different += 1,
            Change::Added => s.added += 1,
            Change::Removed => s.removed += 1,
            Change::NotComparable => s.not_comparable += 1,
        }
        s.widenings += usize::from(e.widening.is_some());
        s.narrowings += usize::from(e.narrowing.is_some());
    }
    s
}

fn solver_error(env: &str, source: cedar_policy_symcc::err::Error) -> AnalysisError {
    AnalysisError::Solver {
        env: env.to_owned(),
        source: Box::new(source),
    }
}

/// Runs `work` with a fresh solver on a private runtime, within the time limit, until
/// cancelled, catching panics. Dropping the solver kills its process.
fn with_solver<'a, T, F, Fut>(options: &Options, work: F) -> Result<T, AnalysisError>
where
    F: FnOnce(CedarSymCompiler<LocalSolver>) -> Fut + 'a,
    Fut: Future<Output = Result<T, AnalysisError>> + 'a,
{
    let cvc5 = Cvc5::locate(options.cvc5.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AnalysisError::Runtime)?;
    let timeout = options.timeout;
    let mut cancel = options.cancel.clone();
    let run = async move {
        let solver = cvc5.start(timeout)?;
        let compiler = CedarSymCompiler::new(solver).map_err(|e| solver_error("start-up", e))?;
        work(compiler).await
    };
    let guarded = async move {
        let cancelled = async {
            let stop = match cancel.as_mut() {
                Some(rx) => rx.wait_for(|stop| *stop).await.is_ok(),
                None => false,
            };
            // A dropped sender is no request to stop.
            if !stop {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            () = cancelled => Err(AnalysisError::Cancelled),
            r = tokio::time::timeout(timeout, run) => r.unwrap_or(Err(AnalysisError::Timeout(timeout))),
        }
    };
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(guarded)));
    outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(AnalysisError::Panicked(message))
    })
}

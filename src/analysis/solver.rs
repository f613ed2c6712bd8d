//! Finding and starting the cvc5 SMT solver: `--cvc5 PATH`, else the `CVC5` environment
//! variable, else `cvc5` on `PATH`. Nothing else in policyd needs it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cedar_policy_symcc::solver::LocalSolver;

use super::AnalysisError;

/// The environment variable that names the solver when `--cvc5` is not given.
pub const ENV_VAR: &str = "CVC5";

/// A located cvc5 executable.
#[derive(Debug, Clone)]
pub struct Cvc5 {
    path: PathBuf,
}

impl Cvc5 {
    /// Finds the solver: `explicit` (the `--cvc5` flag), else `$CVC5`, else `cvc5` on `PATH`.
    /// A bare name is searched on `PATH`; a path must name an executable file.
    pub fn locate(explicit: Option<&Path>) -> Result<Cvc5, AnalysisError> {
        let (given, from) = match explicit {
            Some(p) => (p.to_path_buf(), "--cvc5"),
            None => match std::env::var_os(ENV_VAR) {
                Some(v) if !v.is_empty() => (PathBuf::from(v), "the CVC5 variable"),
                _ => (PathBuf::from("cvc5"), "PATH"),
            },
        };
        match resolve(&given) {
            Some(path) => Ok(Cvc5 { path }),
            None => Err(AnalysisError::SolverNotFound { given, from }),
        }
    }

    /// The executable.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts one solver process, killed when the returned handle is dropped (so a timeout or
    /// a cancelled analysis never leaves it running). `limit` is also handed to cvc5 as its own
    /// wall-clock limit. Call inside a Tokio runtime.
    pub(super) fn start(&self, limit: Duration) -> Result<LocalSolver, AnalysisError> {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.arg("--lang")
            .arg("smt")
            .arg(format!("--tlimit={}", limit.as_millis().max(1)))
            .kill_on_drop(true);
        LocalSolver::from_command(&mut cmd).map_err(|source| AnalysisError::SolverStart {
            path: self.path.clone(),
            source,
        })
    }
}

fn resolve(given: &Path) -> Option<PathBuf> {
    if given.components().count() > 1 || given.is_absolute() {
        return is_executable(given).then(|| given.to_path_buf());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(given))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_explicit_path_is_named() {
        let err = Cvc5::locate(Some(Path::new("/nonexistent/cvc5"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/cvc5"), "{text}");
        assert!(text.contains("--cvc5"), "{text}");
    }

    #[test]
    fn a_non_executable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cvc5");
        std::fs::write(&file, "not a solver").unwrap();
        #[cfg(unix)]
        assert!(Cvc5::locate(Some(&file)).is_err());
    }
}

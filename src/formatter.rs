//! `policyd fmt`: Cedar policy files in Cedar's own layout (`cedar-policy-formatter`, the
//! formatter behind `cedar format`), rewritten in place only when that changes them.
//!
//! The formatter keeps comments and annotations (`@id` included), and checks that what it
//! wrote parses to the same policies before answering; a file it cannot parse is reported with
//! its line and column and left alone. Schema files are not formatted: Cedar has no formatter
//! for them that keeps comments.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::PolicySet;
use cedar_policy_formatter::{Config, policies_str_to_pretty};

use crate::policy::{self, SourceError};

/// Widest line the formatter aims for.
pub const LINE_WIDTH: usize = 80;

/// Spaces per indentation level.
pub const INDENT: isize = 2;

/// Why a file could not be formatted.
#[derive(Debug, thiserror::Error)]
pub enum FmtError {
    /// A directory could not be listed.
    #[error("cannot list {}: {source}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A directory holds no policy file.
    #[error("no *.cedar files in {}", path.display())]
    NoFiles {
        /// The directory.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid Cedar, or the formatter failed on it.
    #[error("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Each problem, located in the file.
        errors: Vec<SourceError>,
    },
    /// The formatted text could not be written back.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The files `paths` name: a file as given, a directory's `*.cedar` files (top level, hidden
/// names skipped, as the policy loader reads them), sorted per directory. No paths: the
/// `*.cedar` files of `default_dir`.
pub fn files(paths: &[PathBuf], default_dir: &Path) -> Result<Vec<PathBuf>, FmtError> {
    let defaults = [default_dir.to_path_buf()];
    let paths = if paths.is_empty() {
        &defaults[..]
    } else {
        paths
    };
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(path.clone());
            continue;
        }
        let found: Vec<PathBuf> =
            crate::dir::files_with_extension(path, &[crate::policy::POLICY_EXT])
                .map_err(|source| FmtError::ReadDir {
                    path: path.clone(),
                    source,
                })?
                .into_iter()
                .filter(|p| p.is_file())
                .collect();
        if found.is_empty() {
            return Err(FmtError::NoFiles { path: path.clone() });
        }
        out.extend(found);
    }
    Ok(out)
}

/// Cedar's layout of a policy file's text; `file` names it in errors.
pub fn format_text(file: &str, text: &str) -> Result<String, FmtError> {
    if let Err(e) = PolicySet::from_str(text) {
        return Err(FmtError::Invalid {
            errors: policy::diagnostic_errors(file, text, &e),
        });
    }
    let config = Config {
        line_width: LINE_WIDTH,
        indent_width: INDENT,
    };
    policies_str_to_pretty(text, &config).map_err(|e| FmtError::Invalid {
        errors: vec![SourceError {
            file: file.to_owned(),
            line: None,
            column: None,
            message: e
                .chain()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": "),
        }],
    })
}

/// Formats one file: `Ok(true)` when the formatted text differs from the file's. Unless
/// `check`, a changed file is rewritten atomically (a temporary file renamed over it, so a
/// watching daemon never reads half a file); a symlink is followed and kept.
pub fn format_file(path: &Path, check: bool) -> Result<bool, FmtError> {
    let text = std::fs::read_to_string(path).map_err(|source| FmtError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let formatted = format_text(&path.display().to_string(), &text)?;
    if formatted == text {
        return Ok(false);
    }
    if !check {
        replace(path, &formatted).map_err(|source| FmtError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(true)
}

/// Writes `text` to a hidden temporary file beside the real file, with its permissions, and
/// renames it over the real file.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let target = std::fs::canonicalize(path)?;
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("the file has no parent directory"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".policyd-fmt-")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file()
        .set_permissions(std::fs::metadata(&target)?.permissions())?;
    tmp.as_file().sync_all()?;
    tmp.persist(&target).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_keeps_comments_and_annotations() {
        let messy =
            "// keep me\n@id(\"a\")   permit(principal,action,resource)when{ 1==1 } ; // and me\n";
        let out = format_text("x.cedar", messy).unwrap();
        assert!(out.contains("// keep me"), "{out}");
        assert!(out.contains("// and me"), "{out}");
        assert!(out.contains("@id(\"a\")"), "{out}");
        assert_ne!(out, messy);
        assert_eq!(format_text("x.cedar", &out).unwrap(), out, "idempotent");
    }

    #[test]
    fn invalid_text_is_located() {
        let err = format_text(
            "bad.cedar",
            "\npermit(principal, action, resource) when { 1 + };",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("bad.cedar:2:"), "{err}");
    }
}

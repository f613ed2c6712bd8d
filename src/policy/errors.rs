//! Errors of policy loading, located by file, line and column as precisely as Cedar reports them.

use std::fmt;
use std::path::PathBuf;

use miette::Diagnostic;

/// A problem in one policy source, located as precisely as Cedar reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// File name relative to the policy directory (empty for directory-level problems).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.line, self.column) {
            (true, _, _) => write!(f, "{}", self.message),
            (false, Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (false, Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Why a policy directory could not be turned into a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory itself could not be listed.
    #[error("cannot read policy directory {}: {source}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// One or more sources failed to read, parse or validate; nothing was loaded.
    #[error("policy sources are invalid ({} error(s))", .0.len())]
    Invalid(Vec<SourceError>),
}

impl LoadError {
    /// Every problem, one per line-able entry.
    pub fn errors(&self) -> Vec<SourceError> {
        match self {
            LoadError::ReadDir { .. } => vec![SourceError {
                file: String::new(),
                line: None,
                column: None,
                message: self.to_string(),
            }],
            LoadError::Invalid(errs) => errs.clone(),
        }
    }
}

pub(super) fn file_error(file: &str, message: String) -> SourceError {
    SourceError {
        file: file.to_owned(),
        line: None,
        column: None,
        message,
    }
}

/// Turns a Cedar diagnostic (and its related diagnostics) into located errors.
pub(crate) fn diagnostic_errors(file: &str, text: &str, diag: &dyn Diagnostic) -> Vec<SourceError> {
    let mut out = Vec::new();
    let related: Vec<&dyn Diagnostic> = diag.related().map(|r| r.collect()).unwrap_or_default();
    let all: Vec<&dyn Diagnostic> = if related.is_empty() {
        vec![diag]
    } else {
        related
    };
    for d in all {
        let offset = d
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|l| l.offset());
        let (line, column) = match offset {
            Some(o) => {
                let (l, c) = line_col(text, o);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        let mut message = d.to_string();
        if let Some(help) = d.help() {
            message.push_str(&format!(" ({help})"));
        }
        out.push(SourceError {
            file: file.to_owned(),
            line,
            column,
            message,
        });
    }
    out
}

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncé", 6), (2, 3));
        assert_eq!(line_col("", 0), (1, 1));
    }
}

//! Strict validation of a policy set against its schema, reported as Cedar's validator reports
//! it: every error and every warning, each with Cedar's message and help, located by file, line
//! and column from Cedar's source spans.

use std::collections::HashMap;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::SourceError;
use super::errors::diagnostic_errors;

/// What strict validation reported.
#[derive(Debug, Default)]
pub(super) struct Validation {
    /// Validation errors: the set is refused when there is any.
    pub(super) errors: Vec<SourceError>,
    /// Validation warnings: reported, the set still loads.
    pub(super) warnings: Vec<SourceError>,
}

/// Strictly validates `policies` against `schema`. `files_by_id` names each policy's file and
/// `texts` holds each file's text, for locations.
pub(super) fn validate(
    schema: &Schema,
    policies: &PolicySet,
    files_by_id: &HashMap<String, String>,
    texts: &HashMap<&str, &str>,
) -> Validation {
    let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    let locate = |id: &PolicyId| {
        let file = files_by_id
            .get(AsRef::<str>::as_ref(id))
            .cloned()
            .unwrap_or_default();
        let text = texts.get(file.as_str()).copied().unwrap_or("");
        (file, text)
    };
    let mut out = Validation::default();
    // Cedar's messages already name the policy.
    for e in result.validation_errors() {
        let (file, text) = locate(e.policy_id());
        out.errors.extend(diagnostic_errors(&file, text, e));
    }
    for w in result.validation_warnings() {
        let (file, text) = locate(w.policy_id());
        out.warnings.extend(diagnostic_errors(&file, text, w));
    }
    sort(&mut out.errors);
    sort(&mut out.warnings);
    out
}

/// Orders diagnostics by where they are, so a report reads top to bottom, file by file.
pub(super) fn sort(diagnostics: &mut [SourceError]) {
    diagnostics.sort_by(|a, b| {
        (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message))
    });
}

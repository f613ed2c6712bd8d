//! The policy test file: JSON, kept beside the policies (`policies/tests/*.json`).
//!
//! ```json
//! {
//!   "description": "optional",
//!   "entities": [ Cedar entity JSON, as PUT /v1/entities takes ],
//!   "entity_files": [ "paths/relative/to/this/file.json" ],
//!   "cases": [
//!     {
//!       "name": "carol views a dataset of the shared project",
//!       "request": { "principal": "User::\"carol\"", "action": {"type": "Action", "id": "view"},
//!                    "resource": "Dataset::\"speech-audio\"", "context": {} },
//!       "expect": { "decision": "Allow", "reasons": ["shared.content"], "errors": 0 }
//!     }
//!   ]
//! }
//! ```
//!
//! `request` is the body of `POST /v1/is_authorized`. `reasons` (the ids of the determining
//! policies, in any order) and `errors` (how many policy evaluation errors) are checked only
//! when given. Unknown fields are errors, so a misspelt expectation never passes silently.

use std::collections::HashSet;
use std::path::Path;

use cedar_policy::EntityUid;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::Value;

/// One test file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// What the file tests; not checked.
    #[serde(default)]
    pub description: Option<String>,
    /// Entities written into the file's store, as a Cedar entities JSON array.
    #[serde(default)]
    pub entities: Option<Value>,
    /// Files of Cedar entities JSON arrays, relative to the test file, written too.
    #[serde(default)]
    pub entity_files: Vec<String>,
    /// The cases, decided in order against one store.
    pub cases: Vec<Case>,
}

/// One case: a decision request and what it must decide.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique within the file; names the case in failures and in the JUnit report.
    pub name: String,
    /// The request, as `POST /v1/is_authorized` takes it.
    pub request: Request,
    /// The expected answer.
    pub expect: Expect,
}

/// A decision request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// `{"type", "id"}` or a Cedar uid string.
    pub principal: Uid,
    /// `{"type", "id"}` or a Cedar uid string.
    pub action: Uid,
    /// `{"type", "id"}` or a Cedar uid string.
    pub resource: Uid,
    /// Cedar context JSON.
    #[serde(default)]
    pub context: Option<Value>,
}

/// What a case must decide.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `Allow` or `Deny`.
    pub decision: Verdict,
    /// The determining policy ids, in any order; not checked when absent.
    #[serde(default)]
    pub reasons: Option<Vec<String>>,
    /// How many policy evaluation errors; not checked when absent.
    #[serde(default)]
    pub errors: Option<usize>,
}

/// A decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

impl Verdict {
    /// The verdict of an `allowed` flag.
    pub fn of(allowed: bool) -> Verdict {
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// `Allow` or `Deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "Allow",
            Verdict::Deny => "Deny",
        }
    }
}

/// An entity uid: `{"type": "User", "id": "alice"}` or the Cedar text `User::"alice"`, read
/// exactly as the HTTP API reads it.
#[derive(Debug, Clone)]
pub struct Uid(pub EntityUid);

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let shapes = r#"expected an entity uid: {"type": string, "id": string} or a string like User::"alice""#;
        match Value::deserialize(deserializer)? {
            Value::String(text) => crate::uid::from_text(&text)
                .map(Uid)
                .map_err(|e| de::Error::custom(format!("`{text}` is not a Cedar entity uid: {e}"))),
            Value::Object(map) => {
                let field = |name: &str| map.get(name).and_then(Value::as_str);
                match (field("type"), field("id"), map.len()) {
                    (Some(ty), Some(id), 2) => crate::uid::from_parts(ty, id)
                        .map(Uid)
                        .map_err(de::Error::custom),
                    _ => Err(de::Error::custom(shapes)),
                }
            }
            _ => Err(de::Error::custom(shapes)),
        }
    }
}

/// Why a test file cannot be read as one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FormatError {
    /// What is wrong, naming the field (`cases[2].expect.decision: ...`).
    pub message: String,
}

/// Parses a test file's text, refusing unknown fields, duplicate case names and no cases.
pub fn parse(text: &str) -> Result<TestFile, FormatError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let file: TestFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        FormatError {
            message: if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            },
        }
    })?;
    de.end().map_err(|e| FormatError {
        message: format!("trailing characters after the test object: {e}"),
    })?;
    if file.cases.is_empty() {
        return Err(FormatError {
            message: "cases: no case to run".to_owned(),
        });
    }
    let mut names = HashSet::new();
    for (i, case) in file.cases.iter().enumerate() {
        if !names.insert(case.name.as_str()) {
            return Err(FormatError {
                message: format!("cases[{i}].name: `{}` names an earlier case too", case.name),
            });
        }
    }
    Ok(file)
}

/// Where an entity file named in a test file is: relative to the test file's directory.
pub fn entity_file_path(test_file: &Path, name: &str) -> std::path::PathBuf {
    test_file
        .parent()
        .unwrap_or_else(|| Path::new(""))
        .join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_uid_shapes_and_optional_expectations() {
        let file = parse(
            r#"{"cases": [{"name": "a", "request": {"principal": "User::\"alice\"",
                "action": {"type": "Action", "id": "view"}, "resource": {"type": "Project", "id": ""}},
                "expect": {"decision": "Deny"}}]}"#,
        )
        .unwrap();
        let case = &file.cases[0];
        assert_eq!(case.request.principal.0.to_string(), r#"User::"alice""#);
        assert_eq!(case.request.resource.0.id().unescaped(), "");
        assert_eq!(case.expect.decision, Verdict::Deny);
        assert!(case.expect.reasons.is_none() && case.expect.errors.is_none());
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        let cases = [
            (
                r#"{"cases": [{"name": "a", "request": {"principal": "User::\"a\"", "action": "Action::\"view\"", "resource": "Project::\"p\""}, "expect": {"decision": "allow"}}]}"#,
                "cases[0].expect.decision",
            ),
            (
                r#"{"cases": [{"name": "a", "request": {"principal": "nope", "action": "Action::\"view\"", "resource": "Project::\"p\""}, "expect": {"decision": "Allow"}}]}"#,
                "cases[0].request.principal",
            ),
            (
                r#"{"cases": [{"name": "a", "request": {"principal": "User::\"a\"", "action": "Action::\"view\"", "resource": "Project::\"p\""}, "expect": {"decision": "Allow", "reason": []}}]}"#,
                "cases[0].expect",
            ),
            (r#"{"cases": []}"#, "cases: no case"),
            (
                r#"{"cases": [{"name": "a", "request": {"principal": "User::\"a\"", "action": "Action::\"view\"", "resource": "Project::\"p\""}, "expect": {"decision": "Allow"}},
                           {"name": "a", "request": {"principal": "User::\"a\"", "action": "Action::\"view\"", "resource": "Project::\"p\""}, "expect": {"decision": "Allow"}}]}"#,
                "cases[1].name",
            ),
            (r#"{"cases": [] } trailing"#, "trailing"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}

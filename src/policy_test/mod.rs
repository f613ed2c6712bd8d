//! `policyd test`: policy test files (see [`file`] for the format), decided exactly as `serve`
//! decides.
//!
//! The policies are loaded by [`policy::load_dir`] (the same parsing and strict validation).
//! Each test file gets its own store, a real SQLite file in a temporary directory, into which
//! its entities are written through the same validation as `PUT /v1/entities`; each case is
//! prepared by [`authz::prepare`] and decided by [`engine::decide_blocking`] (the same request
//! validation, entity slicing and policy scoping as the daemon).
//!
//! A case fails when its decision, reasons or error count differ from what it expects, or when
//! its request is refused (the API would answer 400). A file that cannot be run (malformed,
//! entities that do not validate, a store error) is an error, not a failure.

mod file;
pub mod junit;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cedar_policy::EntityUid;

use crate::authz;
use crate::engine::{self, EngineError};
use crate::policy::PolicySnapshot;
use crate::store::codec::{self, EntityError};
use crate::store::sqlite::SqliteStore;
use crate::store::{Record, Store, StoreError};
pub use file::{Case, Expect, FormatError, TestFile, Verdict};

/// Where test files are looked for when no path is given, inside the policy directory.
pub const TESTS_DIR: &str = "tests";

/// Memory for resolved entities per test file's store.
const CACHE: u64 = 16 << 20;

/// Why a test file could not be run.
#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    /// A file or directory could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a test file.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// An entity file is not JSON.
    #[error("{}: entity file {}: malformed JSON: {source}", path.display(), entities.display())]
    EntityJson {
        /// The test file.
        path: PathBuf,
        /// The entity file.
        entities: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An entity does not validate against the schema.
    #[error("{}: {origin}: {source}", path.display())]
    Entity {
        /// The test file.
        path: PathBuf,
        /// `entities`, or the entity file.
        origin: String,
        /// The entity's problem.
        #[source]
        source: EntityError,
    },
    /// The same entity is given twice.
    #[error("{}: entity {uid} is given in both {first} and {second}", path.display())]
    Duplicate {
        /// The test file.
        path: PathBuf,
        /// The entity.
        uid: String,
        /// Where it came first.
        first: String,
        /// Where it came again.
        second: String,
    },
    /// The store refused the entities (a cycle in the hierarchy) or failed.
    #[error("{}: store: {source}", path.display())]
    Store {
        /// The test file.
        path: PathBuf,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Deciding failed: never a decision.
    #[error("{}: case `{case}`: {source}", path.display())]
    Engine {
        /// The test file.
        path: PathBuf,
        /// The case being decided.
        case: String,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// The engine answered no decision for a case (never taken as one).
    #[error("{}: case `{case}`: no decision was made", path.display())]
    NoDecision {
        /// The test file.
        path: PathBuf,
        /// The case.
        case: String,
    },
    /// No test file was found.
    #[error("no *.json test files in {}", path.display())]
    NoFiles {
        /// Where they were looked for.
        path: PathBuf,
    },
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
    /// The determining policies of its decision (empty when the request was refused).
    pub reasons: Vec<String>,
    /// How long preparing and deciding took.
    pub elapsed: Duration,
}

/// The outcome of one test file.
#[derive(Debug)]
pub struct FileResult {
    /// The file, as found.
    pub path: PathBuf,
    /// Its cases in order, or why it could not be run.
    pub cases: Result<Vec<CaseResult>, TestFileError>,
    /// How long the whole file took.
    pub elapsed: Duration,
}

/// Every file's outcome.
#[derive(Debug, Default)]
pub struct Report {
    /// In the order the files were given.
    pub files: Vec<FileResult>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.cases().filter(|(_, c)| c.failure.is_none()).count()
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.cases().filter(|(_, c)| c.failure.is_some()).count()
    }

    /// `FAIL file:case: why`, one per failing case.
    pub fn failure_lines(&self) -> Vec<String> {
        self.cases()
            .filter_map(|(path, c)| {
                let why = c.failure.as_ref()?;
                Some(format!("FAIL {}:{}: {why}", path.display(), c.name))
            })
            .collect()
    }

    /// Why each file that could not be run could not.
    pub fn file_errors(&self) -> Vec<&TestFileError> {
        self.files
            .iter()
            .filter_map(|f| f.cases.as_ref().err())
            .collect()
    }

    /// `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }

    /// 0 when every case of every file passed, 1 when a case failed, 2 when a file could not
    /// be run.
    pub fn exit_code(&self) -> u8 {
        if !self.file_errors().is_empty() {
            2
        } else if self.failed() > 0 {
            1
        } else {
            0
        }
    }

    fn cases(&self) -> impl Iterator<Item = (&Path, &CaseResult)> {
        self.files
            .iter()
            .flat_map(|f| f.cases.iter().flatten().map(move |c| (f.path.as_path(), c)))
    }
}

/// The test files to run: each path that is a file, the `*.json` files of each path that is
/// a directory (sorted); with no path, those of `<policies>/tests`.
pub fn discover(policies: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>, TestFileError> {
    let defaults = [policies.join(TESTS_DIR)];
    if paths.is_empty() && !defaults[0].is_dir() {
        return Err(TestFileError::NoFiles {
            path: defaults[0].clone(),
        });
    }
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
        let found = crate::dir::files_with_extension(path, &["json"]).map_err(|source| {
            TestFileError::Read {
                path: path.clone(),
                source,
            }
        })?;
        if found.is_empty() {
            return Err(TestFileError::NoFiles { path: path.clone() });
        }
        out.extend(found);
    }
    Ok(out)
}

/// Runs every file against `snapshot`.
pub fn run(snapshot: &PolicySnapshot, files: &[PathBuf]) -> Report {
    Report {
        files: files.iter().map(|f| run_file(snapshot, f)).collect(),
    }
}

/// Runs one file: its entities into a fresh store, then each case.
pub fn run_file(snapshot: &PolicySnapshot, path: &Path) -> FileResult {
    let started = Instant::now();
    let cases = run_cases(snapshot, path);
    FileResult {
        path: path.to_path_buf(),
        cases,
        elapsed: started.elapsed(),
    }
}

fn run_cases(snapshot: &PolicySnapshot, path: &Path) -> Result<Vec<CaseResult>, TestFileError> {
    let read_err = |source| TestFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let test = file::parse(&text).map_err(|source| TestFileError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    let records = entities(snapshot, path, &test)?;
    let store_err = |source| TestFileError::Store {
        path: path.to_path_buf(),
        source,
    };
    let dir = tempfile::tempdir().map_err(|e| {
        store_err(StoreError::Open {
            path: std::env::temp_dir().display().to_string(),
            message: format!("cannot create a temporary directory: {e}"),
        })
    })?;
    let backend = SqliteStore::open(&dir.path().join("entities.db")).map_err(store_err)?;
    let store = Store::new(Box::new(backend), CACHE, 0);
    store.upsert(&records).map_err(store_err)?;
    test.cases
        .into_iter()
        .map(|case| run_case(snapshot, &store, path, case))
        .collect()
}

/// The file's entities, inline then from each entity file, validated as `PUT /v1/entities`
/// validates them; an entity given twice is an error.
fn entities(
    snapshot: &PolicySnapshot,
    path: &Path,
    test: &TestFile,
) -> Result<Vec<Record>, TestFileError> {
    let schema = snapshot.schema.as_ref();
    let mut batches: Vec<(String, serde_json::Value)> = Vec::new();
    if let Some(inline) = &test.entities {
        batches.push(("entities".to_owned(), inline.clone()));
    }
    for name in &test.entity_files {
        let entities = file::entity_file_path(path, name);
        let text = std::fs::read_to_string(&entities).map_err(|source| TestFileError::Read {
            path: entities.clone(),
            source,
        })?;
        let value = serde_json::from_str(&text).map_err(|source| TestFileError::EntityJson {
            path: path.to_path_buf(),
            entities: entities.clone(),
            source,
        })?;
        batches.push((format!("entity file {}", entities.display()), value));
    }
    let mut records = Vec::new();
    let mut origin: HashMap<EntityUid, String> = HashMap::new();
    for (from, value) in batches {
        let parsed = codec::parse_batch(value, schema).map_err(|source| TestFileError::Entity {
            path: path.to_path_buf(),
            origin: from.clone(),
            source,
        })?;
        for record in parsed {
            if let Some(first) = origin.get(&record.uid) {
                return Err(TestFileError::Duplicate {
                    path: path.to_path_buf(),
                    uid: record.uid.to_string(),
                    first: first.clone(),
                    second: from,
                });
            }
            origin.insert(record.uid.clone(), from.clone());
            records.push(record);
        }
    }
    Ok(records)
}

fn run_case(
    snapshot: &PolicySnapshot,
    store: &Store,
    path: &Path,
    case: Case,
) -> Result<CaseResult, TestFileError> {
    let started = Instant::now();
    let request = case.request;
    let prepared = authz::prepare(
        snapshot,
        request.principal.0,
        request.action.0,
        request.resource.0,
        request.context,
    );
    let query = match prepared {
        Ok(query) => query,
        Err(refused) => {
            return Ok(CaseResult {
                failure: Some(format!(
                    "expected {}, got a refused request ({refused})",
                    expected(&case.expect)
                )),
                name: case.name,
                reasons: Vec::new(),
                elapsed: started.elapsed(),
            });
        }
    };
    let outcome = engine::decide_blocking(store, snapshot, std::slice::from_ref(&query))
        .map_err(|source| TestFileError::Engine {
            path: path.to_path_buf(),
            case: case.name.clone(),
            source,
        })?
        .pop();
    let Some(decision) = outcome.map(|o| o.decision) else {
        return Err(TestFileError::NoDecision {
            path: path.to_path_buf(),
            case: case.name,
        });
    };
    let got = Verdict::of(decision.allowed);
    let expect = &case.expect;
    let mut want_reasons = expect.reasons.clone();
    if let Some(r) = &mut want_reasons {
        r.sort();
        r.dedup();
    }
    let matches = got == expect.decision
        && want_reasons.as_ref().is_none_or(|r| *r == decision.reasons)
        && expect.errors.is_none_or(|n| n == decision.errors.len());
    let failure = (!matches).then(|| {
        let mut got_text = format!("{} [{}]", got.as_str(), decision.reasons.join(", "));
        if !decision.errors.is_empty() || expect.errors.is_some() {
            got_text.push_str(&format!(" with {}", errors(decision.errors.len())));
            if !decision.errors.is_empty() {
                got_text.push_str(&format!(" ({})", decision.errors.join("; ")));
            }
        }
        format!("expected {}, got {got_text}", expected(expect))
    });
    Ok(CaseResult {
        name: case.name,
        failure,
        reasons: decision.reasons,
        elapsed: started.elapsed(),
    })
}

/// `Allow [a, b] with 0 errors`: only what the case checks.
fn expected(expect: &Expect) -> String {
    let mut text = expect.decision.as_str().to_owned();
    if let Some(reasons) = &expect.reasons {
        let mut reasons = reasons.clone();
        reasons.sort();
        reasons.dedup();
        text.push_str(&format!(" [{}]", reasons.join(", ")));
    }
    if let Some(n) = expect.errors {
        text.push_str(&format!(" with {}", errors(n)));
    }
    text
}

fn errors(n: usize) -> String {
    if n == 1 {
        "1 error".to_owned()
    } else {
        format!("{n} errors")
    }
}

//! Policy loading: read the Cedar sources of a directory, parse and validate them, and freeze the
//! result as one immutable [`PolicySnapshot`].
//!
//! `serve`, `check` and every reload go through [`load_dir`], so what `check` accepts is exactly
//! what the daemon will serve.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::SystemTime;

use std::sync::Arc;

use cedar_policy::{Effect, Entity, EntityUid, PolicyId, PolicySet, Schema};
use cedar_policy_core::ast;
use sha2::{Digest, Sha256};

pub mod conditions;
mod errors;
pub mod scope;
pub mod slicing;
mod validate;

pub(crate) use errors::diagnostic_errors;
use errors::file_error;
pub use errors::{LoadError, SourceError};
pub use slicing::{Proof, Slicing};

/// The extension of policy files.
pub(crate) const POLICY_EXT: &str = "cedar";
const SCHEMA_EXT: &str = "cedarschema";

/// One loaded policy as the API reports it.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    /// Stable id: the `@id` annotation, else `<file stem>.<n>`.
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: Effect,
    /// File name (relative to the policy directory) the policy came from.
    pub file: String,
    /// The 1-based line of the file where the policy starts.
    pub line: usize,
}

/// Policies and schema that were loaded and validated together; never mutated once built.
pub struct PolicySnapshot {
    /// The policy set, with ids rewritten to [`PolicyInfo::id`].
    pub policies: PolicySet,
    /// The schema, when the directory has one.
    pub schema: Option<Schema>,
    /// Hex sha256 over the file names and contents that produced this snapshot.
    pub revision: Arc<str>,
    /// Hex sha256 of the schema file's content: tells a reload whether the schema changed.
    pub schema_revision: Option<String>,
    /// Policies in file order, then position within the file.
    pub infos: Vec<PolicyInfo>,
    /// How far a decision's entity slice reaches, and what proved it (see [`slicing`]).
    pub slicing: Slicing,
    /// The depth handed to the store's slicer: [`Slicing::depth`], `None` (to a fixed point) in
    /// reachable mode.
    pub deref_depth: Option<u32>,
    /// Which references of a sliced entity the slicer follows (see [`slicing::Follow`]).
    pub follow: slicing::Follow,
    /// Warnings from parsing the schema and validating the policies, located.
    pub warnings: Vec<SourceError>,
    /// When the snapshot was built.
    pub loaded_at: SystemTime,
    /// Each schema action with its action-group ancestors, ready to join a decision's entities.
    actions: HashMap<EntityUid, Vec<Arc<ast::Entity>>>,
    /// See [`PolicySnapshot::literal_roots`].
    literal_roots: Vec<EntityUid>,
    /// See [`PolicySnapshot::literal_actions`].
    literal_actions: Vec<EntityUid>,
    /// The policies whose scope can match each request shape seen.
    scopes: scope::Scopes,
}

impl fmt::Debug for PolicySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySnapshot")
            .field("revision", &self.revision)
            .field("policies", &self.infos.len())
            .field("schema", &self.schema.is_some())
            .field("slicing", &self.slicing)
            .finish()
    }
}

impl PolicySnapshot {
    /// The action entity and its action groups, as declared by the schema.
    ///
    /// `None` when there is no schema (actions then live in the entity store) or the schema does
    /// not declare the action.
    pub fn action_entities(&self, action: &EntityUid) -> Option<&[Arc<ast::Entity>]> {
        self.actions.get(action).map(Vec::as_slice)
    }

    /// The shape of a request of these principal, action and resource: the policies that can
    /// apply to it (see [`scope`]).
    pub fn shape(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
    ) -> Arc<scope::Shape> {
        self.scopes.shape(
            &self.policies,
            &self.actions,
            self.schema.as_ref(),
            principal,
            action,
            resource,
        )
    }

    /// The entity literals the policies dereference that a decision's slice starts from, besides
    /// the request's roots (reachable mode only): those the store holds, not schema actions.
    pub fn literal_roots(&self) -> &[EntityUid] {
        &self.literal_roots
    }

    /// The dereferenced entity literals that are schema actions: decisions add them (with
    /// their groups) from the schema, like the request's action.
    pub fn literal_actions(&self) -> &[EntityUid] {
        &self.literal_actions
    }

    /// Whether `action` is declared by the loaded schema.
    pub fn declares_action(&self, action: &EntityUid) -> bool {
        self.actions.contains_key(action)
    }
}

/// The raw text of every source in a policy directory, sorted by file name.
struct Sources {
    policies: Vec<(String, String)>,
    schema: Option<(String, String)>,
}

/// Reads, parses and validates every policy source in `dir` into a snapshot.
///
/// All-or-nothing: any error in any file refuses the whole set.
pub fn load_dir(dir: &Path) -> Result<PolicySnapshot, LoadError> {
    load(dir, &mut Vec::new())
}

/// [`load_dir`], and the warnings of the schema parser and the validator, which are reported
/// whether or not the set is valid: what `policyd check` prints.
pub fn check_dir(dir: &Path) -> (Result<PolicySnapshot, LoadError>, Vec<SourceError>) {
    let mut warnings = Vec::new();
    let loaded = load(dir, &mut warnings);
    (loaded, warnings)
}

fn load(dir: &Path, warnings: &mut Vec<SourceError>) -> Result<PolicySnapshot, LoadError> {
    let sources = read_sources(dir)?;
    let mut errors = Vec::new();

    let schema =
        sources
            .schema
            .as_ref()
            .and_then(|(file, text)| match Schema::from_cedarschema_str(text) {
                Ok((schema, schema_warnings)) => {
                    for w in schema_warnings {
                        warnings.extend(diagnostic_errors(file, text, &w));
                    }
                    Some(schema)
                }
                Err(e) => {
                    errors.extend(diagnostic_errors(file, text, &e));
                    None
                }
            });

    let mut policies = PolicySet::new();
    let mut infos = Vec::new();
    let mut files_by_id: HashMap<String, String> = HashMap::new();
    for (file, text) in &sources.policies {
        parse_file(
            file,
            text,
            &mut policies,
            &mut infos,
            &mut files_by_id,
            &mut errors,
        );
    }
    if sources.schema.is_some() && schema.is_none() {
        // The schema failed to parse: its errors are already recorded, and validating against
        // nothing would only add noise.
        return Err(LoadError::Invalid(errors));
    }
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }

    let texts: HashMap<&str, &str> = sources
        .policies
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    if let Some(schema) = &schema {
        let validation = validate::validate(schema, &policies, &files_by_id, &texts);
        warnings.extend(validation.warnings);
        if !validation.errors.is_empty() {
            return Err(LoadError::Invalid(validation.errors));
        }
    }
    let actions = match &schema {
        Some(schema) => action_closures(schema)?,
        None => HashMap::new(),
    };
    let (slicing, follow) = slicing::plan(schema.as_ref(), &policies);
    let (literal_actions, literal_roots) = slicing
        .literals()
        .iter()
        .cloned()
        .partition(|uid| actions.contains_key(uid));

    Ok(PolicySnapshot {
        policies,
        schema,
        revision: revision(&sources).into(),
        schema_revision: sources
            .schema
            .as_ref()
            .map(|(_, text)| hex_sha256(text.as_bytes())),
        infos,
        deref_depth: slicing.depth(),
        follow,
        slicing,
        warnings: warnings.clone(),
        loaded_at: SystemTime::now(),
        actions,
        literal_roots,
        literal_actions,
        scopes: scope::Scopes::default(),
    })
}

fn read_sources(dir: &Path) -> Result<Sources, LoadError> {
    let paths =
        crate::dir::files_with_extension(dir, &[POLICY_EXT, SCHEMA_EXT]).map_err(|source| {
            LoadError::ReadDir {
                path: dir.to_path_buf(),
                source,
            }
        })?;

    let mut errors = Vec::new();
    let mut policies = Vec::new();
    let mut schemas = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // `read_to_string` follows symlinks, which is what ConfigMap mounts need.
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(file_error(&name, format!("cannot read file: {e}")));
                continue;
            }
        };
        if name.ends_with(SCHEMA_EXT) {
            schemas.push((name, text));
        } else {
            policies.push((name, text));
        }
    }
    if schemas.len() > 1 {
        let names: Vec<&str> = schemas.iter().map(|(n, _)| n.as_str()).collect();
        errors.push(file_error(
            "",
            format!("more than one schema file: {}", names.join(", ")),
        ));
    }
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    Ok(Sources {
        policies,
        schema: schemas.pop(),
    })
}

/// Parses one file and adds its policies under their stable ids.
fn parse_file(
    file: &str,
    text: &str,
    policies: &mut PolicySet,
    infos: &mut Vec<PolicyInfo>,
    files_by_id: &mut HashMap<String, String>,
    errors: &mut Vec<SourceError>,
) {
    let parsed = match PolicySet::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            errors.extend(diagnostic_errors(file, text, &e));
            return;
        }
    };
    if parsed.templates().next().is_some() {
        errors.push(file_error(
            file,
            "templates are not supported; write static policies".to_owned(),
        ));
        return;
    }
    // Cedar names parsed policies `policy0, policy1, ...` by position; recover that order so
    // fallback ids count policies as they appear in the file.
    let mut in_order: BTreeMap<usize, &cedar_policy::Policy> = BTreeMap::new();
    for p in parsed.policies() {
        let pos = p
            .id()
            .to_string()
            .strip_prefix("policy")
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX);
        in_order.insert(pos, p);
    }
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (n, policy) in in_order.values().enumerate() {
        let id = match policy.annotation("id") {
            Some(id) => id.to_owned(),
            None => format!("{stem}.{n}"),
        };
        if let Some(first) = files_by_id.get(&id) {
            errors.push(file_error(
                file,
                format!("duplicate policy id `{id}` (first defined in {first})"),
            ));
            continue;
        }
        let renamed = policy.new_id(PolicyId::new(&id));
        if let Err(e) = policies.add(renamed) {
            errors.push(file_error(file, format!("policy `{id}`: {e}")));
            continue;
        }
        files_by_id.insert(id.clone(), file.to_owned());
        // Cedar keeps each parsed policy's source span (through its doc(hidden) AST bridge).
        let start = AsRef::<cedar_policy_core::ast::Policy>::as_ref(policy)
            .loc()
            .map_or(0, |loc| loc.start());
        infos.push(PolicyInfo {
            id,
            effect: policy.effect(),
            file: file.to_owned(),
            line: errors::line_col(text, start).0,
        });
    }
}

/// Maps every schema action to itself plus its action-group ancestors (each with its ancestor
/// closure, as the schema computes it).
fn action_closures(
    schema: &Schema,
) -> Result<HashMap<EntityUid, Vec<Arc<ast::Entity>>>, LoadError> {
    let actions = schema
        .action_entities()
        .map_err(|e| LoadError::Invalid(vec![file_error("", format!("schema actions: {e}"))]))?;
    let by_uid: HashMap<EntityUid, &Entity> = actions.iter().map(|e| (e.uid(), e)).collect();
    let mut out = HashMap::new();
    let core = |e: &Entity| Arc::new(AsRef::<ast::Entity>::as_ref(e).clone());
    for (uid, entity) in &by_uid {
        let mut closure = vec![core(entity)];
        let mut seen: HashSet<EntityUid> = HashSet::from([uid.clone()]);
        if let Some(ancestors) = actions.ancestors(uid) {
            for a in ancestors {
                if seen.insert(a.clone())
                    && let Some(e) = by_uid.get(a)
                {
                    closure.push(core(e));
                }
            }
        }
        out.insert(uid.clone(), closure);
    }
    Ok(out)
}

fn revision(sources: &Sources) -> String {
    let mut hasher = Sha256::new();
    for (name, text) in sources.schema.iter().chain(&sources.policies) {
        // Length prefixes keep `a` + `bc` distinct from `ab` + `c`.
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    hex(&hasher.finalize())
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// The bundled policies read a resource's project and a project's organization, nothing
    /// else: a dataset's owner, only compared with the principal, stays out of its slice.
    #[test]
    fn the_bundled_policies_follow_only_project_and_org() {
        let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let snap = load_dir(&bundled).unwrap();
        assert_eq!(snap.deref_depth, Some(2));
        let names = vec!["org".into(), "project".into()];
        let tags = false;
        assert_eq!(snap.follow, slicing::Follow::Attributes { names, tags });
    }

    #[test]
    fn fallback_ids_follow_file_position_and_annotations_win() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "rules.cedar",
            "permit(principal, action, resource);\n@id(\"named\") forbid(principal, action, resource);\npermit(principal, action, resource) when { false };",
        );
        let snap = load_dir(dir.path()).unwrap();
        let ids: Vec<&str> = snap.infos.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["rules.0", "named", "rules.2"]);
        // No dereference at all: the request's own entities are enough.
        assert_eq!(snap.deref_depth, Some(1));
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "@id(\"x\") permit(principal, action, resource);",
        );
        write(
            dir.path(),
            "b.cedar",
            "@id(\"x\") permit(principal, action, resource);",
        );
        let err = load_dir(dir.path()).unwrap_err().errors();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].message.contains("duplicate policy id `x`"),
            "{}",
            err[0]
        );
        assert_eq!(err[0].file, "b.cedar");
    }

    #[test]
    fn parse_errors_carry_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "bad.cedar",
            "\n\npermit(principal, action, resource) when { 1 + };",
        );
        let err = load_dir(dir.path()).unwrap_err().errors();
        assert_eq!(err[0].file, "bad.cedar");
        assert_eq!(err[0].line, Some(3));
    }

    #[test]
    fn revision_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "permit(principal, action, resource);",
        );
        let first = load_dir(dir.path()).unwrap().revision;
        write(
            dir.path(),
            "a.cedar",
            "forbid(principal, action, resource);",
        );
        let second = load_dir(dir.path()).unwrap().revision;
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
    }
}

//! The change between two policy sets, environment by environment: equivalent, wider (the new
//! set allows something the old one denied), narrower, or different (both), each direction
//! proved by the solver or shown by a counterexample.

use std::collections::BTreeSet;

use cedar_policy::{PolicySet, RequestEnv, Schema};
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicySet, Env};
use serde::Serialize;

use super::counterexample::{self, Counterexample};
use super::envs::{self, ActionGroups};
use super::{AnalysisError, solver_error};
use crate::policy::PolicySnapshot;

/// What an edit does to one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Both sets decide every request alike.
    Equivalent,
    /// The new set allows requests the old one denied, and denies nothing it allowed.
    Wider,
    /// The new set denies requests the old one allowed, and allows nothing new.
    Narrower,
    /// Both: some requests gained, others lost.
    Different,
    /// Only the new schema allows requests of this shape.
    Added,
    /// Only the old schema allowed requests of this shape.
    Removed,
    /// The schemas differ and neither types both policy sets here.
    NotComparable,
}

/// How the two schemas see one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaState {
    /// The schema file did not change.
    Same,
    /// The schema changed; both versions allow this environment.
    Changed,
    /// Only the old schema allows it.
    FromOnly,
    /// Only the new schema allows it.
    ToOnly,
}

/// The analysis of one (principal type, action, resource type).
#[derive(Debug, Clone, Serialize)]
pub struct EnvChange {
    /// Principal entity type.
    pub principal_type: String,
    /// The action, as a Cedar uid: `Action::"view"`.
    pub action: String,
    /// Resource entity type.
    pub resource_type: String,
    /// The verdict.
    pub change: Change,
    /// How the schemas see it.
    pub schema: SchemaState,
    /// A request the new set allows and the old one does not (`null`: there is none).
    pub widening: Option<Counterexample>,
    /// A request the old set allowed and the new one does not.
    pub narrowing: Option<Counterexample>,
    /// Why it could not be compared, or which schema it was compared under.
    pub note: Option<String>,
}

impl EnvChange {
    /// `User Action::"view" Dataset`.
    pub fn label(&self) -> String {
        format!(
            "{} {} {}",
            self.principal_type, self.action, self.resource_type
        )
    }
}

struct Side<'a> {
    snapshot: &'a PolicySnapshot,
    schema: &'a Schema,
    envs: BTreeSet<RequestEnv>,
    groups: ActionGroups,
}

impl<'a> Side<'a> {
    fn new(snapshot: &'a PolicySnapshot, which: &'static str) -> Result<Self, AnalysisError> {
        let schema = snapshot
            .schema
            .as_ref()
            .ok_or(AnalysisError::NoSchema(which))?;
        Ok(Side {
            snapshot,
            schema,
            envs: envs::request_envs(schema),
            groups: ActionGroups::of(schema)?,
        })
    }

    fn scoped(&self, env: &RequestEnv) -> Result<PolicySet, AnalysisError> {
        envs::set_of(envs::scoped(
            &self.snapshot.policies,
            env,
            &self.groups,
            None,
        )?)
    }
}

/// Compares `from` and `to` in every environment either schema allows.
pub(super) async fn environments(
    from: &PolicySnapshot,
    to: &PolicySnapshot,
    compiler: &mut CedarSymCompiler<LocalSolver>,
) -> Result<Vec<EnvChange>, AnalysisError> {
    let old = Side::new(from, "the old policy set")?;
    let new = Side::new(to, "the new policy set")?;
    let schema_same = from.schema_revision == to.schema_revision;
    let all: BTreeSet<&RequestEnv> = old.envs.iter().chain(new.envs.iter()).collect();
    let mut out = Vec::with_capacity(all.len());
    for env in all {
        let change = match (old.envs.contains(env), new.envs.contains(env)) {
            (true, true) => both(&old, &new, env, schema_same, compiler).await?,
            (false, true) => one_sided(&new, env, Change::Added, compiler).await?,
            _ => one_sided(&old, env, Change::Removed, compiler).await?,
        };
        out.push(change);
    }
    Ok(out)
}

fn blank(env: &RequestEnv, change: Change, schema: SchemaState) -> EnvChange {
    EnvChange {
        principal_type: env.principal().to_string(),
        action: env.action().to_string(),
        resource_type: env.resource().to_string(),
        change,
        schema,
        widening: None,
        narrowing: None,
        note: None,
    }
}

async fn both(
    old: &Side<'_>,
    new: &Side<'_>,
    env: &RequestEnv,
    schema_same: bool,
    compiler: &mut CedarSymCompiler<LocalSolver>,
) -> Result<EnvChange, AnalysisError> {
    let state = if schema_same {
        SchemaState::Same
    } else {
        SchemaState::Changed
    };
    let (f, t) = (old.scoped(env)?, new.scoped(env)?);
    // Requests the new daemon accepts are typed by the new schema; fall back to the old one
    // when the old policies do not type under the new schema.
    let mut note = None;
    let compiled = match compile_pair(&f, &t, env, new.schema) {
        Ok(c) => c,
        Err(e) if schema_same => return Err(e),
        Err(under_new) => match compile_pair(&f, &t, env, old.schema) {
            Ok(c) => {
                note = Some("compared under the old schema".to_owned());
                c
            }
            Err(under_old) => {
                let mut out = blank(env, Change::NotComparable, state);
                out.note = Some(format!(
                    "the policy sets do not both type under either schema: {under_new}; {under_old}"
                ));
                return Ok(out);
            }
        },
    };
    let (cf, ct) = compiled;
    let label = envs::label(env);
    let widening = allowed_but_not(compiler, ct.as_ref(), cf.as_ref(), &label).await?;
    let narrowing = allowed_but_not(compiler, cf.as_ref(), ct.as_ref(), &label).await?;
    let change = match (&widening, &narrowing) {
        (None, None) => Change::Equivalent,
        (Some(_), None) => Change::Wider,
        (None, Some(_)) => Change::Narrower,
        (Some(_), Some(_)) => Change::Different,
    };
    let mut out = blank(env, change, state);
    out.note = note;
    let render = |cex: Option<Env>| {
        cex.map(|c| counterexample::render(&c, Some(old.snapshot), Some(new.snapshot)))
            .transpose()
    };
    out.widening = render(widening)?;
    out.narrowing = render(narrowing)?;
    Ok(out)
}

/// An environment only one schema allows: does that side allow anything in it?
async fn one_sided(
    side: &Side<'_>,
    env: &RequestEnv,
    change: Change,
    compiler: &mut CedarSymCompiler<LocalSolver>,
) -> Result<EnvChange, AnalysisError> {
    let label = envs::label(env);
    let set = side.scoped(env)?;
    let compiled = compile(&set, env, side.schema, &label)?;
    let allowed = allowed_but_not(compiler, compiled.as_ref(), None, &label).await?;
    let (state, mut out) = match change {
        Change::Added => (SchemaState::ToOnly, blank(env, change, SchemaState::ToOnly)),
        _ => (
            SchemaState::FromOnly,
            blank(env, change, SchemaState::FromOnly),
        ),
    };
    let cex = allowed
        .map(|c| match state {
            SchemaState::ToOnly => counterexample::render(&c, None, Some(side.snapshot)),
            _ => counterexample::render(&c, Some(side.snapshot), None),
        })
        .transpose()?;
    match state {
        SchemaState::ToOnly => out.widening = cex,
        _ => out.narrowing = cex,
    }
    Ok(out)
}

type Compiled = Option<CompiledPolicySet>;

fn compile_pair(
    f: &PolicySet,
    t: &PolicySet,
    env: &RequestEnv,
    schema: &Schema,
) -> Result<(Compiled, Compiled), AnalysisError> {
    let label = envs::label(env);
    Ok((
        compile(f, env, schema, &label)?,
        compile(t, env, schema, &label)?,
    ))
}

/// `None` for an empty set (it denies everything).
pub(super) fn compile(
    set: &PolicySet,
    env: &RequestEnv,
    schema: &Schema,
    label: &str,
) -> Result<Compiled, AnalysisError> {
    if set.is_empty() {
        return Ok(None);
    }
    CompiledPolicySet::compile(set, env, schema)
        .map(Some)
        .map_err(|source| AnalysisError::Compile {
            env: label.to_owned(),
            source: Box::new(source),
        })
}

/// A request `a` allows and `b` does not (`None` sets deny everything).
async fn allowed_but_not(
    compiler: &mut CedarSymCompiler<LocalSolver>,
    a: Option<&CompiledPolicySet>,
    b: Option<&CompiledPolicySet>,
    label: &str,
) -> Result<Option<Env>, AnalysisError> {
    let result = match (a, b) {
        (None, _) => return Ok(None),
        (Some(a), None) => {
            compiler
                .check_always_denies_with_counterexample_opt(a)
                .await
        }
        (Some(a), Some(b)) => compiler.check_implies_with_counterexample_opt(a, b).await,
    };
    result.map_err(|e| solver_error(label, e))
}

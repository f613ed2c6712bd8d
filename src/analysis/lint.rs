//! Lints for `policyd check`: a policy that can never match a valid request (dead), and a
//! permit whose every grant is overridden by a forbid (shadowed).

use cedar_policy::{Effect, Policy, RequestEnv};
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet};
use serde::Serialize;

use super::envs::{self, ActionGroups};
use super::{AnalysisError, solver_error};
use crate::policy::PolicySnapshot;

/// What is wrong with a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LintKind {
    /// It matches no request the schema allows.
    Dead,
    /// A permit all of whose grants a forbid overrides.
    Shadowed,
}

/// One warning about one policy.
#[derive(Debug, Clone, Serialize)]
pub struct Lint {
    /// Dead or shadowed.
    pub kind: LintKind,
    /// The policy id.
    pub policy: String,
    /// Its file, relative to the policy directory.
    pub file: String,
    /// The 1-based line it starts on.
    pub line: usize,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for Lint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Every lint of `snapshot`, in file order.
pub(super) async fn lints(
    snapshot: &PolicySnapshot,
    compiler: &mut CedarSymCompiler<LocalSolver>,
) -> Result<Vec<Lint>, AnalysisError> {
    let schema = snapshot
        .schema
        .as_ref()
        .ok_or(AnalysisError::NoSchema("the policy set"))?;
    let groups = ActionGroups::of(schema)?;
    let all_envs = envs::request_envs(schema);
    let mut out = Vec::new();
    for info in &snapshot.infos {
        let Some(policy) = snapshot
            .policies
            .policy(&cedar_policy::PolicyId::new(&info.id))
        else {
            continue;
        };
        let lint = |kind, message| Lint {
            kind,
            policy: info.id.clone(),
            file: info.file.clone(),
            line: info.line,
            message,
        };
        // The environments in which the policy can match at all.
        let mut live: Vec<&RequestEnv> = Vec::new();
        for env in all_envs
            .iter()
            .filter(|e| envs::applies(policy, e, &groups))
        {
            if !never_matches(policy, env, schema, &groups, compiler).await? {
                live.push(env);
            }
        }
        if live.is_empty() {
            out.push(lint(
                LintKind::Dead,
                format!(
                    "policy `{}` can never match a valid request (dead): no principal, action and resource the schema allows satisfy its scope and conditions",
                    info.id
                ),
            ));
            continue;
        }
        if policy.effect() != Effect::Permit {
            continue;
        }
        let mut overriders = std::collections::BTreeSet::new();
        let mut shadowed = true;
        for env in live {
            let forbids = envs::scoped(&snapshot.policies, env, &groups, Some(Effect::Forbid))?;
            if forbids.is_empty() {
                shadowed = false;
                break;
            }
            overriders.extend(forbids.iter().map(|f| f.id().to_string()));
            let mut members = envs::scoped(&envs::set_of([policy.clone()])?, env, &groups, None)?;
            members.extend(forbids);
            let set = envs::set_of(members)?;
            let label = envs::label(env);
            let compiled = CompiledPolicySet::compile(&set, env, schema).map_err(|source| {
                AnalysisError::Compile {
                    env: label.clone(),
                    source: Box::new(source),
                }
            })?;
            let denies = compiler
                .check_always_denies_opt(&compiled)
                .await
                .map_err(|e| solver_error(&label, e))?;
            if !denies {
                shadowed = false;
                break;
            }
        }
        if shadowed {
            let ids: Vec<String> = overriders.into_iter().map(|i| format!("`{i}`")).collect();
            out.push(lint(
                LintKind::Shadowed,
                format!(
                    "permit `{}` is shadowed: every request it permits is forbidden (by {})",
                    info.id,
                    ids.join(", ")
                ),
            ));
        }
    }
    Ok(out)
}

async fn never_matches(
    policy: &Policy,
    env: &RequestEnv,
    schema: &cedar_policy::Schema,
    groups: &ActionGroups,
    compiler: &mut CedarSymCompiler<LocalSolver>,
) -> Result<bool, AnalysisError> {
    let label = envs::label(env);
    let Some(rewritten) = envs::scoped(&envs::set_of([policy.clone()])?, env, groups, None)?
        .into_iter()
        .next()
    else {
        return Ok(true);
    };
    let compiled = CompiledPolicy::compile(&rewritten, env, schema).map_err(|source| {
        AnalysisError::Compile {
            env: label.clone(),
            source: Box::new(source),
        }
    })?;
    compiler
        .check_never_matches_opt(&compiled)
        .await
        .map_err(|e| solver_error(&label, e))
}

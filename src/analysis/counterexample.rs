//! Counterexamples: the request and entity store the solver found, rendered as Cedar JSON, and
//! evaluated by Cedar itself under each policy set to name the policies that decide it.

use cedar_policy::{Authorizer, Decision, Entities, Entity, Request, Schema};
use cedar_policy_symcc::Env;
use serde::Serialize;
use serde_json::{Value, json};

use super::AnalysisError;
use crate::policy::PolicySnapshot;

/// One request on which the two policy sets decide differently.
#[derive(Debug, Clone, Serialize)]
pub struct Counterexample {
    /// `{"principal", "action", "resource", "context"}`, uids as `{"type", "id"}`: the body of
    /// a `POST /v1/is_authorized`.
    pub request: Value,
    /// The entity store, as a Cedar entities JSON array (schema actions left out: they come
    /// from the schema).
    pub entities: Value,
    /// How Cedar decides it under the `--from` set (`null` when that schema does not allow a
    /// request of this shape).
    pub from: Option<Verdict>,
    /// How Cedar decides it under the `--to` set (`null` likewise).
    pub to: Option<Verdict>,
}

/// Cedar's answer to a counterexample under one policy set.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `Allow` or `Deny`.
    pub decision: &'static str,
    /// The policies that decided it: the permits that allowed it, or the forbids that denied it
    /// (empty: nothing permits it).
    pub policies: Vec<String>,
    /// Policies that erred on it (Cedar skips them).
    pub errors: Vec<String>,
}

/// Renders `env` and evaluates it under `from` and `to` (each `None` when its schema does not
/// type the request).
pub fn render(
    env: &Env,
    from: Option<&PolicySnapshot>,
    to: Option<&PolicySnapshot>,
) -> Result<Counterexample, AnalysisError> {
    let stored: Vec<Entity> = env
        .entities
        .iter()
        .filter(|e| !is_action(e))
        .cloned()
        .collect();
    let render_err = |e: cedar_policy::entities_errors::EntitiesError| {
        AnalysisError::Internal(format!("cannot render a counterexample: {e}"))
    };
    let entities = Entities::from_entities(stored.iter().cloned(), None)
        .map_err(render_err)?
        .to_json_value()
        .map_err(render_err)?;
    let verdict = |side: Option<&PolicySnapshot>| {
        side.map(|snapshot| evaluate(&env.request, &stored, snapshot))
            .transpose()
    };
    Ok(Counterexample {
        request: request_json(&env.request)?,
        entities,
        from: verdict(from)?,
        to: verdict(to)?,
    })
}

/// Cedar's decision on `request` over `stored` plus the snapshot's own schema actions (so each
/// set is judged by its own action groups).
fn evaluate(
    request: &Request,
    stored: &[Entity],
    snapshot: &PolicySnapshot,
) -> Result<Verdict, AnalysisError> {
    let actions = snapshot
        .schema
        .as_ref()
        .map(Schema::action_entities)
        .transpose()
        .map_err(|e| AnalysisError::Schema(e.to_string()))?;
    let all = stored
        .iter()
        .cloned()
        .chain(actions.iter().flat_map(|a| a.iter().cloned()));
    let entities = Entities::from_entities(all, None)
        .map_err(|e| AnalysisError::Internal(format!("counterexample entities: {e}")))?;
    let response = Authorizer::new().is_authorized(request, &snapshot.policies, &entities);
    let diagnostics = response.diagnostics();
    let mut policies: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
    policies.sort();
    Ok(Verdict {
        decision: match response.decision() {
            Decision::Allow => "Allow",
            Decision::Deny => "Deny",
        },
        policies,
        errors: diagnostics.errors().map(ToString::to_string).collect(),
    })
}

fn is_action(entity: &Entity) -> bool {
    let ty = entity.uid().type_name().to_string();
    ty == "Action" || ty.ends_with("::Action")
}

fn request_json(request: &Request) -> Result<Value, AnalysisError> {
    let uid = |u: Option<&cedar_policy::EntityUid>| -> Result<Value, AnalysisError> {
        u.map(|u| json!({ "type": u.type_name().to_string(), "id": u.id().unescaped() }))
            .ok_or_else(|| AnalysisError::Internal("a counterexample lacks a uid".to_owned()))
    };
    let context = match request.context() {
        Some(c) => c
            .to_json_value()
            .map_err(|e| AnalysisError::Internal(format!("cannot render a context: {e}")))?,
        None => json!({}),
    };
    Ok(json!({
        "principal": uid(request.principal())?,
        "action": uid(request.action())?,
        "resource": uid(request.resource())?,
        "context": context,
    }))
}

impl Counterexample {
    /// One line: who, what, on which resource, and how each set decides it.
    pub fn summary(&self) -> String {
        let uid = |v: &Value| match (v["type"].as_str(), v["id"].as_str()) {
            (Some(t), Some(id)) => format!("{t}::{}", Value::String(id.to_owned())),
            _ => v.to_string(),
        };
        let side = |v: &Option<Verdict>| match v {
            None => "not a valid request".to_owned(),
            Some(v) if v.policies.is_empty() => format!("{} (no policy applies)", v.decision),
            Some(v) => format!("{} by {}", v.decision, v.policies.join(", ")),
        };
        format!(
            "{} {} {}: {} before, {} after",
            uid(&self.request["principal"]),
            uid(&self.request["action"]),
            uid(&self.request["resource"]),
            side(&self.from),
            side(&self.to),
        )
    }
}

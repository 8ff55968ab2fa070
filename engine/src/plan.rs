//! Plan mode: what a workflow would change, computed without changing anything.
//!
//! The planner walks the workflow in dependency order and asks each node's plugin to *plan*
//! (reads allowed, writes forbidden: [`crate::Plugin::plan`]). A plugin that cannot plan is
//! reported as "changes unknown until apply", and so is a node whose `with` reads a value only
//! apply can know (an account id to be created): such values travel as the string [`UNKNOWN`]
//! and print as `(known after apply)`. A `when` that reads one makes its node *maybe*. Failure
//! branches (`when: failure()`) do not run in a plan, which assumes every step succeeds.
//!
//! A plan is data ([`Plan`]): stored durably in the state file with a digest over its
//! canonical form, which is what approvals of it name. Planning is not a run: it keeps no
//! checkpoints (a plan cut off is planned again) and writes nothing but the finished plan.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::digest::digest_of;
use crate::expr;
use crate::plugin::{RunLink, StepContext};
use crate::scheduler::{Engine, EngineError};
use crate::workflow::{RunsOn, Workflow};

/// A value only apply can know (an id AWS has not given yet).
pub const UNKNOWN: &str = "(known after apply)";

/// What one node would do, as its plugin planned it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PlanOutcome {
    /// One line: `create 2 accounts, tag 1`, or `no changes`.
    pub summary: String,
    /// The changes, plugin-defined records each with an `action` (`create`, `update`,
    /// `delete`, `attach`, …): shown to approvers and covered by the plan's digest.
    pub changes: Vec<Value>,
    /// The outputs the node would have, with [`UNKNOWN`] where only apply can tell.
    pub outputs: Value,
}

impl PlanOutcome {
    /// What a node of a `plan: true` step outputs: its plugin's plan (or that it has none).
    pub fn into_node_outputs(plan: Option<PlanOutcome>) -> Value {
        match plan {
            None => json!({
                "status": PlanStatus::Unknown,
                "summary": "changes unknown until apply: this plugin does not plan",
                "changes": [],
                "outputs": UNKNOWN,
            }),
            Some(o) => json!({
                "status": if o.changes.is_empty() { PlanStatus::NoChanges } else { PlanStatus::Changes },
                "summary": o.summary,
                "changes": o.changes,
                "outputs": o.outputs,
            }),
        }
    }

    /// A node that changes nothing and whose outputs are already known (a lookup).
    pub fn reads_only(outputs: Value) -> Self {
        PlanOutcome {
            summary: "no changes (reads only)".into(),
            changes: Vec::new(),
            outputs,
        }
    }
}

/// Where a planned node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    /// Its plugin planned changes.
    Changes,
    /// Its plugin planned, and nothing would change.
    NoChanges,
    /// What it would change is known only at apply (no plan method, or unknown inputs).
    Unknown,
    /// It would not run (a false condition, a failure branch, an upstream plan failure).
    Skipped,
    /// Planning it failed (a read was refused, its `with` did not render).
    Failed,
}

impl PlanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Changes => "changes",
            PlanStatus::NoChanges => "no_changes",
            PlanStatus::Unknown => "unknown",
            PlanStatus::Skipped => "skipped",
            PlanStatus::Failed => "failed",
        }
    }
}

/// One node of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedNode {
    /// `step` or `step[i]`.
    pub node: String,
    pub step: String,
    pub plugin: String,
    pub status: PlanStatus,
    /// Whether the node runs at all depends on a value known only after apply.
    #[serde(default)]
    pub maybe: bool,
    pub summary: String,
    #[serde(default)]
    pub changes: Vec<Value>,
    #[serde(default)]
    pub outputs: Value,
}

/// A workflow's plan: stored, listed, approved by its digest, applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub plan_id: String,
    pub workflow: String,
    pub workflow_file: String,
    pub workflow_text: String,
    pub workflow_digest: String,
    pub inputs: Value,
    pub inputs_digest: String,
    /// Who asked for it (`cli:<user>`, a Slack user id).
    pub requester: String,
    pub created_at: DateTime<Utc>,
    /// After this, applying it is refused: AWS has had too long to drift.
    pub expires_at: DateTime<Utc>,
    pub nodes: Vec<PlannedNode>,
    /// SHA-256 over the canonical form of what an approval approves ([`Plan::compute_digest`]).
    pub digest: String,
}

impl Plan {
    /// The digest over workflow, inputs and every node's status and changes (not the ids,
    /// times or summaries: two plans that would do the same have the same digest).
    pub fn compute_digest(&self) -> String {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "node": n.node, "plugin": n.plugin, "status": n.status,
                    "maybe": n.maybe, "changes": n.changes,
                })
            })
            .collect();
        digest_of(&json!({
            "workflow_digest": self.workflow_digest,
            "inputs_digest": self.inputs_digest,
            "nodes": nodes,
        }))
    }

    /// Nodes that would change something (or may: unknown until apply).
    pub fn changing(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.status, PlanStatus::Changes | PlanStatus::Unknown))
            .count()
    }

    /// Whether any node failed to plan.
    pub fn failed(&self) -> bool {
        self.nodes.iter().any(|n| n.status == PlanStatus::Failed)
    }

    /// The planned node `node`, for apply.
    pub fn node(&self, node: &str) -> Option<&PlannedNode> {
        self.nodes.iter().find(|n| n.node == node)
    }
}

/// Changes as one line: their actions, counted, in order of first appearance (`2 create,
/// 1 attach`), or `no changes`.
pub fn actions_counted(changes: &[Value]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for c in changes {
        let action = c.get("action").and_then(Value::as_str).unwrap_or("change");
        match counts.iter_mut().find(|(a, _)| *a == action) {
            Some((_, n)) => *n += 1,
            None => counts.push((action, 1)),
        }
    }
    if counts.is_empty() {
        return "no changes".into();
    }
    counts
        .iter()
        .map(|(a, n)| format!("{n} {a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a plan is made from.
pub struct NewPlan {
    pub inputs: Map<String, Value>,
    pub requester: String,
    /// How long the plan may be applied.
    pub ttl: Duration,
}

/// Whether `v` holds an unknown value anywhere.
pub fn contains_unknown(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains(UNKNOWN),
        Value::Array(a) => a.iter().any(contains_unknown),
        Value::Object(o) => o.values().any(contains_unknown),
        _ => false,
    }
}

/// Whether the template or expression `text` reads a step whose outputs hold an unknown.
fn reads_unknown(vars: &std::collections::BTreeSet<String>, steps: &Map<String, Value>) -> bool {
    vars.iter().any(|v| {
        let mut parts = v.split('.');
        match (parts.next(), parts.next()) {
            (Some("steps"), Some(id)) => {
                // As deep as the path goes: `steps.deploy.failures` is known (none, in a plan)
                // even while `steps.deploy.outputs` is not.
                let mut at = steps.get(id);
                for part in parts {
                    match at {
                        Some(Value::Object(m)) if m.contains_key(part) => at = m.get(part),
                        _ => break,
                    }
                }
                at.is_some_and(contains_unknown)
            }
            _ => false,
        }
    })
}

/// The variables a `with` block reads.
fn with_vars(v: &Value) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => out.extend(expr::referenced(s).unwrap_or_default()),
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    out
}

impl Engine {
    /// Plans `wf` with `new`'s inputs (checked as a run's are) and stores the plan.
    pub async fn plan(&self, wf: &Workflow, new: NewPlan) -> Result<Plan, EngineError> {
        let inputs =
            crate::inputs::resolve(&wf.inputs, new.inputs, &[]).map_err(EngineError::Inputs)?;
        let inputs = Value::Object(inputs);
        let now = Utc::now();
        let plan_id = format!("p-{}", ulid::Ulid::new().to_string().to_lowercase());
        // Refused before anything is planned when secret inputs cannot be sealed.
        let sealed = crate::inputs::seal(&wf.inputs, &inputs, &plan_id, self.data_key())?;
        let link = RunLink::new(None, Some(std::sync::Arc::clone(&self.store)));
        let mut steps = Map::new();
        let mut nodes: Vec<PlannedNode> = Vec::new();
        // Per step: whether its plan failed or it was skipped (its dependents are skipped).
        let mut broken = vec![false; wf.steps.len()];
        for &i in &wf.order {
            let step = &wf.steps[i];
            let plugin = self.registry.entry(&step.uses);
            let plugin_name = plugin.map(|(n, _)| n.to_string()).unwrap_or_default();
            let one = |status, summary: String| PlannedNode {
                node: step.id.clone(),
                step: step.id.clone(),
                plugin: plugin_name.clone(),
                status,
                maybe: false,
                summary,
                changes: Vec::new(),
                outputs: Value::Null,
            };
            let skip = |why: &str| one(PlanStatus::Skipped, format!("skipped: {why}"));
            if step.needs.iter().any(|&k| broken[k]) && step.when.runs_on == RunsOn::Success {
                broken[i] = true;
                nodes.push(skip(
                    "an earlier step would not run or could not be planned",
                ));
                continue;
            }
            let ctx = json!({
                "inputs": inputs,
                "steps": steps,
                "run": {
                    "id": plan_id, "started_at": now.to_rfc3339(), "workflow": wf.name,
                    "failures": [],
                },
            });
            let mut maybe = false;
            if let Some(cond) = &step.when.expr {
                let vars = expr::referenced_in_expr(expr::condition_expr(cond)).unwrap_or_default();
                if reads_unknown(&vars, &steps) {
                    maybe = true;
                } else {
                    match expr::eval_condition(cond, &ctx, false, false) {
                        Ok(true) => {}
                        Ok(false) => {
                            // Skipped by its own condition: dependents still run (as in a
                            // run), seeing no outputs. A plan assumes every step succeeds,
                            // so failure branches stay off.
                            steps.insert(
                                step.id.clone(),
                                json!({ "status": "skipped", "outputs": null, "error": null, "failures": [] }),
                            );
                            let why = if expr::status_functions_used(cond).contains("failure") {
                                "runs only when an earlier step fails".to_string()
                            } else {
                                format!("condition `{cond}` is false")
                            };
                            nodes.push(skip(&why));
                            continue;
                        }
                        Err(e) => {
                            broken[i] = true;
                            nodes.push(one(
                                PlanStatus::Failed,
                                format!("cannot evaluate `when`: {e}"),
                            ));
                            continue;
                        }
                    }
                }
            }
            let base = expr::ctx_value(&ctx);
            let items: Option<Vec<Value>> = match &step.for_each {
                None => None,
                Some(fe) => match expr::render_value(fe, &base) {
                    Ok(v) if contains_unknown(&v) => {
                        let mut n = one(
                            PlanStatus::Unknown,
                            "changes unknown until apply: for each of (known after apply)".into(),
                        );
                        n.maybe = maybe;
                        n.outputs = Value::String(UNKNOWN.into());
                        steps.insert(
                            step.id.clone(),
                            json!({ "status": "succeeded", "outputs": UNKNOWN, "error": null, "failures": [] }),
                        );
                        nodes.push(n);
                        continue;
                    }
                    Ok(Value::Array(items)) if items.len() > crate::limits::get().max_fan_out => {
                        broken[i] = true;
                        nodes.push(one(
                            PlanStatus::Failed,
                            format!(
                                "`for_each` gives {} items; at most {} instances per step (limits.max_fan_out)",
                                items.len(),
                                crate::limits::get().max_fan_out
                            ),
                        ));
                        continue;
                    }
                    Ok(Value::Array(items)) => Some(items),
                    Ok(other) => {
                        broken[i] = true;
                        nodes.push(one(
                            PlanStatus::Failed,
                            format!("`for_each` must give a list, it gave {other}"),
                        ));
                        continue;
                    }
                    Err(e) => {
                        broken[i] = true;
                        nodes.push(one(
                            PlanStatus::Failed,
                            format!("cannot evaluate `for_each`: {e}"),
                        ));
                        continue;
                    }
                },
            };
            let instances: Vec<(String, Option<(usize, Value)>)> = match &items {
                None => vec![(step.id.clone(), None)],
                Some(items) => items
                    .iter()
                    .enumerate()
                    .map(|(k, item)| (format!("{}[{k}]", step.id), Some((k, item.clone()))))
                    .collect(),
            };
            let vars = with_vars(&step.with);
            let mut outputs = Vec::new();
            for (node_id, item) in instances {
                let ctx = match &item {
                    Some((k, item)) => expr::with_item(&base, item, Some(*k)),
                    None => base.clone(),
                };
                let mut n = one(PlanStatus::Unknown, String::new());
                n.node = node_id.clone();
                n.maybe = maybe;
                n.outputs = Value::String(UNKNOWN.into());
                let rendered = expr::render_value(&step.with, &ctx);
                let with = match rendered {
                    Ok(v) if !contains_unknown(&v) => v,
                    Ok(_) => {
                        n.summary =
                            "changes unknown until apply: its inputs are known only after apply"
                                .into();
                        outputs.push(n.outputs.clone());
                        nodes.push(n);
                        continue;
                    }
                    Err(_) if reads_unknown(&vars, &steps) => {
                        n.summary =
                            "changes unknown until apply: its inputs are known only after apply"
                                .into();
                        outputs.push(n.outputs.clone());
                        nodes.push(n);
                        continue;
                    }
                    Err(e) => {
                        broken[i] = true;
                        n.status = PlanStatus::Failed;
                        n.summary = format!("cannot render `with`: {e}");
                        nodes.push(n);
                        continue;
                    }
                };
                let Some((_, plugin)) = plugin else {
                    broken[i] = true;
                    n.status = PlanStatus::Failed;
                    n.summary = format!("no plugin `{}` in this build", step.uses);
                    nodes.push(n);
                    continue;
                };
                let ctx = StepContext::linked(
                    plan_id.as_str(),
                    node_id.as_str(),
                    step.id.as_str(),
                    1,
                    CancellationToken::new(),
                    std::sync::Arc::clone(&link),
                );
                match plugin.plan(with, ctx).await {
                    Ok(None) => {
                        n.summary = format!(
                            "changes unknown until apply: `{}` does not plan",
                            plugin_name
                        );
                        if step.plan {
                            n.outputs = PlanOutcome::into_node_outputs(None);
                        }
                    }
                    Ok(Some(o)) => {
                        n.status = if o.changes.is_empty() {
                            PlanStatus::NoChanges
                        } else {
                            PlanStatus::Changes
                        };
                        // A `plan: true` step outputs its plan in a run; the same here.
                        n.outputs = if step.plan {
                            PlanOutcome::into_node_outputs(Some(o.clone()))
                        } else {
                            o.outputs
                        };
                        n.summary = o.summary;
                        n.changes = o.changes;
                    }
                    Err(e) => {
                        broken[i] = true;
                        n.status = PlanStatus::Failed;
                        n.summary = e.message;
                    }
                }
                outputs.push(n.outputs.clone());
                nodes.push(n);
            }
            if broken[i] {
                continue;
            }
            let out = match items {
                Some(_) => Value::Array(outputs),
                None => outputs.pop().unwrap_or(Value::Null),
            };
            steps.insert(
                step.id.clone(),
                json!({ "status": "succeeded", "outputs": out, "error": null, "failures": [] }),
            );
        }
        let ttl = chrono::Duration::from_std(new.ttl).unwrap_or(chrono::Duration::days(1));
        let mut plan = Plan {
            plan_id,
            workflow: wf.name.clone(),
            workflow_file: wf.source.name.clone(),
            workflow_text: wf.source.text.to_string(),
            workflow_digest: wf.digest.clone(),
            inputs_digest: sealed.digest,
            inputs: sealed.stored,
            requester: new.requester,
            created_at: now,
            expires_at: now + ttl,
            nodes,
            digest: String::new(),
        };
        plan.digest = plan.compute_digest();
        // The sealed values first: a plan never refers to a value that is not stored (a crash
        // in between leaves only an unused sealed value).
        if !sealed.secrets.is_empty() {
            self.store.commit(crate::store::Batch {
                secrets: sealed.secrets,
                ..Default::default()
            })?;
        }
        self.store.save_plan(&plan)?;
        Ok(plan)
    }
}

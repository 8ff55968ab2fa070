//! Activating a step whose needs are done: skipped by its condition or an upstream failure,
//! fanned out over `for_each`, or one node; the expression context steps are rendered in;
//! moving ready nodes to running within `max_parallel`.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{aggregate_status, single_node, Execution, Stop};
use crate::error::StepError;
use crate::expr;
use crate::state::{NodeRecord, NodeStatus, SkipReason};
use crate::workflow::RunsOn;

impl Execution<'_> {
    /// Creates the nodes of a step whose needs are all done: skipped, fanned out, or one node.
    pub(super) fn activate(&mut self, i: usize) {
        let wf = Arc::clone(&self.wf);
        let step = &wf.steps[i];
        let upstream_failed = step.needs.iter().any(|&k| !self.step_ok(k));
        let skip = |this: &mut Self, reason: SkipReason, why: String| {
            let mut rec = single_node(&step.id);
            rec.skip_reason = Some(reason);
            this.finish_new(i, rec, NodeStatus::Skipped, Some(&why));
        };
        let fail = |this: &mut Self, err: StepError| {
            let mut rec = single_node(&step.id);
            rec.error = Some(err);
            this.finish_new(i, rec, NodeStatus::Failed, None);
        };

        if upstream_failed && step.when.runs_on == RunsOn::Success {
            return skip(
                self,
                SkipReason::UpstreamFailed,
                "an earlier step failed".into(),
            );
        }
        let ctx = (step.when.expr.is_some() || step.for_each.is_some()).then(|| self.context());
        if let (Some(cond), Some(ctx)) = (&step.when.expr, &ctx) {
            let cancelled = self.stop == Some(Stop::Cancel);
            match expr::eval_condition(cond, ctx, upstream_failed, cancelled) {
                Ok(true) => {}
                Ok(false) => {
                    let reason = if upstream_failed {
                        SkipReason::UpstreamFailed
                    } else if expr::status_functions_used(cond).contains("failure") {
                        SkipReason::NoFailure
                    } else {
                        SkipReason::Condition
                    };
                    let why = match reason {
                        SkipReason::NoFailure => "nothing failed".to_string(),
                        _ => format!("condition `{cond}` is false"),
                    };
                    return skip(self, reason, why);
                }
                Err(e) => {
                    return fail(
                        self,
                        StepError::permanent(format!("cannot evaluate `when`: {e}")),
                    )
                }
            }
        }
        let Some(fe) = &step.for_each else {
            let rec = single_node(&step.id);
            let node = self.create(i, rec, NodeStatus::Pending);
            self.ready.push_back(node);
            return self.set_step_nodes(i, node..node + 1);
        };
        let ctx = expr::ctx_value(ctx.unwrap_or(Value::Null));
        let items = match expr::render_value(fe, &ctx) {
            Ok(Value::Array(items)) => items,
            Ok(other) => {
                return fail(
                    self,
                    StepError::permanent(format!("`for_each` must give a list, it gave {other}")),
                )
            }
            Err(e) => {
                return fail(
                    self,
                    StepError::permanent(format!("cannot evaluate `for_each`: {e}")),
                )
            }
        };
        let max = crate::limits::get().max_fan_out;
        if items.len() > max {
            return fail(
                self,
                StepError::permanent(format!(
                    "`for_each` gave {} items; at most {max} instances per step (limits.max_fan_out in landfall.toml)",
                    items.len()
                )),
            );
        }
        if items.is_empty() {
            let mut rec = single_node(&step.id);
            rec.fan_out = Some(0);
            rec.outputs = Some(Value::Array(Vec::new()));
            rec.finished_at = Some(self.now);
            let node = self.create(i, rec, NodeStatus::Succeeded);
            return self.set_step_nodes(i, node..node + 1);
        }
        let n = items.len();
        self.rollouts[i] = match super::execution::rollout_of(step, n, &ctx) {
            Ok(p) => p,
            Err(e) => return fail(self, StepError::permanent(e)),
        };
        let mut details = json!({ "items": n });
        if let Some(p) = &self.rollouts[i] {
            details["waves"] = json!(p.ends());
        }
        self.audit_as(Some(step.id.clone()), "step_expanded", details);
        let start = self.nodes.len();
        self.nodes.reserve(n);
        let step_id: Arc<str> = step.id.as_str().into();
        for (k, item) in items.into_iter().enumerate() {
            let mut rec = NodeRecord::new(format!("{}[{k}]", step.id), Arc::clone(&step_id));
            rec.index = Some(k);
            rec.item = Some(item);
            rec.fan_out = Some(n);
            let node = self.create(i, rec, NodeStatus::Pending);
            self.ready.push_back(node);
        }
        self.set_step_nodes(i, start..self.nodes.len());
    }

    /// The expression context: inputs, run and finished steps (an instance's `item` and
    /// `index` are added by [`expr::with_item`]).
    pub(super) fn context(&self) -> Value {
        let mut steps = Map::new();
        for (i, s) in self.wf.steps.iter().enumerate() {
            if self.step_nodes[i].is_none() || self.open[i] > 0 {
                continue;
            }
            let recs = self.step_recs(i);
            let fanned = recs.clone().next().and_then(|r| r.fan_out).is_some();
            let outputs = if fanned {
                Value::Array(
                    recs.clone()
                        .filter(|r| r.fan_out != Some(0))
                        .map(|r| r.outputs.clone().unwrap_or(Value::Null))
                        .collect(),
                )
            } else {
                recs.clone()
                    .next()
                    .and_then(|r| r.outputs.clone())
                    .unwrap_or(Value::Null)
            };
            let error = recs
                .clone()
                .find_map(|r| {
                    r.error.as_ref().map(|e| {
                        json!({ "class": e.class, "message": e.message, "node": r.node_id, "context": e.context })
                    })
                })
                .unwrap_or(Value::Null);
            // Instances that failed or were cancelled (both may have left work half-done), with
            // the item each worked on: what a rollback of only those targets iterates over.
            let failures: Vec<Value> = recs
                .clone()
                .filter(|r| matches!(r.status, NodeStatus::Failed | NodeStatus::Cancelled))
                .map(|r| {
                    let e = r.error.as_ref();
                    json!({
                        "node": r.node_id, "index": r.index, "item": r.item, "status": r.status,
                        "class": e.map(|e| e.class), "message": e.map(|e| e.message.clone()),
                        "context": e.map(|e| e.context.clone()),
                    })
                })
                .collect();
            let mut status = aggregate_status(recs);
            if status == NodeStatus::Failed && self.tolerated(i) {
                status = NodeStatus::Succeeded;
            }
            steps.insert(
                s.id.clone(),
                json!({ "status": status, "outputs": outputs, "error": error, "failures": failures }),
            );
        }
        let mut failures: Vec<&NodeRecord> = self
            .nodes
            .iter()
            .map(|n| &*n.rec)
            .filter(|n| n.status == NodeStatus::Failed)
            .collect();
        failures.sort_by(|a, b| {
            a.finished_at
                .cmp(&b.finished_at)
                .then(a.node_id.cmp(&b.node_id))
        });
        let failures: Vec<Value> = failures
            .iter()
            .map(|n| {
                let e = n.error.as_ref();
                json!({
                    "node": n.node_id,
                    "step": n.step_id,
                    // Within its step's `tolerate`: the run may still succeed.
                    "tolerated": self.wf.step_index(&n.step_id).is_some_and(|k| self.tolerated(k)),
                    "class": e.map(|e| e.class),
                    "message": e.map(|e| e.message.clone()),
                    "context": e.map(|e| e.context.clone()),
                })
            })
            .collect();
        json!({
            "inputs": self.inputs,
            "steps": steps,
            "run": {
                "id": self.run.run_id,
                "started_at": self.run.started_at.to_rfc3339(),
                "workflow": self.wf.name,
                "failures": failures,
            },
        })
    }

    /// The context every node's `with:` is rendered in, built again only after a step
    /// finished or a node failed (what it shows). Without this a fan-out of N instances after
    /// another of N built, and converted, N contexts of N outputs each.
    pub(super) fn shared_context(&mut self) -> minijinja::Value {
        match &self.ctx_cache {
            Some((gen, ctx)) if *gen == self.ctx_gen => ctx.clone(),
            _ => {
                let ctx = expr::ctx_value(self.context());
                self.ctx_cache = Some((self.ctx_gen, ctx.clone()));
                ctx
            }
        }
    }

    /// Moves ready nodes to running, up to the run's `max_parallel` and each step's own;
    /// a node whose step is at its limit keeps its place in line.
    pub(super) fn start_nodes(&mut self) {
        let max = self.run.max_parallel.max(1);
        let mut held = Vec::new();
        while self.busy() + self.to_spawn.len() < max {
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            if !self.step_has_room(self.nodes[i].step) || !self.wave_allows(i) {
                held.push(i);
                continue;
            }
            if matches!(
                self.rec(i).status,
                NodeStatus::Pending | NodeStatus::Running
            ) {
                self.begin_attempt(i);
            }
        }
        for i in held.into_iter().rev() {
            self.ready.push_front(i);
        }
    }

    /// Whether step `k` may start another node now (its `max_parallel`, if any, not reached).
    pub(super) fn step_has_room(&self, k: usize) -> bool {
        let Some(cap) = self.wf.steps[k].max_parallel else {
            return true;
        };
        let running = self
            .live
            .keys()
            .filter(|&&n| self.nodes[n].step == k && !self.waiting.contains(&n))
            .count();
        let starting = self
            .to_spawn
            .iter()
            .filter(|&&n| self.nodes[n].step == k)
            .count();
        running + starting < cap
    }

    /// Whether node `i`'s wave is open (always, for a step without a rollout). A node of a
    /// stopped rollout is skipped, not held, so this holds only nodes of later waves.
    pub(super) fn wave_allows(&self, i: usize) -> bool {
        let node = &self.nodes[i];
        match &self.rollouts[node.step] {
            Some(p) => p.may_start(node.rec.index.unwrap_or(0)) || p.stopped(),
            None => true,
        }
    }

    /// Whether a ready node could start now.
    pub(super) fn can_start(&self) -> bool {
        self.live.len() < self.run.max_parallel.max(1)
            && self
                .ready
                .iter()
                .any(|&i| self.step_has_room(self.nodes[i].step) && self.wave_allows(i))
    }

    /// Attempts that hold a parallelism slot.
    pub(super) fn busy(&self) -> usize {
        self.live.len().saturating_sub(self.waiting.len())
    }
}

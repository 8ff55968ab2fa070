//! Attempts: rendering `with:`, the circuit breaker, running the plugin (first poll inline,
//! then a task of its own), what comes back from it (results, retries due, breaker
//! changes) and what a plugin reports while it runs (logs, progress, milestones, waiting).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Execution, Msg, Resolved, Stop};
use crate::breaker::{Breaker, Outcome as BreakerOutcome, Transition};
use crate::error::{ErrorClass, StepError};
use crate::events::RunEvent;
use crate::expr;
use crate::plan::PlanStatus;
use crate::plugin::{DynPlugin, StepContext, StepReport};
use crate::state::NodeStatus;

impl Execution<'_> {
    /// Renders the `with:` of every node about to start. A render error fails the node
    /// before any attempt runs.
    pub(super) fn prepare_spawns(&mut self) -> Vec<(usize, Value)> {
        let mut out = Vec::with_capacity(self.to_spawn.len());
        let wf = Arc::clone(&self.wf);
        for i in std::mem::take(&mut self.to_spawn) {
            let step = &wf.steps[self.nodes[i].step];
            if !step.with_has_templates {
                out.push((i, step.with.clone()));
                continue;
            }
            let base = self.shared_context();
            let rec = self.rec(i);
            let ctx = match &rec.item {
                Some(item) => expr::with_item(&base, item, rec.index),
                None => base,
            };
            match expr::render_value(&step.with, &ctx) {
                Ok(v) => out.push((i, v)),
                Err(e) => {
                    let err = StepError::permanent(format!("cannot render `with`: {e}"));
                    self.fail_attempt(i, err);
                }
            }
        }
        out
    }

    /// A step's plugin: a fan-out's instances look it up once.
    pub(super) fn resolve(&mut self, step: usize) -> Option<Resolved> {
        if let Some(r) = &self.resolved[step] {
            return Some(r.clone());
        }
        let s = &self.wf.steps[step];
        let (name, plugin) = self.engine.registry.entry(&s.uses)?;
        let r: Resolved = (Arc::clone(plugin), name);
        // Only a fan-out's instances share it; a single node looks again only to retry.
        if s.for_each.is_some() {
            self.resolved[step] = Some(r.clone());
        }
        Some(r)
    }

    /// The breaker of a step's circuit (its `circuit`, by default the plugin's name) in the
    /// scope the plugin names for this `with:` (`deploy@123456789012/eu-west-1`).
    pub(super) fn breaker(
        &mut self,
        step: usize,
        plugin: &dyn DynPlugin,
        with: &Value,
    ) -> Arc<Breaker> {
        let circuit = &self.wf.steps[step].circuit;
        let key = match plugin.circuit_scope(with) {
            Some(scope) => format!("{circuit}@{scope}"),
            None => circuit.clone(),
        };
        if let Some(b) = self.breakers.get(key.as_str()) {
            return Arc::clone(b);
        }
        let b = self.engine.breakers.get(&key, self.wf.breaker);
        self.breakers.insert(key.into(), Arc::clone(&b));
        b
    }

    pub(super) fn spawn_attempt(&mut self, node: usize, with: Value) {
        let step_i = self.nodes[node].step;
        let attempts = self.rec(node).attempts;
        let Some((plugin, name)) = self.resolve(step_i) else {
            let uses = &self.wf.steps[step_i].uses;
            let err = StepError::permanent(format!("no plugin named `{uses}`"));
            return self.fail_attempt(node, err);
        };
        let planning = self.wf.steps[step_i].plan;
        if planning {
            if let Some(plan) = &self.plan {
                // Applying a stored plan: what was planned (and approved) is this node's
                // answer; planning again could plan something else.
                let id = &*self.nodes[node].id;
                let result = match plan.node(id) {
                    Some(p) if !p.outputs.is_null() => Ok(p.outputs.clone()),
                    _ => Err(StepError::permanent(format!(
                        "node `{id}` is not in plan `{}` (its inputs or the workflow's shape changed): plan again",
                        plan.plan_id
                    ))),
                };
                self.finished_inline.push((node, false, result));
                return;
            }
        }
        // Applying a stored plan: a node the plan covers, whose plugin plans by reading only,
        // is planned again before its first attempt; a different answer means AWS (or the
        // inputs) moved since the approval, and nothing is written. Later attempts carry on
        // the approved change (the first one may have written part of it).
        let recheck = match &self.plan {
            Some(plan) if attempts <= 1 && plugin.plan_is_pure() => plan
                .node(&self.nodes[node].id)
                .filter(|p| matches!(p.status, PlanStatus::Changes | PlanStatus::NoChanges))
                .map(|p| (plan.plan_id.clone(), p.changes.clone())),
            _ => None,
        };
        let gates = match self.gates(node) {
            Ok(g) => g,
            Err(e) => return self.fail_attempt(node, e),
        };
        let breaker = self.breaker(step_i, &*plugin, &with);
        let cancel = CancellationToken::new();
        let attempt_limit = self.wf.steps[step_i].attempt_timeout;
        let node_deadline = self.deadlines.get(&node).copied();
        let mut limit = attempt_limit;
        if let Some(d) = node_deadline {
            let left = d.saturating_duration_since(Instant::now());
            limit = Some(limit.map_or(left, |l| l.min(left)));
        }
        let ctx = StepContext::linked(
            Arc::clone(&self.run_id),
            Arc::clone(&self.nodes[node].id),
            Arc::clone(&self.rec(node).step_id),
            attempts,
            cancel.clone(),
            Arc::clone(&self.link),
        );
        // The attempt's time limit covers a wait on an open circuit too.
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let ctx = ctx.with_deadline(deadline);
        let tx = self.tx.clone();
        let token = cancel.clone();
        let attempt = async move {
            // A wave's approval and a step's slot are waited for outside the attempt's time
            // limit (the step's `timeout` still counts: it covers the whole step).
            let (held, ctx, deadline, limit) = if gates.is_empty() {
                (None, ctx, deadline, limit)
            } else {
                let held = gates.pass(&ctx).await?;
                let now = tokio::time::Instant::now();
                let limit = match (attempt_limit, node_deadline) {
                    (l, Some(d)) => {
                        let left = d.saturating_duration_since(now);
                        Some(l.map_or(left, |l| l.min(left)))
                    }
                    (l, None) => l,
                };
                let deadline = limit.map(|l| now + l);
                (Some(held), ctx.with_deadline(deadline), deadline, limit)
            };
            // A closed circuit gives a permit at once: nothing can have cancelled the attempt
            // yet (its token is new), so neither is asked.
            let permit = match breaker.try_acquire() {
                Some(p) => p,
                None => {
                    let until = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    };
                    let permit = tokio::select! {
                        biased;
                        // Boxed: waiting on an open circuit is rare, its future big.
                        p = Box::pin(breaker.acquire()) => p,
                        _ = token.cancelled() => {
                            return Err(StepError::transient("cancelled before it started"));
                        }
                        _ = Box::pin(until) => {
                            return Err(StepError::transient(format!(
                                "the `{}` circuit stayed open past the attempt's time limit ({})",
                                breaker.key(),
                                humantime::format_duration(limit.unwrap_or_default())
                            )));
                        }
                    };
                    if token.is_cancelled() {
                        return Err(StepError::transient("cancelled before it started"));
                    }
                    permit
                }
            };
            let key = || breaker.key().to_string();
            if let Some(t) = permit.transition {
                let _ = tx.send(Msg::Breaker {
                    node,
                    key: key(),
                    change: t,
                });
            }
            let run = if planning {
                Box::pin(async move {
                    plugin
                        .plan(with, ctx)
                        .await
                        .map(crate::plan::PlanOutcome::into_node_outputs)
                })
            } else if let Some((plan_id, planned)) = recheck {
                Box::pin(async move {
                    if let Some(now) = plugin.plan(with.clone(), ctx.clone()).await? {
                        if now.changes != planned {
                            return Err(StepError::permanent(format!(
                                "changed since the plan: plan again (plan `{plan_id}` approved {}; now: {})",
                                crate::plan::actions_counted(&planned),
                                match crate::plan::actions_counted(&now.changes) {
                                    same if same == crate::plan::actions_counted(&planned) => {
                                        format!("{same}, with other content")
                                    }
                                    other => other,
                                }
                            )));
                        }
                    }
                    plugin.run(with, ctx).await
                })
            } else {
                plugin.run(with, ctx)
            };
            let result = tokio::select! {
                biased;
                r = async {
                    match limit.zip(deadline) {
                        // Boxed: a timer is big, and most attempts have none.
                        Some((l, d)) => Box::pin(tokio::time::timeout_at(d, run)).await.unwrap_or_else(|_| {
                            Err(StepError::transient(format!(
                                "attempt timed out after {}",
                                humantime::format_duration(l)
                            )))
                        }),
                        None => run.await,
                    }
                } => r,
                _ = token.cancelled() => Err(StepError::transient("cancelled")),
            };
            let outcome = match &result {
                Ok(_) => BreakerOutcome::Success,
                Err(e) if e.class == ErrorClass::Transient && !token.is_cancelled() => {
                    BreakerOutcome::TransientFailure
                }
                Err(_) => BreakerOutcome::Neutral,
            };
            if let Some(t) = permit.record(outcome) {
                let _ = tx.send(Msg::Breaker {
                    node,
                    key: key(),
                    change: t,
                });
            }
            if let Some(held) = held {
                held.release().await;
            }
            result
        };
        // A panicking plugin fails its node (permanently: it is a bug, not weather); without
        // this its task would end without a word and the run would wait for it forever.
        let mut attempt = Box::pin(AssertUnwindSafe(attempt).catch_unwind().map(move |r| {
            r.unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                Err(StepError::permanent(format!(
                    "the `{name}` plugin panicked: {why}"
                )))
            })
        }));
        // The first poll runs here: light steps (log, assert, a no-op) finish in it and need
        // no task, no thread hand-off and no channel. An attempt that has to wait moves to a
        // task of its own, whose first poll registers its waker again.
        match (&mut attempt).now_or_never() {
            Some(result) => {
                // Only a stopping run cancels attempts (asking takes the token's lock).
                let cancelled = self.stop.is_some() && cancel.is_cancelled();
                self.finished_inline.push((node, cancelled, result));
            }
            None => {
                let tx = self.tx.clone();
                self.live.insert(node, cancel);
                tokio::spawn(async move {
                    let result = attempt.await;
                    let _ = tx.send(Msg::Done { node, result });
                });
            }
        }
    }

    pub(super) fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Done { node, result } => {
                let token = self.live.remove(&node);
                self.waiting.remove(&node);
                let was_cancelled = token.is_some_and(|t| t.is_cancelled());
                self.attempt_ended(node, was_cancelled, result);
            }
            Msg::RetryDue { node } => {
                self.retrying.remove(&node);
                if self.stop.is_none() {
                    self.ready.push_front(node);
                } else if self.stop == Some(Stop::Interrupt) {
                    self.transition(node, NodeStatus::Pending);
                }
            }
            Msg::Breaker { node, key, change } => {
                let Transition { from, to } = change;
                self.audit(
                    Some(node),
                    "breaker_changed",
                    json!({ "key": key, "from": from, "to": to }),
                );
                self.emit(RunEvent::BreakerChanged { key, from, to });
            }
        }
    }

    /// An attempt's end, reported by its task or by its first poll in place.
    pub(super) fn attempt_ended(
        &mut self,
        node: usize,
        was_cancelled: bool,
        result: Result<Value, StepError>,
    ) {
        let err = match result {
            Ok(outputs) => return self.succeed(node, outputs),
            Err(e) => e,
        };
        match self.stop {
            // Cut off by Ctrl-C after the grace period: runs again on resume.
            Some(Stop::Interrupt) if was_cancelled => {
                let attempt = self.rec(node).attempts;
                self.audit(
                    Some(node),
                    "attempt_interrupted",
                    json!({ "attempt": attempt }),
                );
                *self.cut_offs.entry(node).or_default() += 1;
                self.transition(node, NodeStatus::Pending);
            }
            Some(Stop::Cancel | Stop::Critical) if was_cancelled => {
                self.end_node(
                    node,
                    NodeStatus::Cancelled,
                    None,
                    Some("the run was cancelled"),
                );
            }
            _ => self.fail_attempt(node, err),
        }
    }

    /// A wave's first instance got its wave approved: the rest of the wave may start.
    fn wave_approved(&mut self, node: &str) {
        let Some(&i) = self.by_id.get(node) else {
            return;
        };
        let (step, index) = (self.nodes[i].step, self.rec(i).index);
        if let (Some(p), Some(index)) = (self.rollouts[step].as_mut(), index) {
            if let Some((wave, _)) = p.gate_of(index) {
                p.approve(wave);
            }
        }
    }

    pub(super) fn on_report(&mut self, node: Arc<str>, sig: StepReport) {
        let run_id = self.run.run_id.clone();
        let e = match sig {
            StepReport::Waiting | StepReport::Resumed => {
                let Some(&i) = self.by_id.get(&node) else {
                    return;
                };
                let (from, to) = match sig {
                    StepReport::Waiting => (NodeStatus::Running, NodeStatus::Waiting),
                    _ => (NodeStatus::Waiting, NodeStatus::Running),
                };
                if self.rec(i).status == from && self.live.contains_key(&i) {
                    if to == NodeStatus::Waiting {
                        self.waiting.insert(i);
                    } else {
                        self.waiting.remove(&i);
                    }
                    self.transition(i, to);
                }
                return;
            }
            StepReport::Log { level, message } => RunEvent::Log {
                run_id,
                node: node.to_string(),
                level,
                message,
            },
            StepReport::Progress { percent, message } => RunEvent::Progress {
                run_id,
                node: node.to_string(),
                percent,
                message,
            },
            StepReport::Milestone { kind, data } => {
                if kind == "wave_approved" {
                    self.wave_approved(&node);
                }
                self.audit_as(
                    Some(node.to_string()),
                    "milestone",
                    json!({ "kind": kind, "data": data }),
                );
                RunEvent::Milestone {
                    run_id,
                    node: node.to_string(),
                    kind,
                    data,
                }
            }
        };
        // Plugin messages are not state: deliver at once rather than with the next commit.
        if matches!(e, RunEvent::Milestone { .. }) {
            self.emit(e);
        } else {
            for o in &self.observers {
                o.on_event(&e);
            }
        }
    }
}

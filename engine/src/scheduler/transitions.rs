//! Every change of a node's state, and only here: creating a node, moving it
//! ([`Execution::transition`]), starting an attempt, ending a node (success, failure with its
//! retry decision, cancel), settling what never started when a run stops. Each change is
//! checked against `NodeStatus::can_become`, audited in the turn's batch, and keeps the step
//! bookkeeping (open nodes, dependents to activate) in step. `tests/it/tidy.rs` checks that
//! no other file of the scheduler assigns a node's status.

use std::ops::Range;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{single_node, Execution, Msg, Node, Stop};
use crate::error::{ErrorClass, StepError};
use crate::events::RunEvent;
use crate::state::{NodeRecord, NodeStatus, SkipReason};
use crate::store::TransitionDraft;

/// A node that runs again in a redrive: pending, its last attempt's result gone; its attempt
/// count goes on (the next attempt is a new one of the same node, same idempotency key).
/// Here because node statuses change only in this file.
pub(super) fn reset_for_redrive(rec: &mut NodeRecord) {
    rec.status = NodeStatus::Pending;
    rec.error = None;
    rec.outputs = None;
    rec.skip_reason = None;
    rec.finished_at = None;
}

impl Execution<'_> {
    /// Adds a node of step `step` in state `to`. A pending node is not a transition: its
    /// first entry is `pending → …` (a fan-out is audited once per step, as
    /// `step_expanded`); a node created in a final state is one (`new → skipped`).
    pub(super) fn create(&mut self, step: usize, mut rec: NodeRecord, to: NodeStatus) -> usize {
        rec.status = to;
        let i = self.nodes.len();
        let id = Arc::clone(&rec.node_id);
        self.by_id.insert(Arc::clone(&id), i);
        self.nodes.push(Node {
            id,
            step,
            rec: Arc::new(rec),
            dirty: false,
        });
        if to == NodeStatus::Pending {
            self.mark_dirty(i);
        } else {
            self.transition_from(i, None, to);
        }
        i
    }

    /// Moves node `i` to `to`, with its audit entry, in this turn's batch.
    pub(super) fn transition(&mut self, i: usize, to: NodeStatus) {
        let from = self.rec(i).status;
        self.transition_from(i, Some(from), to);
    }

    /// Records node `i`'s move to `to` in this turn's batch, with its audit entry, and keeps
    /// the step bookkeeping in step. `from` is `None` for a node created in its final state.
    pub(super) fn transition_from(&mut self, i: usize, from: Option<NodeStatus>, to: NodeStatus) {
        let node = &mut self.nodes[i];
        let rec = Arc::make_mut(&mut node.rec);
        debug_assert!(
            from.is_none_or(|f| f.can_become(to)),
            "illegal transition {from:?} -> {to} of {}",
            node.id
        );
        rec.status = to;
        if to == NodeStatus::Failed {
            // `run.failures` lists it.
            self.ctx_gen += 1;
        }
        match (&rec.error, to) {
            (Some(e), NodeStatus::Failed) => tracing::warn!(
                run = %self.run.run_id, node = %node.id, attempt = rec.attempts,
                class = e.class.as_str(), error = %e.message, "Node failed"
            ),
            _ => tracing::debug!(
                run = %self.run.run_id, node = %node.id, attempt = rec.attempts,
                from = from.map_or("new", |f| f.as_str()), to = to.as_str(), "Node transition"
            ),
        }
        let plain = rec.skip_reason.is_none() && (to != NodeStatus::Failed || rec.error.is_none());
        if plain {
            // The common case, typed: no JSON map, no copies of the ids.
            let t = TransitionDraft {
                at: self.now,
                actor: Arc::clone(&self.actor),
                run_id: Arc::clone(&self.run_id),
                node: Arc::clone(&node.id),
                from,
                to,
                attempt: rec.attempts,
            };
            self.batch.audit.push(t.into());
        } else {
            let mut details = json!({ "from": from.map_or("new", |f| f.as_str()), "to": to, "attempt": rec.attempts });
            if to == NodeStatus::Failed {
                if let Some(e) = &rec.error {
                    details["error"] = json!({ "class": e.class, "message": e.message });
                    // The cause a plugin attached (failed stack events, request ids) belongs
                    // in the audit log, not only in the node record.
                    if !e.context.is_null() {
                        details["error"]["context"] = e.context.clone();
                    }
                }
            }
            if let Some(r) = rec.skip_reason {
                details["reason"] = json!(r);
            }
            self.audit(Some(i), TransitionDraft::KIND, details);
        }
        if from.is_some_and(|f| !f.is_terminal()) && to.is_terminal() {
            let step = self.nodes[i].step;
            let index = self.nodes[i].rec.index.unwrap_or(0);
            let stopped = self.rollouts[step]
                .as_mut()
                .is_some_and(|p| p.ended(index, to == NodeStatus::Failed));
            self.open[step] = self.open[step].saturating_sub(1);
            if stopped {
                self.stop_rollout(step);
            } else if self.open[step] == 0 {
                self.step_done(step);
            }
        }
        // Only the latest state of a node is written; its audit entries keep every step.
        self.mark_dirty(i);
    }

    pub(super) fn step_done(&mut self, i: usize) {
        self.ctx_gen += 1;
        for k in 0..self.wf.dependents(i).len() {
            let d = self.wf.dependents(i)[k];
            self.waiting_on[d] = self.waiting_on[d].saturating_sub(1);
            if self.waiting_on[d] == 0 && self.step_nodes[d].is_none() {
                self.activatable.push_back(d);
            }
        }
    }

    /// Sets the nodes of a step being activated and marks it done if none is open.
    pub(super) fn set_step_nodes(&mut self, i: usize, nodes: Range<usize>) {
        let open = self.nodes[nodes.clone()]
            .iter()
            .filter(|n| !n.rec.status.is_terminal())
            .count();
        self.step_nodes[i] = Some(nodes);
        self.open[i] = open;
        if open == 0 {
            self.step_done(i);
        }
    }

    pub(super) fn begin_attempt(&mut self, i: usize) {
        let now = self.now;
        let step = self.nodes[i].step;
        let rec = self.rec_mut(i);
        rec.attempts += 1;
        rec.started_at.get_or_insert(now);
        rec.error = None;
        let (from, attempt) = (rec.status, rec.attempts);
        if let Some(t) = self.wf.steps[step].timeout {
            self.deadlines
                .entry(i)
                .or_insert_with(|| Instant::now() + t);
        }
        self.transition_from(i, Some(from), NodeStatus::Running);
        if !self.observers.is_empty() {
            self.emit(RunEvent::NodeStarted {
                run_id: self.run.run_id.clone(),
                node: self.nodes[i].id.to_string(),
                attempt,
            });
        }
        self.to_spawn.push(i);
    }

    /// A successful attempt.
    pub(super) fn succeed(&mut self, node: usize, outputs: Value) {
        self.rec_mut(node).outputs = Some(outputs);
        self.end_node(node, NodeStatus::Succeeded, None, None);
    }

    /// Ends node `i` in `status`, a final one, and tells observers with the next commit.
    pub(super) fn end_node(
        &mut self,
        i: usize,
        status: NodeStatus,
        error: Option<StepError>,
        reason: Option<&str>,
    ) {
        let now = self.now;
        self.rec_mut(i).finished_at = Some(now);
        self.transition(i, status);
        self.emit_finished(i, status, error, reason);
    }

    pub(super) fn emit_finished(
        &mut self,
        i: usize,
        status: NodeStatus,
        error: Option<StepError>,
        reason: Option<&str>,
    ) {
        if self.observers.is_empty() {
            return;
        }
        self.events.push(RunEvent::NodeFinished {
            run_id: self.run.run_id.clone(),
            node: self.nodes[i].id.to_string(),
            status,
            attempts: self.rec(i).attempts,
            error,
            reason: reason.map(str::to_string),
        });
    }

    /// Creates step `i`'s single node in a final state (skipped, failed) without running it.
    pub(super) fn finish_new(
        &mut self,
        i: usize,
        mut rec: NodeRecord,
        status: NodeStatus,
        reason: Option<&str>,
    ) {
        rec.finished_at = Some(self.now);
        let error = rec.error.clone();
        let node = self.create(i, rec, status);
        self.emit_finished(node, status, error, reason);
        self.set_step_nodes(i, node..node + 1);
    }

    /// A failed attempt (or one that could not start): a retry, or the node's failure
    /// (critical ones stop the run).
    pub(super) fn fail_attempt(&mut self, node: usize, mut err: StepError) {
        let wf = Arc::clone(&self.wf);
        let step = &wf.steps[self.nodes[node].step];
        let attempts = self.rec(node).attempts;
        // Only attempts the step ended count against `max_attempts` (see `cut_offs`).
        let counted = attempts
            .saturating_sub(self.cut_offs.get(&node).copied().unwrap_or(0))
            .max(1);
        let deadline = self.deadlines.get(&node).copied();
        let retry = if self.stop.is_none() {
            step.retry.should_retry(counted, &err)
        } else {
            None
        };
        let retry = retry.filter(|d| deadline.is_none_or(|dl| Instant::now() + *d < dl));
        if let Some(delay) = retry {
            let id = Arc::clone(&self.nodes[node].id);
            tracing::info!(
                run = %self.run.run_id, node = %id, attempt = attempts,
                delay_ms = delay.as_millis() as u64, error = %err.message, "Retry scheduled"
            );
            self.audit(
                Some(node),
                "retry_scheduled",
                json!({ "attempt": attempts, "delay_ms": delay.as_millis() as u64, "error": { "class": err.class, "message": err.message } }),
            );
            self.emit(RunEvent::RetryScheduled {
                run_id: self.run.run_id.clone(),
                node: id.to_string(),
                attempt: attempts,
                delay_ms: delay.as_millis() as u64,
                error: err,
            });
            let token = CancellationToken::new();
            self.retrying.insert(node, token.clone());
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = token.cancelled() => {}
                }
                let _ = tx.send(Msg::RetryDue { node });
            });
            return;
        }
        if err.class == ErrorClass::Transient && deadline.is_some_and(|dl| Instant::now() >= dl) {
            err.message = format!("step timed out; last error: {}", err.message);
        }
        let critical = err.class == ErrorClass::Critical;
        self.rec_mut(node).error = Some(err.clone());
        self.end_node(node, NodeStatus::Failed, Some(err), None);
        if critical {
            self.audit(Some(node), "run_failed_critically", Value::Null);
            self.stop = Some(Stop::Critical);
            for t in self.live.values().chain(self.retrying.values()) {
                t.cancel();
            }
            self.cancel_unstarted_after_critical();
        }
    }

    /// Step `k`'s failures went beyond its tolerance: its instances that never started are
    /// skipped (those running finish), and the step is done when they are.
    fn stop_rollout(&mut self, k: usize) {
        let range = self.step_nodes[k].clone().unwrap_or(0..0);
        let pending: Vec<usize> = range
            .filter(|&i| self.rec(i).status == NodeStatus::Pending)
            .collect();
        let id = self.wf.steps[k].id.clone();
        self.audit_as(
            Some(id),
            "rollout_stopped",
            json!({ "skipped": pending.len() }),
        );
        // The last of them to end marks the step done (see `transition_from`).
        let none = pending.is_empty();
        for i in pending {
            let now = self.now;
            let rec = self.rec_mut(i);
            rec.finished_at = Some(now);
            rec.skip_reason = Some(SkipReason::RolloutStopped);
            self.end_node(
                i,
                NodeStatus::Skipped,
                None,
                Some("earlier instances failed beyond the step's tolerance"),
            );
        }
        if none && self.open[k] == 0 {
            self.step_done(k);
        }
    }

    /// After a stop, what never started: kept pending for resume (interrupted), or cancelled.
    pub(super) fn settle_unstarted(&mut self, stop: Stop) {
        if stop == Stop::Interrupt {
            return;
        }
        let mut open: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.rec(i).status.is_terminal())
            .collect();
        open.sort_by(|&a, &b| self.nodes[a].id.cmp(&self.nodes[b].id));
        for i in open {
            self.end_node(i, NodeStatus::Cancelled, None, Some("the run was stopped"));
        }
        // Steps never activated stay without records: `status` shows them as not run.
    }

    /// A critical failure: every node not yet finished is cancelled, every step not yet
    /// activated is skipped (no failure handlers: nothing more may touch the outside world).
    pub(super) fn cancel_unstarted_after_critical(&mut self) {
        let pending: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.rec(i).status == NodeStatus::Pending)
            .collect();
        for i in pending {
            let now = self.now;
            self.rec_mut(i).finished_at = Some(now);
            self.transition(i, NodeStatus::Cancelled);
        }
        self.ready.clear();
        for i in 0..self.wf.steps.len() {
            if self.step_nodes[i].is_none() {
                let mut rec = single_node(&self.wf.steps[i].id);
                rec.skip_reason = Some(SkipReason::RunStopped);
                self.finish_new(
                    i,
                    rec,
                    NodeStatus::Skipped,
                    Some("the run failed critically"),
                );
            }
        }
        self.activatable.clear();
    }
}

//! The run loop of one execution: each turn activates, starts, commits the turn's batch
//! durably (group commit), then spawns attempts and tells observers; and the bookkeeping every
//! other part uses (the clock of the turn, audit entries, node records, the commit itself).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use chrono::Utc;
use rustc_hash::FxHashMap;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Engine, EngineError, Execution, Node, RunControl, RunOutcome, Stop};
use crate::events::{Observer, RunEvent};
use crate::plugin::RunLink;
use crate::state::{NodeRecord, NodeStatus, RunRecord, RunStatus, SkipReason};
use crate::store::{AuditDraft, Batch, StoreError};
use crate::workflow::Workflow;

impl<'a> Execution<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        wf: Arc<Workflow>,
        run: RunRecord,
        control: RunControl,
        observers: Vec<Arc<dyn Observer>>,
        existing: Vec<NodeRecord>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (report_tx, reports) = mpsc::unbounded_channel();
        let run_id: Arc<str> = run.run_id.as_str().into();
        let actor: Arc<str> = run.trigger.actor.as_str().into();
        let resumed = !existing.is_empty() || run.status == RunStatus::Interrupted;
        let n = wf.steps.len();
        let mut by_step: Vec<Vec<NodeRecord>> = vec![Vec::new(); n];
        for r in existing {
            // The workflow is the run's own snapshot: every record belongs to one of its steps.
            if let Some(i) = wf.step_index(&r.step_id) {
                by_step[i].push(r);
            }
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        let mut by_id: FxHashMap<Arc<str>, usize> =
            FxHashMap::with_capacity_and_hasher(n, Default::default());
        let mut step_nodes: Vec<Option<Range<usize>>> = vec![None; n];
        for (i, mut list) in by_step.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            list.sort_by_key(|r| r.index.unwrap_or(0));
            let start = nodes.len();
            for r in list {
                let id = Arc::clone(&r.node_id);
                by_id.insert(Arc::clone(&id), nodes.len());
                nodes.push(Node {
                    id,
                    step: i,
                    rec: Arc::new(r),
                    dirty: false,
                });
            }
            step_nodes[i] = Some(start..nodes.len());
        }
        let open: Vec<usize> = step_nodes
            .iter()
            .map(|r| {
                r.clone().map_or(0, |r| {
                    nodes[r]
                        .iter()
                        .filter(|n| !n.rec.status.is_terminal())
                        .count()
                })
            })
            .collect();
        let done = |k: usize| step_nodes[k].is_some() && open[k] == 0;
        let waiting_on: Vec<usize> = wf
            .steps
            .iter()
            .map(|s| s.needs.iter().filter(|&&k| !done(k)).count())
            .collect();
        let activatable = wf
            .order
            .iter()
            .copied()
            .filter(|&i| step_nodes[i].is_none() && waiting_on[i] == 0)
            .collect();
        Execution {
            engine,
            wf,
            inputs: run.inputs.clone(),
            run,
            control,
            observers,
            nodes,
            by_id,
            step_nodes,
            open,
            rollouts: vec![None; n],
            waiting_on,
            activatable,
            ready: VecDeque::new(),
            live: Default::default(),
            waiting: Default::default(),
            to_spawn: Vec::new(),
            finished_inline: Vec::new(),
            retrying: Default::default(),
            deadlines: Default::default(),
            cut_offs: Default::default(),
            batch: Batch::default(),
            dirty: Vec::new(),
            events: Vec::new(),
            tx,
            rx,
            reports,
            stop: None,
            resumed,
            commits: 0,
            ctx_gen: 0,
            ctx_cache: None,
            resolved: vec![None; n],
            breakers: Default::default(),
            link: RunLink::new(Some(report_tx), Some(Arc::clone(&engine.store))),
            run_id,
            actor,
            plan: None,
            now: Utc::now(),
        }
    }

    /// Reads the clock for what follows. Called where time has passed: at each turn, after a
    /// durable commit, after waiting.
    pub(super) fn tick(&mut self) {
        self.now = Utc::now();
    }

    /// The attempts earlier processes had cut off, per node, from the run's audit.
    fn count_cut_offs(&mut self) -> Result<(), EngineError> {
        let entries = self.engine.store.audit(&self.run_id)?;
        for e in entries {
            let d = &e.draft;
            if d.kind == "run_redriven" {
                // A redrive starts every node's tries afresh: what came before counts for
                // nothing, and a node reset in place does not count the attempts it had.
                self.cut_offs.clear();
                for r in d.details["reset"].as_array().into_iter().flatten() {
                    let node = r["node"].as_str().and_then(|n| self.by_id.get(n));
                    if let (Some(&i), Some(n)) = (node, r["attempts"].as_u64()) {
                        *self.cut_offs.entry(i).or_default() += n as u32;
                    }
                }
                continue;
            }
            if d.kind != "attempt_cut_off" && d.kind != "attempt_interrupted" {
                continue;
            }
            if let Some(&i) = d.node.as_deref().and_then(|n| self.by_id.get(n)) {
                *self.cut_offs.entry(i).or_default() += 1;
            }
        }
        Ok(())
    }

    pub(super) fn audit(&mut self, node: Option<usize>, kind: &str, details: Value) {
        let node = node.map(|i| self.nodes[i].id.to_string());
        self.audit_as(node, kind, details);
    }

    /// An audit entry of the turn about `node` by name (a step, or a node a plugin names).
    pub(super) fn audit_as(&mut self, node: Option<String>, kind: &str, details: Value) {
        let mut d = AuditDraft::new(&self.actor, &self.run_id, kind, details);
        d.at = self.now;
        d.node = node;
        self.batch.audit.push(d.into());
    }

    pub(super) fn rec(&self, i: usize) -> &NodeRecord {
        &self.nodes[i].rec
    }

    /// A node's record, to change: copied first if a batch or the store still holds it.
    pub(super) fn rec_mut(&mut self, i: usize) -> &mut NodeRecord {
        Arc::make_mut(&mut self.nodes[i].rec)
    }

    pub(super) fn mark_dirty(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.dirty {
            n.dirty = true;
            self.dirty.push(i);
        }
    }

    pub(super) async fn run(&mut self) -> Result<RunOutcome, EngineError> {
        self.tick();
        // Attempts cut off by a crash or Ctrl-C run again, with the same idempotency key.
        let mut cut_off: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                matches!(
                    self.rec(i).status,
                    NodeStatus::Running | NodeStatus::Waiting
                )
            })
            .collect();
        cut_off.sort_by(|&a, &b| self.nodes[a].id.cmp(&self.nodes[b].id));
        if self.resumed {
            self.count_cut_offs()?;
        }
        for i in cut_off {
            // A kill is not the step's failure: the attempt runs again without using up one
            // of its tries (else a few host restarts during one long step fail the run).
            let attempt = self.rec(i).attempts;
            self.audit(Some(i), "attempt_cut_off", json!({ "attempt": attempt }));
            *self.cut_offs.entry(i).or_default() += 1;
            self.transition(i, NodeStatus::Pending);
        }
        // Nodes are in step order, and each step's in instance order.
        let ready: VecDeque<usize> = (0..self.nodes.len())
            .filter(|&i| self.rec(i).status == NodeStatus::Pending)
            .collect();
        self.ready = ready;

        self.run.status = RunStatus::Running;
        self.batch.runs.push(self.run.clone());
        let kind = if self.resumed {
            "run_resumed"
        } else {
            "run_started"
        };
        self.audit(
            None,
            kind,
            json!({ "workflow": self.wf.name, "max_parallel": self.run.max_parallel }),
        );
        tracing::info!(run = %self.run.run_id, workflow = %self.wf.name, resumed = self.resumed, "Run started");
        self.events.push(RunEvent::RunStarted {
            run_id: self.run.run_id.clone(),
            workflow: self.wf.name.clone(),
            resumed: self.resumed,
            nodes_total: self.wf.steps.len(),
        });

        let mut grace_deadline: Option<Instant> = None;
        loop {
            self.tick();
            if self.stop.is_none() {
                while let Some(i) = self.activatable.pop_front() {
                    self.activate(i);
                }
                self.start_nodes();
            }
            let spawns = self.prepare_spawns();
            self.flush().await?;
            self.tick();
            for (node, with) in spawns {
                self.spawn_attempt(node, with);
            }
            if !self.finished_inline.is_empty() {
                // A step's messages were sent before its result: show them first.
                while let Ok((n, s)) = self.reports.try_recv() {
                    self.on_report(n, s);
                }
                self.tick();
                for (node, cancelled, result) in std::mem::take(&mut self.finished_inline) {
                    self.attempt_ended(node, cancelled, result);
                }
                // Their transitions go into the next commit before anything else happens.
                continue;
            }

            let work_now =
                self.stop.is_none() && (!self.activatable.is_empty() || self.can_start());
            if work_now {
                continue;
            }
            if self.live.is_empty() && self.retrying.is_empty() {
                break;
            }

            let interrupt = self.control.interrupt.clone();
            let cancel = self.control.cancel.clone();
            let grace = async move {
                match grace_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if self.stop != Some(Stop::Cancel) => {
                    self.tick();
                    self.stop = Some(Stop::Cancel);
                    self.audit(None, "run_cancel_requested", Value::Null);
                    for t in self.live.values().chain(self.retrying.values()) {
                        t.cancel();
                    }
                }
                _ = interrupt.cancelled(), if self.stop.is_none() => {
                    self.tick();
                    self.stop = Some(Stop::Interrupt);
                    self.audit(None, "run_interrupt_requested", json!({ "grace_ms": self.control.grace.as_millis() as u64 }));
                    grace_deadline = Some(Instant::now() + self.control.grace);
                    for t in self.retrying.values() {
                        t.cancel();
                    }
                }
                _ = grace => {
                    grace_deadline = None;
                    for t in self.live.values() {
                        t.cancel();
                    }
                }
                Some(msg) = self.rx.recv() => {
                    // Let other attempts that are about to finish report too, so that one
                    // commit covers them all (group commit).
                    tokio::task::yield_now().await;
                    self.tick();
                    // A step's messages were sent before its result: show them first.
                    while let Ok((n, s)) = self.reports.try_recv() {
                        self.on_report(n, s);
                    }
                    self.handle(msg);
                    while let Ok(m) = self.rx.try_recv() {
                        self.handle(m);
                    }
                }
                Some((node, sig)) = self.reports.recv() => {
                    self.tick();
                    self.on_report(node, sig);
                }
            }
        }

        self.tick();
        while let Ok((n, s)) = self.reports.try_recv() {
            self.on_report(n, s);
        }
        if let Some(stop) = self.stop {
            self.settle_unstarted(stop);
        }
        let status = match self.stop {
            Some(Stop::Interrupt) => RunStatus::Interrupted,
            Some(Stop::Cancel) => RunStatus::Cancelled,
            Some(Stop::Critical) => RunStatus::Failed,
            None if (0..self.wf.steps.len()).any(|k| self.step_failed(k)) => RunStatus::Failed,
            None => RunStatus::Succeeded,
        };
        self.run.status = status;
        if status.is_terminal() {
            self.run.finished_at = Some(self.now);
        }
        self.batch.runs.push(self.run.clone());
        let counts = self.counts();
        // `commits` counts this process's durable commits for the run (group commit at work).
        let commits = self.commits + 1;
        self.audit(
            None,
            "run_finished",
            json!({ "status": status, "nodes": counts, "commits": commits }),
        );
        tracing::info!(run = %self.run.run_id, status = status.as_str(), commits, "Run finished");
        self.events.push(RunEvent::RunFinished {
            run_id: self.run.run_id.clone(),
            status,
        });
        self.flush().await?;
        Ok(RunOutcome {
            run_id: self.run.run_id.clone(),
            status,
        })
    }

    pub(super) fn counts(&self) -> Value {
        let mut m: std::collections::BTreeMap<&str, usize> = Default::default();
        for n in &self.nodes {
            *m.entry(n.rec.status.as_str()).or_default() += 1;
        }
        json!(m)
    }

    /// Commits this turn's batch durably, then tells observers.
    pub(super) async fn flush(&mut self) -> Result<(), EngineError> {
        let mut batch = std::mem::take(&mut self.batch);
        if !self.dirty.is_empty() {
            let mut recs = Vec::with_capacity(self.dirty.len());
            for i in self.dirty.drain(..) {
                let n = &mut self.nodes[i];
                n.dirty = false;
                recs.push(Arc::clone(&n.rec));
            }
            batch.nodes.push((Arc::clone(&self.run_id), recs));
        }
        if !batch.is_empty() {
            self.commits += 1;
            let store = Arc::clone(&self.engine.store);
            // On the multi-threaded runtime, commit in place: tokio moves this worker's other
            // tasks away meanwhile, and the scheduler saves a thread hand-off per turn.
            let multi = tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread;
            // Closed never: the engine owns the gate.
            let _turn = self.engine.commit_gate.acquire().await;
            let res = if multi {
                tokio::task::block_in_place(|| store.commit(batch))
            } else {
                tokio::task::spawn_blocking(move || store.commit(batch))
                    .await
                    .map_err(|e| StoreError::Backend(format!("commit task failed: {e}")))?
            };
            if let Err(e) = res {
                // Nothing may go on from state we failed to record.
                for t in self.live.values().chain(self.retrying.values()) {
                    t.cancel();
                }
                return Err(e.into());
            }
        }
        for e in std::mem::take(&mut self.events) {
            for o in &self.observers {
                o.on_event(&e);
            }
        }
        Ok(())
    }

    pub(super) fn emit(&mut self, e: RunEvent) {
        if !self.observers.is_empty() {
            self.events.push(e);
        }
    }

    /// The records of a step's nodes (none before it is activated).
    pub(super) fn step_recs(&self, i: usize) -> impl Iterator<Item = &NodeRecord> + Clone {
        let range = self.step_nodes[i].clone().unwrap_or(0..0);
        self.nodes[range].iter().map(|n| &*n.rec)
    }

    /// How a finished step ended for its dependents: true = succeeded or skipped by its own
    /// condition; false = failed, cancelled, or skipped because of a failure.
    pub(super) fn step_ok(&self, i: usize) -> bool {
        let tolerated = self.tolerated(i);
        self.step_nodes[i].is_some()
            && self.step_recs(i).all(|n| match n.status {
                NodeStatus::Succeeded => true,
                NodeStatus::Failed => tolerated,
                NodeStatus::Skipped => !matches!(
                    n.skip_reason,
                    Some(
                        SkipReason::UpstreamFailed
                            | SkipReason::RunStopped
                            | SkipReason::RolloutStopped
                    )
                ),
                _ => false,
            })
    }

    /// Whether the failed instances of step `i` are within its `tolerate` (never without
    /// one). Instances skipped after the tolerance was exceeded make the step fail anyway.
    pub(super) fn tolerated(&self, i: usize) -> bool {
        self.wf.steps[i].rollout.tolerate.is_some()
            && self.rollouts[i]
                .as_ref()
                .is_some_and(|p| p.within_tolerance())
    }

    /// The rollouts of steps fanned out before this process took the run over: read again
    /// in the context they were first read in (their needs' outputs do not change), and the
    /// instances that ended replayed.
    pub(super) fn rebuild_rollouts(&mut self) {
        let steps: Vec<usize> = (0..self.wf.steps.len())
            .filter(|&i| !self.wf.steps[i].rollout.is_empty() && self.step_nodes[i].is_some())
            .collect();
        if steps.is_empty() {
            return;
        }
        let ctx = crate::expr::ctx_value(self.context());
        let approved = if steps
            .iter()
            .any(|&i| self.wf.steps[i].approve_waves.is_some())
        {
            self.engine
                .store
                .annotations(&self.run.run_id)
                .unwrap_or_default()
        } else {
            Default::default()
        };
        for i in steps {
            let Some(n) = self.step_recs(i).next().and_then(|r| r.fan_out) else {
                continue;
            };
            let Ok(Some(mut p)) = rollout_of(&self.wf.steps[i], n, &ctx) else {
                continue;
            };
            // Approvals first: a wave's first instance that ended after its approval did
            // not end the rollout.
            for r in self.step_recs(i) {
                let key = crate::plugin::progress_key(&r.node_id, super::gates::WAVE_APPROVED);
                if let (Some(index), true) = (r.index, approved.contains_key(&key)) {
                    if let Some((wave, _)) = p.gate_of(index) {
                        p.approve(wave);
                    }
                }
            }
            for r in self.step_recs(i) {
                if r.status.is_terminal() {
                    p.ended(r.index.unwrap_or(0), r.status == NodeStatus::Failed);
                }
            }
            self.rollouts[i] = Some(p);
        }
    }

    /// Whether step `i` failed the run: a failed instance it does not tolerate.
    pub(super) fn step_failed(&self, i: usize) -> bool {
        self.step_recs(i).any(|r| r.status == NodeStatus::Failed) && !self.tolerated(i)
    }
}

/// The rollout of a step fanned out over `n` instances, when it has `tolerate` or `waves`,
/// its expressions read in `ctx`.
pub(super) fn rollout_of(
    step: &crate::workflow::Step,
    n: usize,
    ctx: &minijinja::Value,
) -> Result<Option<crate::rollout::Progress>, String> {
    if step.rollout.is_empty() {
        return Ok(None);
    }
    let (tolerance, waves) = step
        .rollout
        .resolve(|v| crate::expr::render_value(v, ctx).map_err(|e| e.to_string()))
        .map_err(|problems| {
            problems
                .into_iter()
                .map(|(field, message)| format!("`{field}`: {message}"))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    let p = crate::rollout::Progress::new(&waves, tolerance, n);
    // An expression may turn the approvals off (`none`, `false`), e.g. from an input.
    let gated = match &step.approve_waves {
        None => false,
        Some(v) if crate::expr::has_templates(v) => {
            match crate::expr::render_value(v, ctx).map_err(|e| format!("`approve_waves`: {e}"))? {
                Value::Null | Value::Bool(false) => false,
                Value::Object(_) => true,
                other => {
                    return Err(format!(
                        "`approve_waves` gives {other}: approval settings (a mapping), or none"
                    ))
                }
            }
        }
        Some(_) => true,
    };
    Ok(Some(if gated { p.gated() } else { p }))
}

//! Runs a workflow: decides which nodes start, runs their attempts, retries, checkpoints.
//!
//! One task owns a run's state. Each loop turn it activates steps whose `needs` are done,
//! starts nodes up to `max_parallel`, commits every transition of the turn in one durable
//! transaction (group commit), and only then starts attempts and tells observers. So a
//! dependent never starts before its predecessor's success is on disk, and parallel nodes
//! share fsyncs. An attempt's first poll runs in this task; one that finishes there is
//! handled at once, one that has to wait gets a task of its own and reports back over a
//! channel. The scheduler is the only writer.

use std::collections::VecDeque;
use std::ops::Range;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, Breakers, Outcome as BreakerOutcome};
use crate::error::{ErrorClass, StepError};
use crate::events::{Observer, RunEvent};
use crate::expr;
use crate::plugin::{Plugin, Registry, RunLink, StepContext, StepSignal};
use crate::state::{NodeRecord, NodeStatus, RunRecord, RunStatus, Signal, SkipReason, Trigger};
use crate::store::{AuditDraft, Batch, Store, StoreError, TransitionDraft};
use crate::workflow::{RunsOn, Workflow};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run `{0}` is being executed by another process")]
    Busy(String),
    #[error("run `{run_id}` already exists with a different {what}; choose another --run-id")]
    Conflict { run_id: String, what: &'static str },
    #[error("run `{0}` has already finished ({1})")]
    Finished(String, RunStatus),
    #[error("invalid run id `{0}`: use letters, digits, `-` and `_` (at most 64)")]
    BadRunId(String),
    #[error("the stored workflow of run `{0}` no longer compiles: {1}")]
    Stale(String, String),
    #[error("{} invalid input(s): {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Inputs(Vec<crate::inputs::InputError>),
    #[error("no run `{0}`")]
    NoSuchRun(String),
    #[error("run `{0}` has no node `{1}`")]
    NoSuchNode(String, String),
    #[error("node `{0}` has already finished ({1})")]
    NodeFinished(String, NodeStatus),
}

/// How a caller stops a run.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Stop scheduling, let running attempts finish for `grace`, then cancel them; the run
    /// ends `interrupted` and can be resumed (Ctrl-C).
    pub interrupt: CancellationToken,
    /// Cancel everything now; the run ends `cancelled` (a user's explicit cancel).
    pub cancel: CancellationToken,
    pub grace: Duration,
}

/// What a new run is made of.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_id: Option<String>,
    pub inputs: Map<String, Value>,
    pub trigger: Trigger,
    pub max_parallel: usize,
}

/// The executor: a registry of plugins, a store, and the breakers shared by all its runs.
#[derive(Clone)]
pub struct Engine {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    pub breakers: Arc<Breakers>,
    observers: Vec<Arc<dyn Observer>>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_id: String,
    pub status: RunStatus,
}

pub fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Engine {
    pub fn new(registry: Arc<Registry>, store: Arc<dyn Store>) -> Self {
        Engine {
            registry,
            store,
            breakers: Arc::new(Breakers::default()),
            observers: Vec::new(),
        }
    }

    pub fn observe(&mut self, o: Arc<dyn Observer>) {
        self.observers.push(o);
    }

    /// Creates a run (durably) or, for a `run_id` that exists with the same workflow and
    /// inputs, returns that run so the caller resumes it instead of starting a duplicate.
    pub fn create_run(&self, wf: &Workflow, new: NewRun) -> Result<RunRecord, EngineError> {
        let inputs =
            crate::inputs::resolve(&wf.inputs, new.inputs, &[]).map_err(EngineError::Inputs)?;
        let inputs = Value::Object(inputs);
        let inputs_digest = crate::digest::digest_of(&inputs);
        if let Some(id) = &new.run_id {
            if !valid_run_id(id) {
                return Err(EngineError::BadRunId(id.clone()));
            }
            if let Some(existing) = self.store.run(id)? {
                if existing.workflow_digest != wf.digest {
                    return Err(EngineError::Conflict {
                        run_id: id.clone(),
                        what: "workflow",
                    });
                }
                if existing.inputs_digest != inputs_digest {
                    return Err(EngineError::Conflict {
                        run_id: id.clone(),
                        what: "set of inputs",
                    });
                }
                return Ok(existing);
            }
        }
        let run_id = new
            .run_id
            .unwrap_or_else(|| format!("r-{}", ulid::Ulid::new().to_string().to_lowercase()));
        let record = RunRecord {
            run_id: run_id.clone(),
            workflow: wf.name.clone(),
            workflow_file: wf.source.name.clone(),
            workflow_text: Arc::clone(&wf.source.text),
            workflow_digest: wf.digest.clone(),
            inputs_digest,
            inputs,
            trigger: new.trigger.clone(),
            status: RunStatus::Running,
            max_parallel: new.max_parallel.max(1),
            started_at: Utc::now(),
            finished_at: None,
        };
        let audit = AuditDraft::new(
            &new.trigger.actor,
            &run_id,
            "run_created",
            json!({
                "workflow": wf.name,
                "workflow_digest": wf.digest,
                "inputs_digest": record.inputs_digest,
                "trigger": new.trigger.source,
            }),
        );
        self.store.commit(Batch {
            runs: vec![record.clone()],
            audit: vec![audit.into()],
            ..Batch::default()
        })?;
        Ok(record)
    }

    /// Delivers a signal (an approval) to a node of a run, durably, with an audit entry. Works
    /// from any process that shares the state file; the waiting step picks it up.
    pub fn signal(&self, run_id: &str, node_id: &str, signal: Signal) -> Result<(), EngineError> {
        let run = self
            .store
            .run(run_id)?
            .ok_or_else(|| EngineError::NoSuchRun(run_id.to_string()))?;
        if run.status.is_terminal() {
            return Err(EngineError::Finished(run_id.to_string(), run.status));
        }
        let node = self
            .store
            .nodes(run_id)?
            .into_iter()
            .find(|n| &*n.node_id == node_id)
            .ok_or_else(|| EngineError::NoSuchNode(run_id.to_string(), node_id.to_string()))?;
        if node.status.is_terminal() {
            return Err(EngineError::NodeFinished(node_id.to_string(), node.status));
        }
        let mut audit = AuditDraft::new(
            &signal.actor,
            run_id,
            "signal_received",
            json!({ "value": signal.value }),
        );
        audit.node = Some(node_id.to_string());
        self.store.commit(Batch {
            signals: vec![(run_id.to_string(), node_id.to_string(), signal)],
            audit: vec![audit.into()],
            ..Batch::default()
        })?;
        Ok(())
    }

    /// Keeps observer data with a run (e.g. the Slack channel and thread of its messages).
    pub fn annotate(&self, run_id: &str, key: &str, value: Value) -> Result<(), EngineError> {
        self.store.commit(Batch {
            annotations: vec![(run_id.to_string(), key.to_string(), value)],
            ..Batch::default()
        })?;
        Ok(())
    }

    /// Executes (or resumes) a run until it finishes or is stopped.
    pub async fn execute(
        &self,
        wf: Arc<Workflow>,
        run: RunRecord,
        control: RunControl,
        observers: &[Arc<dyn Observer>],
    ) -> Result<RunOutcome, EngineError> {
        if run.status.is_terminal() {
            return Err(EngineError::Finished(run.run_id.clone(), run.status));
        }
        let lease = self
            .store
            .lease(&run.run_id)?
            .ok_or_else(|| EngineError::Busy(run.run_id.clone()))?;
        // The caller read the run before it held the lock: another process may have finished
        // it in between. Only the record read under the lock counts.
        let run = match self.store.run(&run.run_id)? {
            Some(now) if now.status.is_terminal() => {
                return Err(EngineError::Finished(now.run_id.clone(), now.status));
            }
            Some(now) => now,
            None => run,
        };
        let mut obs: Vec<Arc<dyn Observer>> = self.observers.clone();
        obs.extend(observers.iter().cloned());
        let existing = self.store.nodes(&run.run_id)?;
        let mut ex = Execution::new(self, wf, run, control, obs, existing);
        let res = ex.run().await;
        drop(lease);
        res
    }
}

enum Msg {
    Done {
        node: usize,
        result: Result<Value, StepError>,
    },
    RetryDue {
        node: usize,
    },
    Breaker {
        node: usize,
        key: String,
        from: String,
        to: String,
    },
}

/// A step's plugin, with its registered name.
type Resolved = (Arc<dyn Plugin>, &'static str);

/// A node of the run, by its position in [`Execution::nodes`].
struct Node {
    id: Arc<str>,
    /// Its step's index in the workflow.
    step: usize,
    /// Copy-on-write: the batch being committed and the store may hold this very record, so
    /// a node's record is changed only through [`Arc::make_mut`]. A turn's changes to one
    /// node are made in place; the record is copied at most once per commit that wrote it.
    rec: Arc<NodeRecord>,
    /// In [`Execution::dirty`]: changed since the last commit.
    dirty: bool,
}

struct Execution<'a> {
    engine: &'a Engine,
    wf: Arc<Workflow>,
    run: RunRecord,
    control: RunControl,
    observers: Vec<Arc<dyn Observer>>,
    /// Every node of the run. A node is named by its index everywhere inside the scheduler;
    /// its id string is looked up only for what comes from outside (a plugin's signals).
    nodes: Vec<Node>,
    // Fx hashing: node ids are ours, not an attacker's, and SipHash showed in profiles.
    by_id: FxHashMap<Arc<str>, usize>,
    /// The nodes of each step, once activated: a step's nodes are created together, so they
    /// are contiguous.
    step_nodes: Vec<Option<Range<usize>>>,
    /// Non-terminal nodes per activated step; 0 = the step is done.
    open: Vec<usize>,
    /// Needs of each step that are not done yet.
    waiting_on: Vec<usize>,
    activatable: VecDeque<usize>,
    /// Nodes ready to start.
    ready: VecDeque<usize>,
    /// Attempts in flight in tasks of their own, with their cancellation tokens.
    live: FxHashMap<usize, CancellationToken>,
    /// Live nodes waiting for a signal: they hold no parallelism slot.
    waiting: FxHashSet<usize>,
    /// Nodes that start an attempt once this turn's batch is durable.
    to_spawn: Vec<usize>,
    /// Attempts that ended in their first poll: (node, cancelled, result).
    finished_inline: Vec<(usize, bool, Result<Value, StepError>)>,
    /// Nodes between two attempts.
    retrying: FxHashMap<usize, CancellationToken>,
    deadlines: FxHashMap<usize, Instant>,
    batch: Batch,
    /// Nodes changed since the last commit.
    dirty: Vec<usize>,
    events: Vec<RunEvent>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    sig_rx: mpsc::UnboundedReceiver<(Arc<str>, StepSignal)>,
    stopping: Option<RunStatus>,
    failed: bool,
    resumed: bool,
    /// Durable commits made by this execution.
    commits: u64,
    /// Bumped whenever the expression context changes (a step finished, a node failed).
    ctx_gen: u64,
    ctx_cache: Option<(u64, minijinja::Value)>,
    /// Each step's plugin, once an attempt needed it.
    resolved: Vec<Option<Resolved>>,
    /// The breakers this run used, by circuit key and scope: steps share them, and the
    /// process-wide map is behind a lock.
    breakers: FxHashMap<Box<str>, Arc<Breaker>>,
    /// Given to every attempt's context.
    link: Arc<RunLink>,
    /// The run's id and actor, shared by its audit entries.
    run_id: Arc<str>,
    actor: Arc<str>,
    /// The time of this turn: what the scheduler records happened at one moment (one commit's
    /// transitions) gets one timestamp, read once (see [`Self::tick`]).
    now: DateTime<Utc>,
}

/// The record of a step's only node, whose id is the step's (one string for both).
fn single_node(step_id: &str) -> NodeRecord {
    let id: Arc<str> = step_id.into();
    NodeRecord::new(Arc::clone(&id), id)
}

fn aggregate_status<'r>(recs: impl Iterator<Item = &'r NodeRecord> + Clone) -> NodeStatus {
    let mut recs = recs;
    if recs.clone().any(|r| r.status == NodeStatus::Failed) {
        NodeStatus::Failed
    } else if recs.clone().any(|r| r.status == NodeStatus::Cancelled) {
        NodeStatus::Cancelled
    } else if recs.clone().next().is_some() && recs.clone().all(|r| r.status == NodeStatus::Skipped)
    {
        NodeStatus::Skipped
    } else if recs.clone().all(|r| r.status.is_terminal()) {
        NodeStatus::Succeeded
    } else if recs.any(|r| r.status == NodeStatus::Running) {
        NodeStatus::Running
    } else {
        NodeStatus::Pending
    }
}

impl<'a> Execution<'a> {
    fn new(
        engine: &'a Engine,
        wf: Arc<Workflow>,
        run: RunRecord,
        control: RunControl,
        observers: Vec<Arc<dyn Observer>>,
        existing: Vec<NodeRecord>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
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
            run,
            control,
            observers,
            nodes,
            by_id,
            step_nodes,
            open,
            waiting_on,
            activatable,
            ready: VecDeque::new(),
            live: Default::default(),
            waiting: Default::default(),
            to_spawn: Vec::new(),
            finished_inline: Vec::new(),
            retrying: Default::default(),
            deadlines: Default::default(),
            batch: Batch::default(),
            dirty: Vec::new(),
            events: Vec::new(),
            tx,
            rx,
            sig_rx,
            stopping: None,
            failed: false,
            resumed,
            commits: 0,
            ctx_gen: 0,
            ctx_cache: None,
            resolved: vec![None; n],
            breakers: Default::default(),
            link: RunLink::new(Some(sig_tx), Some(Arc::clone(&engine.store))),
            run_id,
            actor,
            now: Utc::now(),
        }
    }

    /// Reads the clock for what follows. Called where time has passed: at each turn, after a
    /// durable commit, after waiting.
    fn tick(&mut self) {
        self.now = Utc::now();
    }

    fn audit(&mut self, node: Option<usize>, kind: &str, details: Value) {
        let node = node.map(|i| self.nodes[i].id.to_string());
        self.audit_as(node, kind, details);
    }

    /// An audit entry of the turn about `node` by name (a step, or a node a plugin names).
    fn audit_as(&mut self, node: Option<String>, kind: &str, details: Value) {
        let mut d = AuditDraft::new(&self.actor, &self.run_id, kind, details);
        d.at = self.now;
        d.node = node;
        self.batch.audit.push(d.into());
    }

    fn rec(&self, i: usize) -> &NodeRecord {
        &self.nodes[i].rec
    }

    /// A node's record, to change: copied first if a batch or the store still holds it.
    fn rec_mut(&mut self, i: usize) -> &mut NodeRecord {
        Arc::make_mut(&mut self.nodes[i].rec)
    }

    fn mark_dirty(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.dirty {
            n.dirty = true;
            self.dirty.push(i);
        }
    }

    /// Adds a node of step `step` in state `to`. A pending node is not a transition: its
    /// first entry is `pending → …` (a fan-out is audited once per step, as
    /// `step_expanded`); a node created in a final state is one (`new → skipped`).
    fn create(&mut self, step: usize, mut rec: NodeRecord, to: NodeStatus) -> usize {
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
    fn transition(&mut self, i: usize, to: NodeStatus) {
        let from = self.rec(i).status;
        self.transition_from(i, Some(from), to);
    }

    /// Records node `i`'s move to `to` in this turn's batch, with its audit entry, and keeps
    /// the step bookkeeping in step. `from` is `None` for a node created in its final state.
    fn transition_from(&mut self, i: usize, from: Option<NodeStatus>, to: NodeStatus) {
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
            self.open[step] = self.open[step].saturating_sub(1);
            if self.open[step] == 0 {
                self.step_done(step);
            }
        }
        // Only the latest state of a node is written; its audit entries keep every step.
        self.mark_dirty(i);
    }

    fn step_done(&mut self, i: usize) {
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
    fn set_step_nodes(&mut self, i: usize, nodes: Range<usize>) {
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

    async fn run(&mut self) -> Result<RunOutcome, EngineError> {
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
        for i in cut_off {
            self.transition(i, NodeStatus::Pending);
        }
        // Nodes are in step order, and each step's in instance order.
        let ready: VecDeque<usize> = (0..self.nodes.len())
            .filter(|&i| self.rec(i).status == NodeStatus::Pending)
            .collect();
        self.ready = ready;
        self.failed = self
            .nodes
            .iter()
            .any(|n| n.rec.status == NodeStatus::Failed);

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
            if self.stopping.is_none() {
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
                while let Ok((n, s)) = self.sig_rx.try_recv() {
                    self.signal(n, s);
                }
                self.tick();
                for (node, cancelled, result) in std::mem::take(&mut self.finished_inline) {
                    self.attempt_ended(node, cancelled, result);
                }
                // Their transitions go into the next commit before anything else happens.
                continue;
            }

            let max = self.run.max_parallel.max(1);
            let work_now = self.stopping.is_none()
                && (!self.activatable.is_empty()
                    || (!self.ready.is_empty() && self.live.len() < max));
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
                _ = cancel.cancelled(), if self.stopping != Some(RunStatus::Cancelled) => {
                    self.tick();
                    self.stopping = Some(RunStatus::Cancelled);
                    self.audit(None, "run_cancel_requested", Value::Null);
                    for t in self.live.values().chain(self.retrying.values()) {
                        t.cancel();
                    }
                }
                _ = interrupt.cancelled(), if self.stopping.is_none() => {
                    self.tick();
                    self.stopping = Some(RunStatus::Interrupted);
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
                    while let Ok((n, s)) = self.sig_rx.try_recv() {
                        self.signal(n, s);
                    }
                    self.handle(msg);
                    while let Ok(m) = self.rx.try_recv() {
                        self.handle(m);
                    }
                }
                Some((node, sig)) = self.sig_rx.recv() => {
                    self.tick();
                    self.signal(node, sig);
                }
            }
        }

        self.tick();
        while let Ok((n, s)) = self.sig_rx.try_recv() {
            self.signal(n, s);
        }
        if let Some(reason) = self.stopping {
            self.settle_unstarted(reason);
        }
        let status = match self.stopping {
            Some(RunStatus::Interrupted) => RunStatus::Interrupted,
            Some(RunStatus::Cancelled) => RunStatus::Cancelled,
            _ if self.failed => RunStatus::Failed,
            _ => RunStatus::Succeeded,
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

    /// After a stop, what never started: kept pending for resume (interrupted), or cancelled.
    fn settle_unstarted(&mut self, reason: RunStatus) {
        if reason == RunStatus::Interrupted {
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

    fn counts(&self) -> Value {
        let mut m: std::collections::BTreeMap<&str, usize> = Default::default();
        for n in &self.nodes {
            *m.entry(n.rec.status.as_str()).or_default() += 1;
        }
        json!(m)
    }

    /// Commits this turn's batch durably, then tells observers.
    async fn flush(&mut self) -> Result<(), EngineError> {
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

    fn emit(&mut self, e: RunEvent) {
        if !self.observers.is_empty() {
            self.events.push(e);
        }
    }

    /// The records of a step's nodes (none before it is activated).
    fn step_recs(&self, i: usize) -> impl Iterator<Item = &NodeRecord> + Clone {
        let range = self.step_nodes[i].clone().unwrap_or(0..0);
        self.nodes[range].iter().map(|n| &*n.rec)
    }

    /// How a finished step ended for its dependents: true = succeeded or skipped by its own
    /// condition; false = failed, cancelled, or skipped because of a failure.
    fn step_ok(&self, i: usize) -> bool {
        self.step_nodes[i].is_some()
            && self.step_recs(i).all(|n| match n.status {
                NodeStatus::Succeeded => true,
                NodeStatus::Skipped => !matches!(
                    n.skip_reason,
                    Some(SkipReason::UpstreamFailed | SkipReason::RunStopped)
                ),
                _ => false,
            })
    }

    /// Creates step `i`'s single node in a final state (skipped, failed) without running it.
    fn finish_new(
        &mut self,
        i: usize,
        mut rec: NodeRecord,
        status: NodeStatus,
        reason: Option<&str>,
    ) {
        rec.finished_at = Some(self.now);
        let error = rec.error.clone();
        if status == NodeStatus::Failed {
            self.failed = true;
        }
        let node = self.create(i, rec, status);
        self.emit_finished(node, status, error, reason);
        self.set_step_nodes(i, node..node + 1);
    }

    /// Creates the nodes of a step whose needs are all done: skipped, fanned out, or one node.
    fn activate(&mut self, i: usize) {
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
            let cancelled = self.stopping == Some(RunStatus::Cancelled);
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
        if items.is_empty() {
            let mut rec = single_node(&step.id);
            rec.fan_out = Some(0);
            rec.outputs = Some(Value::Array(Vec::new()));
            rec.finished_at = Some(self.now);
            let node = self.create(i, rec, NodeStatus::Succeeded);
            return self.set_step_nodes(i, node..node + 1);
        }
        let n = items.len();
        self.audit_as(
            Some(step.id.clone()),
            "step_expanded",
            json!({ "items": n }),
        );
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
    fn context(&self) -> Value {
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
            steps.insert(
                s.id.clone(),
                json!({ "status": aggregate_status(recs), "outputs": outputs, "error": error }),
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
                    "class": e.map(|e| e.class),
                    "message": e.map(|e| e.message.clone()),
                    "context": e.map(|e| e.context.clone()),
                })
            })
            .collect();
        json!({
            "inputs": self.run.inputs,
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
    fn shared_context(&mut self) -> minijinja::Value {
        match &self.ctx_cache {
            Some((gen, ctx)) if *gen == self.ctx_gen => ctx.clone(),
            _ => {
                let ctx = expr::ctx_value(self.context());
                self.ctx_cache = Some((self.ctx_gen, ctx.clone()));
                ctx
            }
        }
    }

    /// Moves ready nodes to running, up to `max_parallel`.
    fn start_nodes(&mut self) {
        let max = self.run.max_parallel.max(1);
        while self.busy() + self.to_spawn.len() < max {
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            if matches!(
                self.rec(i).status,
                NodeStatus::Pending | NodeStatus::Running
            ) {
                self.begin_attempt(i);
            }
        }
    }

    /// Attempts that hold a parallelism slot.
    fn busy(&self) -> usize {
        self.live.len().saturating_sub(self.waiting.len())
    }

    fn begin_attempt(&mut self, i: usize) {
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

    /// Renders the `with:` of every node about to start. A render error fails the node
    /// before any attempt runs.
    fn prepare_spawns(&mut self) -> Vec<(usize, Value)> {
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
    fn resolve(&mut self, step: usize) -> Option<Resolved> {
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
    fn breaker(&mut self, step: usize, plugin: &dyn Plugin, with: &Value) -> Arc<Breaker> {
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

    fn spawn_attempt(&mut self, node: usize, with: Value) {
        let step_i = self.nodes[node].step;
        let attempts = self.rec(node).attempts;
        let Some((plugin, name)) = self.resolve(step_i) else {
            let uses = &self.wf.steps[step_i].uses;
            let err = StepError::permanent(format!("no plugin named `{uses}`"));
            return self.fail_attempt(node, err);
        };
        let breaker = self.breaker(step_i, &*plugin, &with);
        let cancel = CancellationToken::new();
        let mut limit = self.wf.steps[step_i].attempt_timeout;
        if let Some(d) = self.deadlines.get(&node) {
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
                    from: format!("{:?}", t.from),
                    to: format!("{:?}", t.to),
                });
            }
            let run = plugin.run(with, ctx);
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
                    from: format!("{:?}", t.from),
                    to: format!("{:?}", t.to),
                });
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
                let cancelled = self.stopping.is_some() && cancel.is_cancelled();
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

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Done { node, result } => {
                let token = self.live.remove(&node);
                self.waiting.remove(&node);
                let was_cancelled = token.is_some_and(|t| t.is_cancelled());
                self.attempt_ended(node, was_cancelled, result);
            }
            Msg::RetryDue { node } => {
                self.retrying.remove(&node);
                if self.stopping.is_none() {
                    self.ready.push_front(node);
                } else if self.stopping == Some(RunStatus::Interrupted) {
                    self.transition(node, NodeStatus::Pending);
                }
            }
            Msg::Breaker {
                node,
                key,
                from,
                to,
            } => {
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
    fn attempt_ended(
        &mut self,
        node: usize,
        was_cancelled: bool,
        result: Result<Value, StepError>,
    ) {
        let err = match result {
            Ok(outputs) => return self.succeed(node, outputs),
            Err(e) => e,
        };
        match self.stopping {
            // Cut off by Ctrl-C after the grace period: runs again on resume.
            Some(RunStatus::Interrupted) if was_cancelled => {
                let attempt = self.rec(node).attempts;
                self.audit(
                    Some(node),
                    "attempt_interrupted",
                    json!({ "attempt": attempt }),
                );
                self.transition(node, NodeStatus::Pending);
            }
            Some(RunStatus::Cancelled | RunStatus::Failed) if was_cancelled => {
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

    /// A successful attempt.
    fn succeed(&mut self, node: usize, outputs: Value) {
        self.rec_mut(node).outputs = Some(outputs);
        self.end_node(node, NodeStatus::Succeeded, None, None);
    }

    /// Ends node `i` in `status`, a final one, and tells observers with the next commit.
    fn end_node(
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

    fn emit_finished(
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

    /// A failed attempt (or one that could not start): a retry, or the node's failure
    /// (critical ones stop the run).
    fn fail_attempt(&mut self, node: usize, mut err: StepError) {
        let wf = Arc::clone(&self.wf);
        let step = &wf.steps[self.nodes[node].step];
        let attempts = self.rec(node).attempts;
        let deadline = self.deadlines.get(&node).copied();
        let retry = if self.stopping.is_none() {
            step.retry.should_retry(attempts, &err)
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
        self.failed = true;
        self.end_node(node, NodeStatus::Failed, Some(err), None);
        if critical {
            self.audit(Some(node), "run_failed_critically", Value::Null);
            self.stopping = Some(RunStatus::Failed);
            for t in self.live.values().chain(self.retrying.values()) {
                t.cancel();
            }
            self.cancel_unstarted_after_critical();
        }
    }

    /// A critical failure: every node not yet finished is cancelled, every step not yet
    /// activated is skipped (no failure handlers: nothing more may touch the outside world).
    fn cancel_unstarted_after_critical(&mut self) {
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

    fn signal(&mut self, node: Arc<str>, sig: StepSignal) {
        let run_id = self.run.run_id.clone();
        let e = match sig {
            StepSignal::Waiting | StepSignal::Resumed => {
                let Some(&i) = self.by_id.get(&node) else {
                    return;
                };
                let (from, to) = match sig {
                    StepSignal::Waiting => (NodeStatus::Running, NodeStatus::Waiting),
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
            StepSignal::Log { level, message } => RunEvent::Log {
                run_id,
                node: node.to_string(),
                level,
                message,
            },
            StepSignal::Progress { percent, message } => RunEvent::Progress {
                run_id,
                node: node.to_string(),
                percent,
                message,
            },
            StepSignal::Milestone { kind, data } => {
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

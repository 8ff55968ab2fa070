//! Runs a workflow: decides which nodes start, runs their attempts, retries, checkpoints.
//!
//! One task owns a run's state. Each loop turn it activates steps whose `needs` are done,
//! starts nodes up to `max_parallel`, commits every transition of the turn in one durable
//! transaction (group commit), and only then starts attempts and tells observers. So a
//! dependent never starts before its predecessor's success is on disk, and parallel nodes
//! share fsyncs. An attempt's first poll runs in this task; one that finishes there is
//! handled at once, one that has to wait gets a task of its own and reports back over a
//! channel. The scheduler is the only writer.

mod activate;
mod attempts;
mod execution;
mod gates;
mod queue;
mod redrive;

pub use redrive::Redrive;
mod transitions;

use std::collections::VecDeque;
use std::ops::Range;

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, Breakers, Transition};
use crate::error::StepError;
use crate::events::{Observer, RunEvent};
use crate::plugin::{DynPlugin, Registry, RunLink, StepReport};
use crate::state::{NodeRecord, NodeStatus, RunRecord, RunStatus, Signal, Trigger};
use crate::store::{AuditDraft, Batch, Store, StoreError};
use crate::workflow::Workflow;

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
    #[error("no plan `{0}`: `landfall plans list` shows the stored plans")]
    NoSuchPlan(String),
    /// The plan cannot be applied as it stands; `why` says what to do.
    #[error("plan `{plan_id}` cannot be applied: {why}")]
    PlanRefused { plan_id: String, why: String },
    /// The workflow's concurrency key is full and it refuses rather than queues: nothing ran.
    #[error("{key} is taken: {} (`on_conflict: refuse`); try again when it is done, or queue", holders_text(.holders))]
    Refused {
        run_id: String,
        key: String,
        holders: Vec<String>,
    },
    /// The run cannot be redriven as it stands; `why` says what to do.
    #[error("run `{run_id}` cannot be redriven: {why}")]
    NotRedrivable { run_id: String, why: String },
    /// The workflow's concurrency key cannot be read from the inputs.
    #[error("cannot read the concurrency key `{key}`: {message}")]
    ConcurrencyKey { key: String, message: String },
    /// Secret inputs cannot be sealed or opened (no data key, another key).
    #[error(transparent)]
    SecretInputs(#[from] crate::inputs::SecretInputError),
}

fn holders_text(holders: &[String]) -> String {
    match holders {
        [] => "every slot is held".to_string(),
        [one] => format!("run {one} holds it"),
        many => format!("runs {} hold it", many.join(", ")),
    }
}

impl From<crate::inputs::OpenError> for EngineError {
    fn from(e: crate::inputs::OpenError) -> Self {
        match e {
            crate::inputs::OpenError::Secret(s) => EngineError::SecretInputs(s),
            crate::inputs::OpenError::Store(s) => EngineError::Store(s),
        }
    }
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
    /// A stored plan to apply (`landfall run --plan`): the run takes its inputs from it, and
    /// its `plan: true` steps take their outputs from it.
    pub plan: Option<String>,
}

/// The executor: a registry of plugins, a store, and the breakers shared by all its runs.
#[derive(Clone)]
pub struct Engine {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    pub breakers: Arc<Breakers>,
    observers: Vec<Arc<dyn Observer>>,
    /// Seals secret inputs in the records it writes and opens them to run.
    data_key: Option<crate::DataKey>,
    /// Turns that may commit at once. The store writes one transaction at a time anyway; a
    /// turn blocks its thread while it commits, so without this gate a thousand runs
    /// committing at once made tokio start hundreds of replacement threads (each with its
    /// stack and allocator heap: 375 MB for 1,000 runs) to wait on one lock. Waiting for the
    /// gate costs no thread.
    commit_gate: Arc<tokio::sync::Semaphore>,
}

/// See [`Engine::commit_gate`]: one commit being written, one ready to go.
const COMMITS_AT_ONCE: usize = 2;

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
            data_key: None,
            commit_gate: Arc::new(tokio::sync::Semaphore::new(COMMITS_AT_ONCE)),
        }
    }

    /// The data key secret inputs are sealed with (runs with secret inputs need one).
    pub fn with_data_key(mut self, key: Option<crate::DataKey>) -> Self {
        self.data_key = key;
        self
    }

    pub(crate) fn data_key(&self) -> Option<&crate::DataKey> {
        self.data_key.as_ref()
    }

    pub fn observe(&mut self, o: Arc<dyn Observer>) {
        self.observers.push(o);
    }

    /// Creates a run (durably) or, for a `run_id` that exists with the same workflow and
    /// inputs, returns that run so the caller resumes it instead of starting a duplicate.
    pub fn create_run(&self, wf: &Workflow, new: NewRun) -> Result<RunRecord, EngineError> {
        let inputs = match &new.plan {
            Some(plan_id) => {
                let plan = self.applicable_plan(wf, plan_id, &new.inputs)?;
                crate::inputs::open(&plan.inputs, self.store.as_ref(), self.data_key())?
            }
            None => Value::Object(
                crate::inputs::resolve(&wf.inputs, new.inputs, &[]).map_err(EngineError::Inputs)?,
            ),
        };
        let inputs_digest = crate::inputs::digest(&wf.inputs, &inputs, self.data_key())?;
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
        // Secret values go into the store's sealed secrets, the record keeps references.
        let sealed = crate::inputs::seal(&wf.inputs, &inputs, &run_id, self.data_key())?;
        let inputs = sealed.stored;
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
            plan_id: new.plan.clone(),
        };
        let mut detail = json!({
            "workflow": wf.name,
            "workflow_digest": wf.digest,
            "inputs_digest": record.inputs_digest,
            "trigger": new.trigger.source,
        });
        if let Some(p) = &new.plan {
            detail["plan_id"] = json!(p);
        }
        let audit = AuditDraft::new(&new.trigger.actor, &run_id, "run_created", detail);
        self.store.commit(Batch {
            runs: vec![record.clone()],
            audit: vec![audit.into()],
            secrets: sealed.secrets,
            ..Batch::default()
        })?;
        Ok(record)
    }

    /// The stored plan `plan_id`, if a run of `wf` may apply it: planned from this very
    /// workflow, complete, not expired, and (when `inputs` are given at all) with these inputs.
    pub fn applicable_plan(
        &self,
        wf: &Workflow,
        plan_id: &str,
        inputs: &Map<String, Value>,
    ) -> Result<crate::plan::Plan, EngineError> {
        let plan = self
            .store
            .plan(plan_id)?
            .ok_or_else(|| EngineError::NoSuchPlan(plan_id.to_string()))?;
        let refuse = |why: String| EngineError::PlanRefused {
            plan_id: plan_id.to_string(),
            why,
        };
        if plan.workflow_digest != wf.digest {
            return Err(refuse(format!(
                "it was planned from another version of the workflow (`{}` as it was then); plan again with this file",
                plan.workflow_file
            )));
        }
        if !inputs.is_empty() {
            let given = crate::inputs::resolve(&wf.inputs, inputs.clone(), &[])
                .map_err(EngineError::Inputs)?;
            let given = crate::inputs::digest(&wf.inputs, &Value::Object(given), self.data_key())?;
            if given != plan.inputs_digest {
                return Err(refuse(
                    "the inputs given differ from the plan's; leave them out (the plan has its own) or plan again".into(),
                ));
            }
        }
        if plan.failed() {
            return Err(refuse(
                "some of its nodes could not be planned (`landfall plans show` says which); plan again".into(),
            ));
        }
        let now = Utc::now();
        if plan.expires_at <= now {
            return Err(refuse(format!(
                "it expired at {} (AWS may have changed since); plan again",
                plan.expires_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
        Ok(plan)
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
        let plan = match &run.plan_id {
            Some(id) => Some(Arc::new(
                self.store
                    .plan(id)?
                    .ok_or_else(|| EngineError::NoSuchPlan(id.clone()))?,
            )),
            None => None,
        };
        let existing = self.store.nodes(&run.run_id)?;
        // Opened here, kept in memory only: the record the execution writes keeps references.
        let inputs = crate::inputs::open(&run.inputs, self.store.as_ref(), self.data_key())?;
        let slot = match &wf.concurrency {
            Some(c) => {
                let key = self.concurrency_key(&wf, c, &run, &inputs)?;
                match self.wait_for_slot(c, &key, &run, &control, &obs).await? {
                    Some(stopped) => return Ok(stopped),
                    None => Some(key),
                }
            }
            None => None,
        };
        let mut ex = Execution::new(self, wf, run, control, obs, existing);
        ex.inputs = inputs;
        ex.plan = plan;
        // After the inputs: a rollout's expressions may read them.
        ex.rebuild_rollouts();
        let res = ex.run().await;
        if let (Some(key), Ok(out)) = (&slot, &res) {
            // An interrupted run keeps its slot: it is resumed, not replaced.
            if out.status.is_terminal() {
                self.store.release_slot(key, &out.run_id)?;
            }
        }
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
        change: Transition,
    },
}

/// A step's plugin, with its registered name.
type Resolved = (Arc<dyn DynPlugin>, &'static str);

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
    /// The run's inputs with secret values opened: what steps see. `run.inputs`, which is
    /// written back with every status change, keeps only references to sealed values.
    inputs: Value,
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
    /// Per step with `tolerate` or `waves`, once fanned out: which instances may start.
    rollouts: Vec<Option<crate::rollout::Progress>>,
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
    /// Attempts of a node that were cut off (the process killed, or Ctrl-C past the grace
    /// period) rather than ended by the step: they do not count against `max_attempts`. Read
    /// from the run's audit (`attempt_cut_off`, `attempt_interrupted`) when it resumes.
    cut_offs: FxHashMap<usize, u32>,
    batch: Batch,
    /// Nodes changed since the last commit.
    dirty: Vec<usize>,
    events: Vec<RunEvent>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    reports: mpsc::UnboundedReceiver<(Arc<str>, StepReport)>,
    /// Set once the run stops before its work is done; never unset.
    stop: Option<Stop>,
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
    /// The stored plan this run applies: its `plan: true` nodes answer from it.
    plan: Option<Arc<crate::plan::Plan>>,
    /// The time of this turn: what the scheduler records happened at one moment (one commit's
    /// transitions) gets one timestamp, read once (see [`Self::tick`]).
    now: DateTime<Utc>,
}

/// Why a run stops before its work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Ctrl-C or a server shutting down: no new attempts, running ones get the grace period,
    /// then are cut off; what did not finish stays pending for `resume`.
    Interrupt,
    /// `cancel`: running attempts are cancelled, what did not start is cancelled.
    Cancel,
    /// A critical failure: like a cancel, and steps not yet activated are skipped (no failure
    /// handlers: nothing more may touch the outside world).
    Critical,
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

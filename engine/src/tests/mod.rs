//! Scheduler and store tests that need the whole engine: test plugins, random DAGs, crashes.

mod concurrency;
mod plan;
mod props;
mod redrive;
mod rollout;
mod scheduler;
mod transitions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::compile::compile;
use crate::error::{ErrorClass, StepError};
use crate::plugin::{Plugin, Registry, StepContext};
use crate::scheduler::{Engine, NewRun, RunControl, RunOutcome};
use crate::source::Source;
use crate::state::{NodeStatus, Trigger};
use crate::store::{Batch, MemStore, Store, StoreError};
use crate::workflow::Workflow;

/// What the test plugins saw, shared with the test.
#[derive(Default)]
pub(crate) struct Probe {
    /// Executions per node id.
    pub runs: Mutex<HashMap<String, u32>>,
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    /// Idempotency keys seen per node.
    pub keys: Mutex<HashMap<String, Vec<String>>>,
    /// Failures completed per node id: the "outside world" a test may share between the
    /// processes of one run (see `TestConfig::durable_failures`).
    pub failures: Arc<Mutex<HashMap<String, u32>>>,
    /// Set by a test: checks made at each start (e.g. that needs are durable).
    #[allow(clippy::type_complexity)]
    pub on_start: Mutex<Option<Box<dyn Fn(&StepContext) + Send + Sync>>>,
}

impl Probe {
    pub(crate) fn count(&self, node: &str) -> u32 {
        self.runs.lock().unwrap().get(node).copied().unwrap_or(0)
    }
}

/// `test`: returns a value derived from its inputs, optionally failing its first attempts.
pub(crate) struct TestStep(pub Arc<Probe>);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestConfig {
    #[serde(default)]
    pub deps: Vec<Value>,
    /// Fail this many attempts before succeeding.
    #[serde(default)]
    pub fail_times: u32,
    #[serde(default)]
    pub class: Option<ErrorClass>,
    #[serde(default)]
    pub sleep_ms: u64,
    /// Count failures as the outside world would: by attempts that completed failing (in
    /// `Probe::failures`, which the processes of a test may share), so an attempt cut off
    /// before it ended uses none up; a permanent failure then recurs on every attempt.
    #[serde(default)]
    pub durable_failures: bool,
    /// Attached to the planned failures (what a real plugin adds: stack events, request ids).
    #[serde(default)]
    pub context: Option<Value>,
    /// The circuit scope it names (an account and region, for a real plugin); only
    /// `circuit_scope` reads it, from the raw `with:`.
    #[serde(default)]
    #[allow(dead_code)]
    pub scope: Option<String>,
}

#[async_trait]
impl Plugin for TestStep {
    const NAME: &'static str = "test";
    const SUMMARY: &'static str = "test plugin";
    type Config = TestConfig;

    fn circuit_scope(with: &Value) -> Option<String> {
        with["scope"].as_str().map(String::from)
    }

    async fn run(&self, c: TestConfig, ctx: StepContext) -> Result<Value, StepError> {
        let p = &self.0;
        let n = {
            let mut runs = p.runs.lock().unwrap();
            let e = runs.entry(ctx.node_id.to_string()).or_default();
            *e += 1;
            *e
        };
        p.keys
            .lock()
            .unwrap()
            .entry(ctx.node_id.to_string())
            .or_default()
            .push(ctx.idempotency_key().to_string());
        if let Some(f) = p.on_start.lock().unwrap().as_ref() {
            f(&ctx);
        }
        let now = p.running.fetch_add(1, Ordering::SeqCst) + 1;
        p.max_running.fetch_max(now, Ordering::SeqCst);
        if c.sleep_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(c.sleep_ms)) => {}
                _ = ctx.cancel.cancelled() => {
                    p.running.fetch_sub(1, Ordering::SeqCst);
                    return Err(StepError::transient("cancelled"));
                }
            }
        }
        p.running.fetch_sub(1, Ordering::SeqCst);
        let class = c.class.unwrap_or(ErrorClass::Transient);
        let fails = if c.durable_failures {
            let mut done = p.failures.lock().unwrap();
            let done = done.entry(ctx.node_id.to_string()).or_default();
            let fails =
                c.fail_times > 0 && (class != ErrorClass::Transient || *done < c.fail_times);
            if fails {
                *done += 1;
            }
            fails
        } else {
            n <= c.fail_times
        };
        if fails {
            let e = StepError::new(
                c.class.unwrap_or(ErrorClass::Transient),
                format!("planned failure {n}"),
            );
            return Err(match c.context {
                Some(v) => e.with_context(v),
                None => e,
            });
        }
        let deps: Vec<String> = c.deps.iter().map(|d| d.to_string()).collect();
        Ok(json!({ "value": format!("{}({})", ctx.step_id, deps.join(",")) }))
    }
}

/// `planned`: plans the changes and outputs it is given (or fails planning), and runs to the
/// same outputs.
pub(crate) struct Planned;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlannedConfig {
    #[serde(default)]
    pub changes: Vec<Value>,
    #[serde(default)]
    pub outputs: Value,
    #[serde(default)]
    pub fail: bool,
}

#[async_trait]
impl Plugin for Planned {
    const NAME: &'static str = "planned";
    const SUMMARY: &'static str = "test plugin that plans";
    const PLAN_IS_PURE: bool = true;
    type Config = PlannedConfig;

    async fn run(&self, c: PlannedConfig, _ctx: StepContext) -> Result<Value, StepError> {
        Ok(c.outputs)
    }

    async fn plan(
        &self,
        c: PlannedConfig,
        _ctx: StepContext,
    ) -> Result<Option<crate::plan::PlanOutcome>, StepError> {
        if c.fail {
            return Err(StepError::permanent("reading failed"));
        }
        // `?` in the outputs stands for a value only apply knows (written so in `with`, the
        // planner would take the step's own inputs as unknown).
        fn unknowns(v: Value) -> Value {
            match v {
                Value::String(s) if s == "?" => Value::String(crate::plan::UNKNOWN.into()),
                Value::Array(a) => Value::Array(a.into_iter().map(unknowns).collect()),
                Value::Object(o) => {
                    Value::Object(o.into_iter().map(|(k, v)| (k, unknowns(v))).collect())
                }
                other => other,
            }
        }
        Ok(Some(crate::plan::PlanOutcome {
            summary: format!("{} change(s)", c.changes.len()),
            changes: c.changes,
            outputs: unknowns(c.outputs),
        }))
    }
}

/// `waiter`: waits for a signal and returns it.
pub(crate) struct Waiter;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaiterConfig {
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[async_trait]
impl Plugin for Waiter {
    const NAME: &'static str = "waiter";
    const SUMMARY: &'static str = "waits for a signal";
    type Config = WaiterConfig;

    async fn run(&self, c: WaiterConfig, ctx: StepContext) -> Result<Value, StepError> {
        let timeout = c.timeout_ms.map(Duration::from_millis);
        match ctx.wait_signal(timeout, Duration::from_millis(10)).await? {
            Some(sig) => Ok(json!({ "value": sig.value, "actor": sig.actor })),
            None => Err(StepError::permanent("no decision in time")),
        }
    }
}

/// `approval`: what `approve_waves` asks: waits for a signal, approved by `"approve"`.
pub(crate) struct Approves;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApprovesConfig {
    pub title: String,
    pub digest: String,
    #[serde(default)]
    pub details: Value,
    #[serde(default)]
    pub approvers: Vec<String>,
}

#[async_trait]
impl Plugin for Approves {
    const NAME: &'static str = "approval";
    const SUMMARY: &'static str = "waits for an approval";
    type Config = ApprovesConfig;

    async fn run(&self, c: ApprovesConfig, ctx: StepContext) -> Result<Value, StepError> {
        let sig = ctx
            .wait_signal(None, Duration::from_millis(10))
            .await?
            .ok_or_else(|| StepError::permanent("no decision"))?;
        if c.details["wave"].as_u64().is_none() {
            return Err(StepError::permanent("no wave in the details"));
        }
        match sig.value.as_str() {
            Some("approve") if c.approvers.is_empty() || c.approvers.contains(&sig.actor) => {
                Ok(json!({ "by": [sig.actor], "title": c.title, "digest": c.digest }))
            }
            _ => Err(StepError::permanent(format!("refused by {}", sig.actor))),
        }
    }
}

/// `panics`: a plugin bug, at once or after waiting.
pub(crate) struct Panics;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PanicsConfig {
    #[serde(default)]
    pub after_ms: u64,
}

#[async_trait]
impl Plugin for Panics {
    const NAME: &'static str = "panics";
    const SUMMARY: &'static str = "panics";
    type Config = PanicsConfig;

    async fn run(&self, c: PanicsConfig, _ctx: StepContext) -> Result<Value, StepError> {
        if c.after_ms > 0 {
            tokio::time::sleep(Duration::from_millis(c.after_ms)).await;
        }
        panic!("index out of bounds (after {} ms)", c.after_ms)
    }
}

pub(crate) fn registry(probe: &Arc<Probe>) -> Registry {
    let mut r = Registry::new();
    r.register(TestStep(Arc::clone(probe)))
        .register(Waiter)
        .register(Approves)
        .register(Panics)
        .register(Planned);
    r
}

/// An engine on a fresh in-memory store with the test plugins (probing into `probe`).
pub(crate) fn engine(probe: &Arc<Probe>) -> (Engine, Arc<MemStore>, Registry) {
    let store = Arc::new(MemStore::new());
    let reg = registry(probe);
    (
        Engine::new(Arc::new(reg.clone()), store.clone()),
        store,
        reg,
    )
}

pub(crate) fn workflow(yaml: &str, registry: &Registry) -> Workflow {
    let c = compile(&Source::new("test.yaml", yaml.to_string()), registry);
    match c.workflow {
        Some(w) => w,
        None => panic!("{:#?}", c.report.diagnostics),
    }
}

pub(crate) fn new_run(max_parallel: usize) -> NewRun {
    NewRun {
        run_id: None,
        plan: None,
        inputs: Map::new(),
        trigger: Trigger {
            source: "test".into(),
            actor: "tester".into(),
            details: Value::Null,
        },
        max_parallel,
    }
}

pub(crate) async fn run_to_end(
    engine: &Engine,
    wf: Workflow,
    max_parallel: usize,
) -> (RunOutcome, Arc<Workflow>) {
    let wf = Arc::new(wf);
    let rec = engine.create_run(&wf, new_run(max_parallel)).unwrap();
    let out = engine
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    (out, wf)
}

pub(crate) fn statuses(store: &dyn Store, run: &str) -> HashMap<String, NodeStatus> {
    store
        .nodes(run)
        .unwrap()
        .into_iter()
        .map(|n| (n.node_id.to_string(), n.status))
        .collect()
}

/// A store that fails every commit after the first `budget` ones: a crash at a chosen
/// transition.
pub(crate) struct CrashingStore {
    pub inner: Arc<MemStore>,
    pub budget: AtomicUsize,
}

impl Store for CrashingStore {
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let left = self.budget.load(Ordering::SeqCst);
        if left == 0 {
            return Err(StoreError::Backend("simulated crash".into()));
        }
        self.budget.store(left - 1, Ordering::SeqCst);
        self.inner.commit(batch)
    }
    fn run(&self, id: &str) -> Result<Option<crate::state::RunRecord>, StoreError> {
        self.inner.run(id)
    }
    fn runs(&self) -> Result<Vec<crate::state::RunRecord>, StoreError> {
        self.inner.runs()
    }
    fn nodes(&self, id: &str) -> Result<Vec<crate::state::NodeRecord>, StoreError> {
        self.inner.nodes(id)
    }
    fn audit(&self, id: &str) -> Result<Vec<crate::store::AuditEntry>, StoreError> {
        self.inner.audit(id)
    }
    fn signal(&self, run: &str, node: &str) -> Result<Option<crate::state::Signal>, StoreError> {
        self.inner.signal(run, node)
    }
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.secret(name)
    }
    fn secrets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.secrets()
    }
    fn annotations(
        &self,
        run: &str,
    ) -> Result<std::collections::BTreeMap<String, Value>, StoreError> {
        self.inner.annotations(run)
    }
    fn publish_package(
        &self,
        id: &str,
        content: &crate::package::PackageContent,
        run_id: Option<&str>,
    ) -> Result<crate::package::Published, StoreError> {
        self.inner.publish_package(id, content, run_id)
    }
    fn package(
        &self,
        id: &str,
        version: Option<u64>,
    ) -> Result<Option<crate::package::Package>, StoreError> {
        self.inner.package(id, version)
    }
    fn packages(&self) -> Result<Vec<crate::package::Package>, StoreError> {
        self.inner.packages()
    }
    fn lease(&self, id: &str) -> Result<Option<crate::lock::RunLease>, StoreError> {
        self.inner.lease(id)
    }
    fn is_live(&self, id: &str) -> bool {
        self.inner.is_live(id)
    }
    fn claim_slot(
        &self,
        key: &str,
        limit: usize,
        run: &str,
        queue: bool,
    ) -> Result<crate::concurrency::Claim, StoreError> {
        self.inner.claim_slot(key, limit, run, queue)
    }
    fn release_slot(&self, key: &str, run: &str) -> Result<(), StoreError> {
        self.inner.release_slot(key, run)
    }
    fn slots(&self, key: &str) -> Result<crate::concurrency::Slots, StoreError> {
        self.inner.slots(key)
    }
    fn save_plan(&self, plan: &crate::plan::Plan) -> Result<(), StoreError> {
        self.inner.save_plan(plan)
    }
    fn plan(&self, id: &str) -> Result<Option<crate::plan::Plan>, StoreError> {
        self.inner.plan(id)
    }
    fn plans(&self) -> Result<Vec<crate::plan::Plan>, StoreError> {
        self.inner.plans()
    }
}

#[test]
#[should_panic(expected = "two plugins are registered as `waiter`")]
fn a_registry_refuses_a_second_plugin_of_one_name() {
    let mut r = Registry::new();
    r.register(Waiter).register(Waiter);
}

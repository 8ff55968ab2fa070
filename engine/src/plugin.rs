//! The step plugin interface and the registry of plugins by name.
//!
//! A plugin author implements [`Plugin`]: one config struct (the step's `with:`), a cheap pure
//! `validate`, and an async `run`. [`Registry::register`] wraps it into the object-safe
//! [`DynPlugin`] the scheduler calls. The engine knows no plugin by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::StepError;
use crate::events::LogLevel;
use crate::path::Path;
use crate::plan::PlanOutcome;
use crate::state::Signal;
use crate::store::Store;

/// What a running step tells the scheduler besides its result (a *report*; a *signal* is only
/// a decision from outside, such as an approval, read from the store).
#[derive(Debug, Clone)]
pub enum StepReport {
    Log {
        level: LogLevel,
        message: String,
    },
    Progress {
        percent: f64,
        message: Option<String>,
    },
    Milestone {
        kind: String,
        data: Value,
    },
    /// The step waits for a signal from outside the run (holds no parallelism slot).
    Waiting,
    /// The wait is over.
    Resumed,
}

/// Everything a step may know about where it runs.
#[derive(Clone)]
pub struct StepContext {
    // Shared, not owned: the scheduler hands the same ids to every attempt and audit entry.
    pub run_id: Arc<str>,
    pub node_id: Arc<str>,
    pub step_id: Arc<str>,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// See [`Self::idempotency_key`]; computed on first use (most steps never ask).
    idempotency_key: std::sync::OnceLock<String>,
    /// Cancelled when the run is cancelled, fails critically, or the attempt times out.
    pub cancel: CancellationToken,
    /// When the engine will cut this attempt off (attempt or step time-out), if ever. Steps
    /// that wait on the outside world stop a little earlier, so they can fail with what they
    /// saw (e.g. a stack's last events) instead of being cut off silently.
    pub deadline: Option<tokio::time::Instant>,
    link: Arc<RunLink>,
}

/// What an attempt reaches of its run besides its ids: the scheduler's channel for a step's
/// messages, and the store (signals, packages). One per run, shared by its attempts.
#[derive(Clone, Default)]
pub struct RunLink {
    reports: Option<mpsc::UnboundedSender<(Arc<str>, StepReport)>>,
    store: Option<Arc<dyn Store>>,
}

impl RunLink {
    pub fn new(
        reports: Option<mpsc::UnboundedSender<(Arc<str>, StepReport)>>,
        store: Option<Arc<dyn Store>>,
    ) -> Arc<Self> {
        Arc::new(RunLink { reports, store })
    }
}

impl std::fmt::Debug for StepContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("run_id", &self.run_id)
            .field("node_id", &self.node_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl StepContext {
    pub fn new(
        run_id: impl Into<Arc<str>>,
        node_id: impl Into<Arc<str>>,
        step_id: impl Into<Arc<str>>,
        attempt: u32,
        cancel: CancellationToken,
        reports: Option<mpsc::UnboundedSender<(Arc<str>, StepReport)>>,
    ) -> Self {
        Self::linked(
            run_id,
            node_id,
            step_id,
            attempt,
            cancel,
            RunLink::new(reports, None),
        )
    }

    /// A context reaching its run through `link`, as the scheduler makes them.
    pub fn linked(
        run_id: impl Into<Arc<str>>,
        node_id: impl Into<Arc<str>>,
        step_id: impl Into<Arc<str>>,
        attempt: u32,
        cancel: CancellationToken,
        link: Arc<RunLink>,
    ) -> Self {
        StepContext {
            idempotency_key: std::sync::OnceLock::new(),
            run_id: run_id.into(),
            node_id: node_id.into(),
            step_id: step_id.into(),
            attempt,
            cancel,
            deadline: None,
            link,
        }
    }

    /// Stable across retries and resumes of this node: use it to make side effects idempotent
    /// (AWS `ClientRequestToken`, names of created things).
    pub fn idempotency_key(&self) -> &str {
        self.idempotency_key
            .get_or_init(|| crate::state::idempotency_key(&self.run_id, &self.node_id))
    }

    /// Sets when the engine will cut this attempt off.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Gives the step read access to signals delivered to it (see [`Self::wait_signal`]).
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        Arc::make_mut(&mut self.link).store = Some(store);
        self
    }

    /// A context for tests and tools that run a plugin outside a run.
    pub fn detached(node_id: &str) -> Self {
        Self::new(
            "detached",
            node_id,
            node_id,
            1,
            CancellationToken::new(),
            None,
        )
    }

    /// Publishes a package in the run's state file (see [`crate::package`]).
    pub fn publish_package(
        &self,
        id: &str,
        content: &crate::package::PackageContent,
    ) -> Result<crate::package::Published, StepError> {
        let store =
            self.link.store.as_ref().ok_or_else(|| {
                StepError::permanent("packages can only be published inside a run")
            })?;
        store
            .publish_package(id, content, Some(&self.run_id))
            .map_err(|e| StepError::transient(format!("cannot publish package {id}: {e}")))
    }

    /// Fetches a package version, its digest verified. A corrupt record is a critical error:
    /// nothing may be deployed from it.
    pub fn fetch_package(
        &self,
        r: &crate::package::PackageRef,
    ) -> Result<crate::package::Package, StepError> {
        let store = self
            .link
            .store
            .as_ref()
            .ok_or_else(|| StepError::permanent("packages can only be fetched inside a run"))?;
        match store.package(&r.id, r.version) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(StepError::permanent(format!("no package {r}"))),
            Err(e @ crate::store::StoreError::Corrupt { .. }) => Err(StepError::critical(format!(
                "package {r} failed its integrity check: {e}"
            ))),
            Err(e) => Err(StepError::transient(format!(
                "cannot read package {r}: {e}"
            ))),
        }
    }

    /// The run's store (`None` outside a run): for plugins that start runs of their own (a
    /// child run, `uses: workflow`).
    pub fn store(&self) -> Option<Arc<dyn crate::store::Store>> {
        self.link.store.clone()
    }

    /// Who started the run (its trigger's actor: `cli:<user>`, a Slack user id).
    pub fn requester(&self) -> Result<String, StepError> {
        let store = self
            .link
            .store
            .as_ref()
            .ok_or_else(|| StepError::permanent("the requester is known only inside a run"))?;
        match store.run(&self.run_id) {
            Ok(Some(r)) => Ok(r.trigger.actor),
            Ok(None) => Err(StepError::permanent(format!("no run `{}`", self.run_id))),
            Err(e) => Err(StepError::transient(format!("cannot read the run: {e}"))),
        }
    }

    /// Every signal the run received, oldest first, with the node each was sent to: the audit's
    /// `signal_received` entries (the store keeps only a node's latest signal; the audit keeps
    /// them all, so two approvals given a second apart are both seen).
    pub fn run_signals(&self) -> Result<Vec<(String, Signal)>, StepError> {
        Ok(crate::store::signals_in(&self.run_audit()?))
    }

    /// The run's audit so far, oldest first: what earlier attempts of this node (before a
    /// crash or a resume) said and were told.
    pub fn run_audit(&self) -> Result<Vec<crate::store::AuditEntry>, StepError> {
        let store = self
            .link
            .store
            .as_ref()
            .ok_or_else(|| StepError::permanent("the audit can only be read inside a run"))?;
        store
            .audit(&self.run_id)
            .map_err(|e| StepError::transient(format!("cannot read the run's audit: {e}")))
    }

    /// Waits until this node has received more than `seen` signals, and returns them all
    /// (oldest first); `Ok(None)` when the time-out passes first. Like [`Self::wait_signal`],
    /// the node shows as `waiting` meanwhile and holds no parallelism slot.
    pub async fn wait_signals(
        &self,
        seen: usize,
        timeout: Option<std::time::Duration>,
        poll: std::time::Duration,
    ) -> Result<Option<Vec<Signal>>, StepError> {
        self.waiting_for(timeout, poll, || {
            let mine: Vec<Signal> = self
                .run_signals()?
                .into_iter()
                .filter(|(n, _)| *n == *self.node_id)
                .map(|(_, s)| s)
                .collect();
            Ok((mine.len() > seen).then_some(mine))
        })
        .await
    }

    /// Polls `look` every `poll` until it finds something (`Ok(Some)`), the time-out passes
    /// (`Ok(None)`) or the run is cancelled. The node shows as `waiting` meanwhile and holds no
    /// parallelism slot.
    pub(crate) async fn waiting_for<T>(
        &self,
        timeout: Option<std::time::Duration>,
        poll: std::time::Duration,
        mut look: impl FnMut() -> Result<Option<T>, StepError>,
    ) -> Result<Option<T>, StepError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut waiting = false;
        let result = loop {
            match look() {
                Ok(Some(found)) => break Ok(Some(found)),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if !waiting {
                self.send(StepReport::Waiting);
                waiting = true;
            }
            let now = tokio::time::Instant::now();
            let nap = match deadline {
                Some(d) if now >= d => break Ok(None),
                Some(d) => poll.min(d - now),
                None => poll,
            };
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = self.cancel.cancelled() => {
                    break Err(StepError::transient("cancelled while waiting"))
                }
            }
        };
        if waiting {
            self.send(StepReport::Resumed);
        }
        result
    }

    /// Waits until a signal for this node arrives (an approval), the time-out passes
    /// (`Ok(None)`), or the run is cancelled. The node shows as `waiting` meanwhile and holds
    /// no parallelism slot. Signals are durable: one delivered while Landfall was down is
    /// found at once after a resume.
    pub async fn wait_signal(
        &self,
        timeout: Option<std::time::Duration>,
        poll: std::time::Duration,
    ) -> Result<Option<Signal>, StepError> {
        self.wait_signal_after(timeout, poll, None).await
    }

    /// Like [`Self::wait_signal`], but a signal sent at or before `after` does not count (it
    /// was already looked at and refused, e.g. an approval of a different digest).
    pub async fn wait_signal_after(
        &self,
        timeout: Option<std::time::Duration>,
        poll: std::time::Duration,
        after: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Option<Signal>, StepError> {
        let store = self.link.store.as_ref().ok_or_else(|| {
            StepError::permanent("this step can only wait for signals inside a run")
        })?;
        self.waiting_for(timeout, poll, || {
            match store.signal(&self.run_id, &self.node_id) {
                Ok(Some(sig)) if after.is_none_or(|a| sig.at > a) => Ok(Some(sig)),
                Ok(_) => Ok(None),
                Err(e) => Err(StepError::transient(format!("cannot read signals: {e}"))),
            }
        })
        .await
    }

    fn send(&self, s: StepReport) {
        if let Some(tx) = &self.link.reports {
            // The receiver is gone only when the run is over; nothing to tell anyone then.
            let _ = tx.send((Arc::clone(&self.node_id), s));
        }
    }

    /// Keeps `value` with this node, durably, before the caller goes on: what a retry or a
    /// resume after a crash must know to find a side effect already started (an AWS request
    /// id, a child process group). The same node (same run and node id) reads it back with
    /// [`Self::saved_progress`] in any later attempt or process. Audited. Outside a run (no
    /// store) nothing is kept.
    pub async fn save_progress(&self, key: &str, value: Value) -> Result<(), StepError> {
        let Some(store) = self.link.store.clone() else {
            return Ok(());
        };
        let annotation = progress_key(&self.node_id, key);
        // The entry speaks for whoever started the run, like its other entries.
        let actor = store
            .run(&self.run_id)
            .ok()
            .flatten()
            .map_or_else(|| "landfall".to_string(), |r| r.trigger.actor);
        let audit = crate::store::AuditDraft::new(
            &actor,
            &self.run_id,
            "progress_saved",
            serde_json::json!({ "key": key, "value": value }),
        )
        .node(&self.node_id);
        let batch = crate::store::Batch {
            annotations: vec![(self.run_id.to_string(), annotation, value)],
            audit: vec![audit.into()],
            ..Default::default()
        };
        // A durable commit blocks: keep it off the runtime's workers.
        tokio::task::spawn_blocking(move || store.commit(batch))
            .await
            .map_err(|e| StepError::transient(format!("cannot save progress: {e}")))?
            .map_err(|e| StepError::transient(format!("cannot save progress: {e}")))
    }

    /// What [`Self::save_progress`] kept under `key` for this node, if anything.
    pub fn saved_progress(&self, key: &str) -> Option<Value> {
        let store = self.link.store.as_ref()?;
        let mut all = store.annotations(&self.run_id).ok()?;
        all.remove(&progress_key(&self.node_id, key))
    }

    pub fn log(&self, message: impl Into<String>) {
        self.send(StepReport::Log {
            level: LogLevel::Info,
            message: message.into(),
        });
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.send(StepReport::Log {
            level: LogLevel::Warn,
            message: message.into(),
        });
    }

    /// Progress of this node, 0–100.
    pub fn progress(&self, percent: f64, message: Option<String>) {
        self.send(StepReport::Progress {
            percent: percent.clamp(0.0, 100.0),
            message,
        });
    }

    pub fn milestone(&self, kind: impl Into<String>, data: Value) {
        self.send(StepReport::Milestone {
            kind: kind.into(),
            data,
        });
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Where a node's saved progress lives among its run's annotations.
pub(crate) fn progress_key(node_id: &str, key: &str) -> String {
    format!("progress/{node_id}/{key}")
}

/// A problem with a step's `with:` block found before anything runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    /// Inside `with` (`argv[0]`); empty for the block as a whole.
    pub path: Path,
    pub message: String,
}

/// What `landfall steps` shows about a plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// JSON Schema of the step's `with:`.
    pub schema: Value,
}

/// The object-safe form the scheduler calls. Implement [`Plugin`] instead.
#[async_trait]
pub trait DynPlugin: Send + Sync + 'static {
    fn info(&self) -> PluginInfo;
    /// Checks a `with:` block whose strings may still be templates.
    fn check(&self, with: &Value) -> Vec<ConfigProblem>;
    /// Runs one attempt with the rendered `with:` block.
    async fn run(&self, with: Value, ctx: StepContext) -> Result<Value, StepError>;
    /// Plans one node with the rendered `with:` block (see [`Plugin::plan`]); `None` by
    /// default: changes unknown until apply.
    async fn plan(
        &self,
        _with: Value,
        _ctx: StepContext,
    ) -> Result<Option<PlanOutcome>, StepError> {
        Ok(None)
    }
    /// Whether [`DynPlugin::plan`] only reads (see [`Plugin::PLAN_IS_PURE`]).
    fn plan_is_pure(&self) -> bool {
        false
    }
    /// What one attempt with this rendered `with:` talks to, when its failures say nothing
    /// about other targets (an AWS account and region): the circuit breaker is then kept per
    /// scope, so one customer's throttled account does not stop the plugin for everyone.
    fn circuit_scope(&self, _with: &Value) -> Option<String> {
        None
    }
}

/// A step plugin, written against its own typed config.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    const NAME: &'static str;
    /// One line for `landfall steps`.
    const SUMMARY: &'static str;
    /// The step's `with:`; its doc comments are the user documentation.
    type Config: DeserializeOwned + JsonSchema + Send + 'static;

    /// Whether [`Plugin::plan`] only reads, so that a run applying a stored plan may plan a
    /// node again before its first attempt and refuse it when the answer differs from what
    /// was approved ("changed since the plan"). Not so for `deploy`, whose plan creates a
    /// change set: it checks its planned change sets itself.
    const PLAN_IS_PURE: bool = false;

    /// Cheap, pure checks of a fully known config (no templates left in it).
    fn validate(_config: &Self::Config) -> Vec<ConfigProblem> {
        Vec::new()
    }

    /// Outputs are plain data (serde), documented like the inputs.
    async fn run(&self, config: Self::Config, ctx: StepContext) -> Result<Value, StepError>;

    /// What `run` would change, found by reading only: nothing may be written (a
    /// CloudFormation change set is created and not executed; that is AWS's own plan). `None`:
    /// this plugin cannot tell before it runs ("changes unknown until apply"), the default.
    /// A plugin that only reads returns [`PlanOutcome::reads_only`] with its real outputs.
    async fn plan(
        &self,
        _config: Self::Config,
        _ctx: StepContext,
    ) -> Result<Option<PlanOutcome>, StepError> {
        Ok(None)
    }

    /// See [`DynPlugin::circuit_scope`]. Reads the rendered `with:` as it is (an attempt's config
    /// is decoded once, by `run`), e.g. `"{account_id}/{region}"` of its target.
    fn circuit_scope(_with: &Value) -> Option<String> {
        None
    }
}

struct Typed<S>(S);

/// Deserializes `with` into `T`, naming the path of the first problem.
/// Every problem serde finds in `with`, not only the first: each offending value is taken out
/// and the block decoded again, until it decodes or a problem only our removal caused (a
/// required field now missing) or no progress is left. Bounded to 32 rounds.
fn every_problem<T: DeserializeOwned>(mut with: Value, first: ConfigProblem) -> Vec<ConfigProblem> {
    let mut out = vec![first];
    let mut removed: Vec<Path> = Vec::new();
    while out.len() < 32 {
        let Some(last) = out.last() else { break };
        let at = last.path.clone();
        if at.is_root() || !remove_at(&mut with, &at) {
            break;
        }
        removed.push(at);
        let Err(p) = decode::<T>(&with) else { break };
        let ours = removed.iter().any(|r| {
            r.parent().as_ref() == Some(&p.path)
                && matches!(r.0.last(), Some(crate::path::Seg::Key(k)) if p.message.contains(&format!("`{k}`")))
        });
        if ours
            || out
                .iter()
                .any(|o| o.path == p.path && o.message == p.message)
        {
            break;
        }
        out.push(p);
    }
    out
}

/// Takes the value at `path` out of `v` (a key from its mapping, an item from its list).
fn remove_at(v: &mut Value, path: &Path) -> bool {
    let Some((last, parent)) = path.0.split_last() else {
        return false;
    };
    let mut cur = v;
    for seg in parent {
        cur = match (seg, cur) {
            (crate::path::Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(x) => x,
                None => return false,
            },
            (crate::path::Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (crate::path::Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        (crate::path::Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

pub(crate) fn decode<T: DeserializeOwned>(with: &Value) -> Result<T, ConfigProblem> {
    serde_path_to_error::deserialize(with).map_err(|e| ConfigProblem {
        path: Path::from_serde(e.path()),
        message: e.inner().to_string(),
    })
}

#[async_trait]
impl<S: Plugin> DynPlugin for Typed<S> {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: S::NAME,
            summary: S::SUMMARY,
            schema: serde_json::to_value(schemars::schema_for!(S::Config)).unwrap_or_default(),
        }
    }

    fn check(&self, with: &Value) -> Vec<ConfigProblem> {
        let schema = serde_json::to_value(schemars::schema_for!(S::Config)).unwrap_or_default();
        let (stand_in, had_templates) = placeholders(&schema, &schema, with);
        match decode::<S::Config>(&stand_in) {
            Err(first) => every_problem::<S::Config>(stand_in, first),
            // Semantic checks need the real values; templates are checked when rendered.
            Ok(cfg) if !had_templates => S::validate(&cfg),
            Ok(_) => Vec::new(),
        }
    }

    async fn run(&self, with: Value, ctx: StepContext) -> Result<Value, StepError> {
        let cfg = Self::config(&with)?;
        self.0.run(cfg, ctx).await
    }

    async fn plan(&self, with: Value, ctx: StepContext) -> Result<Option<PlanOutcome>, StepError> {
        let cfg = Self::config(&with)?;
        self.0.plan(cfg, ctx).await
    }

    fn plan_is_pure(&self) -> bool {
        S::PLAN_IS_PURE
    }

    fn circuit_scope(&self, with: &Value) -> Option<String> {
        S::circuit_scope(with)
    }
}

impl<S: Plugin> Typed<S> {
    /// The typed config of a rendered `with:`, checked.
    fn config(with: &Value) -> Result<S::Config, StepError> {
        // Plain serde first; only a config that fails is looked at again: a number or boolean
        // a template gave where the schema wants text becomes its text (`argv: [sleep, "{{
        // item }}"]` over numbers), then it is decoded once more to name the path.
        let cfg = <S::Config as serde::Deserialize>::deserialize(with)
            .or_else(|_| {
                let schema =
                    serde_json::to_value(schemars::schema_for!(S::Config)).unwrap_or_default();
                let mut typed = with.clone();
                as_text_where_text_is_wanted(&schema, &schema, &mut typed);
                decode::<S::Config>(&typed)
            })
            .map_err(|p| {
                StepError::permanent(format!(
                    "invalid `with` for `{}` after rendering: {}{}",
                    S::NAME,
                    if p.path.is_root() {
                        String::new()
                    } else {
                        format!("{}: ", p.path)
                    },
                    p.message
                ))
            })?;
        let problems = S::validate(&cfg);
        if let Some(p) = problems.first() {
            return Err(StepError::permanent(format!(
                "invalid `with` for `{}`: {}",
                S::NAME,
                p.message
            )));
        }
        Ok(cfg)
    }
}

/// Turns numbers and booleans into their text where the schema asks for a string only (the
/// other way round stays an error: text is not silently read as a number).
fn as_text_where_text_is_wanted(root: &Value, schema: &Value, v: &mut Value) {
    let schema = resolve(root, schema);
    match v {
        Value::Number(_) | Value::Bool(_) => {
            let wants_text = match schema.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(ts)) => {
                    ts.iter().any(|t| t == "string")
                        && !ts
                            .iter()
                            .any(|t| matches!(t.as_str(), Some("number" | "integer" | "boolean")))
                }
                _ => false,
            };
            if wants_text {
                *v = Value::String(v.to_string());
            }
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").unwrap_or(&Value::Null);
            for i in items {
                as_text_where_text_is_wanted(root, item_schema, i);
            }
        }
        Value::Object(map) => {
            let props = schema.get("properties");
            let extra = schema.get("additionalProperties").unwrap_or(&Value::Null);
            for (k, val) in map.iter_mut() {
                let s = props.and_then(|p| p.get(k)).unwrap_or(extra);
                as_text_where_text_is_wanted(root, s, val);
            }
        }
        _ => {}
    }
}

/// Replaces every whole-expression string by a stand-in of the type the schema expects there,
/// so a `with:` block can be type-checked before its templates can be rendered.
fn placeholders(root: &Value, schema: &Value, v: &Value) -> (Value, bool) {
    use crate::expr::Template;
    let schema = resolve(root, schema);
    match v {
        Value::String(s) if matches!(Template::classify(s), Template::Expr(_)) => {
            (stand_in(root, schema).unwrap_or_else(|| v.clone()), true)
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").unwrap_or(&Value::Null);
            let mut any = false;
            let out = items
                .iter()
                .map(|i| {
                    let (x, t) = placeholders(root, item_schema, i);
                    any |= t;
                    x
                })
                .collect();
            (Value::Array(out), any)
        }
        Value::Object(map) => {
            let props = schema.get("properties");
            let extra = schema.get("additionalProperties").unwrap_or(&Value::Null);
            let mut any = false;
            let out = map
                .iter()
                .map(|(k, val)| {
                    let s = props.and_then(|p| p.get(k)).unwrap_or(extra);
                    let (x, t) = placeholders(root, s, val);
                    any |= t;
                    (k.clone(), x)
                })
                .collect();
            (Value::Object(out), any)
        }
        other => (other.clone(), false),
    }
}

/// Follows `$ref` and picks the first non-null branch of `anyOf`/`oneOf`.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..16 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let target = r
                .strip_prefix("#/")
                .map(|p| p.split('/').try_fold(root, |acc, seg| acc.get(seg)));
            match target.flatten() {
                Some(t) => s = t,
                None => return s,
            }
            continue;
        }
        let branches = s
            .get("anyOf")
            .or_else(|| s.get("oneOf"))
            .and_then(Value::as_array);
        if let Some(b) = branches {
            match b
                .iter()
                .find(|x| x.get("type").and_then(Value::as_str) != Some("null"))
            {
                Some(x) => s = x,
                None => return s,
            }
            continue;
        }
        return s;
    }
    s
}

fn stand_in(root: &Value, schema: &Value) -> Option<Value> {
    let schema = resolve(root, schema);
    if let Some(c) = schema.get("const") {
        return Some(c.clone());
    }
    // A default is a valid value of the right shape (e.g. a duration written as text).
    if let Some(d) = schema.get("default").filter(|d| !d.is_null()) {
        return Some(d.clone());
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return Some(first.clone());
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ => return None,
    };
    Some(match ty {
        "string" => Value::String(String::new()),
        "integer" | "number" => Value::from(0),
        "boolean" => Value::Bool(false),
        "array" => Value::Array(Vec::new()),
        // A template standing for a whole object (`target: "{{ item }}"`) is checked when
        // rendered; until then its required fields stand in, each by its own type.
        "object" => {
            let props = schema.get("properties");
            let required = schema.get("required").and_then(Value::as_array);
            let mut m = serde_json::Map::new();
            for k in required.into_iter().flatten().filter_map(Value::as_str) {
                let field = props.and_then(|p| p.get(k)).unwrap_or(&Value::Null);
                m.insert(k.to_string(), stand_in(root, field).unwrap_or(Value::Null));
            }
            Value::Object(m)
        }
        _ => Value::Null,
    })
}

/// A check of a run's inputs as a whole (e.g. a customer's requirements), named by a
/// workflow's `input_check`. Returns every problem, each naming its field path.
pub(crate) type InputCheck =
    Arc<dyn Fn(&serde_json::Map<String, Value>) -> Vec<crate::inputs::InputError> + Send + Sync>;

/// Every plugin, by the name steps `use`, and the named input checks.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: BTreeMap<&'static str, Arc<dyn DynPlugin>>,
    input_checks: BTreeMap<&'static str, InputCheck>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a plugin under its `NAME`.
    ///
    /// # Panics
    ///
    /// When the name is already taken: two plugins claiming one name is a defect of the build
    /// (workflows would silently get whichever came last), found by every test that builds the
    /// registry, never by a user.
    pub fn register<S: Plugin>(&mut self, step: S) -> &mut Self {
        self.register_plugin(S::NAME, Arc::new(Typed(step)))
    }

    /// Registers an object-safe plugin under `name` (its `info().name` should agree); for
    /// plugins built at run time, such as stand-ins in tests of a whole workflow.
    ///
    /// # Panics
    ///
    /// When the name is already taken, as [`Registry::register`].
    pub fn register_plugin(&mut self, name: &'static str, plugin: Arc<dyn DynPlugin>) -> &mut Self {
        let before = self.plugins.insert(name, plugin);
        assert!(
            before.is_none(),
            "two plugins are registered as `{name}`: give one another name"
        );
        self
    }

    /// # Panics
    ///
    /// When the name is already taken, as [`Registry::register`].
    pub fn register_input_check(&mut self, name: &'static str, check: InputCheck) -> &mut Self {
        let before = self.input_checks.insert(name, check);
        assert!(
            before.is_none(),
            "two input checks are registered as `{name}`: give one another name"
        );
        self
    }

    pub fn input_check(&self, name: &str) -> Option<&InputCheck> {
        self.input_checks.get(name)
    }

    pub fn input_check_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.input_checks.keys().copied()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn DynPlugin>> {
        self.plugins.get(name)
    }

    /// A plugin with its registered name, which lives as long as the program.
    pub fn entry(&self, name: &str) -> Option<(&'static str, &Arc<dyn DynPlugin>)> {
        self.plugins.get_key_value(name).map(|(k, v)| (*k, v))
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.keys().copied()
    }

    pub fn infos(&self) -> Vec<PluginInfo> {
        self.plugins.values().map(|p| p.info()).collect()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.plugins.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        argv: Vec<String>,
        count: Option<u32>,
        mode: Option<Mode>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Fast,
        Slow,
    }

    struct Demo;

    #[async_trait]
    impl Plugin for Demo {
        const NAME: &'static str = "demo";
        const SUMMARY: &'static str = "test";
        type Config = Cfg;
        fn validate(c: &Cfg) -> Vec<ConfigProblem> {
            if c.argv.is_empty() {
                vec![ConfigProblem {
                    path: Path::root().key("argv"),
                    message: "argv must not be empty".into(),
                }]
            } else {
                Vec::new()
            }
        }
        async fn run(&self, _c: Cfg, _ctx: StepContext) -> Result<Value, StepError> {
            Ok(json!({}))
        }
    }

    fn check(with: Value) -> Vec<ConfigProblem> {
        let mut r = Registry::new();
        r.register(Demo);
        r.get("demo").unwrap().check(&with)
    }

    #[test]
    fn every_problem_of_a_with_block_is_reported_not_only_the_first() {
        let problems = check(json!({"argv": "echo", "count": -1, "mode": "quick", "colour": 1}));
        let paths: Vec<String> = problems.iter().map(|p| p.path.to_string()).collect();
        assert_eq!(problems.len(), 4, "{paths:?}");
        assert!(paths.contains(&"argv".to_string()), "{paths:?}");
        assert!(paths.contains(&"mode".to_string()), "{paths:?}");
        // Taking the wrong `argv` out does not add a "missing field `argv`" of our own making.
        assert!(!problems.iter().any(|p| p.message.contains("missing field")));
        // A block with only a missing field says that once.
        let missing = check(json!({"count": 1}));
        assert_eq!(missing.len(), 1);
        assert!(missing[0].message.contains("missing field `argv`"));
    }

    #[test]
    fn expressions_stand_in_for_their_expected_type() {
        assert!(check(
            json!({"argv": "{{ inputs.argv }}", "count": "{{ inputs.n }}", "mode": "{{ x }}"})
        )
        .is_empty());
        assert!(check(json!({"argv": ["echo", "{{ item }}"]})).is_empty());
    }

    #[test]
    fn literal_type_errors_and_unknown_fields_are_found() {
        let p = check(json!({"argv": ["a"], "count": "many"}));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path.to_string(), "count");
        let p = check(json!({"argv": ["a"], "cuont": 1}));
        assert!(p[0].message.contains("unknown field"), "{p:?}");
        let p = check(json!({}));
        assert!(p[0].message.contains("missing field `argv`"), "{p:?}");
    }

    #[test]
    fn semantic_checks_run_when_no_templates_remain() {
        let p = check(json!({"argv": []}));
        assert_eq!(p[0].message, "argv must not be empty");
    }

    /// A number or boolean a template rendered where text is wanted is its text
    /// (`argv: [sleep, "{{ item }}"]` over numbers); text where a number is wanted stays an error.
    #[test]
    fn rendered_numbers_become_text_where_text_is_wanted() {
        let cfg = Typed::<Demo>::config(&json!({"argv": ["sleep", 5, true, 1.5], "count": 3}))
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(cfg.argv, ["sleep", "5", "true", "1.5"]);
        assert_eq!(cfg.count, Some(3));
        let e = Typed::<Demo>::config(&json!({"argv": ["a"], "count": "3"}))
            .err()
            .unwrap();
        assert!(e.message.contains("count"), "{}", e.message);
    }
}

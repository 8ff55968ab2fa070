//! `uses: workflow`: a step that runs another workflow file as a run of its own (a *child
//! run*): own checkpoints, own audit chain, linked both ways (the child's trigger names its
//! parent run and node; the parent's node saves the child's run id, audited, before the child
//! starts). A parent resumed after a crash finds its child by that saved id and continues it
//! (resumes it, or waits for the process that still executes it) instead of starting another.
//!
//! In the binary, not in `landfall-steps`: a child run needs the registry the parent runs with,
//! which holds this plugin (so it keeps only a weak reference, set once the registry is built).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use landfall_engine::state::{RunStatus, Trigger};
use landfall_engine::{
    compile, ConfigProblem, Engine, NewRun, Plugin, Registry, RunControl, Source, StepContext,
    StepError,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The plugin; `registry` is set right after the registry holding it is built.
pub(crate) struct ChildWorkflow {
    pub(crate) registry: Arc<OnceLock<Weak<Registry>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChildConfig {
    /// The workflow file to run (relative to the working directory), e.g.
    /// `workflows/onboarding.yaml`.
    pub(crate) file: PathBuf,
    /// Its inputs (defaults fill the rest; its `input_check` runs).
    #[serde(default)]
    pub(crate) inputs: Map<String, Value>,
}

const SAVED: &str = "child-run";

/// The child's run id: the parent's and the node's, so it is the same on every attempt.
fn child_id(run: &str, node: &str) -> String {
    let node: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let id = format!("{run}--{}", node.trim_end_matches('-'));
    if id.len() <= 64 {
        id
    } else {
        format!(
            "child-{}",
            &landfall_engine::sha256_hex(id.as_bytes())[..32]
        )
    }
}

#[async_trait]
impl Plugin for ChildWorkflow {
    const NAME: &'static str = "workflow";
    const SUMMARY: &'static str =
        "Run another workflow file as a child run (own checkpoints and audit, linked to this one)";
    type Config = ChildConfig;

    fn validate(c: &ChildConfig) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if c.file.as_os_str().is_empty() {
            out.push(ConfigProblem {
                path: landfall_engine::Path::root().key("file"),
                message: "name the workflow file to run".into(),
            });
        }
        out
    }

    async fn run(&self, c: ChildConfig, ctx: StepContext) -> Result<Value, StepError> {
        let registry =
            self.registry.get().and_then(Weak::upgrade).ok_or_else(|| {
                StepError::permanent("child runs are not available in this process")
            })?;
        let store = ctx
            .store()
            .ok_or_else(|| StepError::permanent("a child run needs the parent's state file"))?;
        // The parent's key (the CLI and `serve` read it from `LANDFALL_DATA_KEY` too).
        let key = match std::env::var("LANDFALL_DATA_KEY") {
            Ok(hex) if !hex.is_empty() => Some(
                landfall_engine::DataKey::from_hex(&hex)
                    .map_err(|e| StepError::permanent(format!("LANDFALL_DATA_KEY: {e}")))?,
            ),
            _ => None,
        };
        let engine = Engine::new(Arc::clone(&registry), Arc::clone(&store)).with_data_key(key);
        let id = ctx
            .saved_progress(SAVED)
            .and_then(|v| v["run_id"].as_str().map(str::to_string))
            .unwrap_or_else(|| child_id(&ctx.run_id, &ctx.node_id));

        let existing = store
            .run(&id)
            .map_err(|e| StepError::transient(format!("cannot read child run {id}: {e}")))?;
        let record = match existing {
            Some(r) => r,
            None => {
                let source = Source::read(&c.file).map_err(|e| {
                    StepError::permanent(format!("cannot read {}: {e}", c.file.display()))
                })?;
                let compiled = compile(&source, &registry);
                let Some(wf) = compiled.workflow else {
                    let problems: Vec<String> = compiled
                        .report
                        .diagnostics
                        .iter()
                        .map(|d| d.message.clone())
                        .collect();
                    return Err(StepError::permanent(format!(
                        "{} does not compile: {}",
                        c.file.display(),
                        problems.join("; ")
                    )));
                };
                let inputs = landfall_engine::resolve_and_check(&wf, &registry, c.inputs, &[])
                    .map_err(|errors| {
                        StepError::permanent(format!(
                            "the inputs of {} are invalid: {}",
                            c.file.display(),
                            errors
                                .iter()
                                .map(|e| e.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ))
                    })?;
                // Kept before the child exists: a crash in between finds this id, and the
                // run id (the same on every attempt) finds the child if it was made.
                ctx.save_progress(SAVED, json!({ "run_id": id, "file": c.file }))
                    .await?;
                let actor = ctx.requester()?;
                engine
                    .create_run(
                        &wf,
                        NewRun {
                            run_id: Some(id.clone()),
                            inputs,
                            trigger: Trigger {
                                source: "workflow".into(),
                                actor,
                                details: json!({
                                    "parent_run": &*ctx.run_id,
                                    "parent_node": &*ctx.node_id,
                                }),
                            },
                            max_parallel: wf.max_parallel.unwrap_or(4),
                            plan: None,
                        },
                    )
                    .map_err(|e| StepError::permanent(format!("cannot start the child run: {e}")))?
            }
        };
        ctx.log(format!("child run {id} ({})", record.workflow));
        let record = follow(&engine, &registry, record, &ctx).await?;
        let nodes = store
            .nodes(&id)
            .map_err(|e| StepError::transient(format!("cannot read child run {id}: {e}")))?;
        let mut steps = Map::new();
        for n in nodes {
            let entry = steps
                .entry(n.step_id.to_string())
                .or_insert_with(|| match n.fan_out {
                    Some(_) => Value::Array(Vec::new()),
                    None => Value::Null,
                });
            let out = n.outputs.clone().unwrap_or(Value::Null);
            match entry {
                Value::Array(a) => a.push(out),
                other => *other = out,
            }
        }
        match record.status {
            RunStatus::Succeeded => Ok(json!({
                "run_id": id,
                "workflow": record.workflow,
                "status": record.status,
                "outputs": steps,
            })),
            status => Err(StepError::permanent(format!(
                "child run {id} ({}) {status}: `landfall status {id}` has the details",
                record.workflow
            ))
            .with_context(json!({ "child_run": id, "status": status }))),
        }
    }
}

/// Runs the child to its end: executes (or resumes) it here, or waits while another live
/// process does. Interrupting the parent's attempt interrupts the child (it is resumed with
/// the parent); it is never cancelled on the parent's behalf.
async fn follow(
    engine: &Engine,
    registry: &Registry,
    mut record: landfall_engine::state::RunRecord,
    ctx: &StepContext,
) -> Result<landfall_engine::state::RunRecord, StepError> {
    let store = ctx
        .store()
        .ok_or_else(|| StepError::permanent("a child run needs the parent's state file"))?;
    let id = record.run_id.clone();
    loop {
        if record.status.is_terminal() {
            return Ok(record);
        }
        let control = RunControl {
            grace: Duration::from_secs(5),
            ..RunControl::default()
        };
        let stop = control.interrupt.clone();
        let parent = ctx.cancel.clone();
        let watcher = tokio::spawn(async move {
            parent.cancelled().await;
            stop.cancel();
        });
        let wf = {
            let source = Source::new(record.workflow_file.clone(), record.workflow_text.clone());
            compile(&source, registry).workflow.ok_or_else(|| {
                StepError::permanent(format!("child run {id}'s workflow no longer compiles"))
            })?
        };
        let out = engine
            .execute(Arc::new(wf), record.clone(), control, &[])
            .await;
        watcher.abort();
        match out {
            Ok(_) => {}
            // Another process executes it: wait for it.
            Err(landfall_engine::EngineError::Busy(_)) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = ctx.cancel.cancelled() => return Err(StepError::transient("cancelled")),
                }
            }
            Err(landfall_engine::EngineError::Finished(..)) => {}
            Err(e) => return Err(StepError::transient(format!("child run {id}: {e}"))),
        }
        if ctx.cancel.is_cancelled() {
            return Err(StepError::transient(format!(
                "interrupted; child run {id} continues when this run is resumed"
            )));
        }
        record = store
            .run(&id)
            .map_err(|e| StepError::transient(format!("cannot read child run {id}: {e}")))?
            .ok_or_else(|| StepError::transient(format!("child run {id} vanished")))?;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_child_id_is_stable_valid_and_short() {
        let id = super::child_id("onboard-and-provision-1", "onboard");
        assert_eq!(id, "onboard-and-provision-1--onboard");
        assert!(landfall_engine::valid_run_id(&id));
        assert_eq!(super::child_id("r", "deploy[3]"), "r--deploy-3");
        let long = super::child_id(&"x".repeat(60), "step");
        assert!(landfall_engine::valid_run_id(&long) && long.starts_with("child-"));
    }
}

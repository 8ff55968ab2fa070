//! `status`: the runs of the state file, or one run's nodes; also the documented JSON shape
//! of a run that `run --json` prints.

use landfall_engine::compile;

use landfall_engine::state::{NodeRecord, NodeStatus, RunRecord, RunStatus};
use landfall_engine::store::Store;
use landfall_engine::Registry;
use landfall_engine::Source;
use serde_json::{json, Value};

use super::{print_json, App, Failure, Res, EXIT_OK};
use crate::render;

impl App {
    pub(super) fn status(&self, run_id: Option<&str>, json: bool, limit: usize) -> Res<i32> {
        let Some(store) = self.readable_store()? else {
            if let Some(id) = run_id {
                return Err(self.no_state(&format!("run `{id}`")));
            }
            return Ok(self.empty_listing("runs", json));
        };
        if let Some(id) = run_id {
            let doc = run_json(store.as_ref(), id, &self.registry)?;
            if json {
                print_json(&doc);
            } else {
                print_run(&doc);
            }
            return Ok(EXIT_OK);
        }
        let runs = store.runs()?;
        let rows: Vec<Value> = runs
            .iter()
            .take(limit)
            .map(|r| {
                json!({
                    "run_id": r.run_id,
                    "workflow": r.workflow,
                    "status": effective_status(store.as_ref(), r),
                    "started_at": r.started_at,
                    "finished_at": r.finished_at,
                    "actor": r.trigger.actor,
                })
            })
            .collect();
        if json {
            print_json(&Value::Array(rows));
            return Ok(EXIT_OK);
        }
        if rows.is_empty() {
            eprintln!("no runs yet in {}", self.db_shown());
            return Ok(EXIT_OK);
        }
        // Columns as wide as their longest value (child runs' ids are long), like `ps`.
        let w_run = runs
            .iter()
            .map(|r| r.run_id.len())
            .max()
            .unwrap_or(0)
            .max(3);
        let w_wf = runs
            .iter()
            .map(|r| r.workflow.len())
            .max()
            .unwrap_or(0)
            .max(8);
        let mut out = String::new();
        out.push_str(&format!(
            "{:<w_run$} {:<w_wf$} {:<12} {:<20} {:>9}  {}\n",
            "RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION", "ACTOR"
        ));
        for (r, row) in runs.iter().zip(&rows) {
            let dur = r
                .finished_at
                .map(|f| render::duration((f - r.started_at).num_milliseconds()))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<w_run$} {:<w_wf$} {:<12} {:<20} {:>9}  {}\n",
                r.run_id,
                r.workflow,
                row["status"].as_str().unwrap_or_default(),
                r.started_at.format("%Y-%m-%d %H:%M:%S"),
                dur,
                r.trigger.actor
            ));
        }
        print!("{out}");
        Ok(EXIT_OK)
    }
}

/// A run whose record says running but that no live process holds was interrupted.
fn effective_status(store: &dyn Store, r: &RunRecord) -> RunStatus {
    if matches!(r.status, RunStatus::Running | RunStatus::Queued) && !store.is_live(&r.run_id) {
        RunStatus::Interrupted
    } else {
        r.status
    }
}

/// The documented `status RUN --json` / `run --json` shape.
pub fn run_json(store: &dyn Store, run_id: &str, registry: &Registry) -> Res<Value> {
    let run = store
        .run(run_id)?
        .ok_or_else(|| Failure::invalid(format!("no run `{run_id}`")))?;
    let nodes = store.nodes(run_id)?;
    let source = Source::new(run.workflow_file.clone(), run.workflow_text.clone());
    let wf = compile(&source, registry).workflow;
    let order: Vec<String> = wf
        .as_ref()
        .map(|wf| wf.order.iter().map(|&i| wf.steps[i].id.clone()).collect())
        .unwrap_or_default();
    // Secret inputs never leave the state file; without the workflow, hide them all.
    let inputs = match &wf {
        Some(wf) => landfall_engine::redacted_inputs(&wf.inputs, &run.inputs),
        None => Value::String("(hidden: the stored workflow no longer compiles)".into()),
    };
    let mut list: Vec<&NodeRecord> = nodes.iter().collect();
    let pos = |step: &str| order.iter().position(|s| s == step).unwrap_or(usize::MAX);
    list.sort_by_key(|n| (pos(&n.step_id), n.index.unwrap_or(0)));
    let mut out: Vec<Value> = list.iter().map(|n| node_json(n)).collect();
    for step in &order {
        if !nodes.iter().any(|n| *n.step_id == **step) {
            out.push(json!({ "id": step, "status": NodeStatus::Pending, "attempts": 0, "started_at": null, "finished_at": null, "outputs": null, "error": null }));
        }
    }
    // Runs that call runs, linked both ways: the parent a child's trigger names, and the
    // children the parent's `workflow` nodes saved before starting them.
    let parent = match (
        run.trigger.details["parent_run"].as_str(),
        run.trigger.details["parent_node"].as_str(),
    ) {
        (Some(r), Some(n)) => json!({ "run_id": r, "node": n }),
        _ => Value::Null,
    };
    let children: Vec<Value> = store
        .annotations(run_id)?
        .into_iter()
        .filter_map(|(k, v)| {
            let node = k.strip_prefix("progress/")?.strip_suffix("/child-run")?;
            Some(json!({ "node": node, "run_id": v["run_id"] }))
        })
        .collect();
    let mut doc = json!({
        "run_id": run.run_id,
        "workflow": run.workflow,
        "status": effective_status(store, &run),
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "actor": run.trigger.actor,
        "inputs": inputs,
        "nodes": out,
    });
    if !parent.is_null() {
        doc["parent"] = parent;
    }
    if !children.is_empty() {
        doc["children"] = Value::Array(children);
    }
    Ok(doc)
}

fn node_json(n: &NodeRecord) -> Value {
    let mut v = json!({
        "id": n.node_id,
        "status": n.status,
        "attempts": n.attempts,
        "started_at": n.started_at,
        "finished_at": n.finished_at,
        "outputs": n.outputs,
        "error": n.error.as_ref().map(|e| json!({ "class": e.class, "message": e.message })),
    });
    if let Some(r) = n.skip_reason {
        v["skip_reason"] = json!(r);
    }
    v
}

fn print_run(doc: &Value) {
    let mut out = format!(
        "run {}  workflow {}  status {}  actor {}\n",
        doc["run_id"].as_str().unwrap_or_default(),
        doc["workflow"].as_str().unwrap_or_default(),
        doc["status"].as_str().unwrap_or_default(),
        doc["actor"].as_str().unwrap_or_default(),
    );
    if let Some(p) = doc["parent"]["run_id"].as_str() {
        out.push_str(&format!(
            "  child of run {p} (node {})\n",
            doc["parent"]["node"].as_str().unwrap_or_default()
        ));
    }
    for c in doc["children"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  node {} runs child run {}\n",
            c["node"].as_str().unwrap_or_default(),
            c["run_id"].as_str().unwrap_or_default()
        ));
    }
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let err = n["error"]["message"]
            .as_str()
            .map(|m| format!("  {m}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<28} {:<10} attempts {}{err}\n",
            n["id"].as_str().unwrap_or_default(),
            n["status"].as_str().unwrap_or_default(),
            n["attempts"]
        ));
    }
    print!("{out}");
}

//! Redrive: a finished run that failed (or was cancelled) runs again where it failed, as a new
//! attempt of the same run: same run id, same idempotency keys, the audit chain continued.
//!
//! What runs again:
//! - the nodes that failed, were cancelled, or were skipped because of a failure (a failing
//!   canary's later waves) — of a step some of whose nodes succeeded, only those nodes (the
//!   succeeded ones keep their outputs); of any other step, the whole step, activated anew;
//! - with `--from STEP` (or `--from NODE`) that step (node) instead;
//! - the `plan: true` steps upstream: a failure branch may have undone work (a rollback
//!   deletes the stacks a failed deploy left) and time has passed, so what will be applied is
//!   planned again, never assumed from before the failure. A plan fanned out over the same
//!   items as a step reset node by node is made again for those items only (the targets the
//!   rollback undid); any other plan step, whole;
//! - every step downstream of anything that runs again (the approval of the new plan, the
//!   failure branches), activated anew — except a step reset node by node, whose other nodes
//!   keep their outputs.
//!
//! Progress a plugin saved (an account creation's request id) stays: it is what keeps a
//! side effect single. Decisions (signals) of steps activated anew are dropped: an approval
//! is asked again for the plan made again.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{Engine, EngineError};
use crate::state::{NodeRecord, NodeStatus, RunRecord, RunStatus, SkipReason};
use crate::store::{AuditDraft, Batch};
use crate::workflow::Workflow;

/// What a redrive prepared; the caller executes the run next (`Engine::execute`).
#[derive(Debug, Clone)]
pub struct Redrive {
    /// The run, ready to execute (status `interrupted` until it does: a crash before then is
    /// continued by `resume`).
    pub run: RunRecord,
    /// Which redrive of the run this is (1 for the first).
    pub number: u64,
    /// Nodes that run again in place (their steps' other nodes keep their outputs).
    pub reset: Vec<String>,
    /// Steps activated anew.
    pub steps: Vec<String>,
}

/// A node that did not get its work done because of a failure.
fn unfinished(n: &NodeRecord) -> bool {
    match n.status {
        NodeStatus::Failed | NodeStatus::Cancelled => true,
        NodeStatus::Skipped => matches!(
            n.skip_reason,
            Some(SkipReason::UpstreamFailed | SkipReason::RunStopped | SkipReason::RolloutStopped)
        ),
        _ => false,
    }
}

impl Engine {
    /// Prepares run `run_id` (finished, failed or cancelled) to run again from where it
    /// failed, or from `from` (a step or node id), in one commit. See the module doc.
    pub fn redrive(
        &self,
        wf: &Workflow,
        run_id: &str,
        from: Option<&str>,
        actor: &str,
    ) -> Result<Redrive, EngineError> {
        let lease = self
            .store
            .lease(run_id)?
            .ok_or_else(|| EngineError::Busy(run_id.to_string()))?;
        let run = self
            .store
            .run(run_id)?
            .ok_or_else(|| EngineError::NoSuchRun(run_id.to_string()))?;
        if !run.status.is_terminal() {
            return Err(EngineError::NotRedrivable {
                run_id: run_id.to_string(),
                why: format!(
                    "it is {}: `landfall resume {run_id}` continues it",
                    run.status
                ),
            });
        }
        let nodes = self.store.nodes(run_id)?;
        let mut by_step: BTreeMap<usize, Vec<&NodeRecord>> = BTreeMap::new();
        for n in &nodes {
            if let Some(i) = wf.step_index(&n.step_id) {
                by_step.entry(i).or_default().push(n);
            }
        }
        // Steps activated anew, and nodes reset in place (by step).
        let mut whole: BTreeSet<usize> = BTreeSet::new();
        let mut partial: BTreeMap<usize, Vec<&NodeRecord>> = BTreeMap::new();
        match from {
            Some(f) => {
                if let Some(i) = wf.step_index(f) {
                    whole.insert(i);
                } else {
                    let n = nodes.iter().find(|n| &*n.node_id == f).ok_or_else(|| {
                        EngineError::NoSuchNode(run_id.to_string(), f.to_string())
                    })?;
                    let i = wf.step_index(&n.step_id).ok_or_else(|| {
                        EngineError::NoSuchNode(run_id.to_string(), f.to_string())
                    })?;
                    if n.fan_out.unwrap_or(0) > 0 {
                        partial.entry(i).or_default().push(n);
                    } else {
                        whole.insert(i);
                    }
                }
            }
            None => {
                if run.status == RunStatus::Succeeded {
                    return Err(EngineError::NotRedrivable {
                        run_id: run_id.to_string(),
                        why: "it succeeded; `--from STEP` runs a part of it again".into(),
                    });
                }
                for (&i, recs) in &by_step {
                    let failed: Vec<&NodeRecord> =
                        recs.iter().copied().filter(|n| unfinished(n)).collect();
                    if failed.is_empty() {
                        continue;
                    }
                    let fanned = recs.iter().any(|n| n.fan_out.unwrap_or(0) > 0);
                    let some_done = recs.iter().any(|n| n.status == NodeStatus::Succeeded);
                    if fanned && some_done {
                        partial.insert(i, failed);
                    } else {
                        whole.insert(i);
                    }
                }
            }
        }
        if whole.is_empty() && partial.is_empty() {
            return Err(EngineError::NotRedrivable {
                run_id: run_id.to_string(),
                why: "no node failed, was cancelled or was skipped because of a failure".into(),
            });
        }
        // Plan again what will be applied: the `plan: true` steps upstream. A plan fanned out
        // over the same items as a step reset node by node is made again for those items
        // only (the targets a rollback undid); any other plan step, whole.
        let roots: Vec<usize> = whole.iter().chain(partial.keys()).copied().collect();
        for root in roots {
            let items: Option<Vec<&serde_json::Value>> = partial
                .get(&root)
                .map(|recs| recs.iter().filter_map(|n| n.item.as_ref()).collect());
            let mut stack = vec![root];
            let mut seen = BTreeSet::new();
            while let Some(i) = stack.pop() {
                for &k in &wf.steps[i].needs {
                    if !seen.insert(k) {
                        continue;
                    }
                    stack.push(k);
                    if !wf.steps[k].plan || whole.contains(&k) {
                        continue;
                    }
                    let recs = by_step.get(&k).map(Vec::as_slice).unwrap_or_default();
                    let fanned = recs.iter().any(|n| n.fan_out.unwrap_or(0) > 0);
                    match &items {
                        Some(items) if fanned => {
                            let again: Vec<&NodeRecord> = recs
                                .iter()
                                .copied()
                                .filter(|n| n.item.as_ref().is_some_and(|it| items.contains(&it)))
                                .collect();
                            let entry = partial.entry(k).or_default();
                            for n in again {
                                if !entry.iter().any(|e| e.node_id == n.node_id) {
                                    entry.push(n);
                                }
                            }
                        }
                        _ => {
                            whole.insert(k);
                        }
                    }
                }
            }
        }
        // Downstream of what runs again, activated anew; a step reset node by node keeps its
        // other nodes (their inputs did not change: their own plan items were not made again).
        let mut stack: Vec<usize> = whole.iter().chain(partial.keys()).copied().collect();
        while let Some(i) = stack.pop() {
            for &d in wf.dependents(i) {
                if !partial.contains_key(&d) && whole.insert(d) {
                    stack.push(d);
                }
            }
        }
        partial.retain(|i, _| !whole.contains(i));

        let number = self
            .store
            .audit(run_id)?
            .iter()
            .filter(|e| e.draft.kind == "run_redriven")
            .count() as u64
            + 1;
        let mut reset = Vec::new();
        let mut records = Vec::new();
        let mut reset_audit = Vec::new();
        for recs in partial.values() {
            for n in recs {
                let mut r = (*n).clone();
                super::transitions::reset_for_redrive(&mut r);
                reset.push(r.node_id.to_string());
                // Its tries start afresh (see `count_cut_offs`).
                reset_audit.push(json!({ "node": r.node_id, "attempts": r.attempts }));
                records.push(std::sync::Arc::new(r));
            }
        }
        let dropped: Vec<(String, String)> = nodes
            .iter()
            .filter(|n| {
                wf.step_index(&n.step_id)
                    .is_some_and(|i| whole.contains(&i))
            })
            .map(|n| (run_id.to_string(), n.node_id.to_string()))
            .collect();
        let steps: Vec<String> = whole.iter().map(|&i| wf.steps[i].id.clone()).collect();
        // The run's status, not a node's: `interrupted` until it executes again.
        let run = RunRecord {
            status: RunStatus::Interrupted,
            finished_at: None,
            ..run
        };
        let audit = AuditDraft::new(
            actor,
            run_id,
            "run_redriven",
            json!({
                "redrive": number,
                "from": from,
                "reset": reset_audit,
                "steps": steps,
            }),
        );
        self.store.commit(Batch {
            runs: vec![run.clone()],
            nodes: if records.is_empty() {
                Vec::new()
            } else {
                vec![(run_id.into(), records)]
            },
            dropped_nodes: dropped,
            audit: vec![audit.into()],
            ..Batch::default()
        })?;
        drop(lease);
        Ok(Redrive {
            run,
            number,
            reset,
            steps,
        })
    }
}

//! A run and its workflow's `concurrency` key: the key read from the inputs, a slot claimed
//! in the store before the first turn, the wait in line (`queued`) when the key is full, and
//! the refusal when the workflow would rather not wait. See [`crate::concurrency`].

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use super::{Engine, EngineError, RunControl, RunOutcome};
use crate::concurrency::{Claim, Concurrency, OnConflict};
use crate::events::{Observer, RunEvent};
use crate::state::{RunRecord, RunStatus};
use crate::store::{AuditDraft, Batch};
use crate::workflow::Workflow;

/// The longest wait between two looks at a full key: a slot freed by another process is
/// taken within this.
const MAX_LOOK: Duration = Duration::from_secs(2);

impl Engine {
    /// The run's key in the store: the workflow's `key` read with the run's inputs.
    pub(super) fn concurrency_key(
        &self,
        wf: &Workflow,
        c: &Concurrency,
        run: &RunRecord,
        inputs: &Value,
    ) -> Result<String, EngineError> {
        let ctx = crate::expr::ctx_value(json!({
            "inputs": inputs,
            "run": { "id": run.run_id, "workflow": wf.name },
        }));
        let rendered =
            crate::expr::render_str(&c.key, &ctx).map_err(|e| EngineError::ConcurrencyKey {
                key: c.key.clone(),
                message: e.to_string(),
            })?;
        let text = match rendered {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if text.trim().is_empty() {
            return Err(EngineError::ConcurrencyKey {
                key: c.key.clone(),
                message: "it is empty for these inputs".into(),
            });
        }
        Ok(c.slot_key(&wf.name, &text))
    }

    /// Claims a slot for the run, waiting in line while the key is full. `None`: the run
    /// holds a slot and may start. `Some`: it was stopped while it waited (cancelled or
    /// interrupted; it left the line). A refusal is [`EngineError::Refused`], the run marked
    /// cancelled.
    pub(super) async fn wait_for_slot(
        &self,
        c: &Concurrency,
        key: &str,
        run: &RunRecord,
        control: &RunControl,
        observers: &[Arc<dyn Observer>],
    ) -> Result<Option<RunOutcome>, EngineError> {
        let queue = c.on_conflict == OnConflict::Queue;
        let mut told = false;
        let mut look = Duration::from_millis(200);
        loop {
            match self.store.claim_slot(key, c.limit, &run.run_id, queue)? {
                Claim::Held => {
                    if told {
                        self.audit_run(
                            run,
                            RunStatus::Running,
                            "slot_taken",
                            json!({ "key": key }),
                        )?;
                    }
                    return Ok(None);
                }
                Claim::Refused { holders } => {
                    self.audit_run(
                        run,
                        RunStatus::Cancelled,
                        "run_refused",
                        json!({ "key": key, "holders": holders }),
                    )?;
                    return Err(EngineError::Refused {
                        run_id: run.run_id.clone(),
                        key: key.to_string(),
                        holders,
                    });
                }
                Claim::Queued { ahead, holders } => {
                    if !told {
                        told = true;
                        tracing::info!(run = %run.run_id, key, ahead, "Run queued");
                        self.audit_run(
                            run,
                            RunStatus::Queued,
                            "run_queued",
                            json!({ "key": key, "ahead": ahead, "holders": holders }),
                        )?;
                        let e = RunEvent::RunQueued {
                            run_id: run.run_id.clone(),
                            key: key.to_string(),
                            ahead,
                            holders,
                        };
                        for o in observers {
                            o.on_event(&e);
                        }
                    }
                }
            }
            // Jittered, so runs waiting in several processes do not look in step.
            let nap = look.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            let stopped = tokio::select! {
                _ = tokio::time::sleep(nap) => None,
                _ = control.cancel.cancelled() => Some(RunStatus::Cancelled),
                _ = control.interrupt.cancelled() => Some(RunStatus::Interrupted),
            };
            if let Some(status) = stopped {
                // Leaves the line either way: a resumed run queues again at the back.
                self.store.release_slot(key, &run.run_id)?;
                self.audit_run(
                    run,
                    status,
                    "run_left_queue",
                    json!({ "key": key, "status": status }),
                )?;
                for o in observers {
                    o.on_event(&RunEvent::RunFinished {
                        run_id: run.run_id.clone(),
                        status,
                    });
                }
                return Ok(Some(RunOutcome {
                    run_id: run.run_id.clone(),
                    status,
                }));
            }
            look = (look * 2).min(MAX_LOOK);
        }
    }

    /// Writes the run's new `status` with one audit entry, in one commit.
    fn audit_run(
        &self,
        run: &RunRecord,
        status: RunStatus,
        kind: &str,
        details: Value,
    ) -> Result<(), EngineError> {
        // The run's status, not a node's (those change only in transitions.rs).
        let rec = RunRecord {
            status,
            finished_at: status.is_terminal().then(Utc::now),
            ..run.clone()
        };
        let audit = AuditDraft::new(&run.trigger.actor, &run.run_id, kind, details);
        self.store.commit(Batch {
            runs: vec![rec],
            audit: vec![audit.into()],
            ..Batch::default()
        })?;
        Ok(())
    }
}

//! What an attempt waits for before its plugin runs, outside its time limit: the approval of
//! its wave (`approve_waves`, asked by a wave's first instance) and a slot of its step's
//! `concurrency` key. Both are decided when the attempt is spawned ([`Execution::gates`])
//! and passed inside the attempt's task ([`Gates::pass`]), where waiting holds no thread.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::Execution;
use crate::concurrency::{Claim, OnConflict};
use crate::error::StepError;
use crate::expr;
use crate::plugin::{DynPlugin, StepContext};
use crate::store::Store;

/// How often a node waiting for a slot looks again.
const SLOT_POLL: Duration = Duration::from_secs(1);

/// The saved progress that says a wave was approved: a resumed run does not ask again.
pub(super) const WAVE_APPROVED: &str = "wave-approved";

#[derive(Default)]
pub(super) struct Gates {
    /// The approval plugin, its `with:`, and the wave (1 is the second).
    approval: Option<(Arc<dyn DynPlugin>, Value, usize)>,
    slot: Option<NodeSlot>,
}

struct NodeSlot {
    store: Arc<dyn Store>,
    key: String,
    limit: usize,
    queue: bool,
    /// `run#node`: the store drops it once the node or its run ended.
    holder: String,
}

/// A slot held by an attempt, given back when it ends ([`Held::release`]). One left behind
/// (a crash, a cancelled task) is dropped by the store once the node ends.
pub(super) struct Held(Option<NodeSlot>);

impl Held {
    pub(super) async fn release(self) {
        let Some(s) = self.0 else { return };
        let key = s.key.clone();
        let released =
            tokio::task::spawn_blocking(move || s.store.release_slot(&s.key, &s.holder)).await;
        if !matches!(released, Ok(Ok(()))) {
            tracing::warn!(
                key,
                "could not give a step's concurrency slot back; it is freed when the node ends"
            );
        }
    }
}

impl Gates {
    pub(super) fn is_empty(&self) -> bool {
        self.approval.is_none() && self.slot.is_none()
    }

    /// Waits for the wave's approval, then for a slot. An error fails the attempt: a refused
    /// approval or a refused slot permanently, a cancelled wait transiently.
    pub(super) async fn pass(self, ctx: &StepContext) -> Result<Held, StepError> {
        if let Some((plugin, with, wave)) = self.approval {
            let decided = plugin.run(with, ctx.clone()).await?;
            let by = decided.get("by").cloned().unwrap_or(Value::Null);
            let approved = json!({ "wave": wave + 1, "by": by });
            ctx.save_progress(WAVE_APPROVED, approved.clone()).await?;
            ctx.milestone("wave_approved", approved);
        }
        let Some(slot) = self.slot else {
            return Ok(Held(None));
        };
        let mut told = false;
        let got = ctx
            .waiting_for(None, SLOT_POLL, || {
                match slot
                    .store
                    .claim_slot(&slot.key, slot.limit, &slot.holder, slot.queue)
                    .map_err(|e| StepError::transient(format!("cannot claim a slot: {e}")))?
                {
                    Claim::Held => Ok(Some(())),
                    Claim::Refused { holders } => Err(StepError::permanent(format!(
                        "concurrency key `{}` is full (held by {}) and the step refuses to wait",
                        slot.key,
                        holders.join(", ")
                    ))),
                    Claim::Queued { ahead, holders } => {
                        if !told {
                            told = true;
                            ctx.milestone(
                                "slot_queued",
                                json!({ "key": slot.key, "ahead": ahead, "holders": holders }),
                            );
                        }
                        Ok(None)
                    }
                }
            })
            .await;
        match got {
            Ok(_) => Ok(Held(Some(slot))),
            Err(e) => {
                // Out of the line: a retry queues again at the back.
                let _ = slot.store.release_slot(&slot.key, &slot.holder);
                Err(e)
            }
        }
    }
}

impl Execution<'_> {
    /// What node `node`'s attempt must pass before it runs. An error (a key or approval that
    /// cannot be rendered) fails the attempt.
    pub(super) fn gates(&mut self, node: usize) -> Result<Gates, StepError> {
        let wf = Arc::clone(&self.wf);
        let step = &wf.steps[self.nodes[node].step];
        if step.concurrency.is_none() && step.approve_waves.is_none() {
            return Ok(Gates::default());
        }
        let base = self.shared_context();
        let rec = self.rec(node);
        let ctx = match &rec.item {
            Some(item) => expr::with_item(&base, item, rec.index),
            None => base,
        };
        let mut gates = Gates::default();
        let gate = self.rollouts[self.nodes[node].step]
            .as_ref()
            .and_then(|p| Some((p.gate_of(rec.index?)?, p.waves())));
        if let (Some(with), Some(((wave, range), waves))) = (&step.approve_waves, gate) {
            let with = expr::render_value(with, &ctx)
                .map_err(|e| StepError::permanent(format!("cannot render `approve_waves`: {e}")))?;
            let first = self.step_nodes[self.nodes[node].step]
                .as_ref()
                .map_or(0, |r| r.start);
            let items: Vec<Value> = range
                .map(|k| self.rec(first + k).item.clone().unwrap_or(Value::Null))
                .collect();
            let plugin = self
                .engine
                .registry
                .get(crate::compile::WAVE_APPROVAL)
                .cloned()
                .ok_or_else(|| StepError::permanent("no `approval` plugin to approve a wave"))?;
            let with = crate::rollout::wave_approval(&with, &step.id, wave, waves, &items);
            gates.approval = Some((plugin, with, wave));
        }
        if let Some(c) = &step.concurrency {
            let rendered = expr::render_str(&c.key, &ctx).map_err(|e| {
                StepError::permanent(format!("cannot read the concurrency key `{}`: {e}", c.key))
            })?;
            let text = match rendered {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if text.trim().is_empty() {
                return Err(StepError::permanent(format!(
                    "the concurrency key `{}` is empty for this node",
                    c.key
                )));
            }
            gates.slot = Some(NodeSlot {
                store: Arc::clone(&self.engine.store),
                key: c.step_slot_key(&wf.name, &step.id, &text),
                limit: c.limit,
                queue: c.on_conflict == OnConflict::Queue,
                holder: crate::concurrency::node_holder(&self.run.run_id, &self.nodes[node].id),
            });
        }
        Ok(gates)
    }
}

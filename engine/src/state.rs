//! The durable state of runs and nodes, and the legal transitions between node states.
//!
//! These records are what the store persists (serde JSON, with the schema version kept by the
//! store). Everything else about a run is derived from them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StepError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Pending,
    Running,
    /// Waiting for something outside the run (an approval); holds no parallelism slot.
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl NodeStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            NodeStatus::Succeeded
                | NodeStatus::Failed
                | NodeStatus::Skipped
                | NodeStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Pending => "pending",
            NodeStatus::Running => "running",
            NodeStatus::Waiting => "waiting",
            NodeStatus::Succeeded => "succeeded",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Cancelled => "cancelled",
        }
    }

    /// The one place that says which transitions exist.
    ///
    /// `Running → Pending` is an interruption (Ctrl-C, crash): the attempt is run again with
    /// the same idempotency key. `Running → Running` is the next attempt after a retry delay.
    pub fn can_become(self, next: NodeStatus) -> bool {
        use NodeStatus::*;
        matches!(
            (self, next),
            (Pending, Running | Skipped | Cancelled | Failed)
                | (
                    Running,
                    Running | Waiting | Succeeded | Failed | Cancelled | Pending
                )
                | (Waiting, Running | Succeeded | Failed | Cancelled | Pending)
        )
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Stopped before finishing (Ctrl-C, a crash, a reboot): `landfall resume` continues it.
    Interrupted,
    /// Waiting for a slot of its workflow's `concurrency` key (another run of the same key
    /// runs); starts by itself when one frees. Last: rows written before it keep their codes.
    Queued,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Queued => "queued",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a node was skipped; decides whether its dependents still run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Its `when` was false: dependents run as if it had succeeded.
    Condition,
    /// An earlier step failed: dependents are skipped too, unless they handle failure.
    UpstreamFailed,
    /// Nothing failed, so a `failure()` step had nothing to do.
    NoFailure,
    /// The run was cancelled or failed critically before the node started.
    RunStopped,
    /// Its step's instances failed beyond the step's `tolerate` before it started (a failing
    /// canary stops the later waves).
    RolloutStopped,
}

/// Who or what started a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// `cli`, `slack`, …
    pub source: String,
    /// The person or system, e.g. a user name or a Slack user id.
    pub actor: String,
    /// Source-specific details (Slack channel, command text).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub workflow: String,
    /// The workflow file's name and text at start: `resume` runs this, not today's file.
    pub workflow_file: String,
    /// Shared with the compiled workflow's source: a run record is copied into every batch
    /// that changes it, and a workflow of 10,000 steps is ~0.5 MB of text.
    pub workflow_text: Arc<str>,
    pub workflow_digest: String,
    pub inputs: Value,
    /// Sha-256 of the canonical JSON of `inputs`.
    pub inputs_digest: String,
    pub trigger: Trigger,
    pub status: RunStatus,
    pub max_parallel: usize,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// The stored plan this run applies (`landfall run --plan`): its `plan: true` steps take
    /// their outputs from it instead of planning again, so what was approved is what runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
}

/// A decision or datum delivered to a waiting node from outside the run (an approval from
/// Slack or `landfall approve`). Stored durably, so it survives restarts on either side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Who sent it (a Slack user id, `cli:alice`).
    pub actor: String,
    pub at: DateTime<Utc>,
    /// Plugin-defined payload, e.g. `{"decision": "approve", "digest": "…"}`.
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `step` or `step[i]` for a `for_each` instance. Shared, not owned: the scheduler's
    /// copies of a record and its audit entries use the same id (a single node's is its
    /// step's).
    pub node_id: Arc<str>,
    pub step_id: Arc<str>,
    /// The instance's position and item, for `for_each` instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub item: Option<Value>,
    /// How many instances the step fanned out to (on every instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<usize>,
    pub status: NodeStatus,
    /// Attempts started so far.
    pub attempts: u32,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub outputs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<SkipReason>,
}

/// A key that is present is `Some`, even when its value is `null` (a step may output null).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl NodeRecord {
    pub fn new(node_id: impl Into<Arc<str>>, step_id: impl Into<Arc<str>>) -> Self {
        NodeRecord {
            node_id: node_id.into(),
            step_id: step_id.into(),
            index: None,
            item: None,
            fan_out: None,
            status: NodeStatus::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            outputs: None,
            error: None,
            skip_reason: None,
        }
    }
}

/// The idempotency key of a node: stable across retries and resumes, different for every node
/// of every run. Safe as an AWS `ClientRequestToken` (hex).
pub fn idempotency_key(run_id: &str, node_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(run_id.as_bytes());
    h.update([0]);
    h.update(node_id.as_bytes());
    const_hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What people read (`status`, messages) and what the JSON and the audit say are one
    /// spelling, written out here by hand.
    #[test]
    fn statuses_read_as_serialised() {
        for (s, text) in [
            (NodeStatus::Pending, "pending"),
            (NodeStatus::Running, "running"),
            (NodeStatus::Waiting, "waiting"),
            (NodeStatus::Succeeded, "succeeded"),
            (NodeStatus::Failed, "failed"),
            (NodeStatus::Skipped, "skipped"),
            (NodeStatus::Cancelled, "cancelled"),
        ] {
            assert_eq!(s.to_string(), text);
            assert_eq!(s.as_str(), text);
            assert_eq!(serde_json::to_value(s).unwrap(), text);
        }
        for (s, text) in [
            (RunStatus::Running, "running"),
            (RunStatus::Succeeded, "succeeded"),
            (RunStatus::Failed, "failed"),
            (RunStatus::Cancelled, "cancelled"),
            (RunStatus::Interrupted, "interrupted"),
            (RunStatus::Queued, "queued"),
        ] {
            assert_eq!(s.to_string(), text);
            assert_eq!(s.as_str(), text);
            assert_eq!(serde_json::to_value(s).unwrap(), text);
        }
    }

    #[test]
    fn terminal_states_are_final() {
        use NodeStatus::*;
        for from in [Succeeded, Failed, Skipped, Cancelled] {
            for to in [
                Pending, Running, Waiting, Succeeded, Failed, Skipped, Cancelled,
            ] {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        assert!(Pending.can_become(Running));
        assert!(Running.can_become(Pending));
        assert!(!Pending.can_become(Succeeded));
    }

    #[test]
    fn idempotency_keys_differ_per_node_and_run() {
        let a = idempotency_key("r1", "a");
        assert_eq!(a, idempotency_key("r1", "a"));
        assert_ne!(a, idempotency_key("r1", "b"));
        assert_ne!(a, idempotency_key("r2", "a"));
        assert_eq!(a.len(), 32);
    }
}

//! Run events: what observers (CLI progress, the Slack thread, tests) see of a run.
//!
//! Events are notifications, not state: the store is the truth. An observer that misses events
//! (a crash) rebuilds its view from the store on resume.

use serde::Serialize;
use serde_json::Value;

use crate::breaker::BreakerState;
use crate::error::StepError;
use crate::state::{NodeStatus, RunStatus};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    RunStarted {
        run_id: String,
        workflow: String,
        resumed: bool,
        nodes_total: usize,
    },
    NodeStarted {
        run_id: String,
        node: String,
        attempt: u32,
    },
    NodeFinished {
        run_id: String,
        node: String,
        status: NodeStatus,
        attempts: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<StepError>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    RetryScheduled {
        run_id: String,
        node: String,
        attempt: u32,
        delay_ms: u64,
        error: StepError,
    },
    /// A plugin's message (the `log` step, a plugin's milestone).
    Log {
        run_id: String,
        node: String,
        level: LogLevel,
        message: String,
    },
    /// A plugin's progress (e.g. a stack deployment's percentage), 0–100.
    Progress {
        run_id: String,
        node: String,
        percent: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A plugin-defined milestone (account created, package published): observers may turn
    /// it into a notification. `kind` is plugin-defined, `data` plain data.
    Milestone {
        run_id: String,
        node: String,
        kind: String,
        data: Value,
    },
    BreakerChanged {
        key: String,
        from: BreakerState,
        to: BreakerState,
    },
    RunFinished {
        run_id: String,
        status: RunStatus,
    },
    /// The run waits for a slot of its concurrency key: `holders` run now, `ahead` wait
    /// before it. Told again only when it starts (`RunStarted`) or ends.
    RunQueued {
        run_id: String,
        key: String,
        ahead: usize,
        holders: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Warn,
}

/// Receives every event of the runs it is attached to. Must not block: queue and return.
pub trait Observer: Send + Sync {
    fn on_event(&self, event: &RunEvent);
}

impl<F: Fn(&RunEvent) + Send + Sync> Observer for F {
    fn on_event(&self, event: &RunEvent) {
        self(event)
    }
}

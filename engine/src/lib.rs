//! Landfall's engine: workflow files in, durable runs out.
//!
//! The engine knows nothing about AWS or Slack. It loads and checks workflow files
//! ([`compile()`]), evaluates expressions, schedules nodes with retries, time-outs and
//! circuit breakers ([`Engine`]), and checkpoints every transition in a [`store`]. Plugins
//! ([`Plugin`]) do the work; observers ([`Observer`]) watch it.

// Three modules stay public because they are vocabularies, not machinery: `store` (the
// `Store` trait, its rows and batches, the audit chain), `state` (run and node records and
// their statuses) and `diag` (diagnostics and their codes). Everything else is private, and what
// of it is part of the engine's interface is re-exported below, so a caller names
// `landfall_engine::RetryPolicy`, never a path into the engine's layout.
pub mod diag;
pub mod state;
pub mod store;

mod breaker;
mod compile;
mod concurrency;
mod crypto;
mod digest;
mod error;
mod events;
mod expr;
mod inputs;
mod limits;
mod lock;
mod package;
mod path;
mod plan;
mod plugin;
mod retry;
mod rollout;
mod scheduler;
mod source;
mod spec;
mod workflow;

#[cfg(test)]
mod tests;

pub use breaker::{BreakerConfig, BreakerState};
pub use compile::compile;
pub use concurrency::{Claim, Concurrency, OnConflict, Scope, Slots};
pub use crypto::{CryptoError, DataKey};
pub use digest::{digest_of, sha256_hex};
pub use error::{ErrorClass, StepError};
pub use events::{LogLevel, Observer, RunEvent};
pub use expr::{
    catching_template_panics, ctx_value, panic_is_caught_as_template_error, render_str,
};
pub use inputs::{redacted as redacted_inputs, resolve_and_check, InputError, SecretInputError};
pub use limits::{get as limits, set as set_limits, Limits};
pub use lock::RunLease;
pub use package::{valid_package_id, Package, PackageContent, PackageRef};
pub use path::{Path, Seg};
pub use plan::{
    actions_counted, contains_unknown, NewPlan, Plan, PlanOutcome, PlanStatus, PlannedNode,
    UNKNOWN as PLAN_UNKNOWN,
};
pub use plugin::{ConfigProblem, DynPlugin, Plugin, PluginInfo, Registry, StepContext, StepReport};
pub use retry::RetryPolicy;
pub use rollout::{Tolerance, Wave};
pub use scheduler::{valid_run_id, Engine, EngineError, NewRun, Redrive, RunControl, RunOutcome};
pub use source::{parse as parse_document, Document, Source};
pub use spec::{json_schema as workflow_json_schema, InputSpec, SlackTrigger};
pub use workflow::{Condition, RunsOn, Step as WorkflowStep, Workflow};

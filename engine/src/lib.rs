//! Landfall's engine: workflow files in, durable runs out.
//!
//! The engine knows nothing about AWS or Slack. It loads and checks workflow files
//! ([`compile`]), evaluates expressions ([`expr`]), schedules nodes with retries, time-outs and
//! circuit breakers ([`scheduler`]), and checkpoints every transition in a [`store`]. Plugins
//! ([`plugin::Step`]) do the work; observers ([`events::Observer`]) watch it.

// The modules other crates use. The rest are private; what of them is part of the engine's
// interface is re-exported below, so a caller names `landfall_engine::RetryPolicy`, never a
// path into the engine's layout.
pub mod compile;
pub mod crypto;
pub mod diag;
pub mod events;
pub mod expr;
pub mod inputs;
pub mod package;
pub mod path;
pub mod plugin;
pub mod source;
pub mod spec;
pub mod state;
pub mod store;

mod breaker;
mod digest;
mod error;
mod lock;
mod retry;
mod scheduler;
mod workflow;

#[cfg(test)]
mod tests;

pub use breaker::{BreakerConfig, BreakerState};
pub use digest::{digest_of, sha256_hex};
pub use error::{ErrorClass, StepError};
pub use lock::RunLease;
pub use plugin::{DynPlugin, Plugin, Registry, StepContext};
pub use retry::RetryPolicy;
pub use scheduler::{valid_run_id, Engine, EngineError, NewRun, RunControl, RunOutcome};
pub use workflow::{Condition, RunsOn, Step as WorkflowStep, Workflow};

//! Landfall's engine: workflow files in, durable runs out.
//!
//! The engine knows nothing about AWS or Slack. It loads and checks workflow files
//! ([`compile`]), evaluates expressions ([`expr`]), schedules nodes with retries, time-outs and
//! circuit breakers ([`scheduler`]), and checkpoints every transition in a [`store`]. Plugins
//! ([`plugin::Step`]) do the work; observers ([`events::Observer`]) watch it.

pub mod breaker;
pub mod compile;
pub mod crypto;
pub mod diag;
pub mod digest;
pub mod error;
pub mod events;
pub mod expr;
pub mod inputs;
pub mod lock;
pub mod package;
pub mod path;
pub mod plugin;
pub mod retry;
pub mod scheduler;
pub mod source;
pub mod spec;
pub mod state;
pub mod store;
pub mod workflow;

#[cfg(test)]
mod tests;

pub use error::{ErrorClass, StepError};
pub use plugin::{Registry, Step, StepContext};
pub use scheduler::{Engine, EngineError, NewRun, RunControl, RunOutcome};
pub use workflow::Workflow;

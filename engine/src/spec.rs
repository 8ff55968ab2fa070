//! The workflow file format, as users write it (the "raw" phase).
//!
//! These types mirror the file: references are strings, templates are unparsed text, and every
//! struct denies unknown fields. The doc comment on each field is user documentation: it is what
//! `landfall schema` publishes to editors. [`crate::compile`] turns a spec into a
//! [`crate::workflow::Workflow`].

use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A workflow file: named inputs and a list of steps wired by `needs`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkflowSpec {
    /// Name of the workflow, shown in `landfall status` and messages.
    pub name: String,
    /// What the workflow does, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// How many nodes may run at the same time (the CLI's `--max-parallel` wins).
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// Typed inputs of a run, by name.
    #[serde(default)]
    pub inputs: IndexMap<String, InputSpec>,
    /// A named check of all inputs together, run before anything else (e.g.
    /// `customer_requirements`); its problems are reported like invalid inputs.
    #[serde(default)]
    pub input_check: Option<String>,
    /// Settings every step inherits unless it sets its own.
    #[serde(default)]
    pub defaults: DefaultsSpec,
    /// The steps. Order does not matter; `needs` gives the edges.
    pub steps: Vec<StepSpec>,
    /// How people start this workflow besides `landfall run` (Slack).
    #[serde(default)]
    pub trigger: Option<TriggerSpec>,
    /// At most `limit` runs of one `key` at once, across every process sharing the state
    /// file: `{ key: "{{ inputs.customer }}", limit: 1, on_conflict: queue }`. A run that
    /// finds the key full waits `queued` (first come, first served) or is refused.
    #[serde(default)]
    pub concurrency: Option<crate::concurrency::Concurrency>,
}

/// Ways to start a workflow from outside the CLI.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriggerSpec {
    /// `/landfall <command> …` and `@landfall <command> …` in Slack.
    #[serde(default)]
    pub slack: Option<SlackTrigger>,
}

/// A Slack command that starts this workflow. A new file adds a command; nothing is compiled.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackTrigger {
    /// The word after `/landfall` (lowercase letters, digits, `-`), e.g. `onboard`.
    pub command: String,
    /// Inputs given as positional words, in order: `args: [customer]` makes
    /// `/landfall onboard acme` set `customer=acme`. `key=value` words set any input.
    #[serde(default)]
    pub args: Vec<String>,
    /// Where the other inputs come from: a file path template over `args`, relative to the
    /// server's working directory, e.g. `examples/customers/{{ args.customer }}.yaml`.
    #[serde(default)]
    pub input_file: Option<String>,
    /// Slack user ids allowed to start it (on top of the server's allowlist).
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// Slack user group ids whose members may start it.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Channel ids it may be started from.
    #[serde(default)]
    pub allowed_channels: Vec<String>,
}

/// Words `/landfall` itself understands; a workflow cannot take them as its command.
pub(crate) const BUILTIN_COMMANDS: [&str; 10] = [
    "help", "status", "runs", "cancel", "resume", "approve", "reject", "run", "plan", "apply",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
}

impl InputType {
    pub fn name(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Integer => "integer",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
            InputType::Array => "array",
            InputType::Object => "object",
        }
    }
}

/// One input of a workflow.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The value's type.
    #[serde(rename = "type")]
    pub kind: InputType,
    /// What the input means, for people and `--help`.
    #[serde(default)]
    pub description: Option<String>,
    /// Used when the run does not give the input.
    #[serde(default)]
    pub default: Option<Value>,
    /// Whether a run must give it. Defaults to true when there is no `default`.
    #[serde(default)]
    pub required: Option<bool>,
    /// A regular expression a string input must match (whole value).
    #[serde(default)]
    pub pattern: Option<String>,
    /// The only values allowed.
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<Value>>,
    /// Never shown in logs, events or `status` (tokens, passwords).
    #[serde(default)]
    pub secret: bool,
}

/// Defaults for every step.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultsSpec {
    /// Retry policy for transient failures.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Time limit for a step, all attempts and waits included (e.g. `5m`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// Time limit for one attempt (e.g. `30s`); a timed-out attempt is a transient failure.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub attempt_timeout: Option<Duration>,
    /// Circuit breaker shared by steps with the same `circuit` key.
    #[serde(default)]
    pub circuit_breaker: Option<BreakerSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Exactly the computed delay.
    None,
    /// A random delay between zero and the computed delay.
    #[default]
    Full,
    /// Half the computed delay plus a random part of the other half.
    Equal,
}

/// How transient failures are retried: delays grow from `initial_delay` by `multiplier` up to
/// `max_delay`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included (1 = never retry).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Delay before the second attempt (e.g. `200ms`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub initial_delay: Option<Duration>,
    /// Factor between consecutive delays (≥ 1.0).
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Upper bound of any delay (e.g. `30s`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub max_delay: Option<Duration>,
    /// Randomisation of delays: none, full or equal.
    #[serde(default)]
    pub jitter: Option<Jitter>,
}

/// Circuit breaker settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerSpec {
    /// Consecutive transient failures that open the circuit.
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    /// How long the circuit stays open before one probe is let through (e.g. `30s`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub cool_down: Option<Duration>,
}

/// One step: an instance of a plugin, wired to earlier steps by `needs`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepSpec {
    /// Unique id of the step: letters, digits, `_` and `-`, starting with a letter.
    pub id: String,
    /// The plugin that runs this step (`landfall steps` lists them).
    pub uses: String,
    /// A short human name, shown in progress and messages.
    #[serde(default)]
    pub name: Option<String>,
    /// Steps that must finish before this one starts.
    #[serde(default)]
    pub needs: Vec<String>,
    /// The plugin's inputs. Strings are templates (`{{ inputs.customer }}`); a string that is
    /// exactly one expression yields its native value (a list stays a list).
    #[serde(default, rename = "with")]
    pub with: Option<Value>,
    /// Condition: an expression (`{{ steps.a.status == 'succeeded' }}`), or `success()`
    /// (default), `failure()` (only when an earlier step failed) or `always()`.
    #[serde(default)]
    pub when: Option<String>,
    /// Runs the step once per item of this list (`{{ inputs.regions }}`); `item` and `index`
    /// name the current one.
    #[serde(default)]
    pub for_each: Option<Value>,
    /// At most this many of the step's nodes (its `for_each` instances) run at once, whatever
    /// the run's `max_parallel` allows (e.g. one account at a time).
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// For a `for_each` step: how many instances may fail with the step still succeeding
    /// (`{ count: 2 }` or `{ percent: 10 }`, rounded down; either may be an expression). Failed (and cancelled) instances
    /// are listed in `steps.<id>.failures` with their `item`; once more fail, instances not
    /// yet started are skipped and the step fails.
    #[serde(default)]
    pub tolerate: Option<crate::rollout::ToleranceSpec>,
    /// For a `for_each` step: start its instances in waves, each once every instance before it
    /// ended with failures within `tolerate` (none without it): `[1, "25%", "100%"]` is one
    /// canary, then up to a quarter, then the rest (sizes count from the first instance). May
    /// be an expression giving such a list (`[]`: all at once).
    #[serde(default)]
    pub waves: Option<Value>,
    /// For a step with `waves`: ask for an approval before each wave after the first, with
    /// these `approval` settings (`approvers`, `to`, `timeout`, `title`, `digest`; the last
    /// two default to the wave and the step). The wave's first instance asks and waits; the
    /// rest of the wave starts once it is approved; a refusal stops the rollout.
    #[serde(default)]
    pub approve_waves: Option<Value>,
    /// Nodes of this step across runs (and processes sharing the store): at most `limit` at
    /// once per `key`, read per node (`item` included). A node waits `waiting` for a slot
    /// (`queue`) or fails (`refuse`). Held for one attempt: a node waiting to retry holds
    /// none. `scope: workflow` (default) keeps the key to this step of this workflow.
    #[serde(default)]
    pub concurrency: Option<crate::concurrency::Concurrency>,
    /// Retry policy; fields not given come from `defaults.retry`.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Time limit for the step, all attempts included.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// Time limit for one attempt.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub attempt_timeout: Option<Duration>,
    /// Circuit breaker key (default: the plugin name). Steps with the same key share a breaker.
    #[serde(default)]
    pub circuit: Option<String>,
    /// Plan instead of run: the plugin only reads and says what it would change. Outputs
    /// `status` (`changes`, `no_changes`, `unknown`), `summary`, `changes` and the `outputs`
    /// it would have; a later step applies exactly that (e.g. `deploy` with `plan:`).
    #[serde(default)]
    pub plan: bool,
}

/// The JSON Schema of workflow files, for editors.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(WorkflowSpec)).unwrap_or(Value::Null)
}

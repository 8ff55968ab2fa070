//! The compiled workflow (the "resolved" phase): steps indexed, edges resolved, ancestors
//! known, policies merged. Built only by [`crate::compile::compile`], which checks everything a
//! run could trip over before it starts.

use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value;

use crate::breaker::BreakerConfig;
use crate::path::Path;
use crate::retry::RetryPolicy;
use crate::source::Source;
use crate::spec::InputSpec;

/// When a step runs, given how its `needs` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsOn {
    /// Only when nothing it needs failed (the default).
    Success,
    /// Its condition decides, whatever happened upstream (`failure()`, `always()`).
    Any,
}

#[derive(Debug, Clone)]
pub struct Condition {
    /// The expression, without `{{ }}`; `None` means `success()`.
    pub expr: Option<String>,
    pub runs_on: RunsOn,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub uses: String,
    pub name: Option<String>,
    /// Indices into [`Workflow::steps`].
    pub needs: Vec<usize>,
    pub with: Value,
    pub with_has_templates: bool,
    pub when: Condition,
    pub for_each: Option<Value>,
    /// At most this many of its nodes run at once.
    pub max_parallel: Option<usize>,
    /// `tolerate` and `waves` as written (empty: failures are not tolerated, and the other
    /// instances run on; all start at once).
    pub rollout: crate::rollout::RolloutSpec,
    /// `approve_waves`: the `with:` of the approval asked before each wave after the first.
    pub approve_waves: Option<Value>,
    /// Nodes of this step at once across runs, per key.
    pub concurrency: Option<crate::concurrency::Concurrency>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    pub attempt_timeout: Option<Duration>,
    pub circuit: String,
    /// Plan mode inside a run: the node's outputs are its plugin's plan.
    pub plan: bool,
    /// Where the step is in its file, for messages.
    pub path: Path,
}

#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    pub source: Source,
    /// Sha-256 of the file's text.
    pub digest: String,
    pub inputs: IndexMap<String, InputSpec>,
    /// Name of the registry's check of all inputs together.
    pub input_check: Option<String>,
    /// The Slack command that starts it, if any.
    pub slack: Option<crate::spec::SlackTrigger>,
    pub max_parallel: Option<usize>,
    /// Runs of one key at once, across processes.
    pub concurrency: Option<crate::concurrency::Concurrency>,
    pub steps: Vec<Step>,
    /// Step indices in a topological order (stable: file order among independent steps).
    pub order: Vec<usize>,
    pub breaker: BreakerConfig,
    // Fx: looked up per transition by the scheduler; step ids are the author's, not an
    // attacker's.
    index: rustc_hash::FxHashMap<String, usize>,
    /// Per step, the steps that need it (the scheduler's edges, built once per file rather
    /// than once per run).
    dependents: Vec<Vec<usize>>,
}

impl Workflow {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        description: Option<String>,
        source: Source,
        inputs: IndexMap<String, InputSpec>,
        max_parallel: Option<usize>,
        steps: Vec<Step>,
        order: Vec<usize>,
        breaker: BreakerConfig,
    ) -> Self {
        let index = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let digest = crate::digest::sha256_hex(source.text.as_bytes());
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, s) in steps.iter().enumerate() {
            for &k in &s.needs {
                dependents[k].push(i);
            }
        }
        Workflow {
            name,
            description,
            source,
            digest,
            inputs,
            input_check: None,
            slack: None,
            max_parallel,
            concurrency: None,
            steps,
            order,
            breaker,
            index,
            dependents,
        }
    }

    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The steps that need step `i`.
    pub fn dependents(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    /// Graphviz dot.
    pub fn to_dot(&self) -> String {
        let mut out = format!("digraph {:?} {{\n  rankdir=LR;\n", self.name);
        for s in &self.steps {
            let mut label = format!("{}\\n{}", s.id, s.uses);
            if s.for_each.is_some() {
                label.push_str(" ×N");
            }
            let style = match s.when.runs_on {
                RunsOn::Any => ", style=dashed",
                RunsOn::Success => "",
            };
            out.push_str(&format!(
                "  {:?} [label=\"{label}\", shape=box{style}];\n",
                s.id
            ));
        }
        for s in &self.steps {
            for &n in &s.needs {
                out.push_str(&format!("  {:?} -> {:?};\n", self.steps[n].id, s.id));
            }
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for s in &self.steps {
            let fan = if s.for_each.is_some() { " ×N" } else { "" };
            let text = format!("{}<br/><i>{}</i>{fan}", s.id, s.uses).replace('"', "#quot;");
            match s.when.runs_on {
                RunsOn::Any => out.push_str(&format!("  {}{{{{\"{text}\"}}}}\n", s.id)),
                RunsOn::Success => out.push_str(&format!("  {}[\"{text}\"]\n", s.id)),
            }
        }
        for s in &self.steps {
            for &n in &s.needs {
                let arrow = match s.when.runs_on {
                    RunsOn::Any => "-.->",
                    RunsOn::Success => "-->",
                };
                out.push_str(&format!("  {} {arrow} {}\n", self.steps[n].id, s.id));
            }
        }
        out
    }
}

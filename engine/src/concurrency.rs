//! Concurrency across runs: a workflow's `concurrency: { key, limit, on_conflict }`. A run
//! holds one of the key's `limit` slots from its start to its end (succeeded, failed,
//! cancelled; an interrupted run keeps its slot until it is resumed and ends). A step's
//! `concurrency` is held by its nodes (`run#node`), one attempt at a time. The slots live
//! in the store ([`crate::store::Store::claim_slot`]), so every process sharing a state file
//! (CLI runs, `serve`) sees them. A run that finds the key full waits `queued`, first come
//! first served, or is refused.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `concurrency:` in a workflow file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// What runs compete for, as an expression over `inputs` (e.g. `"{{ inputs.customer }}"`):
    /// runs with the same key share its slots. The key is the workflow's own unless `scope`
    /// is `global`.
    pub key: String,
    /// How many runs of one key may run at once.
    #[serde(default = "one")]
    pub limit: usize,
    /// What a run does when the key is full: wait its turn (`queue`, the default), or end at
    /// once without doing anything (`refuse`, exit 4).
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// `workflow` (default): the key is this workflow's own; `global`: any workflow writing
    /// the same key competes for the same slots (onboarding and provisioning of one customer).
    #[serde(default)]
    pub scope: Scope,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    #[default]
    Queue,
    Refuse,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Workflow,
    Global,
}

impl Concurrency {
    /// The store's key for a rendered `key` of workflow `name`.
    pub fn slot_key(&self, workflow: &str, rendered: &str) -> String {
        match self.scope {
            Scope::Workflow => format!("{workflow}/{rendered}"),
            Scope::Global => rendered.to_string(),
        }
    }
}

impl Concurrency {
    /// The store's key for a rendered step-level `key` of step `step` of workflow `workflow`:
    /// apart from the workflow's own keys, so a run's step never waits for its own run.
    pub fn step_slot_key(&self, workflow: &str, step: &str, rendered: &str) -> String {
        match self.scope {
            Scope::Workflow => format!("{workflow}.{step}/{rendered}"),
            Scope::Global => rendered.to_string(),
        }
    }
}

/// A node's name among a key's holders: its run and node ids (run ids never hold `#`).
pub(crate) fn node_holder(run: &str, node: &str) -> String {
    format!("{run}#{node}")
}

/// A holder's run, and its node when a step's node holds the slot rather than a whole run.
pub(crate) fn holder_parts(holder: &str) -> (&str, Option<&str>) {
    match holder.split_once('#') {
        Some((run, node)) => (run, Some(node)),
        None => (holder, None),
    }
}

/// Who holds a key's slots and who waits for one, as the store keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slots {
    pub holders: Vec<String>,
    /// Oldest first.
    pub queue: Vec<String>,
}

/// What a claim got.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The run holds a slot (it may already have held it: claiming again is a no-op).
    Held,
    /// The run waits; `ahead` runs are before it in line, `holders` run now.
    Queued { ahead: usize, holders: Vec<String> },
    /// Refused (`on_conflict: refuse`): `holders` run now.
    Refused { holders: Vec<String> },
}

impl Slots {
    /// One claim by `run`, after runs that no longer need a slot were dropped (`gone` says
    /// which: finished, or unknown to the store; for a waiting run also one no live process
    /// waits for, which would block the line). Pure: the store calls it inside its write
    /// transaction, so two processes never both take the last slot.
    pub fn claim(
        &mut self,
        run: &str,
        limit: usize,
        queue: bool,
        gone: impl Fn(&str, bool) -> bool,
    ) -> Claim {
        self.holders.retain(|r| !gone(r, false));
        self.queue.retain(|r| r == run || !gone(r, true));
        if self.holders.iter().any(|r| r == run) {
            self.queue.retain(|r| r != run);
            return Claim::Held;
        }
        let first_in_line = self.queue.first().is_none_or(|r| r == run);
        if self.holders.len() < limit.max(1) && first_in_line {
            self.queue.retain(|r| r != run);
            self.holders.push(run.to_string());
            return Claim::Held;
        }
        if !queue {
            return Claim::Refused {
                holders: self.holders.clone(),
            };
        }
        if !self.queue.iter().any(|r| r == run) {
            self.queue.push(run.to_string());
        }
        let ahead = self.queue.iter().position(|r| r == run).unwrap_or(0);
        Claim::Queued {
            ahead,
            holders: self.holders.clone(),
        }
    }

    /// `run` gives its slot (or its place in line) back.
    pub fn release(&mut self, run: &str) {
        self.holders.retain(|r| r != run);
        self.queue.retain(|r| r != run);
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_first_in_line_gets_the_freed_slot() {
        let mut s = Slots::default();
        let none = |_: &str, _: bool| false;
        assert_eq!(s.claim("a", 1, true, none), Claim::Held);
        assert_eq!(s.claim("a", 1, true, none), Claim::Held, "claiming again");
        assert!(matches!(
            s.claim("b", 1, true, none),
            Claim::Queued { ahead: 0, .. }
        ));
        assert!(matches!(
            s.claim("c", 1, true, none),
            Claim::Queued { ahead: 1, .. }
        ));
        s.release("a");
        assert!(
            matches!(s.claim("c", 1, true, none), Claim::Queued { ahead: 1, .. }),
            "b is first"
        );
        assert_eq!(s.claim("b", 1, true, none), Claim::Held);
        assert_eq!(
            s.claim("d", 1, false, none),
            Claim::Refused {
                holders: vec!["b".into()]
            }
        );
        // A holder that finished without giving its slot back (a crash) is dropped.
        assert_eq!(s.claim("c", 1, true, |r, _| r == "b"), Claim::Held);
    }

    proptest! {
        /// Whatever the order of claims and releases, never more than `limit` holders, and a
        /// run is never both holding and waiting.
        #[test]
        fn never_more_holders_than_the_limit(
            limit in 1usize..4,
            ops in proptest::collection::vec((0usize..6, any::<bool>()), 0..60),
        ) {
            let mut s = Slots::default();
            for (run, release) in ops {
                let run = format!("r{run}");
                if release { s.release(&run); } else { s.claim(&run, limit, true, |_, _| false); }
                prop_assert!(s.holders.len() <= limit);
                for h in &s.holders {
                    prop_assert!(!s.queue.contains(h));
                }
            }
        }
    }
}

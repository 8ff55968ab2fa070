//! Following a stack operation to its end: polling `DescribeStacks` and
//! `DescribeStackEvents` with backoff, the progress tally, and the terminal outcome.
//!
//! Polling starts at [`Poll::initial`] and grows by half up to [`Poll::max`] (the SDK's own
//! CloudFormation waiters wait 30 s between calls; we start sooner because people watch the
//! percentage, and never go below one second). Throttling doubles the delay instead of
//! failing. The step stops watching shortly before the engine's deadline so that a stack that
//! does not finish in time fails *with its last events*, not silently.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use aws_sdk_cloudformation::types::{Stack, StackEvent};
use aws_sdk_cloudformation::Client;
use landfall_engine::{ErrorClass, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::aws::errors::{is_throttling, step_error};

/// How often to look at a stack operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Poll {
    /// First look after this long (at least 1s).
    #[serde(with = "humantime_serde", default = "default_initial")]
    #[schemars(with = "String")]
    pub initial: Duration,
    /// Never wait longer than this between looks (throttling may double it).
    #[serde(with = "humantime_serde", default = "default_max")]
    #[schemars(with = "String")]
    pub max: Duration,
}

fn default_initial() -> Duration {
    Duration::from_secs(5)
}

fn default_max() -> Duration {
    Duration::from_secs(30)
}

impl Default for Poll {
    fn default() -> Self {
        Poll {
            initial: default_initial(),
            max: default_max(),
        }
    }
}

impl Poll {
    /// Problems with the settings, for `validate`.
    pub(crate) fn problem(&self) -> Option<String> {
        if self.initial < Duration::from_secs(1) {
            Some("poll.initial must be at least 1s (CloudFormation is not polled faster)".into())
        } else if self.max < self.initial {
            Some("poll.max must not be shorter than poll.initial".into())
        } else {
            None
        }
    }
}

/// A stack event, as much of it as we keep and report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ev {
    pub id: String,
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

impl From<&StackEvent> for Ev {
    fn from(e: &StackEvent) -> Self {
        Ev {
            id: e.event_id().unwrap_or_default().to_string(),
            logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
            resource_type: e.resource_type().unwrap_or_default().to_string(),
            status: e
                .resource_status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            reason: e.resource_status_reason().map(str::to_string),
            timestamp: e.timestamp().map(|t| t.to_string()),
        }
    }
}

impl Ev {
    pub(crate) fn is_stack_event(&self) -> bool {
        self.resource_type == "AWS::CloudFormation::Stack"
    }

    pub(crate) fn failed(&self) -> bool {
        self.status.ends_with("_FAILED")
    }
}

/// Where a stack status stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    InProgress,
    /// Created or updated as asked.
    Succeeded,
    /// Any other terminal status (failed, rolled back, deleted).
    Ended,
}

pub(crate) fn phase(status: &str) -> Phase {
    match status {
        "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" => Phase::Succeeded,
        // A stack made by a change set that was never executed: it rests there.
        "REVIEW_IN_PROGRESS" => Phase::Ended,
        s if s.ends_with("_IN_PROGRESS") => Phase::InProgress,
        _ => Phase::Ended,
    }
}

/// Progress of one stack operation: the share of the template's resources whose latest
/// status is terminal. It never goes down (rollbacks move resources back to "in progress";
/// the tally keeps its best) and reaches 1 only when the stack succeeds.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    declared: BTreeMap<String, String>,
    latest: BTreeMap<String, String>,
    best: f64,
    succeeded: bool,
}

/// Short of complete: the most a stack that has not succeeded may show.
const NEARLY: f64 = 0.99;

impl Tally {
    pub(crate) fn new(declared: BTreeMap<String, String>) -> Self {
        Tally {
            declared,
            latest: BTreeMap::new(),
            best: 0.0,
            succeeded: false,
        }
    }

    /// Takes one event (in time order); events of undeclared resources are ignored.
    pub(crate) fn observe(&mut self, e: &Ev) {
        if self.declared.contains_key(&e.logical_id) && !e.is_stack_event() {
            self.latest.insert(e.logical_id.clone(), e.status.clone());
        }
        let done = self
            .latest
            .values()
            .filter(|s| resource_terminal(s))
            .count();
        let share = done as f64 / self.declared.len().max(1) as f64;
        if !self.succeeded {
            self.best = self.best.max(share.min(NEARLY));
        }
    }

    /// The stack ended; `success` when as asked.
    pub(crate) fn finish(&mut self, success: bool) {
        if success {
            self.succeeded = true;
            self.best = 1.0;
        }
    }

    /// 0.0–1.0.
    pub(crate) fn fraction(&self) -> f64 {
        self.best
    }

    pub(crate) fn weight(&self) -> usize {
        self.declared.len().max(1)
    }

    /// Resources whose latest status is terminal, of those declared.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.latest
                .values()
                .filter(|s| resource_terminal(s))
                .count(),
            self.declared.len(),
        )
    }
}

fn resource_terminal(status: &str) -> bool {
    status.ends_with("_COMPLETE") || status.ends_with("_FAILED") || status == "SKIPPED"
}

/// The progress of a whole deploy node: its stacks' tallies weighted by resource count.
#[derive(Debug, Default)]
pub(crate) struct Board {
    pub stacks: Vec<(String, Tally)>,
    shown: Option<u32>,
}

impl Board {
    pub(crate) fn add(&mut self, name: &str, declared: BTreeMap<String, String>) -> usize {
        self.stacks.push((name.to_string(), Tally::new(declared)));
        self.stacks.len() - 1
    }

    /// 0–100; 100 only when every stack succeeded.
    pub(crate) fn percent(&self) -> f64 {
        let total: usize = self.stacks.iter().map(|(_, t)| t.weight()).sum();
        if total == 0 {
            return 0.0;
        }
        let done: f64 = self
            .stacks
            .iter()
            .map(|(_, t)| t.fraction() * t.weight() as f64)
            .sum();
        let p = 100.0 * done / total as f64;
        if self.stacks.iter().all(|(_, t)| t.succeeded) {
            100.0
        } else {
            p.min(99.0)
        }
    }

    /// Tells the step's observers when the whole-number percentage moved.
    pub(crate) fn report(&mut self, ctx: &StepContext, what: &str) {
        let p = self.percent();
        let whole = p.floor() as u32;
        if self.shown != Some(whole) {
            self.shown = Some(whole);
            ctx.progress(p, Some(what.to_string()));
        }
    }
}

/// How a watched operation ended.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub stack_id: String,
    pub status: String,
    pub reason: Option<String>,
    /// Failed events of this operation, oldest first: the cause.
    pub failed: Vec<Ev>,
    /// The operation's last events, oldest first.
    pub recent: Vec<Ev>,
}

/// A stack as `DescribeStacks` gave it, or its `ListStacks` summary standing in.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    stack: Stack,
    /// `false` for a summary: status and id only, no tags and no outputs. Whatever decides by
    /// tags (who created the stack) or reads outputs must not take the missing ones for "none".
    pub complete: bool,
}

impl std::ops::Deref for Described {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl Described {
    /// The whole description, or a transient failure saying why there is none yet: writing to
    /// a stack whose tags cannot be read would re-stamp who created it.
    pub(crate) fn complete(self, why: &str) -> Result<Stack, StepError> {
        if self.complete {
            return Ok(self.stack);
        }
        Err(StepError::transient(format!(
            "stack {} is {}, but DescribeStacks fails for it, so its tags and outputs cannot be read; not {why} until it answers",
            self.stack.stack_name().unwrap_or_default(),
            self.stack
                .stack_status()
                .map(|s| s.as_str())
                .unwrap_or("of unknown status"),
        )))
    }
}

/// `DescribeStacks` for one stack; `None` when it does not exist (or was deleted).
///
/// When `DescribeStacks` answers with a server error for this stack (seen with a stack whose
/// creation broke half-way, whose outputs cannot be computed), the stack's summary from
/// `ListStacks` stands in (`complete: false`).
pub(crate) async fn describe(cfn: &Client, stack: &str) -> Result<Option<Described>, StepError> {
    match cfn.describe_stacks().stack_name(stack).send().await {
        Ok(out) => Ok(out
            .stacks()
            .first()
            .cloned()
            .filter(|s| {
                // Deleted stacks are found by id, not by name; for us they are gone.
                s.stack_status().map(|st| st.as_str()) != Some("DELETE_COMPLETE")
            })
            .map(|stack| Described {
                stack,
                complete: true,
            })),
        Err(e) => {
            let err = step_error("DescribeStacks", e);
            if err.message.contains("does not exist") {
                return Ok(None);
            }
            let server = err
                .context
                .get("http_status")
                .and_then(serde_json::Value::as_u64)
                .is_some_and(|s| s >= 500);
            if server && !is_throttling(&err) {
                if let Some(found) = summary(cfn, stack).await {
                    let deleted =
                        found.stack_status().map(|st| st.as_str()) == Some("DELETE_COMPLETE");
                    return Ok((!deleted).then_some(Described {
                        stack: found,
                        complete: false,
                    }));
                }
            }
            Err(err)
        }
    }
}

async fn summary(cfn: &Client, stack: &str) -> Option<Stack> {
    let mut found: Option<Stack> = None;
    let mut pages = cfn.list_stacks().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.ok()?;
        for s in page.stack_summaries() {
            let Some(status) = s.stack_status() else {
                continue;
            };
            if s.stack_name() != Some(stack) && s.stack_id() != Some(stack) {
                continue;
            }
            let live = status.as_str() != "DELETE_COMPLETE";
            let summary = Stack::builder()
                .set_stack_name(s.stack_name().map(str::to_string))
                .set_stack_id(s.stack_id().map(str::to_string))
                .stack_status(status.clone())
                .set_stack_status_reason(s.stack_status_reason().map(str::to_string))
                .set_creation_time(s.creation_time().cloned())
                .build();
            // By name, the live stack wins over deleted namesakes; by id there is one.
            if live {
                return Some(summary);
            }
            found.get_or_insert(summary);
        }
    }
    found
}

/// The events since the last call, oldest first: newest-first pages are read until an event
/// already seen, or the stack's own event that began this operation (`starts`).
pub(crate) async fn new_events(
    cfn: &Client,
    stack: &str,
    starts: &[&str],
    seen: &mut HashSet<String>,
) -> Result<Vec<Ev>, StepError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    'pages: for _ in 0..10 {
        let page = cfn
            .describe_stack_events()
            .stack_name(stack)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| step_error("DescribeStackEvents", e))?;
        for e in page.stack_events() {
            let ev = Ev::from(e);
            if seen.contains(&ev.id) {
                break 'pages;
            }
            let start = ev.is_stack_event() && starts.contains(&ev.status.as_str());
            out.push(ev);
            if start {
                break 'pages;
            }
        }
        match page.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    out.reverse();
    for e in &out {
        seen.insert(e.id.clone());
    }
    Ok(out)
}

/// Consecutive transient polling failures tolerated before giving up (the engine retries the
/// step; the stack is adopted then).
const POLL_ERRORS: u32 = 5;

/// Follows `stack` until its status leaves `*_IN_PROGRESS`. `starts` are the stack statuses
/// that begin the watched operation (its earlier events are not ours); `on_event` sees every
/// new event in time order. `first` is how long to wait before the first look.
pub(crate) async fn watch(
    cfn: &Client,
    stack: &str,
    starts: &[&str],
    poll: &Poll,
    first: Duration,
    ctx: &StepContext,
    mut on_event: impl FnMut(&Ev),
) -> Result<Outcome, StepError> {
    let mut seen = HashSet::new();
    let mut recent: VecDeque<Ev> = VecDeque::new();
    let mut failed = Vec::new();
    let mut delay = first;
    let mut errors = 0u32;
    let stop_at = ctx.deadline.map(|d| {
        let left = d.saturating_duration_since(tokio::time::Instant::now());
        d.checked_sub((left / 10).min(Duration::from_secs(10)))
            .unwrap_or(d)
    });
    let mut last_status = String::from("unknown");
    loop {
        let now = tokio::time::Instant::now();
        if stop_at.is_some_and(|s| now >= s) {
            return Err(StepError::permanent(format!(
                "stack {stack} did not finish within the step's time-out (last status {last_status})"
            ))
            .with_context(json!({
                "stack": stack,
                "status": last_status,
                "timed_out": true,
                "failed_events": failed,
                "last_events": recent,
            })));
        }
        let nap = match stop_at {
            Some(s) => delay.min(s - now),
            None => delay,
        };
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = ctx.cancel.cancelled() => return Err(StepError::transient("cancelled while watching the stack")),
        }
        let looked = async {
            let s = describe(cfn, stack).await?;
            let evs = new_events(cfn, stack, starts, &mut seen).await;
            Ok::<_, StepError>((s, evs))
        }
        .await;
        let (described, events) = match looked {
            Ok((s, Ok(evs))) => (s, evs),
            // A stack deleted under us has no events to read.
            Ok((None, Err(_))) => (None, Vec::new()),
            Ok((Some(_), Err(e))) | Err(e) => {
                if is_throttling(&e) {
                    delay = (delay * 2).min(poll.max * 2);
                    ctx.log(format!(
                        "throttled while watching {stack}; next look in {delay:?}"
                    ));
                    continue;
                }
                if e.class == ErrorClass::Transient {
                    errors += 1;
                    if errors < POLL_ERRORS {
                        delay = (delay * 2).min(poll.max);
                        continue;
                    }
                }
                return Err(e);
            }
        };
        errors = 0;
        for e in &events {
            on_event(e);
            if e.failed() && e.reason.is_some() {
                failed.push(e.clone());
            }
            recent.push_back(e.clone());
            if recent.len() > 20 {
                recent.pop_front();
            }
        }
        let Some(s) = described else {
            return Ok(Outcome {
                stack_id: stack.to_string(),
                status: "DELETE_COMPLETE".into(),
                reason: None,
                failed,
                recent: recent.into(),
            });
        };
        last_status = s
            .stack_status()
            .map(|st| st.as_str().to_string())
            .unwrap_or_default();
        if phase(&last_status) != Phase::InProgress {
            return Ok(Outcome {
                stack_id: s.stack_id().unwrap_or(stack).to_string(),
                status: last_status,
                reason: s.stack_status_reason().map(str::to_string),
                failed,
                recent: recent.into(),
            });
        }
        delay = if delay < poll.initial {
            poll.initial
        } else {
            delay.mul_f64(1.5).min(poll.max)
        };
    }
}

/// The first failed event's cause, in a sentence.
pub(crate) fn cause(failed: &[Ev]) -> Option<String> {
    failed
        .iter()
        .find(|e| !e.is_stack_event())
        .or_else(|| failed.first())
        .map(|e| {
            format!(
                "{} ({}) {}: {}",
                e.logical_id,
                e.resource_type,
                e.status,
                e.reason.as_deref().unwrap_or("no reason given")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_standing_in_for_a_stack_is_never_taken_for_its_tags() {
        let stack = Stack::builder()
            .stack_name("acme-baseline")
            .stack_status(aws_sdk_cloudformation::types::StackStatus::UpdateComplete)
            .build();
        let summary = Described {
            stack: stack.clone(),
            complete: false,
        };
        let e = summary.complete("updated").unwrap_err();
        assert_eq!(e.class, landfall_engine::ErrorClass::Transient);
        assert!(
            e.message
                .contains("acme-baseline is UPDATE_COMPLETE, but DescribeStacks fails"),
            "{}",
            e.message
        );
        let full = Described {
            stack,
            complete: true,
        };
        assert!(full.complete("updated").is_ok());
    }

    fn ev(id: &str, logical: &str, status: &str) -> Ev {
        Ev {
            id: id.into(),
            logical_id: logical.into(),
            resource_type: if logical == "stack" {
                "AWS::CloudFormation::Stack".into()
            } else {
                "AWS::S3::Bucket".into()
            },
            status: status.into(),
            reason: None,
            timestamp: None,
        }
    }

    #[test]
    fn phases() {
        assert_eq!(phase("CREATE_COMPLETE"), Phase::Succeeded);
        assert_eq!(
            phase("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"),
            Phase::InProgress
        );
        assert_eq!(phase("ROLLBACK_COMPLETE"), Phase::Ended);
        assert_eq!(phase("UPDATE_ROLLBACK_COMPLETE"), Phase::Ended);
        assert_eq!(phase("REVIEW_IN_PROGRESS"), Phase::Ended);
    }

    #[test]
    fn tally_counts_declared_resources_and_keeps_its_best() {
        let declared: BTreeMap<String, String> = [("A", "t"), ("B", "t")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let mut t = Tally::new(declared);
        t.observe(&ev("1", "stack", "CREATE_IN_PROGRESS"));
        t.observe(&ev("2", "A", "CREATE_IN_PROGRESS"));
        assert_eq!(t.fraction(), 0.0);
        t.observe(&ev("3", "A", "CREATE_COMPLETE"));
        assert_eq!(t.fraction(), 0.5);
        t.observe(&ev("4", "A", "DELETE_IN_PROGRESS"));
        assert_eq!(t.fraction(), 0.5, "never goes down");
        t.observe(&ev("5", "B", "CREATE_FAILED"));
        t.observe(&ev("6", "A", "DELETE_COMPLETE"));
        assert_eq!(t.fraction(), NEARLY, "all terminal but not succeeded");
        t.finish(false);
        assert!(t.fraction() < 1.0);
    }
}

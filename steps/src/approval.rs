//! `approval`: pause the run until a person approves or rejects *a specific thing*.
//!
//! The step names what is approved by a digest (a package digest, a change set id). It asks
//! (an `approval_requested` milestone carrying a [`Request`]: the console prints it, the Slack
//! front door posts buttons), then waits without holding a parallelism slot. A decision arrives
//! as a signal carrying a [`Decision`] (`landfall approve RUN NODE`, or a button in Slack). A
//! decision for another digest, or from someone not among `approvers`, does not count (it is
//! audited as ignored and the wait goes on). Signals are durable: a decision given while
//! Landfall was down is found when the run resumes.
//!
//! This module is the one place the approval contract is written down: the request a step
//! emits, how the pending request of a node is found ([`pending`]), and the decision's wire
//! form. The CLI and the Slack front door both use it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use landfall_engine::state::Signal;
use landfall_engine::store::Store;
use landfall_engine::ConfigProblem;
use landfall_engine::Path;
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::milestone::Milestone;

/// What an `approval` step asks (the data of its `approval_requested` milestone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub title: String,
    /// What a decision must name to count.
    pub digest: String,
    #[serde(default)]
    pub details: Value,
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default)]
    pub to: Vec<String>,
    pub timeout_s: u64,
}

impl Request {
    /// The digest as people read it (the first 12 characters).
    pub fn short_digest(&self) -> &str {
        short(&self.digest)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    /// `approved` / `rejected`.
    pub fn past(self) -> &'static str {
        match self {
            Verdict::Approve => "approved",
            Verdict::Reject => "rejected",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        })
    }
}

/// A person's decision on one request. On the wire (a signal's value) it is
/// `{"decision": "approve" | "reject", "digest": "…", "comment": …}`; the actor and the time
/// are the signal's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The digest the person saw.
    pub digest: String,
    pub comment: Option<String>,
    pub actor: String,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    decision: Verdict,
    digest: String,
    #[serde(default)]
    comment: Option<String>,
}

impl Decision {
    pub fn into_signal(self, at: DateTime<Utc>) -> Signal {
        let wire = Wire {
            decision: self.verdict,
            digest: self.digest,
            comment: self.comment,
        };
        Signal {
            actor: self.actor,
            at,
            value: serde_json::to_value(wire).unwrap_or(Value::Null),
        }
    }

    /// The decision a signal carries, or why it is not one.
    pub fn from_signal(sig: &Signal) -> Result<Decision, String> {
        let wire: Wire = serde_json::from_value(sig.value.clone()).map_err(|e| {
            format!("it is not a decision (`{{\"decision\": \"approve\" | \"reject\", \"digest\": …}}`): {e}")
        })?;
        Ok(Decision {
            verdict: wire.decision,
            digest: wire.digest,
            comment: wire.comment,
            actor: sig.actor.clone(),
        })
    }
}

/// The latest request a node made (its last `approval_requested` milestone), or why there is
/// none.
pub fn pending(store: &dyn Store, run_id: &str, node: &str) -> Result<Request, String> {
    let entries = store.audit(run_id).map_err(|e| e.to_string())?;
    if entries.is_empty() {
        return Err(format!("no run `{run_id}`"));
    }
    entries
        .iter()
        .rev()
        .filter(|e| e.draft.kind == "milestone" && e.draft.node.as_deref() == Some(node))
        .find_map(|e| {
            match Milestone::parse(
                e.draft.details["kind"].as_str().unwrap_or_default(),
                &e.draft.details["data"],
            ) {
                Some(Milestone::ApprovalRequested(r)) => Some(r),
                _ => None,
            }
        })
        .ok_or_else(|| format!("node `{node}` of run `{run_id}` has not asked for an approval"))
}

pub struct Approval {
    /// How often the store is read while waiting.
    pub poll: Duration,
}

impl Default for Approval {
    fn default() -> Self {
        Approval {
            poll: Duration::from_secs(1),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(24 * 3600)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// One line saying what is to be approved (`Deploy acme-baseline@3 to acme`).
    pub title: String,
    /// The exact thing approved (e.g. the package digest): a decision for anything else does
    /// not count.
    pub digest: String,
    /// What approvers see besides the title (stacks, targets, a change set summary).
    #[serde(default)]
    pub details: Value,
    /// Who may decide: Slack user ids (`U0123ABCD`) or `cli:<user>`. Anyone who can reach
    /// the run when empty.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Where to ask (Slack channels or users); the run's thread when empty.
    #[serde(default)]
    pub to: Vec<String>,
    /// No decision within this long fails the step.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

#[async_trait]
impl Plugin for Approval {
    const NAME: &'static str = "approval";
    const SUMMARY: &'static str =
        "Wait until a person approves (or rejects) exactly this digest, from Slack or `landfall approve`";
    type Config = ApprovalConfig;

    fn validate(c: &ApprovalConfig) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if c.digest.trim().is_empty() {
            out.push(ConfigProblem {
                path: Path::root().key("digest"),
                message: "an approval must name what it approves (a digest)".into(),
            });
        }
        if c.timeout.is_zero() {
            out.push(ConfigProblem {
                path: Path::root().key("timeout"),
                message: "the time-out must be longer than zero".into(),
            });
        }
        out
    }

    async fn run(&self, c: ApprovalConfig, ctx: StepContext) -> Result<Value, StepError> {
        Milestone::ApprovalRequested(Request {
            title: c.title.clone(),
            digest: c.digest.clone(),
            details: c.details.clone(),
            approvers: c.approvers.clone(),
            to: c.to.clone(),
            timeout_s: c.timeout.as_secs(),
        })
        .emit(&ctx);
        ctx.log(format!(
            "waiting for approval of {} ({}): landfall approve {} {}",
            c.title,
            short(&c.digest),
            ctx.run_id,
            ctx.node_id
        ));
        let deadline = tokio::time::Instant::now() + c.timeout;
        let mut seen = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(sig) = ctx.wait_signal_after(Some(left), self.poll, seen).await? else {
                return Err(StepError::permanent(format!(
                    "no decision on {} within {}",
                    c.title,
                    humantime::format_duration(c.timeout)
                )));
            };
            seen = Some(sig.at);
            let why_not = match Decision::from_signal(&sig) {
                Err(why) => Err(why),
                Ok(_) if !c.approvers.is_empty() && !c.approvers.contains(&sig.actor) => {
                    Err(format!("{} is not among the approvers", sig.actor))
                }
                Ok(d) if d.digest != c.digest => Err(format!(
                    "it was given for {}, but what waits for approval is {}",
                    short(&d.digest),
                    short(&c.digest)
                )),
                Ok(d) => Ok(d),
            };
            let d = match why_not {
                Ok(d) => d,
                Err(why) => {
                    ctx.warn(format!("a decision by {} does not count: {why}", sig.actor));
                    Milestone::ApprovalIgnored {
                        actor: sig.actor.clone(),
                        why,
                        value: sig.value.clone(),
                    }
                    .emit(&ctx);
                    continue;
                }
            };
            Milestone::ApprovalDecided {
                actor: d.actor.clone(),
                decision: d.verdict,
                digest: d.digest.clone(),
                comment: d.comment.clone(),
            }
            .emit(&ctx);
            if d.verdict == Verdict::Reject {
                return Err(StepError::permanent(format!(
                    "{} was rejected by {}{}",
                    c.title,
                    d.actor,
                    d.comment.map(|c| format!(": {c}")).unwrap_or_default()
                ))
                .with_context(json!({ "actor": d.actor, "digest": d.digest })));
            }
            return Ok(json!({
                "approved": true,
                "by": d.actor,
                "at": sig.at,
                "digest": d.digest,
                "comment": d.comment,
            }));
        }
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_engine::store::{Batch, MemStore};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    fn config(approvers: &[&str]) -> ApprovalConfig {
        serde_json::from_value(json!({
            "title": "Deploy acme-baseline@3",
            "digest": "d3",
            "approvers": approvers,
            "timeout": "1h",
        }))
        .unwrap()
    }

    fn send(store: &MemStore, actor: &str, value: Value) {
        store
            .commit(Batch {
                signals: vec![(
                    "r".into(),
                    "approve".into(),
                    Signal {
                        actor: actor.into(),
                        at: chrono::Utc::now(),
                        value,
                    },
                )],
                ..Batch::default()
            })
            .unwrap();
    }

    fn ctx(store: &Arc<MemStore>) -> StepContext {
        StepContext::new("r", "approve", "approve", 1, CancellationToken::new(), None)
            .with_store(Arc::clone(store) as Arc<dyn Store>)
    }

    #[tokio::test]
    async fn an_approval_binds_to_its_digest_and_approvers() {
        let store = Arc::new(MemStore::default());
        let step = Approval {
            poll: Duration::from_millis(5),
        };
        let task = tokio::spawn({
            let ctx = ctx(&store);
            async move { step.run(config(&["U1"]), ctx).await }
        });
        // The thing changed after U1 looked: does not count.
        send(
            &store,
            "U1",
            json!({ "decision": "approve", "digest": "d2" }),
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Not an approver: does not count.
        send(
            &store,
            "U9",
            json!({ "decision": "approve", "digest": "d3" }),
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!task.is_finished());
        send(
            &store,
            "U1",
            json!({ "decision": "approve", "digest": "d3", "comment": "ok" }),
        );
        let out = task.await.unwrap().unwrap();
        assert_eq!(out["by"], "U1");
        assert_eq!(out["digest"], "d3");
    }

    #[tokio::test]
    async fn a_rejection_fails_the_step_and_says_who() {
        let store = Arc::new(MemStore::default());
        send(
            &store,
            "cli:ann",
            json!({ "decision": "reject", "digest": "d3", "comment": "not today" }),
        );
        let err = Approval::default()
            .run(config(&[]), ctx(&store))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "Deploy acme-baseline@3 was rejected by cli:ann: not today"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_decision_in_time_fails() {
        let store = Arc::new(MemStore::default());
        let err = Approval::default()
            .run(config(&[]), ctx(&store))
            .await
            .unwrap_err();
        assert!(err.message.contains("no decision"), "{}", err.message);
    }
}

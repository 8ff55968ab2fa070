//! `approval`: pause the run until a person approves or rejects *a specific thing*.
//!
//! The step names what is approved by a digest (a package digest, a change set id). It asks
//! (an `approval_requested` milestone: the console prints it, the Slack front door posts
//! buttons), then waits without holding a parallelism slot. A decision arrives as a signal
//! (`landfall approve RUN NODE`, or a button in Slack): `{"decision": "approve" | "reject",
//! "digest": "<what the person saw>"}`. A decision for another digest, or from someone not
//! among `approvers`, does not count (it is audited as ignored and the wait goes on). Signals
//! are durable: a decision given while Landfall was down is found when the run resumes.

use std::time::Duration;

use async_trait::async_trait;
use landfall_engine::path::Path;
use landfall_engine::plugin::ConfigProblem;
use landfall_engine::{Step, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

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
impl Step for Approval {
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
        ctx.milestone(
            "approval_requested",
            json!({
                "title": c.title,
                "digest": c.digest,
                "details": c.details,
                "approvers": c.approvers,
                "to": c.to,
                "timeout_s": c.timeout.as_secs(),
            }),
        );
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
            let decision = sig.value["decision"].as_str().unwrap_or_default();
            let digest = sig.value["digest"].as_str().unwrap_or_default();
            let comment = sig.value["comment"].as_str().map(str::to_string);
            let why_not = if !c.approvers.is_empty() && !c.approvers.contains(&sig.actor) {
                Some(format!("{} is not among the approvers", sig.actor))
            } else if digest != c.digest {
                Some(format!(
                    "it was given for {}, but what waits for approval is {}",
                    short(digest),
                    short(&c.digest)
                ))
            } else if decision != "approve" && decision != "reject" {
                Some(format!("`{decision}` is not approve or reject"))
            } else {
                None
            };
            if let Some(why) = why_not {
                ctx.warn(format!("a decision by {} does not count: {why}", sig.actor));
                ctx.milestone(
                    "approval_ignored",
                    json!({ "actor": sig.actor, "why": why, "value": sig.value }),
                );
                continue;
            }
            ctx.milestone(
                "approval_decided",
                json!({ "actor": sig.actor, "decision": decision, "digest": digest, "comment": comment }),
            );
            if decision == "reject" {
                return Err(StepError::permanent(format!(
                    "{} was rejected by {}{}",
                    c.title,
                    sig.actor,
                    comment.map(|c| format!(": {c}")).unwrap_or_default()
                ))
                .with_context(json!({ "actor": sig.actor, "digest": digest })));
            }
            return Ok(json!({
                "approved": true,
                "by": sig.actor,
                "at": sig.at,
                "digest": digest,
                "comment": comment,
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
    use landfall_engine::state::Signal;
    use landfall_engine::store::{Batch, MemStore, Store};
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

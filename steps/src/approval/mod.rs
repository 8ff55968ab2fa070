//! `approval`: pause the run until the people it needs approve *a specific thing*.
//!
//! The step names what is approved by a digest (a package digest, a plan). What it needs comes
//! from two places ([`policy::Ask`]): the operators' approval policies that cover its targets
//! (`landfall.toml`, see [`policy`]), and, when the workflow asks for it (`required`), one
//! approval from the step's own `approvers` (anyone when empty). Workflow inputs can add to the
//! operators' policies, never remove from them. With nothing to ask, the step runs through.
//!
//! It asks (an `approval_requested` milestone carrying a [`Request`]: the console prints it, the
//! Slack front door posts buttons), then waits without holding a parallelism slot. Decisions
//! arrive as signals carrying a [`Decision`] (`landfall approve RUN NODE`, or a button in
//! Slack); each is judged by [`policy::tally`]: one for another digest, from someone not asked,
//! or from the requester where a policy forbids it does not count (audited as ignored, the wait
//! goes on). Signals are durable: a decision given while Landfall was down is found when the run
//! resumes.
//!
//! This module is the one place the approval contract is written down: the request a step
//! emits, how the pending request of a node is found ([`pending`]), and the decision's wire
//! form. The CLI and the Slack front door both use it.

use std::sync::Arc;
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

pub mod policy;

use policy::{ApprovalPolicy, Ask, Standing, Vote};

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
    /// What must be given (policies, the workflow's approvers). Requests stored before policies
    /// existed have none: [`Request::asks`] reads their `approvers` as the one ask.
    #[serde(default)]
    pub asks: Vec<Ask>,
    /// Who started the run (kept from approving where a policy says so).
    #[serde(default)]
    pub requester: String,
}

impl Request {
    /// The digest as people read it (the first 12 characters).
    pub fn short_digest(&self) -> &str {
        short(&self.digest)
    }

    /// What must be given for this request.
    pub fn asks(&self) -> Vec<Ask> {
        if !self.asks.is_empty() {
            return self.asks.clone();
        }
        vec![Ask {
            policy: policy::WORKFLOW_ASK.into(),
            min_approvals: 1,
            approvers: self.approvers.clone(),
            forbid_requester: false,
            expires_after_s: self.timeout_s.max(1),
        }]
    }

    /// Where this request stands given every signal of its run.
    pub fn standing(&self, votes: &[Vote]) -> Standing {
        policy::tally(
            &self.asks(),
            &self.requester,
            &self.digest,
            votes,
            Utc::now(),
        )
    }

    /// Why `vote` would count for nothing here, or `None` when it counts for some ask.
    pub fn why_not(&self, vote: &Vote) -> Option<String> {
        let asks = self.asks();
        let reasons: Vec<String> = asks
            .iter()
            .filter_map(|a| policy::why_not(a, vote, &self.requester, &self.digest, Utc::now()))
            .collect();
        (reasons.len() == asks.len()).then(|| reasons.join("; "))
    }

    /// The Slack user groups named among the approvers (the front door checks a clicking
    /// user's membership of these, and records it with the decision).
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .asks()
            .iter()
            .flat_map(|a| a.approvers.iter())
            .filter(|a| policy::is_group(a))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
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
    /// The approvers' user groups the front door found the actor in (Slack only).
    pub groups: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    decision: Verdict,
    digest: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
}

impl Decision {
    pub fn into_signal(self, at: DateTime<Utc>) -> Signal {
        let wire = Wire {
            decision: self.verdict,
            digest: self.digest,
            comment: self.comment,
            groups: self.groups,
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
            groups: wire.groups,
        })
    }
}

/// How many decisions this node has answered in earlier attempts (its `approval_decided` and
/// `approval_ignored` milestones in the audit, one per signal judged, in order).
fn announced(ctx: &StepContext) -> Result<usize, StepError> {
    Ok(ctx
        .run_audit()?
        .iter()
        .filter(|e| e.draft.kind == "milestone" && e.draft.node.as_deref() == Some(&*ctx.node_id))
        .filter(|e| {
            matches!(
                e.draft.details["kind"].as_str(),
                Some("approval_decided" | "approval_ignored")
            )
        })
        .count())
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

/// Every decision given in a run (to any of its nodes), oldest first.
pub fn run_votes(store: &dyn Store, run_id: &str) -> Result<Vec<Vote>, String> {
    let entries = store.audit(run_id).map_err(|e| e.to_string())?;
    Ok(policy::votes_of(&landfall_engine::store::signals_in(
        &entries,
    )))
}

/// What a front door does with a person's decision, before and after it is recorded: the
/// reason it would count for nothing (then nothing is recorded), and afterwards the words for
/// where the request stands.
impl Request {
    /// Why `d`, given now, would count for nothing (another digest, not asked, the requester
    /// where forbidden); `None` when it counts.
    pub fn refusal(&self, d: &Decision) -> Option<String> {
        self.why_not(&Vote {
            actor: d.actor.clone(),
            groups: d.groups.clone(),
            verdict: d.verdict,
            digest: d.digest.clone(),
            comment: d.comment.clone(),
            at: Utc::now(),
        })
    }

    /// `approved`, `rejected by …`, or `recorded 1 of 2 approvals (policy production)`.
    pub fn progress(&self, votes: &[Vote]) -> String {
        self.standing(votes).progress()
    }
}

pub struct Approval {
    /// How often the store is read while waiting.
    pub poll: Duration,
    /// The operators' approval policies (`landfall.toml`).
    pub policies: Arc<Vec<ApprovalPolicy>>,
}

impl Default for Approval {
    fn default() -> Self {
        Approval {
            poll: Duration::from_secs(1),
            policies: Arc::default(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn yes() -> bool {
    true
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
    /// The targets the approved change touches (the `targets` step's list): their
    /// `environment` selects the operators' approval policies.
    #[serde(default)]
    pub targets: Vec<Value>,
    /// Whether the workflow itself asks for one approval from `approvers`, on top of what the
    /// operators' policies ask. With `false` and no policy covering a target, the step runs
    /// through.
    #[serde(default = "yes")]
    pub required: bool,
    /// Who may give the workflow's own approval: Slack user ids (`U0123ABCD`), user groups
    /// (`S…`) or `cli:<user>`. Anyone who can reach the run when empty. Policies name their own.
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

impl Approval {
    /// What this step must wait for: every policy covering one of its targets, then the
    /// workflow's own ask.
    fn asks(&self, c: &ApprovalConfig) -> Vec<Ask> {
        let environments: Vec<&str> = c
            .targets
            .iter()
            .filter_map(|t| t.get("environment").and_then(Value::as_str))
            .collect();
        let mut asks: Vec<Ask> = self
            .policies
            .iter()
            .filter(|p| {
                // A target without a known environment is covered only by catch-all policies.
                p.selects.environment.is_empty() || p.covers(environments.iter().copied())
            })
            .map(ApprovalPolicy::ask)
            .collect();
        if c.required {
            asks.push(Ask {
                policy: policy::WORKFLOW_ASK.into(),
                min_approvals: 1,
                approvers: c.approvers.clone(),
                forbid_requester: false,
                expires_after_s: c.timeout.as_secs().max(1),
            });
        }
        asks
    }
}

#[async_trait]
impl Plugin for Approval {
    const NAME: &'static str = "approval";
    const SUMMARY: &'static str =
        "Wait until the approvals the operators' policies and the workflow ask for are given for exactly this digest, from Slack or `landfall approve`";
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
        out.extend(crate::stakeholder::config_problems(&c.to));
        out
    }

    async fn run(&self, c: ApprovalConfig, ctx: StepContext) -> Result<Value, StepError> {
        crate::stakeholder::check(&c.to)?;
        let asks = self.asks(&c);
        if asks.is_empty() {
            ctx.log(format!(
                "no approval needed for {}: no policy covers its targets and the workflow asks for none",
                c.title
            ));
            return Ok(json!({
                "approved": true,
                "needed": false,
                "by": [],
                "digest": c.digest,
                "policies": [],
            }));
        }
        let request = Request {
            title: c.title.clone(),
            digest: c.digest.clone(),
            details: c.details.clone(),
            approvers: c.approvers.clone(),
            to: c.to.clone(),
            timeout_s: c.timeout.as_secs(),
            asks,
            requester: ctx.requester()?,
        };
        Milestone::ApprovalRequested(request.clone()).emit(&ctx);
        ctx.log(format!(
            "waiting for approval of {} ({}): landfall approve {} {}",
            c.title,
            short(&c.digest),
            ctx.run_id,
            ctx.node_id
        ));
        let deadline = tokio::time::Instant::now() + c.timeout;
        // Signals to this node already judged. A resumed attempt judges them all again (what
        // counts is recomputed from the whole run every time) but says only what earlier
        // attempts did not: its first `announced` judgements are in the audit already.
        let mut judged = 0;
        let announced = announced(&ctx)?;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(mine) = ctx.wait_signals(judged, Some(left), self.poll).await? else {
                return Err(StepError::permanent(format!(
                    "no decision on {} within {}",
                    c.title,
                    humantime::format_duration(c.timeout)
                )));
            };
            // Decisions given to any node of the run count, bound by their digest; the ones
            // given to this node are the ones to answer.
            let votes = policy::votes_of(&ctx.run_signals()?);
            let standing = request.standing(&votes);
            for (k, sig) in mine.iter().enumerate().skip(judged) {
                if k < announced {
                    continue;
                }
                let why = match Vote::from_signal(sig) {
                    None => Some(match Decision::from_signal(sig) {
                        Err(why) => why,
                        Ok(_) => "it is not a decision".into(),
                    }),
                    Some(v) => request.why_not(&v),
                };
                match why {
                    Some(why) => {
                        ctx.warn(format!("a decision by {} does not count: {why}", sig.actor));
                        Milestone::ApprovalIgnored {
                            actor: sig.actor.clone(),
                            why,
                            value: sig.value.clone(),
                        }
                        .emit(&ctx);
                    }
                    None => {
                        if let Ok(d) = Decision::from_signal(sig) {
                            Milestone::ApprovalDecided {
                                actor: d.actor.clone(),
                                decision: d.verdict,
                                digest: d.digest.clone(),
                                comment: d.comment.clone(),
                                standing: standing.progress(),
                            }
                            .emit(&ctx);
                        }
                    }
                }
            }
            judged = mine.len();
            match standing {
                Standing::Waiting(_) => {
                    ctx.log(format!("{}: {}", c.title, standing.progress()));
                }
                Standing::Rejected {
                    by,
                    policy,
                    comment,
                } => {
                    return Err(StepError::permanent(format!(
                        "{} was rejected by {by}{}{}",
                        c.title,
                        if policy == policy::WORKFLOW_ASK {
                            String::new()
                        } else {
                            format!(" (policy {policy})")
                        },
                        comment.map(|c| format!(": {c}")).unwrap_or_default()
                    ))
                    .with_context(json!({ "actor": by, "digest": c.digest })));
                }
                Standing::Approved(counts) => {
                    let mut by: Vec<String> =
                        counts.iter().flat_map(|c| c.have.iter().cloned()).collect();
                    by.sort();
                    by.dedup();
                    let last = votes
                        .iter()
                        .filter(|v| by.contains(&v.actor) && v.digest == c.digest)
                        .max_by_key(|v| v.at);
                    return Ok(json!({
                        "approved": true,
                        "needed": true,
                        "by": by.join(", "),
                        "approvers": by,
                        "at": last.map(|v| v.at),
                        "digest": c.digest,
                        "comment": last.and_then(|v| v.comment.clone()),
                        "policies": counts,
                    }));
                }
            }
        }
    }

    /// Changes nothing; says what it would wait for.
    async fn plan(
        &self,
        c: ApprovalConfig,
        _ctx: StepContext,
    ) -> Result<Option<landfall_engine::PlanOutcome>, StepError> {
        let asks = self.asks(&c);
        let summary = if asks.is_empty() {
            "no changes (no approval needed: no policy covers its targets)".to_string()
        } else {
            format!(
                "no changes (waits for {})",
                asks.iter()
                    .map(|a| format!(
                        "{} approval{} under {}",
                        a.min_approvals,
                        if a.min_approvals == 1 { "" } else { "s" },
                        if a.policy == policy::WORKFLOW_ASK {
                            "the workflow's own ask".to_string()
                        } else {
                            format!("policy {}", a.policy)
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Ok(Some(landfall_engine::PlanOutcome {
            summary,
            changes: Vec::new(),
            outputs: json!({
                "approved": true, "needed": !asks.is_empty(), "digest": c.digest,
                "by": landfall_engine::PLAN_UNKNOWN, "approvers": landfall_engine::PLAN_UNKNOWN,
            }),
        }))
    }
}

use policy::short;

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

    /// A store holding run `r`, started by `requester`.
    fn store_with_run(requester: &str) -> Arc<MemStore> {
        let store = Arc::new(MemStore::default());
        let run = landfall_engine::state::RunRecord {
            run_id: "r".into(),
            workflow: "w".into(),
            workflow_file: "w.yaml".into(),
            workflow_text: "name: w\nsteps: []\n".into(),
            workflow_digest: "d".into(),
            inputs: json!({}),
            inputs_digest: "i".into(),
            trigger: landfall_engine::state::Trigger {
                source: "slack".into(),
                actor: requester.into(),
                details: Value::Null,
            },
            status: landfall_engine::state::RunStatus::Running,
            max_parallel: 1,
            started_at: chrono::Utc::now(),
            finished_at: None,
            plan_id: None,
        };
        store
            .commit(Batch {
                runs: vec![run],
                ..Batch::default()
            })
            .unwrap();
        store
    }

    /// Delivers a signal as `Engine::signal` does: the node's latest signal and an audit entry.
    fn send(store: &MemStore, actor: &str, value: Value) {
        let audit = landfall_engine::store::AuditDraft::new(
            actor,
            "r",
            "signal_received",
            json!({ "value": value }),
        )
        .node("approve");
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
                audit: vec![audit.into()],
                ..Batch::default()
            })
            .unwrap();
    }

    fn ctx(store: &Arc<MemStore>) -> StepContext {
        StepContext::new("r", "approve", "approve", 1, CancellationToken::new(), None)
            .with_store(Arc::clone(store) as Arc<dyn Store>)
    }

    fn production() -> Arc<Vec<ApprovalPolicy>> {
        Arc::new(vec![toml::from_str(
            r#"
            name = "production"
            match = { environment = ["production"] }
            min_approvals = 2
            approvers = ["U1", "U2", "cli:alice"]
            "#,
        )
        .unwrap()])
    }

    #[tokio::test]
    async fn a_policy_needs_two_approvers_other_than_the_requester() {
        let store = store_with_run("U1");
        let step = Approval {
            poll: Duration::from_millis(5),
            policies: production(),
        };
        let mut c = config(&[]);
        c.required = false;
        c.targets = vec![json!({ "account": "acme-prod", "environment": "production" })];
        let task = tokio::spawn({
            let ctx = ctx(&store);
            async move { step.run(c, ctx).await }
        });
        let d3 = |v: &str| json!({ "decision": v, "digest": "d3" });
        // The requester, then one approver: not enough.
        send(&store, "U1", d3("approve"));
        send(&store, "U2", d3("approve"));
        send(&store, "U2", d3("approve"));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!task.is_finished());
        send(&store, "cli:alice", d3("approve"));
        let out = task.await.unwrap().unwrap();
        assert_eq!(out["approvers"], json!(["U2", "cli:alice"]));
        assert_eq!(out["policies"][0]["policy"], "production");
    }

    /// A resumed approval step recounts every decision but announces only those its earlier
    /// attempt did not (the thread would otherwise say "approved by U2" twice).
    #[tokio::test]
    async fn a_resumed_step_does_not_announce_a_decision_twice() {
        let store = store_with_run("U1");
        let d3 = |v: &str| json!({ "decision": v, "digest": "d3" });
        send(&store, "U2", d3("approve"));
        // What the first attempt said of it, as the scheduler recorded it.
        let (kind, data) = Milestone::ApprovalDecided {
            actor: "U2".into(),
            decision: Verdict::Approve,
            digest: "d3".into(),
            comment: None,
            standing: "recorded 1 of 2 approvals (policy production)".into(),
        }
        .into_parts();
        let said = landfall_engine::store::AuditDraft::new(
            "U1",
            "r",
            "milestone",
            json!({ "kind": kind, "data": data }),
        )
        .node("approve");
        store
            .commit(Batch {
                audit: vec![said.into()],
                ..Batch::default()
            })
            .unwrap();
        let step = Approval {
            poll: Duration::from_millis(5),
            policies: production(),
        };
        let mut c = config(&[]);
        c.required = false;
        c.targets = vec![json!({ "environment": "production" })];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ctx = StepContext::new(
            "r",
            "approve",
            "approve",
            2,
            CancellationToken::new(),
            Some(tx),
        )
        .with_store(Arc::clone(&store) as Arc<dyn Store>);
        let task = tokio::spawn(async move { step.run(c, ctx).await });
        send(&store, "cli:alice", d3("approve"));
        let out = task.await.unwrap().unwrap();
        assert_eq!(out["approvers"], json!(["U2", "cli:alice"]), "both count");
        let mut decided = Vec::new();
        while let Ok((_, r)) = rx.try_recv() {
            if let landfall_engine::StepReport::Milestone { kind, data } = r {
                if let Some(Milestone::ApprovalDecided { actor, .. }) =
                    Milestone::parse(&kind, &data)
                {
                    decided.push(actor);
                }
            }
        }
        assert_eq!(decided, ["cli:alice"], "U2's was said by the first attempt");
    }

    #[tokio::test]
    async fn with_no_policy_covering_its_targets_and_none_required_the_step_runs_through() {
        let store = store_with_run("U1");
        let step = Approval {
            poll: Duration::from_millis(5),
            policies: production(),
        };
        let mut c = config(&[]);
        c.required = false;
        c.targets = vec![json!({ "account": "acme-dev", "environment": "development" })];
        let out = step.run(c, ctx(&store)).await.unwrap();
        assert_eq!(out["needed"], false);
        // The same targets under a production account: it waits (and times out here).
        let mut c = config(&[]);
        c.required = false;
        c.timeout = Duration::from_millis(30);
        c.targets = vec![json!({ "environment": "production" })];
        let err = step.run(c, ctx(&store)).await.unwrap_err();
        assert!(err.message.contains("no decision"), "{}", err.message);
    }

    #[tokio::test]
    async fn an_approval_binds_to_its_digest_and_approvers() {
        let store = store_with_run("U5");
        let step = Approval {
            poll: Duration::from_millis(5),
            ..Approval::default()
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
        let store = store_with_run("U5");
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
        let store = store_with_run("U5");
        let err = Approval::default()
            .run(config(&[]), ctx(&store))
            .await
            .unwrap_err();
        assert!(err.message.contains("no decision"), "{}", err.message);
    }
}

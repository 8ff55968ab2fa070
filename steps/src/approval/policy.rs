//! Who must agree before Landfall changes a target. Approval policies belong to the operators
//! (`[[approval.policies]]` in `landfall.toml`), never to a workflow's inputs: the person who
//! starts a run cannot choose whether it needs approval or who gives it.
//!
//! A policy selects targets (by the environment of their account) and asks for
//! `min_approvals` distinct approvers (Slack users, Slack user groups, `cli:<user>`), the
//! requester excluded by default, each decision bound to the digest of what is approved and
//! valid for `expires_after`. The same [`tally`] decides in three places: the `approval` step
//! (when to go on), the front doors (what to tell the person who clicked), and the plugins that
//! write (`deploy` refuses a matching target without enough approvals: the enforcement point is
//! the write, so a workflow without an approval step gains nothing).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use landfall_engine::state::Signal;
use landfall_engine::{StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Decision, Verdict};

/// One operator policy, as written in `landfall.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// Named in messages and the audit (`policy production`).
    pub name: String,
    /// Which targets it covers; every target when empty.
    #[serde(rename = "match", default)]
    pub selects: PolicyMatch,
    /// Distinct approvers needed.
    #[serde(default = "one")]
    pub min_approvals: u32,
    /// Who may approve: Slack user ids (`U…`), Slack user groups (`S…`), `cli:<user>`.
    pub approvers: Vec<String>,
    /// Whether the person who started the run is kept from approving it.
    #[serde(default = "yes")]
    pub forbid_requester: bool,
    /// A decision older than this no longer counts.
    #[serde(with = "humantime_serde", default = "day")]
    #[schemars(with = "String")]
    pub expires_after: Duration,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

fn day() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The targets a policy covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyMatch {
    /// Targets whose account has one of these environments (`production`, `staging`, …).
    #[serde(default)]
    pub environment: Vec<String>,
}

impl ApprovalPolicy {
    /// Whether the policy covers a target known under these environments (a target may be
    /// known under two: its account's tag and its package's manifest; either one selects).
    pub fn covers<'a>(&self, environments: impl IntoIterator<Item = &'a str>) -> bool {
        if self.selects.environment.is_empty() {
            return true;
        }
        environments
            .into_iter()
            .any(|e| self.selects.environment.iter().any(|m| m == e))
    }

    /// What is wrong with the policy, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push((
                "name",
                "a policy needs a name (it is shown to approvers)".into(),
            ));
        }
        if self.approvers.is_empty() {
            out.push(("approvers", "a policy needs approvers".into()));
        }
        if self.min_approvals == 0 {
            out.push((
                "min_approvals",
                "at least 1 (a policy that asks for nothing is no policy: remove it)".into(),
            ));
        }
        let groups = self.approvers.iter().any(|a| is_group(a));
        if !groups && self.min_approvals as usize > self.approvers.len() {
            out.push((
                "min_approvals",
                format!(
                    "{} approvals can never be given by {} approver(s): add approvers or a user group",
                    self.min_approvals,
                    self.approvers.len()
                ),
            ));
        }
        if self.expires_after.is_zero() {
            out.push(("expires_after", "must be longer than zero".into()));
        }
        out
    }

    /// The ask this policy makes of a run.
    pub fn ask(&self) -> Ask {
        Ask {
            policy: self.name.clone(),
            min_approvals: self.min_approvals,
            approvers: self.approvers.clone(),
            forbid_requester: self.forbid_requester,
            expires_after_s: self.expires_after.as_secs(),
        }
    }
}

/// Checks a list of policies: each one, and that names are unique. Problems as
/// (`policies[i].field`, message).
pub fn check_policies(policies: &[ApprovalPolicy]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut names = BTreeMap::new();
    for (i, p) in policies.iter().enumerate() {
        for (field, msg) in p.problems() {
            out.push((format!("policies[{i}].{field}"), msg));
        }
        if let Some(first) = names.insert(p.name.as_str(), i) {
            out.push((
                format!("policies[{i}].name"),
                format!("`{}` already names policies[{first}]", p.name),
            ));
        }
    }
    out
}

/// A Slack user group id (`S…`); users are `U…`/`W…`, CLI users `cli:<name>`.
pub fn is_group(approver: &str) -> bool {
    approver.starts_with('S')
        && approver.len() > 1
        && approver[1..].chars().all(|c| c.is_ascii_alphanumeric())
}

/// One requirement a run must meet: a matching policy, or the workflow's own approvers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    /// The policy's name (`workflow` for the step's own `approvers`).
    pub policy: String,
    pub min_approvals: u32,
    /// Empty: anyone who can reach the run.
    pub approvers: Vec<String>,
    pub forbid_requester: bool,
    pub expires_after_s: u64,
}

/// The name of the ask a workflow's own `approvers` make.
pub const WORKFLOW_ASK: &str = "workflow";

/// One person's decision, as the tally reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    pub actor: String,
    /// The user groups (among the approvers asked for) the front door found the actor in
    /// when the decision was given.
    pub groups: Vec<String>,
    pub verdict: Verdict,
    pub digest: String,
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
}

impl Vote {
    /// The vote a signal carries, if it is a decision.
    pub fn from_signal(sig: &Signal) -> Option<Vote> {
        let d = Decision::from_signal(sig).ok()?;
        Some(Vote {
            actor: d.actor,
            groups: d.groups,
            verdict: d.verdict,
            digest: d.digest,
            comment: d.comment,
            at: sig.at,
        })
    }
}

/// Why `vote` does not count toward `ask`, or `None` when it does.
pub fn why_not(
    ask: &Ask,
    vote: &Vote,
    requester: &str,
    digest: &str,
    now: DateTime<Utc>,
) -> Option<String> {
    if vote.digest != digest {
        return Some(format!(
            "it was given for {}, but what waits for approval is {}",
            short(&vote.digest),
            short(digest)
        ));
    }
    let listed = ask.approvers.is_empty()
        || ask.approvers.contains(&vote.actor)
        || vote.groups.iter().any(|g| ask.approvers.contains(g));
    if !listed {
        return Some(format!(
            "{} is not among the approvers of policy {}",
            vote.actor, ask.policy
        ));
    }
    if ask.forbid_requester && vote.actor == requester {
        return Some(format!(
            "{} started this run, and policy {} needs someone else",
            vote.actor, ask.policy
        ));
    }
    let expires = chrono::Duration::seconds(ask.expires_after_s.min(i64::MAX as u64) as i64);
    if vote.at + expires < now {
        return Some(format!(
            "it is older than policy {}'s {}",
            ask.policy,
            humantime::format_duration(Duration::from_secs(ask.expires_after_s))
        ));
    }
    None
}

/// Where one ask stands: who counted, how many it needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Count {
    pub policy: String,
    pub have: Vec<String>,
    pub need: u32,
}

impl Count {
    pub fn met(&self) -> bool {
        self.have.len() >= self.need as usize
    }
}

/// Where a run's approval stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// Every ask has its approvals.
    Approved(Vec<Count>),
    /// Some ask lacks approvals.
    Waiting(Vec<Count>),
    /// Someone who could approve rejected.
    Rejected {
        by: String,
        policy: String,
        comment: Option<String>,
    },
}

impl Standing {
    /// `recorded 1 of 2 approvals (policy production)`, one clause per unmet ask.
    pub fn progress(&self) -> String {
        match self {
            Standing::Approved(_) => "approved".into(),
            Standing::Rejected { by, policy, .. } => format!("rejected by {by} (policy {policy})"),
            Standing::Waiting(counts) => counts
                .iter()
                .filter(|c| !c.met())
                .map(|c| {
                    format!(
                        "recorded {} of {} approval{} (policy {})",
                        c.have.len(),
                        c.need,
                        if c.need == 1 { "" } else { "s" },
                        c.policy
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// Decides a run's approval from its votes: each person's latest vote for `digest` counts
/// once per ask it is eligible for; an eligible rejection rejects; votes for another digest,
/// from someone not asked, from a forbidden requester or past their expiry count for nothing.
pub fn tally(
    asks: &[Ask],
    requester: &str,
    digest: &str,
    votes: &[Vote],
    now: DateTime<Utc>,
) -> Standing {
    let mut latest: BTreeMap<&str, &Vote> = BTreeMap::new();
    for v in votes.iter().filter(|v| v.digest == digest) {
        match latest.get(v.actor.as_str()) {
            Some(seen) if seen.at > v.at => {}
            _ => {
                latest.insert(&v.actor, v);
            }
        }
    }
    let mut counts: Vec<Count> = asks
        .iter()
        .map(|a| Count {
            policy: a.policy.clone(),
            have: Vec::new(),
            need: a.min_approvals,
        })
        .collect();
    for vote in latest.values() {
        for (ask, count) in asks.iter().zip(counts.iter_mut()) {
            if why_not(ask, vote, requester, digest, now).is_some() {
                continue;
            }
            match vote.verdict {
                Verdict::Reject => {
                    return Standing::Rejected {
                        by: vote.actor.clone(),
                        policy: ask.policy.clone(),
                        comment: vote.comment.clone(),
                    }
                }
                Verdict::Approve => count.have.push(vote.actor.clone()),
            }
        }
    }
    if counts.iter().all(Count::met) {
        Standing::Approved(counts)
    } else {
        Standing::Waiting(counts)
    }
}

/// The votes among a run's signals (every node's: a decision counts wherever it was given,
/// bound by its digest).
pub fn votes_of(signals: &[(String, Signal)]) -> Vec<Vote> {
    signals
        .iter()
        .filter_map(|(_, s)| Vote::from_signal(s))
        .collect()
}

/// The enforcement point of the plugins that write: refuses unless the run's recorded
/// decisions satisfy every policy covering the target, for `digest`. `Ok` with the counts
/// (for the step's outputs, and said in its log) when they do, or when no policy covers the
/// target.
pub fn enforce(
    policies: &[ApprovalPolicy],
    ctx: &StepContext,
    environments: &[&str],
    digest: Option<&str>,
    what: &str,
) -> Result<Vec<Count>, StepError> {
    let asks: Vec<Ask> = policies
        .iter()
        .filter(|p| p.covers(environments.iter().copied()))
        .map(ApprovalPolicy::ask)
        .collect();
    if asks.is_empty() {
        return Ok(Vec::new());
    }
    let names = asks
        .iter()
        .map(|a| a.policy.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let Some(digest) = digest.filter(|d| !d.is_empty()) else {
        return Err(StepError::permanent(format!(
            "approval policy {names} covers {what}, but this step names no digest that approvals could be bound to"
        )));
    };
    let requester = ctx.requester()?;
    let votes = votes_of(&ctx.run_signals()?);
    match tally(&asks, &requester, digest, &votes, Utc::now()) {
        Standing::Approved(counts) => {
            for count in &counts {
                ctx.log(format!(
                    "{what}: approved under policy {} by {}",
                    count.policy,
                    count.have.join(", ")
                ));
            }
            Ok(counts)
        }
        Standing::Rejected {
            by,
            policy,
            comment,
        } => Err(StepError::permanent(format!(
            "{what} was rejected by {by} (policy {policy}){}",
            comment.map(|c| format!(": {c}")).unwrap_or_default()
        ))),
        w @ Standing::Waiting(_) => Err(StepError::permanent(format!(
            "{what} needs approval before Landfall may change it: {} for digest {}. Add an approval step before this one, or approve with `landfall approve`",
            w.progress(),
            short(digest)
        ))
        .with_context(json!({ "policies": names, "digest": digest }))),
    }
}

pub(crate) fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn production() -> ApprovalPolicy {
        toml::from_str(
            r#"
            name = "production"
            match = { environment = ["production"] }
            min_approvals = 2
            approvers = ["U1", "U2", "S0PLATFORM", "cli:alice"]
            "#,
        )
        .unwrap()
    }

    fn vote(actor: &str, verdict: Verdict, digest: &str, secs: i64) -> Vote {
        Vote {
            actor: actor.into(),
            groups: Vec::new(),
            verdict,
            digest: digest.into(),
            comment: None,
            at: DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_100, 0).unwrap()
    }

    #[test]
    fn the_policy_of_the_issue_reads_with_its_defaults() {
        let p = production();
        assert!(p.forbid_requester);
        assert_eq!(p.expires_after, Duration::from_secs(86_400));
        assert!(p.covers(["production"]));
        assert!(!p.covers(["staging"]));
        assert!(p.covers(["staging", "production"]), "either source selects");
        assert!(p.problems().is_empty());
        let mut every = p.clone();
        every.selects.environment.clear();
        assert!(every.covers(["sandbox"]));
    }

    #[test]
    fn impossible_or_empty_policies_are_named() {
        let mut p = production();
        p.approvers = vec!["U1".into()];
        let fields: Vec<&str> = p.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["min_approvals"]);
        p.approvers = vec!["U1".into(), "S0TEAM".into()];
        assert!(p.problems().is_empty(), "a group may hold many approvers");
        p.min_approvals = 0;
        p.approvers.clear();
        let fields: Vec<&str> = p.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["approvers", "min_approvals"]);
        let twice = check_policies(&[production(), production()]);
        assert_eq!(twice.len(), 1);
        assert_eq!(twice[0].0, "policies[1].name");
    }

    #[test]
    fn two_distinct_approvers_other_than_the_requester_are_needed() {
        let asks = [production().ask()];
        let d = "d1";
        let t = |votes: &[Vote]| tally(&asks, "U1", d, votes, now());
        // The requester's approval does not count.
        let s = t(&[vote("U1", Verdict::Approve, d, 1)]);
        assert_eq!(
            s.progress(),
            "recorded 0 of 2 approvals (policy production)"
        );
        // One approval is not enough, and the same person twice is still one.
        let s = t(&[
            vote("U2", Verdict::Approve, d, 1),
            vote("U2", Verdict::Approve, d, 2),
        ]);
        assert_eq!(
            s.progress(),
            "recorded 1 of 2 approvals (policy production)"
        );
        // A member of an approving group counts.
        let mut grouped = vote("U7", Verdict::Approve, d, 3);
        grouped.groups = vec!["S0PLATFORM".into()];
        let s = t(&[vote("U2", Verdict::Approve, d, 1), grouped]);
        assert!(matches!(s, Standing::Approved(_)), "{s:?}");
        // A non-approver's vote changes nothing, nor does one for another digest.
        let s = t(&[
            vote("U2", Verdict::Approve, d, 1),
            vote("U9", Verdict::Approve, d, 2),
            vote("cli:alice", Verdict::Approve, "d0", 3),
        ]);
        assert!(matches!(s, Standing::Waiting(_)), "{s:?}");
        // Expired approvals no longer count.
        let mut p = production();
        p.expires_after = Duration::from_secs(50);
        let s = tally(
            &[p.ask()],
            "U1",
            d,
            &[
                vote("U2", Verdict::Approve, d, 1),
                vote("cli:alice", Verdict::Approve, d, 80),
            ],
            now(),
        );
        assert_eq!(
            s.progress(),
            "recorded 1 of 2 approvals (policy production)"
        );
    }

    #[test]
    fn an_eligible_rejection_rejects_and_a_later_vote_replaces_an_earlier_one() {
        let asks = [production().ask()];
        let s = tally(
            &asks,
            "U1",
            "d",
            &[
                vote("U2", Verdict::Approve, "d", 1),
                vote("cli:alice", Verdict::Approve, "d", 2),
                vote("U2", Verdict::Reject, "d", 3),
            ],
            now(),
        );
        assert!(
            matches!(&s, Standing::Rejected { by, .. } if by == "U2"),
            "{s:?}"
        );
        // A rejection by someone who may not decide rejects nothing.
        let s = tally(
            &asks,
            "U1",
            "d",
            &[vote("U9", Verdict::Reject, "d", 1)],
            now(),
        );
        assert!(matches!(s, Standing::Waiting(_)), "{s:?}");
        // The requester's own rejection is not a decision either under forbid_requester.
        let s = tally(
            &asks,
            "U2",
            "d",
            &[vote("U2", Verdict::Reject, "d", 1)],
            now(),
        );
        assert!(matches!(s, Standing::Waiting(_)), "{s:?}");
    }

    fn arb_vote() -> impl Strategy<Value = Vote> {
        (
            prop::sample::select(vec!["U1", "U2", "U3", "U9", "cli:alice"]),
            any::<bool>(),
            prop::sample::select(vec!["d", "old"]),
            0i64..100,
        )
            .prop_map(|(a, approve, d, t)| {
                vote(
                    a,
                    if approve {
                        Verdict::Approve
                    } else {
                        Verdict::Reject
                    },
                    d,
                    t,
                )
            })
    }

    proptest! {
        /// Invariants of the tally: the requester never adds an approval; votes for another
        /// digest change nothing; repeating a vote changes nothing; an approved standing has,
        /// for each ask, that many distinct listed approvers other than the requester.
        #[test]
        fn tally_invariants(votes in prop::collection::vec(arb_vote(), 0..12), requester in prop::sample::select(vec!["U1", "U2", "cli:alice"])) {
            let asks = [production().ask()];
            let base = tally(&asks, requester, "d", &votes, now());
            let others: Vec<Vote> = votes.iter().filter(|v| v.digest == "d").cloned().collect();
            prop_assert_eq!(&tally(&asks, requester, "d", &others, now()), &base);
            let mut twice = votes.clone();
            twice.extend(votes.iter().cloned());
            prop_assert_eq!(&tally(&asks, requester, "d", &twice, now()), &base);
            if let Standing::Approved(counts) | Standing::Waiting(counts) = &base {
                for c in counts {
                    prop_assert!(!c.have.iter().any(|a| a == requester));
                    let mut distinct = c.have.clone();
                    distinct.dedup();
                    prop_assert_eq!(distinct.len(), c.have.len());
                    prop_assert!(c.have.iter().all(|a| production().approvers.contains(a)));
                }
            }
            if let Standing::Approved(counts) = &base {
                prop_assert!(counts.iter().all(|c| c.have.len() >= 2));
            }
        }
    }
}

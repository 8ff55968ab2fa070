//! Approval decisions at the front door: the buttons (each carries the digest of the request
//! it was posted for) and `approve`/`reject` commands, judged by the approval contract
//! (`landfall_steps::approval`) before anything is recorded.

use std::sync::Arc;

use landfall_steps::approval::{self, Decision, Verdict};
use serde_json::{json, Value};

use super::FrontDoor;

impl FrontDoor {
    /// A block action: the approval buttons. Answers go to the clicked message's thread; the
    /// work (group look-ups, the record) happens after the acknowledgement.
    pub fn on_interaction(self: &Arc<Self>, payload: &Value) {
        let user = payload["user"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !self.from_expected(
            payload["team"]["id"].as_str().unwrap_or_default(),
            payload["enterprise"]["id"]
                .as_str()
                .or(payload["team"]["enterprise_id"].as_str())
                .unwrap_or_default(),
            Some(payload["api_app_id"].as_str().unwrap_or_default()),
            &user,
        ) {
            return;
        }
        // An ephemeral message has no `message` and no `channel` in some payloads: its
        // container says where it was.
        let channel = payload["channel"]["id"]
            .as_str()
            .or(payload["container"]["channel_id"].as_str())
            .unwrap_or_default()
            .to_string();
        let thread = payload["message"]["thread_ts"]
            .as_str()
            .or(payload["container"]["thread_ts"].as_str())
            .or(payload["message"]["ts"].as_str())
            .map(str::to_string);
        // A click on a message only the user sees: answered the same way (a thread under a
        // message nobody else can see would be posted to the channel for all).
        let ephemeral = payload["container"]["is_ephemeral"].as_bool() == Some(true);
        let thread = if ephemeral { None } else { thread };
        for a in payload["actions"].as_array().into_iter().flatten() {
            let value: Value = a["value"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            let verdict = match a["action_id"].as_str() {
                Some("approve") => Verdict::Approve,
                Some("reject") => Verdict::Reject,
                Some("apply") => {
                    // A plan's Apply button: its id and the digest the person saw.
                    let (Some(plan), Some(seen)) =
                        (value["plan"].as_str(), value["digest"].as_str())
                    else {
                        continue;
                    };
                    let (fd, user, channel, thread) = (
                        Arc::clone(self),
                        user.clone(),
                        channel.clone(),
                        thread.clone(),
                    );
                    let (plan, seen) = (plan.to_string(), seen.to_string());
                    tokio::spawn(async move {
                        let reply = if fd.allowed(&user, &channel) {
                            fd.apply(&plan, &user, &channel, Some(&seen)).await
                        } else {
                            fd.refuse(&user, &channel, "apply plans")
                        };
                        fd.answer(&channel, thread.as_deref(), ephemeral, &user, &reply);
                    });
                    continue;
                }
                _ => continue,
            };
            let (Some(run), Some(node)) = (value["run"].as_str(), value["node"].as_str()) else {
                continue;
            };
            let (run, node) = (run.to_string(), node.to_string());
            // A button always says which request it answers; one without a digest is not ours.
            let seen = value["digest"].as_str().unwrap_or("(none)").to_string();
            let (fd, user, channel, thread) = (
                Arc::clone(self),
                user.clone(),
                channel.clone(),
                thread.clone(),
            );
            tokio::spawn(async move {
                let reply = if !fd.allowed(&user, &channel) {
                    fd.refuse(&user, &channel, "decide approvals")
                } else if let Err(refusal) = fd
                    .run_allows(&run, &user, &channel, "decide approvals")
                    .await
                {
                    refusal
                } else {
                    fd.decide(&run, &node, verdict, &user, Some(&seen)).await
                };
                fd.answer(&channel, thread.as_deref(), ephemeral, &user, &reply);
            });
        }
    }

    /// The answer to a click: to the clicker alone when the message was theirs alone, else
    /// in the message's thread.
    fn answer(
        &self,
        channel: &str,
        thread: Option<&str>,
        ephemeral: bool,
        user: &str,
        reply: &str,
    ) {
        let text = super::actions::reply(user, reply);
        if ephemeral {
            self.say_to(channel, user, text);
        } else {
            self.say(channel, thread, text);
        }
    }

    /// Records a person's decision on a waiting approval. `seen` is the digest the person
    /// looked at (a button carries it): a decision on an outdated request is refused. A
    /// decision that would count for nothing (not asked, the requester where a policy forbids
    /// it) is refused and says why; nothing is recorded then.
    pub(super) async fn decide(
        &self,
        run: &str,
        node: &str,
        verdict: Verdict,
        user: &str,
        seen: Option<&str>,
    ) -> String {
        let request = match approval::pending(self.store.as_ref(), run, node) {
            Ok(r) => r,
            Err(e) => return e,
        };
        if let Some(seen) = seen.filter(|s| *s != request.digest) {
            return format!(
                "<@{user}>, this plan is outdated: it showed {}, and `{node}` of `{run}` now waits for {}. Nothing was recorded; look at the latest request.",
                short(seen),
                request.short_digest()
            );
        }
        let wanted = request.groups();
        let groups = if wanted.is_empty() {
            Vec::new()
        } else {
            let mut mine = Vec::new();
            for g in &wanted {
                match self.in_groups(user, std::slice::from_ref(g)).await {
                    Ok(true) => mine.push(g.clone()),
                    Ok(false) => {}
                    Err(why) => tracing::warn!(group = %g, %why, "approver group not checked"),
                }
            }
            mine
        };
        let decision = Decision {
            verdict,
            digest: request.digest.clone(),
            comment: None,
            actor: user.to_string(),
            groups,
        };
        if let Some(why) = request.refusal(&decision) {
            self.audit(
                user,
                "slack_decision_refused",
                json!({ "run": run, "node": node, "why": why }),
            );
            return format!(
                "<@{user}>, your decision does not count, so nothing was recorded: {why}."
            );
        }
        if let Err(e) = self
            .engine
            .signal(run, node, decision.into_signal(chrono::Utc::now()))
        {
            return format!("Cannot record the decision: {e}");
        }
        let standing = approval::run_votes(self.store.as_ref(), run)
            .map(|votes| request.progress(&votes))
            .unwrap_or_default();
        match verdict {
            Verdict::Approve if standing != "approved" && !standing.is_empty() => {
                format!("<@{user}> approved `{node}` of `{run}`: {standing}.")
            }
            _ => format!("<@{user}> {} `{node}` of `{run}`.", verdict.past()),
        }
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

//! Plans from Slack: `/landfall plan COMMAND …` plans a workflow (reading only) and posts the
//! plan with an Apply button; `/landfall apply PLAN` or the button starts a run that applies
//! exactly that stored plan (`landfall run --plan`). Who may plan or apply a workflow is whom
//! its trigger lets start it; the run's approval steps then ask what the operators' policies
//! ask, with the person who applied as the requester.

use std::sync::Arc;
use std::time::Duration;

use landfall_engine::state::Trigger;
use landfall_engine::NewPlan;
use serde_json::{json, Map};

use super::FrontDoor;

/// How long a plan made from Slack may be applied (as `landfall plan`'s default).
const PLAN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

impl FrontDoor {
    /// Plans `workflow` in the background; the plan is posted where it was asked for.
    pub(super) async fn plan(
        self: &Arc<Self>,
        workflow: &str,
        args: std::collections::BTreeMap<String, String>,
        user: &str,
        channel: &str,
    ) -> String {
        let (wf, inputs) = match self.checked(workflow, args, user, channel, "plan").await {
            Ok(x) => x,
            Err(refusal) => return refusal,
        };
        let (me, user, channel) = (Arc::clone(self), user.to_string(), channel.to_string());
        let name = workflow.to_string();
        tokio::spawn(async move {
            let new = NewPlan {
                inputs,
                requester: user.clone(),
                ttl: PLAN_TTL,
            };
            match me.engine.plan(&wf, new).await {
                Ok(plan) => {
                    me.audit(
                        &user,
                        "slack_plan",
                        json!({ "plan": plan.plan_id, "digest": plan.digest }),
                    );
                    let (text, blocks) = crate::slack::approval_message::plan(&plan);
                    me.say_blocks(&channel, None, text, Some(blocks));
                }
                Err(e) => me.say(&channel, None, format!("Cannot plan {name}: {e}")),
            }
        });
        format!("Planning {workflow} (reading only: nothing changes). The plan follows here.")
    }

    /// Starts a run applying the stored plan `plan_id`. `seen` is the digest the person looked
    /// at (the Apply button carries it).
    pub(super) async fn apply(
        self: &Arc<Self>,
        plan_id: &str,
        user: &str,
        channel: &str,
        seen: Option<&str>,
    ) -> String {
        let plan = match self.store.plan(plan_id) {
            Ok(Some(p)) => p,
            Ok(None) => return format!("No plan `{plan_id}`."),
            Err(e) => return format!("Cannot read plan `{plan_id}`: {e}"),
        };
        if seen.is_some_and(|d| d != plan.digest) {
            return format!("This plan is outdated: `{plan_id}` is not what this button showed.");
        }
        let workflow = plan.workflow.as_str();
        let (Some(route), Some(wf)) = (
            self.routes.iter().find(|r| r.workflow == workflow),
            self.workflows.get(workflow),
        ) else {
            return format!("Plan `{plan_id}` is of {workflow}, which this server does not run.");
        };
        if let Err(refusal) = self
            .workflow_allows(&route.trigger, user, channel, &format!("apply {workflow}"))
            .await
        {
            return refusal;
        }
        let trigger = Trigger {
            source: "slack".into(),
            actor: user.to_string(),
            details: json!({ "channel": channel, "plan": plan_id }),
        };
        let run_id = match self.launch(
            Arc::clone(wf),
            Some(plan_id.to_string()),
            Map::new(),
            trigger,
            channel,
        ) {
            Ok(id) => id,
            Err(e) => return format!("Cannot apply: {e}"),
        };
        self.audit(
            user,
            "slack_apply",
            json!({ "plan": plan_id, "run": run_id }),
        );
        format!("Applying plan `{plan_id}` as `{run_id}`. Updates follow in this run's thread.")
    }
}

//! `deploy` applying a plan: exactly the changes a `plan: true` step of the same run found for
//! this target, and nothing else. First every stack is checked against what the plan saw (a
//! stack to create is still absent; a stack to update was not updated since, and its change
//! set is still executable; a stack planned unchanged still matches); any difference fails the
//! node with "changed since the plan: plan again" before anything is written. Then the planned
//! change sets are executed and the planned stacks created, in the package's order.
//!
//! A node cut off while applying finds its own work on the next attempt (the stack tagged with
//! this run, the change set already executing) and follows it, as a plain deploy does.

use std::collections::BTreeMap;

use landfall_engine::StepError;
use serde_json::{json, Value};

use super::deploy::{client_token, tag_of, Action, Job, StackResult, TAG_RUN};
use super::monitor::{describe, watch};
use super::plan::StackPlan;
use crate::aws::errors::step_error;
use crate::milestone::Milestone;

/// The plan's entry for one stack: `create`, `update` (with its change set) or `none`.
fn planned_for<'a>(planned: &'a [Value], stack: &str) -> Option<&'a Value> {
    planned.iter().find(|c| c["stack"] == stack)
}

fn changed(stack: &str, what: impl std::fmt::Display) -> StepError {
    StepError::permanent(format!(
        "{stack} changed since the plan ({what}): plan again, and approve the new plan"
    ))
    .with_context(json!({ "stack": stack, "changed_since_plan": true }))
}

/// When a stack last changed, as the plan records it.
pub(crate) fn last_change(stack: &aws_sdk_cloudformation::types::Stack) -> Option<String> {
    stack
        .last_updated_time()
        .or(stack.creation_time())
        .map(|t| t.to_string())
}

impl Job {
    /// Applies `planned` (this target's changes from the plan) to `plans`.
    pub(crate) async fn apply_planned(
        &self,
        plans: &[StackPlan],
        planned: &[Value],
    ) -> Result<Vec<StackResult>, StepError> {
        // Everything is checked before anything is written: nothing partial.
        for p in plans {
            let found = describe(&self.cfn, &p.stack_name).await?;
            let ours = found
                .as_ref()
                .is_some_and(|s| tag_of(s, TAG_RUN) == Some(&*self.ctx.run_id));
            match (planned_for(planned, &p.stack_name), found) {
                // Written by this run already (an attempt cut off): followed below.
                _ if ours => {}
                (Some(c), None) if c["action"] == "create" => {}
                (Some(c), Some(s)) if c["action"] == "create" => {
                    if s.stack_status().map(|x| x.as_str()) != Some("REVIEW_IN_PROGRESS") {
                        return Err(changed(&p.stack_name, "it exists now"));
                    }
                }
                (Some(c), None) if c["action"] == "update" => {
                    return Err(changed(&p.stack_name, "it no longer exists"));
                }
                (Some(c), Some(s)) if c["action"] == "update" => {
                    if c["known"] == false {
                        return Err(StepError::permanent(format!(
                            "the plan could not tell what updating {} would change (its parameters came from stacks created first): plan again now that they exist",
                            p.stack_name
                        )));
                    }
                    let then = c["last_change"].as_str();
                    if then.is_some() && last_change(&s).as_deref() != then {
                        return Err(changed(
                            &p.stack_name,
                            format!("it was changed at {}", last_change(&s).unwrap_or_default()),
                        ));
                    }
                    let name = c["change_set"]["name"].as_str().unwrap_or_default();
                    let d = self
                        .cfn
                        .describe_change_set()
                        .stack_name(&p.stack_name)
                        .change_set_name(name)
                        .send()
                        .await
                        .map_err(|e| changed(&p.stack_name, step_error("DescribeChangeSet", e)))?;
                    let status = d.status().map(|x| x.as_str()).unwrap_or_default();
                    let execution = d.execution_status().map(|x| x.as_str()).unwrap_or_default();
                    if status != "CREATE_COMPLETE" || execution != "AVAILABLE" {
                        return Err(changed(
                            &p.stack_name,
                            format!("its planned change set is {status}, {execution}"),
                        ));
                    }
                }
                (Some(c), None) if c["action"] == "none" => {
                    return Err(changed(&p.stack_name, "it was deleted"));
                }
                (Some(c), Some(s)) if c["action"] == "none" => {
                    let then = c["last_change"].as_str();
                    if then.is_some() && last_change(&s).as_deref() != then {
                        return Err(changed(
                            &p.stack_name,
                            format!("it was changed at {}", last_change(&s).unwrap_or_default()),
                        ));
                    }
                }
                (None, _) => {
                    return Err(StepError::permanent(format!(
                        "the plan does not mention stack {} of this package: plan again",
                        p.stack_name
                    )));
                }
                (Some(c), _) => {
                    return Err(StepError::permanent(format!(
                        "the plan's change of {} is not one deploy applies: {c}",
                        p.stack_name
                    )))
                }
            }
        }

        self.in_waves(plans, "applying the plan", |job, p, params, slot| {
            let change = planned_for(planned, &p.stack_name).cloned();
            async move { job.apply_one(&p, params?, change, slot).await }
        })
        .await
    }

    async fn apply_one(
        &self,
        p: &StackPlan,
        params: BTreeMap<String, String>,
        change: Option<Value>,
        slot: usize,
    ) -> Result<StackResult, StepError> {
        let found = describe(&self.cfn, &p.stack_name).await?;
        if found
            .as_ref()
            .is_some_and(|s| tag_of(s, TAG_RUN) == Some(&*self.ctx.run_id))
        {
            // This run's own work from an earlier attempt: follow it to its end.
            return self.deploy_one(p, params, slot).await;
        }
        let change = change.unwrap_or(Value::Null);
        if change["action"] == "none" {
            let stack = found
                .ok_or_else(|| changed(&p.stack_name, "it was deleted"))?
                .complete("reported")?;
            return Ok(self.unchanged(p, &stack, slot));
        }
        if change["action"] == "create" {
            return self.create(p, &params, slot).await;
        }
        let name = change["change_set"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let id = change["change_set"]["id"].as_str().unwrap_or_default();
        Milestone::StackStarted {
            stack: p.stack_name.clone(),
            account: self.target.account.clone(),
            region: self.target.region.clone(),
            action: "update".into(),
            change_set: Some(json!({ "name": name, "id": id, "planned": true })),
        }
        .emit(&self.ctx);
        self.ctx.log(format!(
            "executing the planned change set {id} of {}",
            p.stack_name
        ));
        self.cfn
            .execute_change_set()
            .stack_name(&p.stack_name)
            .change_set_name(&name)
            .client_request_token(client_token(
                self.ctx.idempotency_key(),
                &p.stack_name,
                "execute-planned",
            ))
            .send()
            .await
            .map_err(|e| step_error("ExecuteChangeSet", e))?;
        let stack_id = found
            .map(|s| s.stack_id().unwrap_or(&p.stack_name).to_string())
            .unwrap_or_else(|| p.stack_name.clone());
        let out = watch(
            &self.cfn,
            &stack_id,
            &["UPDATE_IN_PROGRESS"],
            &self.poll,
            self.poll.initial,
            &self.ctx,
            |e| self.observe(slot, e),
        )
        .await?;
        self.finished(
            p,
            out,
            Action::Updated,
            Some(json!({ "name": name, "id": id, "planned": true })),
            slot,
        )
        .await
    }
}

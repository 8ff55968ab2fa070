//! `rollback`: after a failed deploy or verify, put one target back as it was before the run,
//! as far as CloudFormation allows, and say what could not be.
//!
//! Per stack of the package, last first: a stack that failed on creation (or is still being
//! created) is deleted; an update in progress is cancelled; an update whose rollback failed is
//! continued; a stack this run created successfully is deleted too (`delete_created`). A stack
//! this run *updated* successfully stays as it is (CloudFormation cannot undo a completed
//! update; deploy the previous package version for that) and is reported as left behind, like
//! resources CloudFormation keeps on deletion (`DeletionPolicy: Retain`). Before touching a
//! stack the failed events' reasons are captured: they are the cause, recorded in the outputs
//! and the audit log (`rollback` milestone).

use crate::milestone::{Milestone, RollbackSummary};
use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_cloudformation::Client;
use landfall_engine::ConfigProblem;
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::deploy::{
    common_problems, default_deployer, prepare, start_statuses, tag_of, Prepared, TAG_CREATED_BY,
    TAG_RUN,
};
use super::monitor::{cause, describe, new_events, watch, Ev, Phase, Poll};
use super::plan::{StackPlan, Target};
use super::verify::list_resources;
use crate::aws::errors::step_error;
use crate::aws::Aws;

pub(crate) struct Rollback {
    pub aws: Aws,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackConfig {
    /// The package as `id@version` (the one the failed deploy used).
    pub package: String,
    /// The digest the package must have (what was deployed); another content is refused.
    #[serde(default)]
    pub digest: Option<String>,
    /// The account and region to roll back (one item of the `targets` step).
    pub target: Target,
    /// The values the deploy was given for the stacks' `deploy_parameters`.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Also delete stacks this run created successfully (all or nothing per target).
    #[serde(default = "yes")]
    pub delete_created: bool,
    /// The role assumed in the target account (the deployer's: it undoes what it did).
    #[serde(default = "default_deployer")]
    pub role: String,
    /// Tried only when `role` may not be assumed, as for `deploy`. Off unless the workflow
    /// says so.
    #[serde(default)]
    pub fallback_role: Option<String>,
    /// How often to look at a stack operation the rollback waits for.
    #[serde(default)]
    pub poll: Poll,
    /// The run's failures (`"{{ run.failures }}"`): a deploy that tried to create a stack
    /// says so there, which identifies the stack as this run's even when its tags cannot be
    /// read.
    #[serde(default)]
    pub failures: Vec<Value>,
}

/// Whether the run's failures show that this run tried to create `stack` in `target`.
pub(crate) fn create_attempted(failures: &[Value], stack: &str, target: &Target) -> bool {
    failures.iter().any(|f| {
        let c = &f["context"];
        c["create_attempted"] == json!(true)
            && c["stack"] == json!(stack)
            && c["account_id"] == json!(target.account_id)
            && c["region"] == json!(target.region)
    })
}

/// What to do with a stack, from its status and who created it. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Decision {
    Nothing,
    /// Let the running operation end first, then decide again.
    Wait,
    Delete,
    CancelUpdate,
    ContinueRollback,
    /// Updated by this run and complete: cannot be undone here.
    LeaveUpdated,
}

pub(crate) fn decide(
    status: &str,
    created_by_run: bool,
    updated_by_run: bool,
    delete_created: bool,
) -> Decision {
    match status {
        // A creation that failed: nothing worth keeping, whoever started it.
        "CREATE_FAILED" | "ROLLBACK_COMPLETE" | "ROLLBACK_FAILED" | "DELETE_FAILED" => {
            Decision::Delete
        }
        // A stack whose creating change set waits to be executed: another run's may be about
        // to execute it.
        "REVIEW_IN_PROGRESS" => {
            if created_by_run {
                Decision::Delete
            } else {
                Decision::Nothing
            }
        }
        "CREATE_IN_PROGRESS" => {
            if created_by_run {
                Decision::Delete
            } else {
                Decision::Wait
            }
        }
        // Only this run's update is cancelled; another run's ends by itself, and the stack is
        // then that run's to keep or roll back. (Clean-up cannot be cancelled: AWS's
        // CancelUpdateStack takes only UPDATE_IN_PROGRESS.)
        "UPDATE_IN_PROGRESS" => {
            if updated_by_run {
                Decision::CancelUpdate
            } else {
                Decision::Wait
            }
        }
        "UPDATE_ROLLBACK_FAILED" => Decision::ContinueRollback,
        "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" => {
            if created_by_run && delete_created {
                Decision::Delete
            } else if updated_by_run && !created_by_run {
                Decision::LeaveUpdated
            } else {
                Decision::Nothing
            }
        }
        s if super::monitor::phase(s) == Phase::InProgress => Decision::Wait,
        _ => Decision::Nothing,
    }
}

#[async_trait]
impl Plugin for Rollback {
    const NAME: &'static str = "rollback";
    const SUMMARY: &'static str =
        "Undo a failed deployment in one account and region: delete failed or new stacks, cancel updates, report what is left";
    type Config = RollbackConfig;

    fn circuit_scope(with: &Value) -> Option<String> {
        crate::aws::target_scope(with)
    }

    fn validate(c: &RollbackConfig) -> Vec<ConfigProblem> {
        common_problems(&c.package, &c.poll)
    }

    async fn run(&self, c: RollbackConfig, ctx: StepContext) -> Result<Value, StepError> {
        let Prepared { plans, cfn, .. } = prepare(
            &self.aws,
            &ctx,
            &c.package,
            c.digest.as_deref(),
            &c.target,
            &c.parameters,
            &c.role,
            c.fallback_role.as_deref(),
        )
        .await?;
        let mut steps = Vec::new();
        // The failures of this run in this target come first: they are why we are here.
        let mut causes: Vec<String> = c
            .failures
            .iter()
            .filter(|f| {
                let ctx = &f["context"];
                ctx["account_id"] == json!(c.target.account_id)
                    && ctx["region"] == json!(c.target.region)
            })
            .filter_map(|f| f["message"].as_str().map(str::to_string))
            .collect();
        let mut left = Vec::new();
        let mut errors = Vec::new();
        for p in plans.iter().rev() {
            match roll_back_stack(&cfn, p, &c, &ctx).await {
                Ok(r) => {
                    for cause in &r.causes {
                        if !causes.contains(cause) {
                            causes.push(cause.clone());
                        }
                    }
                    left.extend(r.left_behind.clone());
                    steps.push(r);
                }
                Err(e) => {
                    left.push(format!("{}: rollback failed: {}", p.stack_name, e.message));
                    errors.push(e);
                }
            }
        }
        let summary = RollbackSummary {
            account: c.target.account.clone(),
            account_id: c.target.account_id.clone(),
            region: c.target.region.clone(),
            stacks: serde_json::to_value(&steps).unwrap_or_default(),
            causes: causes.clone(),
            left_behind: left.clone(),
        };
        Milestone::Rollback(summary.clone()).emit(&ctx);
        let summary = serde_json::to_value(summary).unwrap_or_default();
        if let Some(first) = errors.into_iter().next() {
            return Err(StepError::new(
                first.class,
                format!(
                    "rollback in {}/{} is incomplete: {}",
                    c.target.account,
                    c.target.region,
                    left.join("; ")
                ),
            )
            .with_context(summary));
        }
        Ok(summary)
    }
}

/// What the rollback did with one stack.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StackRollback {
    pub stack: String,
    pub before: Option<String>,
    pub decision: Decision,
    pub after: Option<String>,
    pub causes: Vec<String>,
    pub left_behind: Vec<String>,
}

pub(crate) async fn roll_back_stack(
    cfn: &Client,
    p: &StackPlan,
    c: &RollbackConfig,
    ctx: &StepContext,
) -> Result<StackRollback, StepError> {
    let mut result = StackRollback {
        stack: p.stack_name.clone(),
        before: None,
        decision: Decision::Nothing,
        after: None,
        causes: Vec::new(),
        left_behind: Vec::new(),
    };
    // At most: wait for a running operation, then act once.
    for _ in 0..2 {
        let Some(stack) = describe(cfn, &p.stack_name).await? else {
            return Ok(result);
        };
        let status = stack
            .stack_status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        let id = stack.stack_id().unwrap_or(&p.stack_name).to_string();
        result.before.get_or_insert(status.clone());
        let created = tag_of(&stack, TAG_CREATED_BY) == Some(&*ctx.run_id)
            || create_attempted(&c.failures, &p.stack_name, &c.target);
        let updated = tag_of(&stack, TAG_RUN) == Some(&*ctx.run_id);
        let decision = decide(&status, created, updated, c.delete_created);
        result.decision = decision;
        if decision != Decision::Nothing && result.causes.is_empty() {
            let mut seen = Default::default();
            let failed: Vec<Ev> = new_events(cfn, &id, &[], &mut seen)
                .await
                .map(|evs| {
                    evs.into_iter()
                        .filter(|e| e.failed() && e.reason.is_some())
                        .collect()
                })
                .unwrap_or_default();
            // Newest first in the cause list: the last failures explain the state.
            result.causes = failed
                .iter()
                .rev()
                .take(5)
                .filter_map(|e| cause(std::slice::from_ref(e)))
                .map(|c| format!("{}: {c}", p.stack_name))
                .collect();
        }
        let started = |what: &str| {
            Milestone::RollbackStarted {
                stack: p.stack_name.clone(),
                status: status.clone(),
                action: what.to_string(),
            }
            .emit(ctx);
        };
        let outcome = match decision {
            Decision::Nothing => return Ok(result),
            Decision::LeaveUpdated => {
                result.left_behind.push(format!(
                    "{}: updated by this run and kept (deploy the previous package version to revert it)",
                    p.stack_name
                ));
                return Ok(result);
            }
            Decision::Wait => {
                watch(
                    cfn,
                    &id,
                    &start_statuses(&status),
                    &c.poll,
                    Duration::ZERO,
                    ctx,
                    |_| {},
                )
                .await?;
                continue;
            }
            Decision::Delete => {
                let retained = retained_present(cfn, &id, p).await;
                started("delete");
                cfn.delete_stack()
                    .stack_name(&id)
                    .client_request_token(super::deploy::client_token(
                        ctx.idempotency_key(),
                        &p.stack_name,
                        "delete",
                    ))
                    .send()
                    .await
                    .map_err(|e| step_error("DeleteStack", e))?;
                let out = watch(
                    cfn,
                    &id,
                    &["DELETE_IN_PROGRESS"],
                    &c.poll,
                    c.poll.initial,
                    ctx,
                    |_| {},
                )
                .await?;
                if out.status == "DELETE_COMPLETE" {
                    for r in retained {
                        result.left_behind.push(format!(
                            "{}: {r} kept by its DeletionPolicy (delete it by hand if it is not wanted)",
                            p.stack_name
                        ));
                    }
                }
                out
            }
            Decision::CancelUpdate => {
                started("cancel update");
                cfn.cancel_update_stack()
                    .stack_name(&id)
                    .client_request_token(super::deploy::client_token(
                        ctx.idempotency_key(),
                        &p.stack_name,
                        "cancel",
                    ))
                    .send()
                    .await
                    .map_err(|e| step_error("CancelUpdateStack", e))?;
                watch(
                    cfn,
                    &id,
                    &["UPDATE_IN_PROGRESS", "UPDATE_ROLLBACK_IN_PROGRESS"],
                    &c.poll,
                    c.poll.initial,
                    ctx,
                    |_| {},
                )
                .await?
            }
            Decision::ContinueRollback => {
                started("continue update rollback");
                cfn.continue_update_rollback()
                    .stack_name(&id)
                    .client_request_token(super::deploy::client_token(
                        ctx.idempotency_key(),
                        &p.stack_name,
                        "continue",
                    ))
                    .send()
                    .await
                    .map_err(|e| step_error("ContinueUpdateRollback", e))?;
                watch(
                    cfn,
                    &id,
                    &["UPDATE_ROLLBACK_IN_PROGRESS"],
                    &c.poll,
                    c.poll.initial,
                    ctx,
                    |_| {},
                )
                .await?
            }
        };
        result.after = Some(outcome.status.clone());
        let clean = matches!(
            outcome.status.as_str(),
            "DELETE_COMPLETE" | "UPDATE_ROLLBACK_COMPLETE"
        );
        if !clean {
            let why = cause(&outcome.failed)
                .or(outcome.reason.clone())
                .unwrap_or_default();
            return Err(StepError::permanent(format!(
                "{} ended {} while rolling back{}",
                p.stack_name,
                outcome.status,
                if why.is_empty() { String::new() } else { format!(": {why}") }
            ))
            .with_context(json!({ "stack": p.stack_name, "status": outcome.status, "failed_events": outcome.failed })));
        }
        return Ok(result);
    }
    Ok(result)
}

/// Resources the stack has that CloudFormation will keep when deleting it.
async fn retained_present(cfn: &Client, id: &str, p: &StackPlan) -> Vec<String> {
    if p.facts.retained.is_empty() {
        return Vec::new();
    }
    match list_resources(cfn, id).await {
        Ok(actual) => actual
            .into_iter()
            .filter(|a| {
                p.facts.retained.contains(&a.logical_id)
                    && a.status.ends_with("_COMPLETE")
                    && !a.status.starts_with("DELETE")
            })
            .map(|a| format!("{} ({})", a.logical_id, a.resource_type))
            .collect(),
        // The stack may be too broken to list; say what might be left.
        Err(_) => p
            .facts
            .retained
            .iter()
            .map(|r| format!("{r} (if it was created)"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        use Decision::*;
        assert_eq!(decide("ROLLBACK_COMPLETE", false, false, true), Delete);
        assert_eq!(decide("CREATE_IN_PROGRESS", true, true, true), Delete);
        assert_eq!(decide("CREATE_IN_PROGRESS", false, false, true), Wait);
        assert_eq!(
            decide("UPDATE_IN_PROGRESS", false, true, true),
            CancelUpdate
        );
        assert_eq!(
            decide("UPDATE_ROLLBACK_FAILED", false, true, true),
            ContinueRollback
        );
        assert_eq!(
            decide("UPDATE_ROLLBACK_COMPLETE", false, true, true),
            Nothing
        );
        assert_eq!(decide("CREATE_COMPLETE", true, true, true), Delete);
        assert_eq!(decide("CREATE_COMPLETE", true, true, false), Nothing);
        assert_eq!(decide("UPDATE_COMPLETE", false, true, true), LeaveUpdated);
        assert_eq!(decide("UPDATE_COMPLETE", false, false, true), Nothing);
        assert_eq!(decide("ROLLBACK_IN_PROGRESS", false, false, true), Wait);
        // Another run's work in progress is left to it.
        assert_eq!(decide("UPDATE_IN_PROGRESS", false, false, true), Wait);
        assert_eq!(decide("REVIEW_IN_PROGRESS", false, false, true), Nothing);
        assert_eq!(decide("REVIEW_IN_PROGRESS", true, true, true), Delete);
        assert_eq!(
            decide("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", false, true, true),
            Wait
        );
    }
}

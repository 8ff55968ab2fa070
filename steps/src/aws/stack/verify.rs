//! `verify`: every resource the template declares exists in the stack, complete and of the
//! declared type, and every declared output exists. Each discrepancy is reported by logical
//! id; a resource absent because of its `Condition` is listed, never silently passed over.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_cloudformation::Client;
use landfall_engine::ConfigProblem;
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::deploy::{common_problems, outputs_of, prepare, Prepared};
use super::monitor::{describe, Poll};
use super::plan::{Target, TemplateFacts};
use crate::aws::errors::step_error;
use crate::aws::Aws;

pub(crate) struct Verify {
    pub aws: Aws,
}

fn default_verifier() -> String {
    crate::aws::iam::VERIFIER_ROLE.to_string()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyConfig {
    /// The package as `id@version`.
    pub package: String,
    /// The digest the package must have.
    #[serde(default)]
    pub digest: Option<String>,
    /// The account and region to look at (one item of the `targets` step).
    pub target: Target,
    /// Values for the stacks' `deploy_parameters` (only their presence matters here).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// The (read-only) role assumed in the target account.
    #[serde(default = "default_verifier")]
    pub role: String,
    /// Tried only when `role` may not be assumed, as for `deploy`. Off unless the workflow
    /// says so.
    #[serde(default)]
    pub fallback_role: Option<String>,
}

/// A resource as `ListStackResources` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Actual {
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
}

/// One difference between the template and the deployed stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Discrepancy {
    pub stack: String,
    pub logical_id: String,
    pub problem: String,
}

/// Compares what a template declares with what a stack has. Pure.
pub(crate) fn discrepancies(
    stack: &str,
    facts: &TemplateFacts,
    actual: &[Actual],
    outputs: &BTreeMap<String, String>,
) -> (Vec<Discrepancy>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let by_id: BTreeMap<&str, &Actual> =
        actual.iter().map(|a| (a.logical_id.as_str(), a)).collect();
    let d = |id: &str, problem: String| Discrepancy {
        stack: stack.to_string(),
        logical_id: id.to_string(),
        problem,
    };
    for (id, ty) in &facts.resources {
        match by_id.get(id.as_str()) {
            None if facts.conditional.contains(id) => skipped.push(id.clone()),
            None => out.push(d(
                id,
                format!("missing: declared as {ty}, not in the stack"),
            )),
            Some(a) => {
                if &a.resource_type != ty {
                    out.push(d(
                        id,
                        format!("type is {}, the template declares {ty}", a.resource_type),
                    ));
                }
                if !a.status.ends_with("_COMPLETE") || a.status.starts_with("DELETE") {
                    out.push(d(id, format!("status is {}", a.status)));
                }
            }
        }
    }
    for a in actual {
        if !facts.resources.contains_key(&a.logical_id) {
            out.push(d(
                &a.logical_id,
                format!("not declared by the template ({})", a.resource_type),
            ));
        }
    }
    for o in &facts.outputs {
        if !outputs.contains_key(o) {
            out.push(d(o, "output missing".into()));
        }
    }
    (out, skipped)
}

pub(crate) async fn list_resources(cfn: &Client, stack: &str) -> Result<Vec<Actual>, StepError> {
    let mut out = Vec::new();
    let mut pages = cfn
        .list_stack_resources()
        .stack_name(stack)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| step_error("ListStackResources", e))?;
        for r in page.stack_resource_summaries() {
            out.push(Actual {
                logical_id: r.logical_resource_id().unwrap_or_default().to_string(),
                resource_type: r.resource_type().unwrap_or_default().to_string(),
                status: r
                    .resource_status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

#[async_trait]
impl Plugin for Verify {
    const NAME: &'static str = "verify";
    const SUMMARY: &'static str =
        "Check that every declared resource and output of a package's stacks exists, complete and of the declared type";
    type Config = VerifyConfig;

    fn circuit_scope(with: &Value) -> Option<String> {
        crate::aws::target_scope(with)
    }

    fn validate(c: &VerifyConfig) -> Vec<ConfigProblem> {
        common_problems(&c.package, &Poll::default())
    }

    async fn run(&self, c: VerifyConfig, ctx: StepContext) -> Result<Value, StepError> {
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
        let mut all = Vec::new();
        let mut report = Vec::new();
        for p in &plans {
            let Some(stack) = describe(&cfn, &p.stack_name).await? else {
                all.push(Discrepancy {
                    stack: p.stack_name.clone(),
                    logical_id: p.stack_name.clone(),
                    problem: "the stack does not exist".into(),
                });
                continue;
            };
            let stack = stack.complete("verified")?;
            let actual = list_resources(&cfn, &p.stack_name).await?;
            let outputs = outputs_of(&stack);
            let (found, skipped) = discrepancies(&p.stack_name, &p.facts, &actual, &outputs);
            for s in &skipped {
                ctx.log(format!("{}: {s} is absent by its Condition", p.stack_name));
            }
            report.push(json!({
                "stack": p.stack_name,
                "resources": actual.len(),
                "declared": p.facts.resources.len(),
                "absent_by_condition": skipped,
                "outputs": outputs,
                "discrepancies": found.len(),
            }));
            all.extend(found);
        }
        if !all.is_empty() {
            let listed: Vec<String> = all
                .iter()
                .map(|d| format!("{} {}: {}", d.stack, d.logical_id, d.problem))
                .collect();
            return Err(StepError::permanent(format!(
                "{} discrepanc{} in {}/{}: {}",
                all.len(),
                if all.len() == 1 { "y" } else { "ies" },
                c.target.account,
                c.target.region,
                listed.join("; ")
            ))
            .with_context(json!({ "discrepancies": all, "account": c.target.account, "region": c.target.region })));
        }
        Ok(json!({
            "account": c.target.account,
            "region": c.target.region,
            "stacks": report,
        }))
    }

    /// Reads only, and what it reads is what apply deploys: it runs after apply.
    async fn plan(
        &self,
        _c: VerifyConfig,
        _ctx: StepContext,
    ) -> Result<Option<landfall_engine::PlanOutcome>, StepError> {
        Ok(Some(landfall_engine::PlanOutcome {
            summary: "no changes (verifies the stacks after apply)".into(),
            changes: Vec::new(),
            outputs: Value::String(landfall_engine::PLAN_UNKNOWN.into()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> TemplateFacts {
        let mut f = TemplateFacts::default();
        f.resources
            .insert("Bucket".into(), "AWS::S3::Bucket".into());
        f.resources.insert("Topic".into(), "AWS::SNS::Topic".into());
        f.outputs.insert("TopicArn".into());
        f
    }

    fn actual(id: &str, ty: &str, status: &str) -> Actual {
        Actual {
            logical_id: id.into(),
            resource_type: ty.into(),
            status: status.into(),
        }
    }

    #[test]
    fn a_complete_stack_has_no_discrepancies() {
        let outputs = [("TopicArn".to_string(), "arn".to_string())].into();
        let (d, _) = discrepancies(
            "s",
            &facts(),
            &[
                actual("Bucket", "AWS::S3::Bucket", "CREATE_COMPLETE"),
                actual("Topic", "AWS::SNS::Topic", "UPDATE_COMPLETE"),
            ],
            &outputs,
        );
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn each_problem_is_named_by_logical_id() {
        let (d, _) = discrepancies(
            "s",
            &facts(),
            &[actual("Topic", "AWS::SQS::Queue", "CREATE_FAILED")],
            &BTreeMap::new(),
        );
        let ids: Vec<(&str, &str)> = d
            .iter()
            .map(|x| (x.logical_id.as_str(), x.problem.as_str()))
            .collect();
        assert_eq!(
            ids,
            vec![
                (
                    "Bucket",
                    "missing: declared as AWS::S3::Bucket, not in the stack"
                ),
                (
                    "Topic",
                    "type is AWS::SQS::Queue, the template declares AWS::SNS::Topic"
                ),
                ("Topic", "status is CREATE_FAILED"),
                ("TopicArn", "output missing"),
            ]
        );
    }
}

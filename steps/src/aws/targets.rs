//! `targets`: a package's targets (accounts × regions) with their account ids, looked up in
//! the organization by email. A target whose account is missing or not active fails the step:
//! run onboarding first.

use std::collections::BTreeMap;

use async_trait::async_trait;
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::step_error;
use super::stack::plan::Target;
use super::Aws;

pub(crate) struct Targets {
    pub aws: Aws,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetsConfig {
    /// The package's manifest (the fetch step's `manifest`).
    pub manifest: Value,
    /// The customer the package must belong to (a guard against deploying another
    /// customer's package by a typo).
    #[serde(default)]
    pub customer: Option<String>,
    /// Only these accounts (by name); all when empty.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Only these regions; all of each target's when empty.
    #[serde(default)]
    pub regions: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ManifestTarget {
    account: String,
    email: String,
    #[serde(default)]
    environment: Option<String>,
    regions: Vec<String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
}

#[async_trait]
impl Plugin for Targets {
    const NAME: &'static str = "targets";
    const SUMMARY: &'static str =
        "List a package's targets (account × region) with account ids from the organization";
    type Config = TargetsConfig;

    async fn run(&self, c: TargetsConfig, ctx: StepContext) -> Result<Value, StepError> {
        let wanted: Vec<ManifestTarget> =
            serde_json::from_value(c.manifest.get("targets").cloned().unwrap_or(Value::Null))
                .map_err(|e| {
                    StepError::permanent(format!("the manifest's targets are malformed: {e}"))
                })?;
        let home = c
            .manifest
            .get("home_region")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(want) = &c.customer {
            let have = c
                .manifest
                .get("customer")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if have != want {
                return Err(StepError::permanent(format!(
                    "the package belongs to customer `{have}`, not `{want}`"
                )));
            }
        }
        for a in &c.accounts {
            if !wanted.iter().any(|t| &t.account == a) {
                return Err(StepError::permanent(format!(
                    "account `{a}` is not a target of this package (targets: {})",
                    wanted
                        .iter()
                        .map(|t| t.account.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let client = self.aws.organizations().await;
        let org = client
            .describe_organization()
            .send()
            .await
            .map_err(|e| step_error("DescribeOrganization", e))?;
        let management = org
            .organization()
            .and_then(|o| o.master_account_id())
            .unwrap_or_default()
            .to_string();
        let mut by_email: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut pages = client.list_accounts().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| step_error("ListAccounts", e))?;
            for a in page.accounts() {
                if let (Some(email), Some(id)) = (a.email(), a.id()) {
                    let state = a
                        .state()
                        .map(|s| s.as_str().to_string())
                        .or_else(|| a.status().map(|s| s.as_str().to_string()))
                        .unwrap_or_default();
                    by_email.insert(email.to_ascii_lowercase(), (id.to_string(), state));
                }
            }
        }
        let mut out = Vec::new();
        for t in wanted
            .iter()
            .filter(|t| c.accounts.is_empty() || c.accounts.contains(&t.account))
        {
            let Some((id, state)) = by_email.get(&t.email.to_ascii_lowercase()) else {
                return Err(StepError::permanent(format!(
                    "account {} ({}) is not in the organization: run the onboarding workflow first",
                    t.account, t.email
                )));
            };
            if state != "ACTIVE" {
                return Err(StepError::permanent(format!(
                    "account {} ({id}) is {state}, not ACTIVE",
                    t.account
                )));
            }
            for r in t
                .regions
                .iter()
                .filter(|r| c.regions.is_empty() || c.regions.contains(r))
            {
                out.push(Target {
                    account: t.account.clone(),
                    account_id: id.clone(),
                    region: r.clone(),
                    home: home.as_deref() == Some(r.as_str()),
                    environment: t.environment.clone(),
                    parameters: t.parameters.clone(),
                });
            }
        }
        if out.is_empty() {
            return Err(StepError::permanent(
                "no target is left after the account and region filters",
            ));
        }
        ctx.log(format!(
            "{} target(s): {}",
            out.len(),
            out.iter().map(Target::label).collect::<Vec<_>>().join(", ")
        ));
        Ok(json!({
            "management_account_id": management,
            "targets": out,
        }))
    }

    /// Reads only (or computes, touching nothing): planning is running it.
    async fn plan(
        &self,
        c: TargetsConfig,
        ctx: StepContext,
    ) -> Result<Option<landfall_engine::PlanOutcome>, StepError> {
        self.run(c, ctx)
            .await
            .map(|o| Some(landfall_engine::PlanOutcome::reads_only(o)))
    }
}

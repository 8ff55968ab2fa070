//! `policy`: guard-rail service control policies for a customer's OU.
//!
//! Every `templates/scp/*.json.j2` is rendered for the customer (values JSON-escaped), parsed
//! as JSON and minified; each must fit the 5,120-character SCP limit *before* any API call.
//! Policies are named `landfall-<customer>-<template>`, created or updated by name, attached
//! to the target, and then verified with `ListPoliciesForTarget` + `DescribePolicy`: every
//! intended policy attached with exactly the intended content, and no stale `landfall-<customer>-`
//! policy left attached. Policies not managed by Landfall (e.g. `FullAWSAccess`) are left alone
//! and reported.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use aws_sdk_organizations::types::{PolicyType, Tag};
use aws_sdk_organizations::Client;
use landfall_engine::{Step, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::errors::step_error;
use super::Aws;
use crate::templates::{stem, TemplateSet};

/// AWS's limit for one SCP document, in characters.
pub const SCP_MAX_CHARS: usize = 5120;

pub struct Policy {
    pub aws: Aws,
    pub templates_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The customer's short name (policy names start with `landfall-<customer>-`).
    pub customer: String,
    /// Where to attach the policies: the customer's OU id (`steps.org.outputs.ou_id`).
    pub target_id: String,
    /// Allowed regions, for the region guard.
    pub regions: Vec<String>,
    /// Which templates of `templates/scp/` to apply, by name without `.json.j2`
    /// (default: all of them).
    #[serde(default)]
    pub templates: Option<Vec<String>>,
    /// Principals exempt from the guard rails (the role Landfall administers accounts with).
    #[serde(default = "default_admins")]
    pub admin_principals: Vec<String>,
    /// Roles nobody else may change (Landfall's own).
    #[serde(default = "default_protected")]
    pub protected_roles: Vec<String>,
}

fn default_admins() -> Vec<String> {
    vec!["arn:aws:iam::*:role/OrganizationAccountAccessRole".into()]
}

fn default_protected() -> Vec<String> {
    vec!["arn:aws:iam::*:role/landfall-*".into()]
}

/// One rendered SCP.
#[derive(Debug, Clone, Serialize)]
pub struct Scp {
    pub name: String,
    pub template: String,
    /// Minified JSON, exactly what is sent to AWS.
    pub content: String,
    pub document: Value,
}

/// Renders and checks the SCPs for a config. Pure: no AWS.
pub fn render(templates_dir: &std::path::Path, c: &PolicyConfig) -> Result<Vec<Scp>, StepError> {
    let set = TemplateSet::load(&templates_dir.join("scp"))
        .map_err(|e| StepError::permanent(e.to_string()))?;
    let wanted: Vec<String> = match &c.templates {
        Some(list) => {
            for t in list {
                if !set.names().iter().any(|n| stem(n) == t) {
                    return Err(StepError::permanent(format!(
                        "no SCP template `{t}` in {}; there are: {}",
                        set.dir().display(),
                        set.names()
                            .iter()
                            .map(|n| stem(n))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            list.clone()
        }
        None => set.names().iter().map(|n| stem(n).to_string()).collect(),
    };
    let ctx = json!({
        "customer": c.customer,
        "regions": c.regions,
        "admin_principals": c.admin_principals,
        "protected_roles": c.protected_roles,
    });
    let mut out = Vec::new();
    for t in wanted {
        let file = format!("{t}.json.j2");
        let text = set
            .render(&file, &ctx)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let document: Value = serde_json::from_str(&text).map_err(|e| {
            StepError::permanent(format!("SCP template {file} does not give valid JSON: {e}"))
        })?;
        if document.get("Version").and_then(Value::as_str) != Some("2012-10-17")
            || !document.get("Statement").is_some_and(Value::is_array)
        {
            return Err(StepError::permanent(format!(
                "SCP template {file} must give a policy with \"Version\": \"2012-10-17\" and a \"Statement\" list"
            )));
        }
        let content =
            serde_json::to_string(&document).map_err(|e| StepError::permanent(e.to_string()))?;
        let chars = content.chars().count();
        if chars > SCP_MAX_CHARS {
            return Err(StepError::permanent(format!(
                "SCP {t} is {chars} characters minified; AWS allows {SCP_MAX_CHARS}. Split the template."
            )));
        }
        out.push(Scp {
            name: format!("landfall-{}-{t}", c.customer),
            template: t,
            content,
            document,
        });
    }
    Ok(out)
}

#[async_trait]
impl Step for Policy {
    const NAME: &'static str = "policy";
    const SUMMARY: &'static str =
        "Render the SCP templates, create or update them, attach them to the customer's OU, verify";
    type Config = PolicyConfig;

    async fn run(&self, c: PolicyConfig, ctx: StepContext) -> Result<Value, StepError> {
        let scps = render(&self.templates_dir, &c)?;
        let client = self.aws.organizations().await;
        let existing = list_scps(&client).await?;
        let mut ids = BTreeMap::new();
        for scp in &scps {
            let id = match existing.get(&scp.name) {
                Some(id) => {
                    let current = describe(&client, id).await?;
                    if current != scp.document {
                        client
                            .update_policy()
                            .policy_id(id)
                            .content(&scp.content)
                            .send()
                            .await
                            .map_err(|e| step_error("UpdatePolicy", e))?;
                        ctx.log(format!("updated SCP {}", scp.name));
                    }
                    id.clone()
                }
                None => {
                    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
                    let tags = [tag("managed-by", "landfall"), tag("customer", &c.customer)]
                        .into_iter()
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| StepError::permanent(e.to_string()))?;
                    let created = client
                        .create_policy()
                        .name(&scp.name)
                        .description(format!(
                            "Landfall guard rail {} for {}",
                            scp.template, c.customer
                        ))
                        .content(&scp.content)
                        .r#type(PolicyType::ServiceControlPolicy)
                        .set_tags(Some(tags))
                        .send()
                        .await
                        .map_err(|e| step_error("CreatePolicy", e))?;
                    let id = created
                        .policy()
                        .and_then(|p| p.policy_summary())
                        .and_then(|s| s.id())
                        .ok_or_else(|| StepError::transient("CreatePolicy returned no id"))?
                        .to_string();
                    ctx.log(format!("created SCP {}", scp.name));
                    id
                }
            };
            ids.insert(scp.name.clone(), id);
        }

        let attached = attached_scps(&client, &c.target_id).await?;
        for (name, id) in &ids {
            if !attached.contains_key(name) {
                client
                    .attach_policy()
                    .policy_id(id)
                    .target_id(&c.target_id)
                    .send()
                    .await
                    .map_err(|e| step_error("AttachPolicy", e))?;
                ctx.milestone(
                    "policy_attached",
                    json!({ "policy": name, "target": c.target_id }),
                );
            }
        }
        let prefix = format!("landfall-{}-", c.customer);
        for (name, id) in &attached {
            if name.starts_with(&prefix) && !ids.contains_key(name) {
                client
                    .detach_policy()
                    .policy_id(id)
                    .target_id(&c.target_id)
                    .send()
                    .await
                    .map_err(|e| step_error("DetachPolicy", e))?;
                ctx.log(format!("detached stale SCP {name}"));
            }
        }

        // Verify from AWS's point of view.
        let now = attached_scps(&client, &c.target_id).await?;
        let mut problems = Vec::new();
        for scp in &scps {
            match now.get(&scp.name) {
                None => problems.push(format!("{} is not attached", scp.name)),
                Some(id) => {
                    if describe(&client, id).await? != scp.document {
                        problems.push(format!("{} is attached with other content", scp.name));
                    }
                }
            }
        }
        for name in now.keys() {
            if name.starts_with(&prefix) && !ids.contains_key(name) {
                problems.push(format!("{name} is still attached but no longer intended"));
            }
        }
        if !problems.is_empty() {
            return Err(StepError::transient(format!(
                "SCP verification failed on {}: {}",
                c.target_id,
                problems.join("; ")
            )));
        }
        let others: Vec<&String> = now.keys().filter(|n| !n.starts_with(&prefix)).collect();
        Ok(json!({
            "target_id": c.target_id,
            "policies": scps.iter().map(|s| json!({
                "name": s.name,
                "id": ids.get(&s.name),
                "template": s.template,
                "characters": s.content.chars().count(),
            })).collect::<Vec<_>>(),
            "other_attached": others,
        }))
    }
}

/// SCPs of the organization, name → id.
async fn list_scps(client: &Client) -> Result<BTreeMap<String, String>, StepError> {
    let mut out = BTreeMap::new();
    let mut pages = client
        .list_policies()
        .filter(PolicyType::ServiceControlPolicy)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| step_error("ListPolicies", e))?;
        for p in page.policies() {
            if let (Some(n), Some(id)) = (p.name(), p.id()) {
                out.insert(n.to_string(), id.to_string());
            }
        }
    }
    Ok(out)
}

/// SCPs attached to a target, name → id.
async fn attached_scps(
    client: &Client,
    target: &str,
) -> Result<BTreeMap<String, String>, StepError> {
    let mut out = BTreeMap::new();
    let mut pages = client
        .list_policies_for_target()
        .target_id(target)
        .filter(PolicyType::ServiceControlPolicy)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| step_error("ListPoliciesForTarget", e))?;
        for p in page.policies() {
            if let (Some(n), Some(id)) = (p.name(), p.id()) {
                out.insert(n.to_string(), id.to_string());
            }
        }
    }
    Ok(out)
}

async fn describe(client: &Client, id: &str) -> Result<Value, StepError> {
    let p = client
        .describe_policy()
        .policy_id(id)
        .send()
        .await
        .map_err(|e| step_error("DescribePolicy", e))?;
    let content = p
        .policy()
        .and_then(|p| p.content())
        .ok_or_else(|| StepError::transient(format!("policy {id} has no content")))?;
    serde_json::from_str(content)
        .map_err(|e| StepError::permanent(format!("policy {id} holds invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            customer: "acme".into(),
            target_id: "ou-x".into(),
            regions: vec!["us-east-1".into(), "eu-west-1".into()],
            templates: None,
            admin_principals: default_admins(),
            protected_roles: default_protected(),
        }
    }

    fn dir() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates")
    }

    #[test]
    fn the_shipped_scps_render_to_valid_small_policies() {
        let scps = render(&dir(), &cfg()).unwrap();
        let names: Vec<&str> = scps.iter().map(|s| s.template.as_str()).collect();
        for want in [
            "deny-leave-organization",
            "deny-root-user",
            "region-guard",
            "protect-security-services",
            "protect-account-settings",
            "require-imdsv2",
            "deny-non-tls-s3",
            "protect-landfall-roles",
        ] {
            assert!(names.contains(&want), "missing {want}");
        }
        for s in &scps {
            assert!(s.content.len() <= SCP_MAX_CHARS);
            assert!(s.name.starts_with("landfall-acme-"));
        }
        let guard = scps.iter().find(|s| s.template == "region-guard").unwrap();
        assert_eq!(
            guard.document["Statement"][0]["Condition"]["StringNotEquals"]["aws:RequestedRegion"],
            json!(["us-east-1", "eu-west-1"])
        );
    }

    #[test]
    fn unknown_templates_and_oversized_policies_are_refused_before_any_call() {
        let mut c = cfg();
        c.templates = Some(vec!["nope".into()]);
        assert!(render(&dir(), &c)
            .unwrap_err()
            .message
            .contains("no SCP template `nope`"));
        let mut c = cfg();
        c.regions = (0..400).map(|i| format!("region-{i}")).collect();
        c.templates = Some(vec!["region-guard".into()]);
        let e = render(&dir(), &c).unwrap_err();
        assert!(e.message.contains("5120"), "{}", e.message);
    }
}

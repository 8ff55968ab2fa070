//! `policy`: guard-rail service control policies for a customer's OU.
//!
//! Every `templates/scp/*.json.j2` is rendered for the customer (values JSON-escaped), parsed
//! as JSON and minified. AWS's quotas are checked *before* any API call: each document at most
//! 5,120 characters, and at most [`MAX_LANDFALL_SCPS`] policies, because AWS attaches at most
//! five SCPs to one root, OU or account and `FullAWSAccess` keeps one of the five (the guard
//! rails are deny statements: without an allow-all policy beside them, everything would be
//! denied). Policies are named `landfall-<customer>-<template>`, created or updated by name
//! ("already exists" is answered by reading again and adopting), attached to the target (a
//! stale `landfall-<customer>-` policy is detached first when the target is full), and then
//! verified with `ListPoliciesForTarget` + `DescribePolicy`: every intended policy attached
//! with exactly the intended content, and no stale policy left attached. Policies not managed
//! by Landfall (e.g. `FullAWSAccess`) are left alone and reported.

use crate::milestone::Milestone;
use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use aws_sdk_organizations::types::{PolicyType, Tag};
use aws_sdk_organizations::Client;
use landfall_engine::{PlanOutcome, Plugin, StepContext, StepError, PLAN_UNKNOWN as UNKNOWN};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::errors::{self, step_error, Outcome};
use super::{waiting_out_conflicts, Aws};
use crate::templates::{stem, TemplateSet};

/// AWS's limit for one SCP document, in characters.
pub(crate) const SCP_MAX_CHARS: usize = 5120;
/// AWS attaches at most this many SCPs to one root, OU or account.
pub(crate) const SCPS_PER_TARGET: usize = 5;
/// How many guard-rail SCPs Landfall may attach: one of the five places is `FullAWSAccess`'s.
pub(crate) const MAX_LANDFALL_SCPS: usize = SCPS_PER_TARGET - 1;

pub struct Policy {
    pub aws: Aws,
    pub templates_dir: PathBuf,
    /// The operators' approval policies: updating or detaching a guard rail of an OU holding a
    /// covered account needs approvals of the plan (see [`super::approved_modification`]).
    pub policies: std::sync::Arc<Vec<crate::approval::policy::ApprovalPolicy>>,
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
    /// The approved plan of these guard rails (`steps.<plan step>.outputs`, or a list of plans
    /// one approval covers). Needed when an approval policy covers an account of the OU and
    /// an existing guard rail would be updated or detached: the changes must be the planned
    /// ones, approved for this plan's digest.
    #[serde(default)]
    pub plan: Option<Value>,
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
    if wanted.len() > MAX_LANDFALL_SCPS {
        return Err(StepError::permanent(format!(
            "{} SCP templates are selected ({}), but AWS attaches at most {SCPS_PER_TARGET} SCPs to one OU and FullAWSAccess takes one place: merge them into at most {MAX_LANDFALL_SCPS} templates",
            wanted.len(),
            wanted.join(", ")
        )));
    }
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
impl Plugin for Policy {
    const NAME: &'static str = "policy";
    const SUMMARY: &'static str =
        "Render the SCP templates, create or update them, attach them to the customer's OU, verify";
    // Planning lists and describes policies, nothing else.
    const PLAN_IS_PURE: bool = true;
    type Config = PolicyConfig;

    /// SCPs to create (with their document) or update (with a JSON Patch from what AWS holds
    /// to what would be sent), and policies to attach to or detach from the target.
    async fn plan(
        &self,
        c: PolicyConfig,
        _ctx: StepContext,
    ) -> Result<Option<PlanOutcome>, StepError> {
        let scps = render(&self.templates_dir, &c)?;
        let client = self.aws.organizations().await;
        let existing = list_scps(&client).await?;
        let mut changes = Vec::new();
        let mut policies = Vec::new();
        for scp in &scps {
            let id = match existing.get(&scp.name) {
                None => {
                    changes.push(json!({
                        "action": "create", "policy": scp.name, "template": scp.template,
                        "characters": scp.content.chars().count(), "document": scp.document,
                    }));
                    Value::String(UNKNOWN.into())
                }
                Some(id) => {
                    let current = describe(&client, id).await?;
                    if current != scp.document {
                        changes.push(json!({
                            "action": "update", "policy": scp.name, "id": id,
                            "diff": json_patch::diff(&current, &scp.document),
                        }));
                    }
                    Value::String(id.clone())
                }
            };
            policies.push(json!({
                "name": scp.name, "id": id, "template": scp.template,
                "characters": scp.content.chars().count(),
            }));
        }
        let attached = attached_scps(&client, &c.target_id).await?;
        let names: Vec<&str> = scps.iter().map(|s| s.name.as_str()).collect();
        let (attach, stale) = attachments(&c, &attached, &names)?;
        for name in attach {
            changes.push(json!({ "action": "attach", "policy": name, "target": c.target_id }));
        }
        for name in stale {
            changes.push(json!({ "action": "detach", "policy": name, "target": c.target_id }));
        }
        let prefix = format!("landfall-{}-", c.customer);
        let others: Vec<&String> = attached
            .keys()
            .filter(|n| !n.starts_with(&prefix))
            .collect();
        Ok(Some(PlanOutcome {
            summary: format!("SCPs: {}", landfall_engine::actions_counted(&changes)),
            changes,
            outputs: json!({
                "target_id": c.target_id,
                "policies": policies,
                "other_attached": others,
            }),
        }))
    }

    async fn run(&self, c: PolicyConfig, ctx: StepContext) -> Result<Value, StepError> {
        if !self.policies.is_empty() {
            self.approved(&c, &ctx).await?;
        }
        let scps = render(&self.templates_dir, &c)?;
        let client = self.aws.organizations().await;
        let existing = list_scps(&client).await?;
        let mut ids = BTreeMap::new();
        for scp in &scps {
            let id = match existing.get(&scp.name) {
                Some(id) => {
                    let current = describe(&client, id).await?;
                    if current != scp.document {
                        update(&client, id, &scp.content).await?;
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
                    let created = waiting_out_conflicts(|| {
                        client
                            .create_policy()
                            .name(&scp.name)
                            .description(format!(
                                "Landfall guard rail {} for {}",
                                scp.template, c.customer
                            ))
                            .content(&scp.content)
                            .r#type(PolicyType::ServiceControlPolicy)
                            .set_tags(Some(tags.clone()))
                            .send()
                    })
                    .await;
                    match created {
                        Ok(created) => {
                            let id = created
                                .policy()
                                .and_then(|p| p.policy_summary())
                                .and_then(|s| s.id())
                                .ok_or_else(|| StepError::transient("CreatePolicy returned no id"))?
                                .to_string();
                            ctx.log(format!("created SCP {}", scp.name));
                            id
                        }
                        // Another run (or this call's lost answer) created it: adopt it, and
                        // make its content ours.
                        Err(e) if errors::outcome(&e) == Outcome::AlreadyExists => {
                            let id =
                                list_scps(&client).await?.remove(&scp.name).ok_or_else(|| {
                                    StepError::transient(format!(
                                        "CreatePolicy said {} exists, but it is not listed yet",
                                        scp.name
                                    ))
                                })?;
                            if describe(&client, &id).await? != scp.document {
                                update(&client, &id, &scp.content).await?;
                            }
                            ctx.log(format!("adopted SCP {}", scp.name));
                            id
                        }
                        Err(e) => return Err(step_error("CreatePolicy", e)),
                    }
                }
            };
            ids.insert(scp.name.clone(), id);
        }

        let prefix = format!("landfall-{}-", c.customer);
        let attached = attached_scps(&client, &c.target_id).await?;
        let names: Vec<&str> = ids.keys().map(String::as_str).collect();
        let (_, stale) = attachments(&c, &attached, &names)?;
        let mut stale: Vec<(&String, &String)> = attached
            .iter()
            .filter(|(name, _)| stale.contains(&name.as_str()))
            .collect();
        let mut count = attached.len();
        for (name, id) in &ids {
            if attached.contains_key(name) {
                continue;
            }
            // A full target makes room first, one stale guard rail for one new one, so the
            // gap in protection is as short as AWS's quota allows.
            if count >= SCPS_PER_TARGET {
                if let Some((old, old_id)) = stale.pop() {
                    detach(&client, old_id, &c.target_id).await?;
                    ctx.log(format!("detached stale SCP {old}"));
                    count -= 1;
                }
            }
            attach(&client, id, &c.target_id).await?;
            count += 1;
            Milestone::PolicyAttached {
                policy: name.to_string(),
                target: c.target_id.clone(),
            }
            .emit(&ctx);
        }
        for (name, id) in stale {
            detach(&client, id, &c.target_id).await?;
            ctx.log(format!("detached stale SCP {name}"));
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

impl Policy {
    /// Refuses before any write when an existing guard rail would be updated or detached on an
    /// OU that holds an account an approval policy covers, unless that is the approved plan.
    async fn approved(&self, c: &PolicyConfig, ctx: &StepContext) -> Result<(), StepError> {
        let Some(now) = Plugin::plan(self, c.clone(), ctx.clone()).await? else {
            return Ok(());
        };
        let modifies = now
            .changes
            .iter()
            .any(|ch| matches!(ch["action"].as_str(), Some("update" | "detach")));
        if !modifies {
            return Ok(());
        }
        let client = self.aws.organizations().await;
        let mut accounts = Vec::new();
        let mut pages = client
            .list_accounts_for_parent()
            .parent_id(&c.target_id)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| step_error("ListAccountsForParent", e))?;
            accounts.extend(
                page.accounts()
                    .iter()
                    .filter_map(|a| a.id().map(str::to_string)),
            );
        }
        super::approved_modification(
            &self.aws,
            &self.policies,
            ctx,
            super::Modification {
                accounts,
                changes: &now.changes,
                plan: c.plan.as_ref(),
                what: format!("the guard rails of {}", c.target_id),
            },
        )
        .await
    }
}

/// Which of `intended` are not attached to the target yet, and which of Landfall's policies
/// for this customer are attached but no longer intended; refused when the target's foreign
/// SCPs leave no room (AWS's five per target).
fn attachments<'a>(
    c: &PolicyConfig,
    attached: &'a BTreeMap<String, String>,
    intended: &[&'a str],
) -> Result<(Vec<&'a str>, Vec<&'a str>), StepError> {
    let prefix = format!("landfall-{}-", c.customer);
    let foreign: Vec<&str> = attached
        .keys()
        .map(String::as_str)
        .filter(|n| !n.starts_with(&prefix))
        .collect();
    if foreign.len() + intended.len() > SCPS_PER_TARGET {
        return Err(StepError::permanent(format!(
            "{} has {} SCPs that Landfall does not manage ({}); with Landfall's {} that is more than the {SCPS_PER_TARGET} AWS allows on one target. Detach what is not needed, or select fewer templates.",
            c.target_id,
            foreign.len(),
            foreign.join(", "),
            intended.len()
        )));
    }
    let attach = intended
        .iter()
        .copied()
        .filter(|n| !attached.contains_key(*n))
        .collect();
    let stale = attached
        .keys()
        .map(String::as_str)
        .filter(|n| n.starts_with(&prefix) && !intended.contains(n))
        .collect();
    Ok((attach, stale))
}

async fn update(client: &Client, id: &str, content: &str) -> Result<(), StepError> {
    waiting_out_conflicts(|| client.update_policy().policy_id(id).content(content).send())
        .await
        .map_err(|e| step_error("UpdatePolicy", e))?;
    Ok(())
}

/// Attaches, taking "already attached" (a concurrent run, or this call's lost answer) as done.
async fn attach(client: &Client, id: &str, target: &str) -> Result<(), StepError> {
    match waiting_out_conflicts(|| {
        client
            .attach_policy()
            .policy_id(id)
            .target_id(target)
            .send()
    })
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if errors::outcome(&e) == Outcome::AlreadyDone => Ok(()),
        Err(e) => Err(step_error("AttachPolicy", e)),
    }
}

/// Detaches, taking "not attached" as done.
async fn detach(client: &Client, id: &str, target: &str) -> Result<(), StepError> {
    match waiting_out_conflicts(|| {
        client
            .detach_policy()
            .policy_id(id)
            .target_id(target)
            .send()
    })
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if errors::outcome(&e) == Outcome::AlreadyGone => Ok(()),
        Err(e) => Err(step_error("DetachPolicy", e)),
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
            plan: None,
        }
    }

    fn dir() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates")
    }

    #[test]
    fn the_shipped_scps_render_to_valid_small_policies() {
        let scps = render(&dir(), &cfg()).unwrap();
        let names: Vec<&str> = scps.iter().map(|s| s.template.as_str()).collect();
        assert_eq!(
            names,
            [
                "data-protection",
                "organization-integrity",
                "region-guard",
                "security-baseline"
            ]
        );
        assert!(scps.len() < 5, "FullAWSAccess needs one of the five places");
        for s in &scps {
            assert!(s.content.chars().count() <= 5120);
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

    #[test]
    fn a_template_set_beyond_the_attachment_quota_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let scp = tmp.path().join("scp");
        std::fs::create_dir_all(&scp).unwrap();
        for i in 0..5 {
            std::fs::write(
                scp.join(format!("rail-{i}.json.j2")),
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"x:Y","Resource":"*"}]}"#,
            )
            .unwrap();
        }
        let e = render(tmp.path(), &cfg()).unwrap_err();
        assert!(e.message.contains("at most 5 SCPs"), "{}", e.message);
        assert!(e.message.contains("FullAWSAccess"), "{}", e.message);
        let mut c = cfg();
        c.templates = Some((0..4).map(|i| format!("rail-{i}")).collect());
        assert_eq!(render(tmp.path(), &c).unwrap().len(), 4);
    }
}

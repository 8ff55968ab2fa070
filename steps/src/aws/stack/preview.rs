//! `deploy` in plan mode: what deploying a package into one target would do, found by reading
//! and by CloudFormation's own plan. A stack that does not exist yet is "create, N
//! resources" (no change set is made for it: AWS would leave a `REVIEW_IN_PROGRESS` stack
//! behind); a stack whose template, parameters and tags already match is "no changes"; any other
//! gets an UPDATE change set, created and *never executed*, whose changes are summarised
//! ([`summarise`]) and whose id is kept in the plan for apply.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudformation::operation::describe_change_set::DescribeChangeSetOutput;
use aws_sdk_cloudformation::types::{Capability, ChangeSetType};
use landfall_engine::StepError;
use serde_json::{json, Value};

use super::deploy::{cfn_parameters, client_token, no_changes, outputs_of, tag_of, Computed, Job};
use super::monitor::{describe, phase, Phase};
use super::plan::StackPlan;
use crate::aws::errors::step_error;

/// Resource types that change who may do what: flagged for approvers.
fn is_iam(resource_type: &str) -> bool {
    resource_type.starts_with("AWS::IAM::")
        || resource_type.starts_with("AWS::SSO::")
        || resource_type == "AWS::Organizations::Policy"
        || resource_type.ends_with("::Policy")
        || resource_type.ends_with("::BucketPolicy")
}

/// A change set's changes as approvers read them: per resource its action (`Add`, `Modify`,
/// `Remove`, …), logical id, type and replacement (`True`, `Conditional`, `False`), what
/// triggers a modification (scope, and each changed property with whether it forces
/// recreation), with counts, the IAM resources flagged, and what the change set changes in
/// parameters and stack tags (Landfall's per-run tag aside: it changes on every run).
pub(crate) fn summarise(
    d: &DescribeChangeSetOutput,
    old_parameters: &BTreeMap<String, String>,
    new_parameters: &BTreeMap<String, String>,
    old_tags: &BTreeMap<String, String>,
) -> Value {
    let mut resources = Vec::new();
    let (mut adds, mut modifies, mut removes) = (0, 0, 0);
    // `True`: replaced for sure; `Conditional`: replaced if a value known only while the
    // update runs says so (AWS: "may require replacement").
    let (mut replacements, mut conditional) = (0, 0);
    let mut iam = Vec::new();
    for c in d.changes() {
        let Some(r) = c.resource_change() else {
            continue;
        };
        let action = r.action().map(|a| a.as_str()).unwrap_or("Unknown");
        let replacement = r.replacement().map(|x| x.as_str());
        match action {
            "Add" => adds += 1,
            "Modify" => modifies += 1,
            "Remove" => removes += 1,
            _ => {}
        }
        match replacement {
            Some("True") => replacements += 1,
            Some("Conditional") => conditional += 1,
            _ => {}
        }
        let ty = r.resource_type().unwrap_or_default();
        if is_iam(ty) {
            iam.push(r.logical_resource_id().unwrap_or_default().to_string());
        }
        let mut resource = json!({
            "action": action,
            "logical_id": r.logical_resource_id(),
            "type": ty,
            "replacement": replacement,
            "iam": is_iam(ty),
        });
        if !r.scope().is_empty() {
            resource["scope"] = json!(r.scope().iter().map(|a| a.as_str()).collect::<Vec<_>>());
        }
        let details: Vec<Value> = r
            .details()
            .iter()
            .filter_map(|d| {
                let t = d.target()?;
                Some(json!({
                    "attribute": t.attribute().map(|a| a.as_str()),
                    "name": t.name(),
                    "recreation": t.requires_recreation().map(|x| x.as_str()),
                    "source": d.change_source().map(|x| x.as_str()),
                    "caused_by": d.causing_entity(),
                }))
            })
            .collect();
        if !details.is_empty() {
            resource["details"] = json!(details);
        }
        resources.push(resource);
    }
    let new_tags: BTreeMap<&str, &str> = d
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?, t.value()?)))
        .filter(|(k, _)| *k != super::deploy::TAG_RUN)
        .collect();
    let mut tags: Vec<Value> = new_tags
        .iter()
        .filter(|(k, v)| old_tags.get(**k).map(String::as_str) != Some(**v))
        .map(|(k, v)| json!({ "key": k, "from": old_tags.get(*k), "to": v }))
        .collect();
    tags.extend(
        old_tags
            .iter()
            .filter(|(k, _)| k.as_str() != super::deploy::TAG_RUN)
            .filter(|(k, _)| !new_tags.contains_key(k.as_str()))
            .map(|(k, v)| json!({ "key": k, "from": v, "to": null })),
    );
    let parameters: Vec<Value> = new_parameters
        .iter()
        .filter(|(k, v)| old_parameters.get(*k) != Some(*v))
        .map(|(k, v)| json!({ "name": k, "from": old_parameters.get(k), "to": v }))
        .collect();
    json!({
        "adds": adds,
        "modifies": modifies,
        "removes": removes,
        "replacements": replacements,
        "conditional_replacements": conditional,
        "iam": iam,
        "resources": resources,
        "parameters": parameters,
        "tags": tags,
    })
}

/// `update acme-network: 4 to add, 1 to modify, 0 to remove (1 replacement, IAM: Role)`.
pub(crate) fn describe_change(c: &Value) -> String {
    let stack = c["stack"].as_str().unwrap_or_default();
    match c["action"].as_str().unwrap_or_default() {
        "create" => format!(
            "create {stack} ({} resources{})",
            c["resources"].as_u64().unwrap_or(0),
            if c["iam"].as_array().is_some_and(|a| !a.is_empty()) {
                ", IAM included"
            } else {
                ""
            }
        ),
        "update" if c["known"] == false => {
            format!("update {stack}: changes known after apply (its parameters come from stacks created first)")
        }
        "update" => {
            let iam: Vec<&str> = c["iam"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!(
                "update {stack}: {} to add, {} to modify, {} to remove ({} replacement{}{}{})",
                c["adds"],
                c["modifies"],
                c["removes"],
                c["replacements"],
                if c["replacements"] == 1 { "" } else { "s" },
                match c["conditional_replacements"].as_u64().unwrap_or(0) {
                    0 => String::new(),
                    n => format!(", {n} conditional"),
                },
                if iam.is_empty() {
                    String::new()
                } else {
                    format!(", IAM: {}", iam.join(", "))
                }
            )
        }
        _ => format!("{stack} unchanged"),
    }
}

impl Job {
    /// What deploying `plans` would change, stack by stack in the package's order. Outputs of
    /// stacks that exist stand in for the parameters later stacks take from them.
    pub(crate) async fn preview_all(&self, plans: &[StackPlan]) -> Result<Vec<Value>, StepError> {
        let mut outputs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut changes = Vec::new();
        for p in plans {
            let params = p.resolve(&outputs).ok();
            let (change, existing) = self.preview_one(p, params.as_ref()).await?;
            if let Some(o) = existing {
                outputs.insert(p.name.clone(), o);
            }
            changes.push(change);
        }
        Ok(changes)
    }

    /// One stack's change, and its current outputs when it exists.
    async fn preview_one(
        &self,
        p: &StackPlan,
        params: Option<&BTreeMap<String, String>>,
    ) -> Result<(Value, Option<BTreeMap<String, String>>), StepError> {
        let iam: Vec<&String> = p
            .facts
            .resources
            .iter()
            .filter(|(_, ty)| is_iam(ty))
            .map(|(id, _)| id)
            .collect();
        let create = json!({
            "action": "create", "stack": p.stack_name, "resources": p.facts.resources.len(),
            "iam": iam,
        });
        let Some(found) = describe(&self.cfn, &p.stack_name).await? else {
            return Ok((create, None));
        };
        let status = found
            .stack_status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if status == "REVIEW_IN_PROGRESS" {
            return Ok((create, None));
        }
        if phase(&status) == Phase::InProgress {
            return Err(StepError::transient(format!(
                "stack {} is {status}: plan again when it ends",
                p.stack_name
            )));
        }
        if !matches!(
            status.as_str(),
            "CREATE_COMPLETE"
                | "UPDATE_COMPLETE"
                | "UPDATE_ROLLBACK_COMPLETE"
                | "IMPORT_COMPLETE"
                | "IMPORT_ROLLBACK_COMPLETE"
        ) {
            return Err(StepError::permanent(format!(
                "stack {} in {} is {status}: it cannot be updated; roll it back or delete it first",
                p.stack_name,
                self.target.label()
            )));
        }
        let stack = found.complete("planned")?;
        let current = outputs_of(&stack);
        let Some(params) = params else {
            return Ok((
                json!({
                    "action": "update", "stack": p.stack_name, "known": false,
                    "last_change": super::apply::last_change(&stack),
                }),
                Some(current),
            ));
        };
        let none = json!({
            "action": "none", "stack": p.stack_name,
            "last_change": super::apply::last_change(&stack),
        });
        if self.same(p, params, &stack).await? {
            return Ok((none, Some(current)));
        }
        let stack_id = stack.stack_id().unwrap_or(&p.stack_name).to_string();
        // Named after the plan (its node's idempotency key): planning again makes another.
        let name = client_token(self.ctx.idempotency_key(), &p.stack_name, "plan");
        let created = self
            .cfn
            .create_change_set()
            .stack_name(&p.stack_name)
            .change_set_name(&name)
            .change_set_type(ChangeSetType::Update)
            .template_body(&p.template_body)
            .set_parameters(Some(cfn_parameters(params)))
            .set_tags(Some(
                self.tags
                    .tags(tag_of(&stack, super::deploy::TAG_CREATED_BY)),
            ))
            .capabilities(Capability::CapabilityNamedIam)
            .send()
            .await;
        let change_set_id = match created {
            Ok(out) => out.id().unwrap_or(&name).to_string(),
            Err(e) => {
                let err = step_error("CreateChangeSet", e);
                if no_changes(&err.message) {
                    return Ok((none, Some(current)));
                }
                return Err(err);
            }
        };
        let described = match self
            .computed_change_set(&stack_id, &name, Duration::from_millis(500))
            .await?
        {
            Computed::Ready(d) => d,
            Computed::NoChanges => return Ok((none, Some(current))),
            Computed::Failed(reason) => {
                // A plan leaves nothing behind, a failed change set neither.
                let _ = self
                    .cfn
                    .delete_change_set()
                    .stack_name(&stack_id)
                    .change_set_name(&name)
                    .send()
                    .await;
                return Err(StepError::permanent(format!(
                    "the change set planned for {} failed: {reason}",
                    p.stack_name
                )));
            }
        };
        let old = super::deploy::parameters_of(stack.parameters());
        let old_tags: BTreeMap<String, String> = stack
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect();
        let mut change = summarise(&described, &old, params, &old_tags);
        change["action"] = json!("update");
        change["stack"] = json!(p.stack_name);
        change["change_set"] = json!({ "id": change_set_id, "name": name });
        // Apply refuses when the stack changed after this (the change set would then be
        // obsolete on AWS; the emulator does not say so).
        change["last_change"] = json!(super::apply::last_change(&stack));
        Ok((change, Some(current)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudformation::types::{
        Change, ChangeAction, ChangeType, Replacement, ResourceChange,
    };

    fn change(
        action: ChangeAction,
        id: &str,
        ty: &str,
        replacement: Option<Replacement>,
    ) -> Change {
        Change::builder()
            .r#type(ChangeType::Resource)
            .resource_change(
                ResourceChange::builder()
                    .action(action)
                    .logical_resource_id(id)
                    .resource_type(ty)
                    .set_replacement(replacement)
                    .build(),
            )
            .build()
    }

    /// `DescribeChangeSet` answers in AWS's wire format (`steps/fixtures/describe-change-set`),
    /// read by the real SDK client and summarised: what approvers see, pinned per answer.
    #[test]
    fn change_sets_as_aws_answers_them_are_summarised_for_approvers() {
        use aws_sdk_cloudformation::config::{Credentials, Region};
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        insta::glob!("../../../fixtures/describe-change-set", "*.xml", |path| {
            // The stack as it stands before each change set: its parameters and tags.
            let name = path.file_name().unwrap().to_str().unwrap();
            let (old_parameters, old_tags) = match name {
                "network-third-az.xml" => (
                    map(&[
                        ("Customer", "acme"),
                        ("Environment", "production"),
                        ("VpcCidr", "10.20.0.0/16"),
                    ]),
                    map(&[
                        ("customer", "acme"),
                        ("landfall:run", "r-01kbefore"),
                        ("landfall:created-by-run", "r-01kfirst"),
                    ]),
                ),
                "network-new-cidr.xml" => (
                    map(&[
                        ("Customer", "acme"),
                        ("Environment", "production"),
                        ("VpcCidr", "10.20.0.0/16"),
                    ]),
                    map(&[("customer", "acme"), ("landfall:run", "r-01kbefore")]),
                ),
                "access-roles.xml" => (
                    map(&[
                        ("Customer", "acme"),
                        ("Environment", "production"),
                        ("ManagementAccountId", "111122223333"),
                    ]),
                    map(&[("customer", "acme"), ("landfall:run", "r-01kbefore")]),
                ),
                other => panic!("{other}: say what the stack was before it"),
            };
            let body = std::fs::read_to_string(path).unwrap();
            let http = aws_smithy_http_client::test_util::infallible_client_fn(move |_| {
                http::Response::builder()
                    .status(200)
                    .header("content-type", "text/xml")
                    .body(body.clone())
                    .unwrap()
            });
            let conf = aws_sdk_cloudformation::Config::builder()
                .behavior_version_latest()
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new(
                    "AKIDEXAMPLE",
                    "secret",
                    None,
                    None,
                    "test",
                ))
                .http_client(http)
                .build();
            let client = aws_sdk_cloudformation::Client::from_conf(conf);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let d = rt
                .block_on(
                    client
                        .describe_change_set()
                        .stack_name("s")
                        .change_set_name("c")
                        .send(),
                )
                .unwrap();
            // What apply would send: each answer's own parameters, against the stack's old ones.
            let new = crate::aws::stack::deploy::parameters_of(d.parameters());
            let mut s = summarise(&d, &old_parameters, &new, &old_tags);
            s["action"] = json!("update");
            s["stack"] = json!(d.stack_name());
            insta::assert_json_snapshot!(json!({ "line": describe_change(&s), "summary": s }));
        });
    }

    /// A change set as AWS describes one for a network gaining a third availability zone and
    /// a role whose policy changes.
    #[test]
    fn a_change_set_is_summarised_with_counts_replacements_iam_and_parameters() {
        let d = DescribeChangeSetOutput::builder()
            .changes(change(
                ChangeAction::Add,
                "SubnetPrivateC",
                "AWS::EC2::Subnet",
                None,
            ))
            .changes(change(
                ChangeAction::Add,
                "RouteTableC",
                "AWS::EC2::RouteTable",
                None,
            ))
            .changes(change(
                ChangeAction::Modify,
                "Vpc",
                "AWS::EC2::VPC",
                Some(Replacement::Conditional),
            ))
            .changes(change(
                ChangeAction::Modify,
                "DeployerRole",
                "AWS::IAM::Role",
                Some(Replacement::False),
            ))
            .changes(change(ChangeAction::Remove, "Old", "AWS::SNS::Topic", None))
            .build();
        let old = BTreeMap::from([("Azs".to_string(), "2".to_string())]);
        let new = BTreeMap::from([("Azs".to_string(), "3".to_string())]);
        let mut s = summarise(&d, &old, &new, &BTreeMap::new());
        assert_eq!(
            (
                &s["adds"],
                &s["modifies"],
                &s["removes"],
                &s["replacements"]
            ),
            (&json!(2), &json!(2), &json!(1), &json!(0))
        );
        assert_eq!(s["conditional_replacements"], json!(1));
        assert_eq!(s["iam"], json!(["DeployerRole"]));
        assert_eq!(
            s["parameters"],
            json!([{ "name": "Azs", "from": "2", "to": "3" }])
        );
        assert_eq!(
            s["resources"][2],
            json!({ "action": "Modify", "logical_id": "Vpc", "type": "AWS::EC2::VPC", "replacement": "Conditional", "iam": false })
        );
        s["action"] = json!("update");
        s["stack"] = json!("acme-network");
        assert_eq!(
            describe_change(&s),
            "update acme-network: 2 to add, 2 to modify, 1 to remove (0 replacements, 1 conditional, IAM: DeployerRole)"
        );
        assert_eq!(
            describe_change(
                &json!({ "action": "create", "stack": "acme-access", "resources": 3, "iam": ["Role"] })
            ),
            "create acme-access (3 resources, IAM included)"
        );
        assert_eq!(
            describe_change(&json!({ "action": "none", "stack": "acme-x" })),
            "acme-x unchanged"
        );
    }
}

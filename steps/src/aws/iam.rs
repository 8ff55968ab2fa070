//! `iam`: Landfall's roles in each member account, least privilege by construction.
//!
//! In each account (reached by assuming `OrganizationAccountAccessRole` from the management
//! account) it ensures `landfall-deployer`, whose permissions are *derived* from the resource
//! types of the package (a table type → actions; a type without an entry is an error, never a
//! guess, and no statement grants `*` on `*`), and `landfall-verifier`, read-only. Both trust
//! only the management account. After writing, it reads both roles back and compares.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use aws_sdk_iam::Client as Iam;
use landfall_engine::{actions_counted, PlanOutcome, Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::errors::{self, step_error};
use super::Aws;

pub(crate) const DEPLOYER_ROLE: &str = "landfall-deployer";
pub(crate) const VERIFIER_ROLE: &str = "landfall-verifier";
const DEPLOYER_POLICY: &str = "landfall-deployer-permissions";
const VERIFIER_POLICY_ARN: &str = "arn:aws:iam::aws:policy/ReadOnlyAccess";

/// What CloudFormation needs to create, update, tag and delete each resource type.
pub(crate) const ACTIONS: &[(&str, &[&str])] = &[
    (
        "AWS::EC2::VPC",
        &[
            "ec2:CreateVpc",
            "ec2:DeleteVpc",
            "ec2:DescribeVpcs",
            "ec2:DescribeVpcAttribute",
            "ec2:ModifyVpcAttribute",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "AWS::EC2::Subnet",
        &[
            "ec2:CreateSubnet",
            "ec2:DeleteSubnet",
            "ec2:DescribeSubnets",
            "ec2:ModifySubnetAttribute",
            "ec2:DescribeAvailabilityZones",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "AWS::EC2::InternetGateway",
        &[
            "ec2:CreateInternetGateway",
            "ec2:DeleteInternetGateway",
            "ec2:DescribeInternetGateways",
            "ec2:CreateTags",
        ],
    ),
    (
        "AWS::EC2::VPCGatewayAttachment",
        &[
            "ec2:AttachInternetGateway",
            "ec2:DetachInternetGateway",
            "ec2:DescribeInternetGateways",
        ],
    ),
    (
        "AWS::EC2::RouteTable",
        &[
            "ec2:CreateRouteTable",
            "ec2:DeleteRouteTable",
            "ec2:DescribeRouteTables",
            "ec2:CreateTags",
        ],
    ),
    (
        "AWS::EC2::Route",
        &[
            "ec2:CreateRoute",
            "ec2:DeleteRoute",
            "ec2:ReplaceRoute",
            "ec2:DescribeRouteTables",
        ],
    ),
    (
        "AWS::EC2::SubnetRouteTableAssociation",
        &[
            "ec2:AssociateRouteTable",
            "ec2:DisassociateRouteTable",
            "ec2:DescribeRouteTables",
        ],
    ),
    (
        "AWS::EC2::EIP",
        &[
            "ec2:AllocateAddress",
            "ec2:ReleaseAddress",
            "ec2:DescribeAddresses",
            "ec2:CreateTags",
        ],
    ),
    (
        "AWS::EC2::NatGateway",
        &[
            "ec2:CreateNatGateway",
            "ec2:DeleteNatGateway",
            "ec2:DescribeNatGateways",
            "ec2:CreateTags",
        ],
    ),
    (
        "AWS::EC2::SecurityGroup",
        &[
            "ec2:CreateSecurityGroup",
            "ec2:DeleteSecurityGroup",
            "ec2:DescribeSecurityGroups",
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:AuthorizeSecurityGroupEgress",
            "ec2:RevokeSecurityGroupIngress",
            "ec2:RevokeSecurityGroupEgress",
            "ec2:CreateTags",
        ],
    ),
    (
        "AWS::KMS::Key",
        &[
            "kms:CreateKey",
            "kms:DescribeKey",
            "kms:EnableKeyRotation",
            "kms:GetKeyRotationStatus",
            "kms:GetKeyPolicy",
            "kms:PutKeyPolicy",
            "kms:ScheduleKeyDeletion",
            "kms:TagResource",
            "kms:UntagResource",
            "kms:ListResourceTags",
            "kms:UpdateKeyDescription",
        ],
    ),
    (
        "AWS::S3::Bucket",
        &[
            "s3:CreateBucket",
            "s3:DeleteBucket",
            "s3:ListBucket",
            "s3:GetEncryptionConfiguration",
            "s3:PutEncryptionConfiguration",
            "s3:GetBucketVersioning",
            "s3:PutBucketVersioning",
            "s3:GetBucketPublicAccessBlock",
            "s3:PutBucketPublicAccessBlock",
            "s3:GetBucketTagging",
            "s3:PutBucketTagging",
        ],
    ),
    (
        "AWS::SNS::Topic",
        &[
            "sns:CreateTopic",
            "sns:DeleteTopic",
            "sns:GetTopicAttributes",
            "sns:SetTopicAttributes",
            "sns:TagResource",
            "sns:ListTagsForResource",
        ],
    ),
    (
        "AWS::Logs::LogGroup",
        &[
            "logs:CreateLogGroup",
            "logs:DeleteLogGroup",
            "logs:DescribeLogGroups",
            "logs:PutRetentionPolicy",
            "logs:DeleteRetentionPolicy",
            "logs:AssociateKmsKey",
            "logs:TagResource",
            "logs:ListTagsForResource",
        ],
    ),
    (
        "AWS::IAM::Role",
        &[
            "iam:CreateRole",
            "iam:DeleteRole",
            "iam:GetRole",
            "iam:UpdateRole",
            "iam:UpdateRoleDescription",
            "iam:UpdateAssumeRolePolicy",
            "iam:AttachRolePolicy",
            "iam:DetachRolePolicy",
            "iam:PutRolePolicy",
            "iam:DeleteRolePolicy",
            "iam:GetRolePolicy",
            "iam:ListAttachedRolePolicies",
            "iam:ListRolePolicies",
            "iam:TagRole",
            "iam:UntagRole",
        ],
    ),
];

/// What the deployer needs of CloudFormation itself, on the customer's stacks only.
pub(crate) const CLOUDFORMATION_ACTIONS: &[&str] = &[
    "cloudformation:CreateStack",
    "cloudformation:UpdateStack",
    "cloudformation:DeleteStack",
    "cloudformation:DescribeStacks",
    "cloudformation:DescribeStackEvents",
    "cloudformation:DescribeStackResources",
    "cloudformation:ListStackResources",
    "cloudformation:GetTemplate",
    "cloudformation:CreateChangeSet",
    "cloudformation:DescribeChangeSet",
    "cloudformation:ExecuteChangeSet",
    "cloudformation:DeleteChangeSet",
    "cloudformation:CancelUpdateStack",
    "cloudformation:ContinueUpdateRollback",
];

/// The deployer's policy document for a package's resource types.
pub(crate) fn deployer_policy(
    resource_types: &[String],
    stack_prefix: &str,
) -> Result<Value, StepError> {
    let table: BTreeMap<&str, &[&str]> = ACTIONS.iter().copied().collect();
    let mut by_service: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for t in resource_types {
        match table.get(t.as_str()) {
            Some(actions) => {
                for a in actions.iter() {
                    let service = a.split(':').next().unwrap_or_default().to_string();
                    by_service.entry(service).or_default().insert(a);
                }
            }
            None => unknown.push(t.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(StepError::permanent(format!(
            "no least-privilege mapping for resource type(s) {}; add them to the table in steps/src/aws/iam.rs",
            unknown.join(", ")
        )));
    }
    let mut statements = vec![json!({
        "Sid": "ManageTheCustomersStacks",
        "Effect": "Allow",
        "Action": CLOUDFORMATION_ACTIONS,
        "Resource": [
            format!("arn:aws:cloudformation:*:*:stack/{stack_prefix}*/*"),
            format!("arn:aws:cloudformation:*:*:changeSet/{stack_prefix}*/*"),
        ],
    })];
    for (service, actions) in by_service {
        // IAM changes stay on the customer's own roles; other services' resource ARNs are
        // generated by CloudFormation and cannot be known in advance.
        let resource = if service == "iam" {
            json!(format!("arn:aws:iam::*:role/{stack_prefix}*"))
        } else {
            json!("*")
        };
        let sid: String = format!("Deploy{}", service.to_uppercase());
        statements.push(json!({
            "Sid": sid,
            "Effect": "Allow",
            "Action": actions,
            "Resource": resource,
        }));
    }
    Ok(json!({ "Version": "2012-10-17", "Statement": statements }))
}

fn trust_policy(management_account_id: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "AWS": format!("arn:aws:iam::{management_account_id}:root") },
            "Action": "sts:AssumeRole",
        }],
    })
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub(crate) struct IamAccount {
    pub name: String,
    pub id: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IamConfig {
    /// Member accounts (`steps.org.outputs.accounts`): name and id of each.
    pub accounts: Vec<IamAccount>,
    /// The management account (`steps.org.outputs.management_account_id`): the only principal
    /// the roles trust.
    pub management_account_id: String,
    /// The package's resource types (`manifest.resource_types`).
    pub resource_types: Vec<String>,
    /// Stack and role name prefix the deployer is confined to (e.g. `acme-`).
    pub stack_prefix: String,
    /// Role to assume in member accounts.
    #[serde(default = "default_member_role")]
    pub member_role_name: String,
    /// The approved plan of these roles (`steps.<plan step>.outputs`, or a list of plans one
    /// approval covers). Needed when an approval policy covers an account whose existing
    /// roles would change: the changes must be the planned ones, approved for its digest.
    #[serde(default)]
    pub plan: Option<Value>,
    /// How many accounts are worked on at once (at least 1). IAM is one service per account,
    /// each with its own request quota and retry partition, so accounts do not slow each other.
    #[serde(default = "default_parallel_accounts")]
    pub parallel_accounts: usize,
}

fn default_parallel_accounts() -> usize {
    20
}

fn default_member_role() -> String {
    "OrganizationAccountAccessRole".into()
}

pub(crate) struct IamRoles {
    pub aws: Aws,
    /// The operators' approval policies: changing the existing roles of a covered account
    /// needs approvals of the plan (see [`super::approved_modification`]).
    pub policies: std::sync::Arc<Vec<crate::approval::policy::ApprovalPolicy>>,
}

impl IamRoles {
    /// Refuses before any write when the existing roles of an account an approval policy
    /// covers would change, unless that is the approved plan.
    async fn approved(&self, c: &IamConfig, ctx: &StepContext) -> Result<(), StepError> {
        let Some(now) = Plugin::plan(self, c.clone(), ctx.clone()).await? else {
            return Ok(());
        };
        let modified: BTreeSet<&str> = now
            .changes
            .iter()
            .filter(|ch| ch["action"] == "update")
            .filter_map(|ch| ch["account"].as_str())
            .collect();
        if modified.is_empty() {
            return Ok(());
        }
        let accounts = c
            .accounts
            .iter()
            .filter(|a| modified.contains(a.name.as_str()))
            .map(|a| a.id.clone())
            .collect();
        let what = format!(
            "the roles in {}",
            modified.into_iter().collect::<Vec<_>>().join(", ")
        );
        super::approved_modification(
            &self.aws,
            &self.policies,
            ctx,
            super::Modification {
                accounts,
                changes: &now.changes,
                plan: c.plan.as_ref(),
                what,
            },
        )
        .await
    }
}

fn decode_policy(text: &str) -> Result<Value, StepError> {
    // IAM returns policy documents URL-encoded.
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    serde_json::from_str(&decoded)
        .map_err(|e| StepError::permanent(format!("IAM returned a policy that is not JSON: {e}")))
}

/// (ARN, whether this call created the role).
async fn ensure_role(
    iam: &Iam,
    name: &str,
    trust: &Value,
    description: &str,
) -> Result<(String, bool), StepError> {
    let trust_text = trust.to_string();
    match iam.get_role().role_name(name).send().await {
        Ok(r) => {
            let role = r
                .role()
                .ok_or_else(|| StepError::transient("GetRole returned no role"))?;
            let current = role
                .assume_role_policy_document()
                .map(decode_policy)
                .transpose()?;
            if current.as_ref() != Some(trust) {
                iam.update_assume_role_policy()
                    .role_name(name)
                    .policy_document(&trust_text)
                    .send()
                    .await
                    .map_err(|e| step_error("UpdateAssumeRolePolicy", e))?;
            }
            Ok((role.arn().to_string(), false))
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            let tag = aws_sdk_iam::types::Tag::builder()
                .key("managed-by")
                .value("landfall")
                .build()
                .map_err(|e| StepError::permanent(e.to_string()))?;
            let created = iam
                .create_role()
                .role_name(name)
                .assume_role_policy_document(&trust_text)
                .description(description)
                .max_session_duration(3600)
                .tags(tag)
                .send()
                .await;
            match created {
                Ok(created) => Ok((
                    created
                        .role()
                        .map(|r| r.arn().to_string())
                        .unwrap_or_default(),
                    true,
                )),
                // Created meanwhile (another run, or this call's lost answer): adopt it; the
                // next attempt reads it and corrects its trust policy if needed.
                Err(e) if errors::outcome(&e) == errors::Outcome::AlreadyExists => {
                    let r = iam
                        .get_role()
                        .role_name(name)
                        .send()
                        .await
                        .map_err(|e| step_error("GetRole", e))?;
                    Ok((
                        r.role().map(|r| r.arn().to_string()).unwrap_or_default(),
                        true,
                    ))
                }
                Err(e) => Err(step_error("CreateRole", e)),
            }
        }
        Err(e) => Err(step_error("GetRole", e)),
    }
}

#[async_trait]
impl Plugin for IamRoles {
    const NAME: &'static str = "iam";
    const SUMMARY: &'static str =
        "Ensure Landfall's deployer (permissions derived from the package) and verifier roles in each account";
    // Planning assumes a role into each account and reads; it writes nothing.
    const PLAN_IS_PURE: bool = true;
    type Config = IamConfig;

    /// Per account: roles to create, trust and permission documents to change (a JSON Patch
    /// from what IAM holds to what would be written), the read-only policy to attach.
    async fn plan(&self, c: IamConfig, ctx: StepContext) -> Result<Option<PlanOutcome>, StepError> {
        let policy = deployer_policy(&c.resource_types, &c.stack_prefix)?;
        let trust = trust_policy(&c.management_account_id);
        let mut changes = Vec::new();
        let mut roles = Vec::new();
        let per_account = super::each_at_most(
            c.accounts
                .iter()
                .map(|account| self.plan_account(account, &c, &policy, &trust, &ctx)),
            c.parallel_accounts,
        )
        .await?;
        for (mut c, role) in per_account {
            changes.append(&mut c);
            roles.push(role);
        }
        Ok(Some(PlanOutcome {
            summary: format!("IAM: {}", actions_counted(&changes)),
            changes,
            outputs: json!({
                "roles": roles,
                "deployer_actions": action_count(&policy),
                "deployer_policy": policy,
            }),
        }))
    }

    /// IAM is global: the accounts the node visits are its scope.
    fn circuit_scope(with: &Value) -> Option<String> {
        let ids: Vec<&str> = with["accounts"]
            .as_array()?
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        (!ids.is_empty()).then(|| ids.join("+"))
    }

    async fn run(&self, c: IamConfig, ctx: StepContext) -> Result<Value, StepError> {
        if !self.policies.is_empty() {
            self.approved(&c, &ctx).await?;
        }
        let policy = deployer_policy(&c.resource_types, &c.stack_prefix)?;
        let trust = trust_policy(&c.management_account_id);
        let out = super::each_at_most(
            c.accounts
                .iter()
                .map(|account| self.ensure_roles(account, &c, &policy, &trust, &ctx)),
            c.parallel_accounts,
        )
        .await?;
        let actions = action_count(&policy);
        Ok(json!({ "roles": out, "deployer_actions": actions, "deployer_policy": policy }))
    }
}

impl IamRoles {
    /// What [`Self::ensure_roles`] would change in one account, and the roles' ARNs.
    async fn plan_account(
        &self,
        account: &IamAccount,
        c: &IamConfig,
        policy: &Value,
        trust: &Value,
        ctx: &StepContext,
    ) -> Result<(Vec<Value>, Value), StepError> {
        let mut changes = Vec::new();
        let iam = self
            .aws
            .iam_in(&account.id, &c.member_role_name, ctx.idempotency_key())
            .await?;
        let mut arns = BTreeMap::new();
        for role in [DEPLOYER_ROLE, VERIFIER_ROLE] {
            let change =
                |action: &str| json!({ "action": action, "account": account.name, "role": role });
            match read_role(&iam, role).await? {
                None => {
                    let mut c = change("create");
                    c["trust"] = trust.clone();
                    changes.push(c);
                    arns.insert(role, format!("arn:aws:iam::{}:role/{role}", account.id));
                }
                Some((arn, current)) => {
                    if current.as_ref() != Some(trust) {
                        let mut c = change("update");
                        c["document"] = json!("trust policy");
                        c["diff"] = json!(json_patch::diff(
                            current.as_ref().unwrap_or(&Value::Null),
                            trust
                        ));
                        changes.push(c);
                    }
                    arns.insert(role, arn);
                }
            }
        }
        match read_inline(&iam, DEPLOYER_ROLE, DEPLOYER_POLICY).await? {
            None => changes.push(json!({
                "action": "create", "account": account.name, "role": DEPLOYER_ROLE,
                "policy": DEPLOYER_POLICY, "document": policy,
            })),
            Some(current) if current != *policy => changes.push(json!({
                "action": "update", "account": account.name, "role": DEPLOYER_ROLE,
                "policy": DEPLOYER_POLICY, "diff": json_patch::diff(&current, policy),
            })),
            Some(_) => {}
        }
        if !read_attached(&iam, VERIFIER_ROLE)
            .await?
            .contains(VERIFIER_POLICY_ARN)
        {
            changes.push(json!({
                "action": "attach", "account": account.name, "role": VERIFIER_ROLE,
                "policy": VERIFIER_POLICY_ARN,
            }));
        }
        let role = json!({
            "account": account.name,
            "account_id": account.id,
            "deployer_role_arn": arns.get(DEPLOYER_ROLE),
            "verifier_role_arn": arns.get(VERIFIER_ROLE),
        });
        Ok((changes, role))
    }

    /// The two roles in one account, written, assumable and read back as intended.
    async fn ensure_roles(
        &self,
        account: &IamAccount,
        c: &IamConfig,
        policy: &Value,
        trust: &Value,
        ctx: &StepContext,
    ) -> Result<Value, StepError> {
        let iam = self
            .aws
            .iam_in(&account.id, &c.member_role_name, ctx.idempotency_key())
            .await?;
        let (deployer, new_deployer) = ensure_role(
            &iam,
            DEPLOYER_ROLE,
            trust,
            "Landfall deploys the customer's stacks with this role",
        )
        .await?;
        iam.put_role_policy()
            .role_name(DEPLOYER_ROLE)
            .policy_name(DEPLOYER_POLICY)
            .policy_document(policy.to_string())
            .send()
            .await
            .map_err(|e| step_error("PutRolePolicy", e))?;
        let (verifier, new_verifier) = ensure_role(
            &iam,
            VERIFIER_ROLE,
            trust,
            "Landfall verifies deployed resources with this read-only role",
        )
        .await?;
        // IAM is eventually consistent: a role just created cannot be assumed for a few
        // seconds. The roles are this step's promise to `deploy` and `verify`, so it keeps
        // it: done means assumable.
        for (role, new) in [(DEPLOYER_ROLE, new_deployer), (VERIFIER_ROLE, new_verifier)] {
            if new {
                self.aws
                    .wait_assumable(&account.id, role, ctx.idempotency_key(), ctx)
                    .await?;
            }
        }
        iam.attach_role_policy()
            .role_name(VERIFIER_ROLE)
            .policy_arn(VERIFIER_POLICY_ARN)
            .send()
            .await
            .map_err(|e| step_error("AttachRolePolicy", e))?;

        // Read back what AWS holds.
        let stored = iam
            .get_role_policy()
            .role_name(DEPLOYER_ROLE)
            .policy_name(DEPLOYER_POLICY)
            .send()
            .await
            .map_err(|e| step_error("GetRolePolicy", e))?;
        if decode_policy(stored.policy_document())? != *policy {
            return Err(StepError::transient(format!(
                "the deployer policy in {} does not read back as written",
                account.name
            )));
        }
        for role in [DEPLOYER_ROLE, VERIFIER_ROLE] {
            let r = iam
                .get_role()
                .role_name(role)
                .send()
                .await
                .map_err(|e| step_error("GetRole", e))?;
            let doc = r
                .role()
                .and_then(|r| r.assume_role_policy_document())
                .map(decode_policy)
                .transpose()?;
            if doc.as_ref() != Some(trust) {
                return Err(StepError::transient(format!(
                    "{role} in {} does not trust exactly the management account",
                    account.name
                )));
            }
        }
        let attached = iam
            .list_attached_role_policies()
            .role_name(VERIFIER_ROLE)
            .send()
            .await
            .map_err(|e| step_error("ListAttachedRolePolicies", e))?;
        if !attached
            .attached_policies()
            .iter()
            .any(|p| p.policy_arn() == Some(VERIFIER_POLICY_ARN))
        {
            return Err(StepError::transient(format!(
                "{VERIFIER_ROLE} in {} is not read-only as intended",
                account.name
            )));
        }
        Ok(json!({
            "account": account.name,
            "account_id": account.id,
            "deployer_role_arn": deployer,
            "verifier_role_arn": verifier,
        }))
    }
}

/// How many actions a policy document grants, over its statements.
fn action_count(policy: &Value) -> usize {
    policy["Statement"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|x| x["Action"].as_array().map_or(1, Vec::len))
                .sum()
        })
        .unwrap_or(0)
}

/// A role's ARN and trust policy, or `None` when it does not exist.
async fn read_role(iam: &Iam, name: &str) -> Result<Option<(String, Option<Value>)>, StepError> {
    match iam.get_role().role_name(name).send().await {
        Ok(r) => {
            let role = r
                .role()
                .ok_or_else(|| StepError::transient("GetRole returned no role"))?;
            let trust = role
                .assume_role_policy_document()
                .map(decode_policy)
                .transpose()?;
            Ok(Some((role.arn().to_string(), trust)))
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(step_error("GetRole", e)),
    }
}

/// A role's inline policy, or `None` when the role or the policy does not exist.
async fn read_inline(iam: &Iam, role: &str, policy: &str) -> Result<Option<Value>, StepError> {
    match iam
        .get_role_policy()
        .role_name(role)
        .policy_name(policy)
        .send()
        .await
    {
        Ok(p) => decode_policy(p.policy_document()).map(Some),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(step_error("GetRolePolicy", e)),
    }
}

/// The managed policies attached to a role (none when the role does not exist).
async fn read_attached(iam: &Iam, role: &str) -> Result<BTreeSet<String>, StepError> {
    match iam
        .list_attached_role_policies()
        .role_name(role)
        .send()
        .await
    {
        Ok(r) => Ok(r
            .attached_policies()
            .iter()
            .filter_map(|p| p.policy_arn().map(str::to_string))
            .collect()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            Ok(BTreeSet::new())
        }
        Err(e) => Err(step_error("ListAttachedRolePolicies", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_are_refused_not_guessed() {
        let e = deployer_policy(&["AWS::Lambda::Function".into()], "acme-").unwrap_err();
        assert!(e.message.contains("AWS::Lambda::Function"));
    }

    #[test]
    fn iam_actions_are_confined_to_the_customers_roles() {
        let p = deployer_policy(&["AWS::IAM::Role".into()], "acme-").unwrap();
        let iam = p["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "DeployIAM")
            .unwrap();
        assert_eq!(iam["Resource"], "arn:aws:iam::*:role/acme-*");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

        /// Feature: agent-onboarding-provisioning, Property 18: IAM Least Privilege.
        /// For any set of the package's resource types (the full set included), no statement
        /// grants a wildcard action; every granted action is one AWS's own resource schema
        /// lists for a handler of one of the picked types (the oracle, not this file's table),
        /// or one of CloudFormation's stack actions, or a documented exception; IAM actions
        /// reach only the customer's roles and stack actions only the customer's stacks.
        #[test]
        fn prop18_iam_least_privilege(pick in prop::sample::subsequence(ACTIONS.iter().map(|(t, _)| t.to_string()).collect::<Vec<_>>(), 0..=ACTIONS.len())) {
            let reg = registry();
            let p = deployer_policy(&pick, "acme-").unwrap();
            let allowed: BTreeSet<String> = pick
                .iter()
                .flat_map(|t| reg.get(t).cloned().unwrap_or_default())
                .chain(BEYOND_THE_REGISTRY.iter().filter(|(t, _, _)| pick.iter().any(|x| x == t)).map(|(_, a, _)| a.to_string()))
                .collect();
            for s in p["Statement"].as_array().unwrap() {
                prop_assert_eq!(&s["Effect"], "Allow");
                let actions: Vec<&str> = s["Action"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
                prop_assert!(!actions.is_empty());
                let stacks = s["Sid"] == "ManageTheCustomersStacks";
                for a in &actions {
                    prop_assert!(!a.contains('*'), "wildcard action {}", a);
                    if stacks {
                        prop_assert!(a.starts_with("cloudformation:"), "{} among the stack actions", a);
                    } else {
                        prop_assert!(allowed.contains(*a), "{} is granted but no picked type's handlers need it", a);
                    }
                }
                let resources: Vec<&str> = match &s["Resource"] {
                    Value::String(r) => vec![r.as_str()],
                    Value::Array(rs) => rs.iter().map(|r| r.as_str().unwrap()).collect(),
                    other => { prop_assert!(false, "Resource {}", other); unreachable!() }
                };
                if stacks {
                    prop_assert_eq!(resources, vec!["arn:aws:cloudformation:*:*:stack/acme-*/*", "arn:aws:cloudformation:*:*:changeSet/acme-*/*"]);
                } else if actions.iter().any(|a| a.starts_with("iam:")) {
                    prop_assert_eq!(resources, vec!["arn:aws:iam::*:role/acme-*"]);
                    prop_assert!(actions.iter().all(|a| a.starts_with("iam:")), "IAM shares a statement: {:?}", actions);
                } else {
                    prop_assert_eq!(resources, vec!["*"]);
                }
            }
        }
    }

    fn raw_registry() -> Value {
        serde_json::from_str(include_str!("../../testdata/cfn-handler-permissions.json")).unwrap()
    }

    /// Every permission AWS's schema lists for any handler of each type.
    fn registry() -> BTreeMap<String, BTreeSet<String>> {
        let raw = raw_registry();
        raw["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(t, h)| {
                let all = h
                    .as_object()
                    .unwrap()
                    .values()
                    .flat_map(|v| {
                        v.as_array()
                            .unwrap()
                            .iter()
                            .map(|a| a.as_str().unwrap().to_string())
                    })
                    .collect();
                (t.clone(), all)
            })
            .collect()
    }

    /// Granted beyond a type's handlers, and why.
    const BEYOND_THE_REGISTRY: &[(&str, &str, &str)] = &[(
        "AWS::EC2::Subnet",
        "ec2:DescribeAvailabilityZones",
        "`Fn::GetAZs` in the network template is resolved with the caller's permissions",
    )];
}

//! `org`: the customer's place in AWS Organizations, ensured idempotently.
//!
//! Ensures the organization (all features) with SCPs enabled on the root, the OU
//! `<parent_ou>/<customer>`, and each account; then moves each account into the OU and tags it.
//! Running it twice changes nothing, and neither do races with other runs or lost answers:
//! every "already exists" answer (organization, OU, policy type) is answered by reading again
//! and adopting.
//!
//! Accounts: AWS creates them asynchronously (`CreateAccount` answers a request id; the account
//! is listed only once the request has `SUCCEEDED`, minutes later). So an account is, in
//! order: found by email among the listed accounts; or the request id this node saved (durably,
//! before waiting) is followed; or a request in progress for the same account name
//! (`ListCreateAccountStatus`, which names no email) is followed; or a new request is made and
//! its id saved at once. A request that fails with `EMAIL_ALREADY_EXISTS` (a lost answer made
//! the SDK ask twice, or another run asked first) sends it back to looking.
//!
//! An account found by email is this customer's only if nothing says otherwise: one tagged
//! with another customer, or sitting in another OU, is refused (permanent), never moved.

use crate::milestone::Milestone;
use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_organizations::types::{
    CreateAccountState, OrganizationFeatureSet, PolicyType, PolicyTypeStatus, Tag,
};
use aws_sdk_organizations::Client;
use landfall_engine::ConfigProblem;
use landfall_engine::{actions_counted, PlanOutcome, Plugin, StepContext, StepError, PLAN_UNKNOWN};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::errors::{classify_failure_reason, outcome, step_error, Outcome};
use super::{waiting_out_conflicts, Aws, Patience};
use crate::requirements::Environment;

pub struct Org {
    pub aws: Aws,
    /// The longest wait between two looks at a pending account creation (they start at
    /// `first_poll` and grow: most creations take a minute or two).
    pub poll_interval: Duration,
    pub first_poll: Duration,
    /// How long an account creation may take before the attempt fails (transient).
    pub create_timeout: Duration,
}

impl Org {
    pub fn new(aws: Aws) -> Self {
        Org {
            aws,
            poll_interval: Duration::from_secs(10),
            first_poll: Duration::from_secs(1),
            create_timeout: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgAccount {
    pub name: String,
    pub email: String,
    pub environment: Environment,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgConfig {
    /// The customer's short name: the OU's name.
    pub customer: String,
    /// Accounts to ensure, each found by email.
    pub accounts: Vec<OrgAccount>,
    /// The OU under the root that holds one OU per customer.
    #[serde(default = "default_parent")]
    pub parent_ou: String,
    /// Tags for the OU and every account (`customer`, `environment` and `managed-by` are
    /// added).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// How many accounts are worked on at once (at least 1): created and waited for, moved,
    /// tagged. Their writes still go to AWS one at a time (AWS serialises the changes to an
    /// organization and refuses overlapping ones with `ConcurrentModificationException`), so
    /// this bounds the creations in progress, which are what take minutes. AWS documents no
    /// limit on creations in progress, only on creations per day
    /// (`ACCOUNT_CREATION_RATE_LIMIT_EXCEEDED`, not retried) and on request rates
    /// (`TooManyRequestsException`, waited out); 20 keeps the polling of all of them (one look
    /// every ≤10 s each) to a few requests per second.
    #[serde(default = "default_parallel_accounts")]
    pub parallel_accounts: usize,
}

fn default_parent() -> String {
    "Customers".into()
}

fn default_parallel_accounts() -> usize {
    20
}

/// What `org` outputs.
#[derive(Debug, Serialize)]
pub(crate) struct OrgOutputs {
    pub organization_id: String,
    pub management_account_id: String,
    pub root_id: String,
    pub ou_id: String,
    pub ou_path: String,
    pub accounts: Vec<AccountOut>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AccountOut {
    pub name: String,
    pub email: String,
    pub id: String,
    pub environment: Environment,
    /// Whether this run created it (false: it existed).
    pub created: bool,
}

/// `base` with `extra` (Landfall's own tags) over it.
fn wanted_tags(
    base: &BTreeMap<String, String>,
    extra: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut all = base.clone();
    for (k, v) in extra {
        all.insert(k.to_string(), v.to_string());
    }
    all
}

fn tags(base: &BTreeMap<String, String>, extra: &[(&str, &str)]) -> Result<Vec<Tag>, StepError> {
    wanted_tags(base, extra)
        .into_iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| StepError::permanent(format!("invalid tag: {e}")))
        })
        .collect()
}

#[async_trait]
impl Plugin for Org {
    const NAME: &'static str = "org";
    const SUMMARY: &'static str =
        "Ensure the organization, the customer's OU and its accounts (idempotent)";
    // Planning describes and lists, nothing else.
    const PLAN_IS_PURE: bool = true;
    type Config = OrgConfig;

    fn validate(c: &OrgConfig) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if c.parallel_accounts == 0 {
            out.push(ConfigProblem {
                path: landfall_engine::Path::root().key("parallel_accounts"),
                message: "must be at least 1 (1 creates the accounts one after another)".into(),
            });
        }
        if c.accounts.is_empty() {
            out.push(ConfigProblem {
                path: landfall_engine::Path::root().key("accounts"),
                message: "at least one account is needed".into(),
            });
        }
        out
    }

    /// The organization, SCP policy type, OUs and accounts to create; accounts to move into the
    /// customer's OU and tags to set. A new account's id is known only after apply.
    async fn plan(
        &self,
        c: OrgConfig,
        _ctx: StepContext,
    ) -> Result<Option<PlanOutcome>, StepError> {
        use aws_sdk_organizations::operation::describe_organization::DescribeOrganizationError;
        let client = self.aws.organizations().await;
        let unknown = || PLAN_UNKNOWN.to_string();
        let mut changes = Vec::new();
        let org = match client.describe_organization().send().await {
            Ok(o) => o.organization().cloned(),
            Err(e) => match e.as_service_error() {
                Some(DescribeOrganizationError::AwsOrganizationsNotInUseException(_)) => None,
                _ => return Err(step_error("DescribeOrganization", e)),
            },
        };
        let (org_id, management, root) = match &org {
            None => {
                changes.push(
                    json!({ "action": "create", "what": "organization", "feature_set": "ALL" }),
                );
                changes.push(json!({ "action": "enable", "what": "service control policies" }));
                (unknown(), unknown(), None)
            }
            Some(o) => {
                if o.feature_set() != Some(&OrganizationFeatureSet::All) {
                    return Err(StepError::permanent(
                        "the organization does not have all features enabled; enable them in the console (SCPs need them)",
                    ));
                }
                let roots = client
                    .list_roots()
                    .send()
                    .await
                    .map_err(|e| step_error("ListRoots", e))?;
                let root = roots.roots().first();
                let enabled = root.is_some_and(|r| {
                    r.policy_types().iter().any(|p| {
                        p.r#type() == Some(&PolicyType::ServiceControlPolicy)
                            && p.status() == Some(&PolicyTypeStatus::Enabled)
                    })
                });
                if !enabled {
                    changes.push(json!({ "action": "enable", "what": "service control policies" }));
                }
                (
                    o.id().unwrap_or_default().to_string(),
                    o.master_account_id().unwrap_or_default().to_string(),
                    root.and_then(|r| r.id()).map(str::to_string),
                )
            }
        };
        let parent = match &root {
            Some(root) => find_ou(&client, root, &c.parent_ou).await?,
            None => None,
        };
        if parent.is_none() {
            changes.push(json!({ "action": "create", "what": "OU", "ou": c.parent_ou }));
        }
        let ou_path = format!("{}/{}", c.parent_ou, c.customer);
        let ou = match &parent {
            Some(p) => find_ou(&client, p, &c.customer).await?,
            None => None,
        };
        if ou.is_none() {
            changes.push(json!({ "action": "create", "what": "OU", "ou": ou_path }));
        }
        let existing = match &org {
            Some(_) => list_accounts(&client).await?,
            None => Vec::new(),
        };
        let mut accounts = Vec::new();
        for a in &c.accounts {
            let wanted = wanted_tags(
                &c.tags,
                &[
                    ("managed-by", "landfall"),
                    ("customer", &c.customer),
                    ("environment", a.environment.as_str()),
                ],
            );
            let found = existing
                .iter()
                .find(|(_, email)| email.eq_ignore_ascii_case(&a.email))
                .map(|(id, _)| id.clone());
            let id = match (found, &root) {
                (Some(id), Some(root)) => {
                    let (current, tags) =
                        placement(&client, &id, ou.as_deref(), root, a, &c.customer).await?;
                    if Some(current.as_str()) != ou.as_deref() {
                        changes.push(json!({
                            "action": "move", "what": "account", "account": a.name,
                            "id": id, "to": ou_path,
                        }));
                    }
                    let differing: BTreeMap<&String, &String> = wanted
                        .iter()
                        .filter(|(k, v)| tags.get(*k) != Some(*v))
                        .collect();
                    if !differing.is_empty() {
                        changes.push(json!({
                            "action": "tag", "what": "account", "account": a.name,
                            "id": id, "tags": differing,
                        }));
                    }
                    id
                }
                _ => {
                    let under_way = match &org {
                        Some(_) => in_progress(&client, &a.name).await?,
                        None => None,
                    };
                    changes.push(json!({
                        "action": "create", "what": "account", "account": a.name,
                        "email": a.email, "environment": a.environment.as_str(),
                        "to": ou_path, "tags": wanted,
                        "request_under_way": under_way,
                    }));
                    unknown()
                }
            };
            accounts.push(json!({
                "name": a.name, "email": a.email, "id": id,
                "environment": a.environment.as_str(),
                "created": id == PLAN_UNKNOWN,
            }));
        }
        Ok(Some(PlanOutcome {
            summary: format!("Organizations: {}", actions_counted(&changes)),
            changes,
            outputs: json!({
                "organization_id": org_id,
                "management_account_id": management,
                "root_id": root.unwrap_or_else(unknown),
                "ou_id": ou.unwrap_or_else(unknown),
                "ou_path": ou_path,
                "accounts": accounts,
            }),
        }))
    }

    async fn run(&self, c: OrgConfig, ctx: StepContext) -> Result<Value, StepError> {
        let client = self.aws.organizations().await;
        let org = ensure_organization(&client).await?;
        let root_id = ensure_root_with_scps(&client).await?;
        let parent = ensure_ou(
            &client,
            &root_id,
            &c.parent_ou,
            &tags(&c.tags, &[("managed-by", "landfall")])?,
        )
        .await?;
        let ou_tags = tags(
            &c.tags,
            &[("managed-by", "landfall"), ("customer", &c.customer)],
        )?;
        let ou_id = ensure_ou(&client, &parent, &c.customer, &ou_tags).await?;

        let existing = list_accounts(&client).await?;
        let placed = Placed {
            client: &client,
            root_id: &root_id,
            ou_id: &ou_id,
            existing: &existing,
        };
        let out = super::each_at_most(
            c.accounts
                .iter()
                .map(|a| self.ensure_member(&placed, &c, a, &ctx)),
            c.parallel_accounts,
        )
        .await?;
        let outputs = OrgOutputs {
            organization_id: org.0,
            management_account_id: org.1,
            root_id,
            ou_id,
            ou_path: format!("{}/{}", c.parent_ou, c.customer),
            accounts: out,
        };
        serde_json::to_value(outputs).map_err(|e| StepError::permanent(e.to_string()))
    }
}

/// Where the customer's accounts go, shared by the accounts ensured in parallel.
struct Placed<'a> {
    client: &'a Client,
    root_id: &'a str,
    ou_id: &'a str,
    /// (id, email) of the accounts listed before any was created.
    existing: &'a [(String, String)],
}

impl Org {
    /// One account of the customer: found or created, moved into the OU, tagged.
    async fn ensure_member(
        &self,
        at: &Placed<'_>,
        c: &OrgConfig,
        a: &OrgAccount,
        ctx: &StepContext,
    ) -> Result<AccountOut, StepError> {
        let client = at.client;
        let account_tags = tags(
            &c.tags,
            &[
                ("managed-by", "landfall"),
                ("customer", &c.customer),
                ("environment", a.environment.as_str()),
            ],
        )?;
        let found = at
            .existing
            .iter()
            .find(|(_, email)| email.eq_ignore_ascii_case(&a.email))
            .map(|(id, _)| id.clone());
        let (id, created, tagged) = match found {
            Some(id) => (id, false, false),
            None => self.ensure_account(client, a, &account_tags, ctx).await?,
        };
        move_into(client, &id, at.ou_id, at.root_id, a, &c.customer).await?;
        // A request of this node asked for these tags already (AWS tags the account as it
        // creates it); an account found or adopted gets them now.
        if !tagged {
            waiting_out_conflicts(|| {
                client
                    .tag_resource()
                    .resource_id(&id)
                    .set_tags(Some(account_tags.clone()))
                    .send()
            })
            .await
            .map_err(|e| step_error("TagResource", e))?;
        }
        if created {
            Milestone::AccountCreated {
                name: a.name.clone(),
                email: a.email.clone(),
                id: id.clone(),
            }
            .emit(ctx);
        }
        Ok(AccountOut {
            name: a.name.clone(),
            email: a.email.clone(),
            id,
            environment: a.environment,
            created,
        })
    }
}

/// How a creation request ended.
enum Creation {
    Succeeded(String),
    Failed(String),
}

impl Org {
    /// (account id, whether a request of this node made it, whether the request that made it
    /// was this node's and so tagged it), for an account not listed yet.
    async fn ensure_account(
        &self,
        client: &Client,
        a: &OrgAccount,
        tags: &[Tag],
        ctx: &StepContext,
    ) -> Result<(String, bool, bool), StepError> {
        let key = format!("create-account/{}", a.email.to_ascii_lowercase());
        let mut request = ctx
            .saved_progress(&key)
            .and_then(|v| v["request_id"].as_str().map(str::to_string));
        let mut ours = request.is_some();
        // Each round follows one request; a request refused for its email sends us back to
        // looking, which finds the account or the request that holds the email. Three rounds
        // are enough for "lost answer, then asked again" with room to spare.
        for round in 0..3 {
            if round > 0 {
                if let Some(id) = find_by_email(client, &a.email).await? {
                    return Ok((id, ours, false));
                }
            }
            let id = match request.take() {
                Some(id) => id,
                None => match in_progress(client, &a.name).await? {
                    Some(id) => {
                        ctx.log(format!(
                            "following the creation of {} already under way ({id})",
                            a.name
                        ));
                        id
                    }
                    None => {
                        let id = self.start_creation(client, a, tags, ctx).await?;
                        ctx.save_progress(&key, json!({ "request_id": id })).await?;
                        ctx.log(format!(
                            "creating account {} ({}), request {id}",
                            a.name, a.email
                        ));
                        ours = true;
                        id
                    }
                },
            };
            match self.wait_for(client, &id, a, ctx).await? {
                // Our request carried the tags.
                Creation::Succeeded(account) => return Ok((account, ours, ours)),
                Creation::Failed(reason) if reason == "EMAIL_ALREADY_EXISTS" => continue,
                Creation::Failed(reason) => {
                    return Err(StepError::new(
                        classify_failure_reason(&reason),
                        format!("creating account {} failed: {reason}", a.name),
                    ))
                }
            }
        }
        Err(StepError::permanent(format!(
            "the email {} of account {} belongs to an AWS account that is not in this organization: invite that account, or choose another email",
            a.email, a.name
        )))
    }

    /// Follows a creation request until it ends (or the attempt's time is up: transient).
    async fn wait_for(
        &self,
        client: &Client,
        request_id: &str,
        a: &OrgAccount,
        ctx: &StepContext,
    ) -> Result<Creation, StepError> {
        let deadline = tokio::time::Instant::now() + self.create_timeout;
        let mut patience = Patience::new(self.first_poll, Some(deadline));
        loop {
            let status = client
                .describe_create_account_status()
                .create_account_request_id(request_id)
                .send()
                .await;
            match status {
                Ok(s) => {
                    let s = s.create_account_status();
                    match s.and_then(|s| s.state()) {
                        Some(CreateAccountState::Succeeded) => {
                            return s
                                .and_then(|s| s.account_id())
                                .map(|id| Creation::Succeeded(id.to_string()))
                                .ok_or_else(|| {
                                    StepError::transient("account created without an id")
                                });
                        }
                        Some(CreateAccountState::Failed) => {
                            let reason = s
                                .and_then(|s| s.failure_reason())
                                .map(|r| r.as_str().to_string())
                                .unwrap_or_else(|| "UNKNOWN".into());
                            return Ok(Creation::Failed(reason));
                        }
                        _ => patience.grow(1.5, self.poll_interval),
                    }
                }
                Err(e) => {
                    let err = step_error("DescribeCreateAccountStatus", e);
                    if err.class != landfall_engine::ErrorClass::Transient {
                        return Err(err);
                    }
                    // Throttled while polling (after the SDK's own retries): wait longer.
                    patience.grow(2.0, Duration::from_secs(60));
                }
            }
            if !patience.has_time() {
                return Err(StepError::transient(format!(
                    "account {} still being created after {} (request {request_id}; the next attempt follows it)",
                    a.name,
                    humantime::format_duration(self.create_timeout)
                )));
            }
            patience.sleep(ctx).await?;
        }
    }
}

impl Org {
    /// Asks for an account. A new organization refuses account creation while it finalizes
    /// (`FinalizingOrganizationException`, "can take up to an hour"): that is waited out
    /// here, like a pending creation, within the attempt's time.
    async fn start_creation(
        &self,
        client: &Client,
        a: &OrgAccount,
        tags: &[Tag],
        ctx: &StepContext,
    ) -> Result<String, StepError> {
        let deadline = tokio::time::Instant::now() + self.create_timeout;
        let mut patience = Patience::new(self.first_poll, Some(deadline));
        loop {
            let started = waiting_out_conflicts(|| {
                client
                    .create_account()
                    .email(&a.email)
                    .account_name(&a.name)
                    .set_tags(Some(tags.to_vec()))
                    .send()
            })
            .await;
            match started {
                Ok(started) => {
                    return started
                        .create_account_status()
                        .and_then(|s| s.id())
                        .map(str::to_string)
                        .ok_or_else(|| {
                            StepError::transient("CreateAccount returned no request id")
                        })
                }
                Err(e) => {
                    let err = step_error("CreateAccount", e);
                    if !super::errors::is_not_ready(&err) || !patience.has_time() {
                        return Err(err);
                    }
                }
            }
            patience.sleep(ctx).await?;
            patience.grow(2.0, self.poll_interval);
        }
    }
}

/// The request id of a creation in progress for an account of this name, if any.
async fn in_progress(client: &Client, name: &str) -> Result<Option<String>, StepError> {
    let mut pages = client
        .list_create_account_status()
        .states(CreateAccountState::InProgress)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| step_error("ListCreateAccountStatus", e))?;
        if let Some(s) = page
            .create_account_statuses()
            .iter()
            .find(|s| s.account_name() == Some(name))
        {
            return Ok(s.id().map(str::to_string));
        }
    }
    Ok(None)
}

async fn find_by_email(client: &Client, email: &str) -> Result<Option<String>, StepError> {
    Ok(list_accounts(client)
        .await?
        .into_iter()
        .find(|(_, e)| e.eq_ignore_ascii_case(email))
        .map(|(id, _)| id))
}

/// (organization id, management account id), creating the organization if there is none.
async fn ensure_organization(client: &Client) -> Result<(String, String), StepError> {
    use aws_sdk_organizations::operation::describe_organization::DescribeOrganizationError;
    let described = match client.describe_organization().send().await {
        Ok(o) => o.organization().cloned(),
        Err(e) => match e.as_service_error() {
            Some(DescribeOrganizationError::AwsOrganizationsNotInUseException(_)) => {
                match waiting_out_conflicts(|| {
                    client
                        .create_organization()
                        .feature_set(OrganizationFeatureSet::All)
                        .send()
                })
                .await
                {
                    Ok(o) => o.organization().cloned(),
                    // Another run created it meanwhile: adopt it.
                    Err(e) if outcome(&e) == Outcome::AlreadyExists => client
                        .describe_organization()
                        .send()
                        .await
                        .map_err(|e| step_error("DescribeOrganization", e))?
                        .organization()
                        .cloned(),
                    Err(e) => return Err(step_error("CreateOrganization", e)),
                }
            }
            _ => return Err(step_error("DescribeOrganization", e)),
        },
    };
    let org =
        described.ok_or_else(|| StepError::transient("no organization description returned"))?;
    if org.feature_set() != Some(&OrganizationFeatureSet::All) {
        return Err(StepError::permanent(
            "the organization does not have all features enabled; enable them in the console (SCPs need them)",
        ));
    }
    Ok((
        org.id().unwrap_or_default().to_string(),
        org.master_account_id().unwrap_or_default().to_string(),
    ))
}

async fn ensure_root_with_scps(client: &Client) -> Result<String, StepError> {
    let roots = client
        .list_roots()
        .send()
        .await
        .map_err(|e| step_error("ListRoots", e))?;
    let root = roots
        .roots()
        .first()
        .ok_or_else(|| StepError::transient("the organization has no root yet"))?;
    let root_id = root.id().unwrap_or_default().to_string();
    let enabled = root.policy_types().iter().any(|p| {
        p.r#type() == Some(&PolicyType::ServiceControlPolicy)
            && p.status() == Some(&PolicyTypeStatus::Enabled)
    });
    if !enabled {
        let enabled = waiting_out_conflicts(|| {
            client
                .enable_policy_type()
                .root_id(&root_id)
                .policy_type(PolicyType::ServiceControlPolicy)
                .send()
        })
        .await;
        match enabled {
            Ok(_) => {}
            Err(e) if outcome(&e) == Outcome::AlreadyDone => {}
            Err(e) => return Err(step_error("EnablePolicyType", e)),
        }
    }
    Ok(root_id)
}

/// The id of the OU named `name` under `parent`, created if missing (never duplicated: AWS
/// refuses a second OU of one name under one parent, and that answer is taken as "adopt").
async fn ensure_ou(
    client: &Client,
    parent: &str,
    name: &str,
    tags: &[Tag],
) -> Result<String, StepError> {
    if let Some(id) = find_ou(client, parent, name).await? {
        return Ok(id);
    }
    let created = waiting_out_conflicts(|| {
        client
            .create_organizational_unit()
            .parent_id(parent)
            .name(name)
            .set_tags(Some(tags.to_vec()))
            .send()
    })
    .await;
    match created {
        Ok(out) => out
            .organizational_unit()
            .and_then(|ou| ou.id())
            .map(str::to_string)
            .ok_or_else(|| StepError::transient("CreateOrganizationalUnit returned no id")),
        Err(e) if outcome(&e) == Outcome::AlreadyExists => {
            find_ou(client, parent, name).await?.ok_or_else(|| {
                StepError::transient(format!(
                    "CreateOrganizationalUnit said {name} exists under {parent}, but it is not listed yet"
                ))
            })
        }
        Err(e) => Err(step_error("CreateOrganizationalUnit", e)),
    }
}

async fn find_ou(client: &Client, parent: &str, name: &str) -> Result<Option<String>, StepError> {
    let mut pages = client
        .list_organizational_units_for_parent()
        .parent_id(parent)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| step_error("ListOrganizationalUnitsForParent", e))?;
        if let Some(ou) = page
            .organizational_units()
            .iter()
            .find(|ou| ou.name() == Some(name))
        {
            return ou
                .id()
                .map(|id| Some(id.to_string()))
                .ok_or_else(|| StepError::transient("an OU without an id"));
        }
    }
    Ok(None)
}

/// (id, email) of every account of the organization.
async fn list_accounts(client: &Client) -> Result<Vec<(String, String)>, StepError> {
    let mut out = Vec::new();
    let mut pages = client.list_accounts().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| step_error("ListAccounts", e))?;
        for a in page.accounts() {
            if let (Some(id), Some(email)) = (a.id(), a.email()) {
                out.push((id.to_string(), email.to_string()));
            }
        }
    }
    Ok(out)
}

/// Where an account found by email sits (its parent) and its tags, refusing another customer's:
/// an account that sits in another OU belongs to someone else (another customer, a team's own
/// OU), and taking it because an email matched would hand one customer's account to another.
/// AWS's `MoveAccount` accepts it; Landfall refuses, naming where the account is. `ou` is the
/// customer's OU, `None` while it does not exist (a plan).
async fn placement(
    client: &Client,
    account: &str,
    ou: Option<&str>,
    root: &str,
    a: &OrgAccount,
    customer: &str,
) -> Result<(String, BTreeMap<String, String>), StepError> {
    // Tagged with its customer when it was created: another customer's account is refused even
    // while it still waits at the root to be moved by that customer's run.
    let listed = client
        .list_tags_for_resource()
        .resource_id(account)
        .send()
        .await
        .map_err(|e| step_error("ListTagsForResource", e))?;
    let tags: BTreeMap<String, String> = listed
        .tags()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect();
    if let Some(owner) = tags.get("customer").filter(|owner| *owner != customer) {
        return Err(StepError::permanent(format!(
            "the email {} of account {} belongs to account {account} of customer {owner}: an account serves one customer; choose another email",
            a.email, a.name
        ))
        .with_context(json!({ "account_id": account, "email": a.email, "customer": owner })));
    }
    let parents = client
        .list_parents()
        .child_id(account)
        .send()
        .await
        .map_err(|e| step_error("ListParents", e))?;
    let current = parents
        .parents()
        .first()
        .and_then(|p| p.id())
        .ok_or_else(|| StepError::transient(format!("account {account} has no parent")))?
        .to_string();
    if Some(current.as_str()) != ou && current != root {
        let name = client
            .describe_organizational_unit()
            .organizational_unit_id(&current)
            .send()
            .await
            .ok()
            .and_then(|d| {
                d.organizational_unit()
                    .and_then(|u| u.name().map(str::to_string))
            })
            .unwrap_or_else(|| current.clone());
        return Err(StepError::permanent(format!(
            "the email {} of account {} belongs to account {account}, which is in the OU {name}, not this customer's: an account serves one customer. Choose another email, or move the account to the root yourself if it really is this customer's",
            a.email, a.name
        ))
        .with_context(json!({ "account_id": account, "email": a.email, "ou": name })));
    }
    Ok((current, tags))
}

/// Moves an account into the customer's OU, from the root only (see [`placement`]).
async fn move_into(
    client: &Client,
    account: &str,
    ou: &str,
    root: &str,
    a: &OrgAccount,
    customer: &str,
) -> Result<(), StepError> {
    let (current, _) = placement(client, account, Some(ou), root, a, customer).await?;
    if current != ou {
        let moved = waiting_out_conflicts(|| {
            client
                .move_account()
                .account_id(account)
                .source_parent_id(&current)
                .destination_parent_id(ou)
                .send()
        })
        .await;
        match moved {
            Ok(_) => {}
            Err(e) if outcome(&e) == Outcome::AlreadyDone => {}
            Err(e) => return Err(step_error("MoveAccount", e)),
        }
    }
    Ok(())
}

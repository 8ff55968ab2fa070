//! `deploy`: a package's stacks into one target (account × region), in the package's order.
//!
//! Per stack: create it; or, if it exists and differs from what the package says (template,
//! parameters, tags), create and execute a change set; or report it unchanged without writing
//! anything. Every write carries a `ClientRequestToken` derived from the node's idempotency
//! key, and every stack is looked up before it is created, so a re-run after a crash finds the
//! stack it already started, follows it to its end and carries on ("adopted") instead of
//! failing with "already exists". Stacks with the same `order` deploy side by side.
//!
//! A stack that fails is not cleaned up here: that is the workflow's `rollback` step (a
//! `when: failure()` branch), so what happens on failure is visible in the workflow file.

use crate::milestone::Milestone;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_cloudformation::types::{Capability, ChangeSetType, Parameter, Stack, Tag};
use aws_sdk_cloudformation::Client;
use landfall_engine::sha256_hex;
use landfall_engine::ConfigProblem;
use landfall_engine::Path;
use landfall_engine::{Package, PackageRef};
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::monitor::{cause, describe, phase, watch, Board, Ev, Phase, Poll};
use super::plan::{plan, waves, StackPlan, Target};
use crate::approval::policy::{enforce, ApprovalPolicy};
use crate::aws::errors::step_error;
use crate::aws::Aws;

pub(crate) struct Deploy {
    pub aws: Aws,
    /// The operators' approval policies: a covered target is written to only with the
    /// approvals they ask for recorded for this deploy's digest.
    pub policies: Arc<Vec<ApprovalPolicy>>,
}

impl Deploy {
    /// Refuses before any write unless every policy covering the target is satisfied. The
    /// target's environment is read from its account's `environment` tag (set at onboarding,
    /// outside any workflow's reach) as well as the package's manifest; either selects.
    async fn approved(&self, c: &DeployConfig, ctx: &StepContext) -> Result<(), StepError> {
        if self.policies.is_empty() {
            return Ok(());
        }
        let mut environments: Vec<String> = c.target.environment.iter().cloned().collect();
        if self
            .policies
            .iter()
            .any(|p| !p.selects.environment.is_empty())
        {
            environments.extend(
                super::super::account_environments(&self.aws, [c.target.account_id.as_str()])
                    .await?,
            );
        }
        let refs: Vec<&str> = environments.iter().map(String::as_str).collect();
        let what = format!("target {}", c.target.label());
        // Applying a plan: what was approved is the plan.
        let digest = match c.planned()? {
            Some((_, plan_digest)) => Some(plan_digest),
            None => c.digest.clone(),
        };
        enforce(&self.policies, ctx, &refs, digest.as_deref(), &what)?;
        Ok(())
    }
}

pub(crate) fn default_deployer() -> String {
    crate::aws::iam::DEPLOYER_ROLE.to_string()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployConfig {
    /// The package as `id@version` (use the fetch step's resolved version, not `@latest`).
    pub package: String,
    /// The digest the package must have (the fetch step's): what was fetched is what deploys.
    #[serde(default)]
    pub digest: Option<String>,
    /// Where to deploy (one item of the `targets` step).
    pub target: Target,
    /// Values for the stacks' `deploy_parameters` (e.g. `ManagementAccountId`).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// The role assumed in the target account.
    #[serde(default = "default_deployer")]
    pub role: String,
    /// Tried only when `role` may not be assumed; e.g. `OrganizationAccountAccessRole` for
    /// accounts onboarded before Landfall's roles existed. Off unless the workflow says so.
    #[serde(default)]
    pub fallback_role: Option<String>,
    /// How often to look at a running stack operation.
    #[serde(default)]
    pub poll: Poll,
    /// The outputs of a `plan: true` deploy step of this run (every target's plan). Given,
    /// this target's planned changes are applied exactly (planned change sets executed,
    /// planned stacks created), anything changed since refuses the node, and approvals are
    /// checked for this plan's digest instead of the package's.
    #[serde(default)]
    pub plan: Option<Value>,
    /// How old a plan may be when it is applied: AWS drifts, approvers looked at the world
    /// as it was.
    #[serde(with = "humantime_serde", default = "default_plan_expiry")]
    #[schemars(with = "String")]
    pub plan_expires_after: Duration,
}

fn default_plan_expiry() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl DeployConfig {
    /// This target's part of the plan, and the plan's digest.
    fn planned(&self) -> Result<Option<(Vec<Value>, String)>, StepError> {
        let Some(plan) = &self.plan else {
            return Ok(None);
        };
        let digest = landfall_engine::digest_of(plan);
        let mine = plan
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| {
                e["outputs"]["account_id"] == self.target.account_id.as_str()
                    && e["outputs"]["region"] == self.target.region.as_str()
            })
            .ok_or_else(|| {
                StepError::permanent(format!(
                    "the plan has nothing for target {}: plan again",
                    self.target.label()
                ))
            })?;
        let planned_at = mine["outputs"]["planned_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let age = planned_at.map(|t| chrono::Utc::now().signed_duration_since(t));
        let limit =
            chrono::Duration::from_std(self.plan_expires_after).unwrap_or(chrono::Duration::MAX);
        if age.is_none_or(|a| a > limit) {
            return Err(StepError::permanent(format!(
                "the plan for {} expired (plans may be applied for {}): plan again",
                self.target.label(),
                humantime::format_duration(self.plan_expires_after)
            )));
        }
        let stacks = mine["outputs"]["stacks"]
            .as_array()
            .cloned()
            .ok_or_else(|| {
                StepError::permanent(format!(
                    "the plan for {} lists no stacks (it is not a deploy plan): plan again",
                    self.target.label()
                ))
            })?;
        Ok(Some((stacks, digest)))
    }
}

/// What happened to one stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    Created,
    Updated,
    Unchanged,
    /// Started by an earlier attempt of this node (before a crash), followed to its end here.
    Adopted,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StackResult {
    pub name: String,
    pub stack_name: String,
    pub stack_id: String,
    pub action: Action,
    pub status: String,
    pub outputs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_set: Option<Value>,
}

#[async_trait]
impl Plugin for Deploy {
    const NAME: &'static str = "deploy";
    const SUMMARY: &'static str =
        "Deploy a package's stacks into one account and region: create, or update by change set, and follow them to the end";
    type Config = DeployConfig;

    fn circuit_scope(with: &Value) -> Option<String> {
        crate::aws::target_scope(with)
    }

    fn validate(c: &DeployConfig) -> Vec<ConfigProblem> {
        common_problems(&c.package, &c.poll)
    }

    async fn run(&self, c: DeployConfig, ctx: StepContext) -> Result<Value, StepError> {
        self.approved(&c, &ctx).await?;
        let Prepared {
            pkg,
            plans,
            cfn,
            role,
        } = prepare(
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
        if role != c.role {
            ctx.warn(format!(
                "{} could not be assumed in {}; deploying through {role}",
                c.role, c.target.account
            ));
        }
        let job = Job::new(cfn, &c, &pkg, &ctx);
        let results = match c.planned()? {
            Some((changes, digest)) => {
                ctx.log(format!(
                    "applying plan {} to {}",
                    &digest[..12.min(digest.len())],
                    c.target.label()
                ));
                job.apply_planned(&plans, &changes).await?
            }
            None => job.deploy_all(&plans).await?,
        };
        let outputs: BTreeMap<&str, &BTreeMap<String, String>> = results
            .iter()
            .map(|r| (r.name.as_str(), &r.outputs))
            .collect();
        Ok(json!({
            "account": c.target.account,
            "account_id": c.target.account_id,
            "region": c.target.region,
            "role": role,
            "package": format!("{}@{}", pkg.id, pkg.version),
            "stacks": results,
            "outputs": outputs,
        }))
    }

    /// Reads the target's stacks and lets CloudFormation plan the updates (change sets made,
    /// never executed); approvals are not needed to plan, only to apply.
    async fn plan(
        &self,
        c: DeployConfig,
        ctx: StepContext,
    ) -> Result<Option<landfall_engine::PlanOutcome>, StepError> {
        if c.plan.is_some() {
            // The plan step of this workflow counted these changes already.
            return Ok(Some(landfall_engine::PlanOutcome {
                summary: format!("{}: applies the plan made above", c.target.label()),
                changes: Vec::new(),
                outputs: Value::String(landfall_engine::PLAN_UNKNOWN.into()),
            }));
        }
        let Prepared {
            pkg,
            plans,
            cfn,
            role,
        } = prepare(
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
        let job = Job::new(cfn, &c, &pkg, &ctx);
        let stacks = job.preview_all(&plans).await?;
        let changes: Vec<Value> = stacks
            .iter()
            .filter(|s| s["action"] != "none")
            .map(|s| {
                let mut s = s.clone();
                s["target"] = json!(c.target.label());
                s
            })
            .collect();
        let summary = format!(
            "{}: {}",
            c.target.label(),
            stacks
                .iter()
                .map(super::preview::describe_change)
                .collect::<Vec<_>>()
                .join("; ")
        );
        Ok(Some(landfall_engine::PlanOutcome {
            summary,
            changes,
            outputs: json!({
                "account": c.target.account,
                "account_id": c.target.account_id,
                "region": c.target.region,
                "role": role,
                "package": format!("{}@{}", pkg.id, pkg.version),
                // Every stack as the plan saw it (unchanged ones too: apply checks them).
                "stacks": stacks,
                "planned_at": chrono::Utc::now().to_rfc3339(),
                "outputs": landfall_engine::PLAN_UNKNOWN,
            }),
        }))
    }
}

pub(crate) fn common_problems(package: &str, poll: &Poll) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    match package.parse::<PackageRef>() {
        Ok(r) if r.version.is_none() => out.push(ConfigProblem {
            path: Path::root().key("package"),
            message: format!(
                "`{package}` must name a version (`{}@3`): give the fetch step's resolved version, so every target deploys the same one",
                r.id
            ),
        }),
        Ok(_) => {}
        Err(message) => out.push(ConfigProblem {
            path: Path::root().key("package"),
            message,
        }),
    }
    if let Some(m) = poll.problem() {
        out.push(ConfigProblem {
            path: Path::root().key("poll"),
            message: m,
        });
    }
    out
}

/// What `deploy`, `verify` and `rollback` all start from: the package (digest checked), its
/// stacks for the target, and a CloudFormation client in the target through the first role
/// that may be assumed (with that role's name).
pub(crate) struct Prepared {
    pub pkg: Package,
    pub plans: Vec<StackPlan>,
    pub cfn: Client,
    pub role: String,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn prepare(
    aws: &Aws,
    ctx: &StepContext,
    package: &str,
    digest: Option<&str>,
    target: &Target,
    parameters: &BTreeMap<String, String>,
    role: &str,
    fallback_role: Option<&str>,
) -> Result<Prepared, StepError> {
    let pkg = fetch(ctx, package, digest)?;
    let plans = plan(
        &pkg.content.manifest,
        &pkg.content.files,
        target,
        parameters,
    )?;
    let mut roles = vec![role.to_string()];
    roles.extend(fallback_role.map(str::to_string));
    let (cfn, role) = aws
        .cloudformation_via(
            &target.account_id,
            &roles,
            &target.region,
            ctx.idempotency_key(),
        )
        .await?;
    Ok(Prepared {
        pkg,
        plans,
        cfn,
        role,
    })
}

/// The package, digest re-checked by the store and compared with the one the workflow names.
pub(crate) fn fetch(
    ctx: &StepContext,
    reference: &str,
    digest: Option<&str>,
) -> Result<Package, StepError> {
    let r: PackageRef = reference.parse().map_err(StepError::permanent)?;
    let pkg = ctx.fetch_package(&r)?;
    if let Some(want) = digest {
        if pkg.digest != want {
            return Err(StepError::critical(format!(
                "package {reference} has digest {}, not {want} as the workflow says: it is not the package that was fetched",
                pkg.digest
            )));
        }
    }
    Ok(pkg)
}

/// The tags every stack carries.
#[derive(Debug, Clone)]
pub(crate) struct TagSet {
    pub customer: String,
    pub package: String,
    pub version: String,
    pub run: String,
}

pub(crate) const TAG_RUN: &str = "landfall:run";
pub(crate) const TAG_CREATED_BY: &str = "landfall:created-by-run";

impl TagSet {
    /// Tags for a stack; `created_by` is kept from the existing stack on updates.
    pub(crate) fn tags(&self, created_by: Option<&str>) -> Vec<Tag> {
        [
            ("landfall:customer", self.customer.as_str()),
            ("landfall:package", self.package.as_str()),
            ("landfall:version", self.version.as_str()),
            (TAG_RUN, self.run.as_str()),
            (TAG_CREATED_BY, created_by.unwrap_or(&self.run)),
            ("managed-by", "landfall"),
        ]
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
    }
}

/// Whether a `DescribeChangeSet` error means "there is no such change set": AWS answers
/// `ChangeSetNotFound` (404); moto a `ValidationError` saying it does not exist.
fn change_set_absent(err: &StepError) -> bool {
    let code = err.context.get("code").and_then(Value::as_str);
    matches!(
        code,
        Some("ChangeSetNotFoundException" | "ChangeSetNotFound")
    ) || (code == Some("ValidationError") && err.message.contains("does not exist"))
}

/// A `ClientRequestToken` (and change set name) for one operation on one stack by one node:
/// the same across retries and resumes, different for every operation.
pub(crate) fn client_token(idempotency_key: &str, stack: &str, op: &str) -> String {
    format!(
        "landfall-{}",
        &sha256_hex(format!("{idempotency_key}\n{stack}\n{op}").as_bytes())[..40]
    )
}

pub(crate) fn tag_of<'a>(stack: &'a Stack, key: &str) -> Option<&'a str> {
    stack
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

pub(crate) fn outputs_of(stack: &Stack) -> BTreeMap<String, String> {
    stack
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
        .collect()
}

/// One node's deployment.
#[derive(Clone)]
pub(crate) struct Job {
    pub cfn: Client,
    pub target: Target,
    pub tags: TagSet,
    pub poll: Poll,
    pub ctx: StepContext,
    pub board: Arc<Mutex<Board>>,
}

/// How a change set's computation ended.
pub(crate) enum Computed {
    Ready(Box<aws_sdk_cloudformation::operation::describe_change_set::DescribeChangeSetOutput>),
    /// CloudFormation found nothing to change; the change set is deleted.
    NoChanges,
    /// It failed, for this reason.
    Failed(String),
}

impl Job {
    /// Waits for change set `name` of `stack_id` to be computed (seconds, usually), the first
    /// look after `first_wait`, the waits growing to the poll's maximum.
    pub(crate) async fn computed_change_set(
        &self,
        stack_id: &str,
        name: &str,
        first_wait: Duration,
    ) -> Result<Computed, StepError> {
        let mut patience = crate::aws::Patience::new(first_wait, None);
        loop {
            let d = self
                .cfn
                .describe_change_set()
                .stack_name(stack_id)
                .change_set_name(name)
                .send()
                .await
                .map_err(|e| step_error("DescribeChangeSet", e))?;
            match d.status().map(|s| s.as_str()).unwrap_or_default() {
                "CREATE_PENDING" | "CREATE_IN_PROGRESS" => {
                    patience.sleep(&self.ctx).await?;
                    patience.grow(2.0, self.poll.max);
                }
                "FAILED" => {
                    let reason = d.status_reason().unwrap_or_default().to_string();
                    if !no_changes(&reason) {
                        return Ok(Computed::Failed(reason));
                    }
                    // Nothing to change after all; leave no change set behind.
                    let _ = self
                        .cfn
                        .delete_change_set()
                        .stack_name(stack_id)
                        .change_set_name(name)
                        .send()
                        .await;
                    return Ok(Computed::NoChanges);
                }
                _ => return Ok(Computed::Ready(Box::new(d))),
            }
        }
    }
}

impl Job {
    /// One target's deployment of `pkg`, as `deploy` runs, plans or applies it.
    fn new(cfn: Client, c: &DeployConfig, pkg: &Package, ctx: &StepContext) -> Self {
        Job {
            cfn,
            target: c.target.clone(),
            tags: TagSet {
                customer: pkg
                    .content
                    .manifest
                    .get("customer")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                package: pkg.id.clone(),
                version: pkg.version.to_string(),
                run: ctx.run_id.to_string(),
            },
            poll: c.poll,
            ctx: ctx.clone(),
            board: Arc::new(Mutex::new(Board::default())),
        }
    }

    /// Deploys `plans` wave by wave; stops after the first wave with a failure.
    pub(crate) async fn deploy_all(
        &self,
        plans: &[StackPlan],
    ) -> Result<Vec<StackResult>, StepError> {
        self.in_waves(plans, "starting", |job, p, params, slot| async move {
            job.deploy_one(&p, params?, slot).await
        })
        .await
    }

    /// Runs `one` for each stack, wave by wave (a wave's stacks at once, each with the
    /// parameters its predecessors' outputs give, or why they cannot be given); stops after
    /// the first wave with a failure, once all of that wave's stacks have ended. The results
    /// in the package's order.
    pub(crate) async fn in_waves<F, Fut>(
        &self,
        plans: &[StackPlan],
        starting: &str,
        one: F,
    ) -> Result<Vec<StackResult>, StepError>
    where
        F: Fn(Job, StackPlan, Result<BTreeMap<String, String>, StepError>, usize) -> Fut,
        Fut: std::future::Future<Output = Result<StackResult, StepError>> + Send + 'static,
    {
        let slots: Vec<usize> = {
            let mut b = self.board.lock().unwrap_or_else(|p| p.into_inner());
            plans
                .iter()
                .map(|p| b.add(&p.name, p.facts.resources.clone()))
                .collect()
        };
        self.report(starting);
        let mut results: Vec<StackResult> = Vec::new();
        let mut outputs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut i = 0;
        for wave in waves(plans) {
            let mut set = tokio::task::JoinSet::new();
            for p in wave {
                let params = p.resolve(&outputs);
                set.spawn(one(self.clone(), p.clone(), params, slots[i]));
                i += 1;
            }
            let mut first_err: Option<StepError> = None;
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(Ok(r)) => {
                        outputs.insert(r.name.clone(), r.outputs.clone());
                        results.push(r);
                    }
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(e) => {
                        first_err.get_or_insert(StepError::transient(format!(
                            "a stack deployment task ended abnormally: {e}"
                        )));
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        results.sort_by_key(|r| {
            plans
                .iter()
                .position(|p| p.name == r.name)
                .unwrap_or(usize::MAX)
        });
        Ok(results)
    }

    pub(crate) fn report(&self, what: &str) {
        let mut b = self.board.lock().unwrap_or_else(|p| p.into_inner());
        b.report(&self.ctx, what);
    }

    pub(crate) fn observe(&self, slot: usize, e: &Ev) {
        let mut b = self.board.lock().unwrap_or_else(|p| p.into_inner());
        let Some((name, t)) = b.stacks.get_mut(slot) else {
            return;
        };
        t.observe(e);
        let (done, of) = t.counts();
        let what = format!(
            "{name}: {done}/{of} resources ({} {})",
            e.logical_id, e.status
        );
        b.report(&self.ctx, &what);
    }

    pub(crate) fn finish(&self, slot: usize, success: bool, what: &str) {
        {
            let mut b = self.board.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, t)) = b.stacks.get_mut(slot) {
                t.finish(success);
            }
        }
        self.report(what);
    }

    /// One stack: create, update by change set, adopt, or leave unchanged.
    pub(crate) async fn deploy_one(
        &self,
        p: &StackPlan,
        params: BTreeMap<String, String>,
        slot: usize,
    ) -> Result<StackResult, StepError> {
        let mut adopted = false;
        // Each pass either finishes or moves the stack to a resting status; three suffice
        // (adopt → compare → update).
        for _ in 0..3 {
            let existing = describe(&self.cfn, &p.stack_name).await?;
            let Some(stack) = existing else {
                return self.create(p, &params, slot).await;
            };
            let status = stack
                .stack_status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            let stack_id = stack.stack_id().unwrap_or(&p.stack_name).to_string();
            match status.as_str() {
                s if phase(s) == Phase::InProgress => {
                    let ours = tag_of(&stack, TAG_RUN) == Some(&*self.ctx.run_id);
                    self.ctx.log(format!(
                        "{} is {s}{}; following it to its end",
                        p.stack_name,
                        if ours {
                            " (started by this run before it was interrupted)"
                        } else {
                            ""
                        }
                    ));
                    adopted |= ours;
                    let starts = start_statuses(s);
                    let out = watch(
                        &self.cfn,
                        &stack_id,
                        &starts,
                        &self.poll,
                        Duration::ZERO,
                        &self.ctx,
                        |e| self.observe(slot, e),
                    )
                    .await?;
                    if phase(&out.status) != Phase::Succeeded {
                        return Err(self.failure(p, &out));
                    }
                }
                "REVIEW_IN_PROGRESS" => {
                    let stack = stack.complete("deployed")?;
                    return self
                        .change_set(p, &params, &stack, ChangeSetType::Create, slot)
                        .await
                }
                "CREATE_COMPLETE"
                | "UPDATE_COMPLETE"
                | "UPDATE_ROLLBACK_COMPLETE"
                | "IMPORT_COMPLETE"
                | "IMPORT_ROLLBACK_COMPLETE" => {
                    let stack = stack.complete("updated")?;
                    // Written by this run already (an attempt cut off by a crash): the
                    // stack is this run's work, adopted rather than "unchanged".
                    adopted |= tag_of(&stack, TAG_RUN) == Some(&*self.ctx.run_id);
                    if self.same(p, &params, &stack).await? {
                        self.finish(slot, true, &format!("{} unchanged", p.name));
                        return Ok(StackResult {
                            name: p.name.clone(),
                            stack_name: p.stack_name.clone(),
                            stack_id,
                            action: if adopted {
                                Action::Adopted
                            } else {
                                Action::Unchanged
                            },
                            status,
                            outputs: outputs_of(&stack),
                            change_set: None,
                        });
                    }
                    return self
                        .change_set(p, &params, &stack, ChangeSetType::Update, slot)
                        .await;
                }
                other => {
                    return Err(StepError::permanent(format!(
                        "stack {} in {}/{} is {other}{}: it cannot be updated; roll it back or delete it (the workflow's rollback step does), then run again",
                        p.stack_name,
                        self.target.account,
                        self.target.region,
                        stack
                            .stack_status_reason()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ))
                    .with_context(json!({ "stack": p.stack_name, "status": other })))
                }
            }
        }
        Err(StepError::transient(format!(
            "stack {} kept changing while being deployed; trying again",
            p.stack_name
        )))
    }

    pub(crate) async fn create(
        &self,
        p: &StackPlan,
        params: &BTreeMap<String, String>,
        slot: usize,
    ) -> Result<StackResult, StepError> {
        let token = client_token(self.ctx.idempotency_key(), &p.stack_name, "create");
        Milestone::StackStarted {
            stack: p.stack_name.clone(),
            account: self.target.account.clone(),
            region: self.target.region.clone(),
            action: "create".into(),
            change_set: None,
        }
        .emit(&self.ctx);
        let sent = self
            .cfn
            .create_stack()
            .stack_name(&p.stack_name)
            .template_body(&p.template_body)
            .set_parameters(Some(cfn_parameters(params)))
            .set_tags(Some(self.tags.tags(None)))
            .capabilities(Capability::CapabilityNamedIam)
            .client_request_token(&token)
            .send()
            .await;
        let stack_id = match sent {
            Ok(out) => out.stack_id().unwrap_or(&p.stack_name).to_string(),
            Err(e) => {
                let err = step_error("CreateStack", e);
                if err.context.get("code").and_then(Value::as_str) == Some("AlreadyExistsException")
                {
                    // Created by an earlier attempt whose answer was lost: adopt it.
                    return Box::pin(self.deploy_one(p, params.clone(), slot)).await;
                }
                let mut err = self.api_failure(p, err).await;
                // The request may have left a half-made stack: the rollback step owns it.
                err.context["create_attempted"] = json!(true);
                return Err(err);
            }
        };
        let out = watch(
            &self.cfn,
            &stack_id,
            &["CREATE_IN_PROGRESS"],
            &self.poll,
            self.poll.initial,
            &self.ctx,
            |e| self.observe(slot, e),
        )
        .await?;
        self.finished(p, out, Action::Created, None, slot).await
    }

    async fn change_set(
        &self,
        p: &StackPlan,
        params: &BTreeMap<String, String>,
        stack: &Stack,
        kind: ChangeSetType,
        slot: usize,
    ) -> Result<StackResult, StepError> {
        let idem = self.ctx.idempotency_key();
        let name = client_token(idem, &p.stack_name, "change-set");
        let stack_id = stack.stack_id().unwrap_or(&p.stack_name).to_string();
        // Absent only when CloudFormation says so: a throttled or failed look taken for "absent"
        // made the create that follows fail with AlreadyExists.
        let existing = match self
            .cfn
            .describe_change_set()
            .stack_name(&stack_id)
            .change_set_name(&name)
            .send()
            .await
        {
            Ok(d) => Some(d),
            Err(e) => {
                let err = step_error("DescribeChangeSet", e);
                if !change_set_absent(&err) {
                    return Err(err);
                }
                None
            }
        };
        if existing.is_none() {
            let created = self
                .cfn
                .create_change_set()
                .stack_name(&p.stack_name)
                .change_set_name(&name)
                .change_set_type(kind.clone())
                .template_body(&p.template_body)
                .set_parameters(Some(cfn_parameters(params)))
                .set_tags(Some(self.tags.tags(tag_of(stack, TAG_CREATED_BY))))
                .capabilities(Capability::CapabilityNamedIam)
                .client_token(client_token(idem, &p.stack_name, "create-change-set"))
                .send()
                .await;
            if let Err(e) = created {
                let err = step_error("CreateChangeSet", e);
                if no_changes(&err.message) {
                    return Ok(self.unchanged(p, stack, slot));
                }
                // Made by a call whose answer was lost: it is ours (the name comes from this
                // node's idempotency key), so it is described below and adopted.
                if err.context.get("code").and_then(Value::as_str) != Some("AlreadyExistsException")
                {
                    return Err(self.api_failure(p, err).await);
                }
            }
        }
        let described = match self
            .computed_change_set(&stack_id, &name, Duration::from_secs(1))
            .await?
        {
            Computed::Ready(d) => d,
            Computed::NoChanges => return Ok(self.unchanged(p, stack, slot)),
            Computed::Failed(reason) => {
                return Err(StepError::permanent(format!(
                    "change set for {} failed: {reason}",
                    p.stack_name
                )))
            }
        };
        let changes: Vec<Value> = described
            .changes()
            .iter()
            .filter_map(|c| c.resource_change())
            .map(|r| {
                json!({
                    "action": r.action().map(|a| a.as_str()),
                    "logical_id": r.logical_resource_id(),
                    "type": r.resource_type(),
                    "replacement": r.replacement().map(|x| x.as_str()),
                })
            })
            .collect();
        let summary = json!({ "name": name, "changes": changes });
        let execution = described
            .execution_status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        let update = kind == ChangeSetType::Update;
        if execution == "AVAILABLE" {
            Milestone::StackStarted {
                stack: p.stack_name.clone(),
                account: self.target.account.clone(),
                region: self.target.region.clone(),
                action: if update { "update" } else { "create" }.into(),
                change_set: Some(summary.clone()),
            }
            .emit(&self.ctx);
            self.cfn
                .execute_change_set()
                .stack_name(&stack_id)
                .change_set_name(&name)
                .client_request_token(client_token(idem, &p.stack_name, "execute"))
                .send()
                .await
                .map_err(|e| step_error("ExecuteChangeSet", e))?;
        }
        let starts: &[&str] = if update {
            &["UPDATE_IN_PROGRESS"]
        } else {
            &["CREATE_IN_PROGRESS"]
        };
        let out = watch(
            &self.cfn,
            &stack_id,
            starts,
            &self.poll,
            self.poll.initial,
            &self.ctx,
            |e| self.observe(slot, e),
        )
        .await?;
        let action = if update {
            Action::Updated
        } else {
            Action::Created
        };
        self.finished(p, out, action, Some(summary), slot).await
    }

    pub(crate) fn unchanged(&self, p: &StackPlan, stack: &Stack, slot: usize) -> StackResult {
        self.finish(slot, true, &format!("{} unchanged", p.name));
        StackResult {
            name: p.name.clone(),
            stack_name: p.stack_name.clone(),
            stack_id: stack.stack_id().unwrap_or(&p.stack_name).to_string(),
            action: Action::Unchanged,
            status: stack
                .stack_status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            outputs: outputs_of(stack),
            change_set: None,
        }
    }

    pub(crate) async fn finished(
        &self,
        p: &StackPlan,
        out: super::monitor::Outcome,
        action: Action,
        change_set: Option<Value>,
        slot: usize,
    ) -> Result<StackResult, StepError> {
        if phase(&out.status) != Phase::Succeeded {
            self.finish(slot, false, &format!("{} {}", p.name, out.status));
            return Err(self.failure(p, &out));
        }
        self.finish(slot, true, &format!("{} {}", p.name, out.status));
        let stack = describe(&self.cfn, &out.stack_id)
            .await?
            .ok_or_else(|| {
                StepError::transient(format!(
                    "stack {} vanished after it succeeded",
                    p.stack_name
                ))
            })?
            .complete("reported")?;
        Milestone::StackFinished {
            stack: p.stack_name.clone(),
            account: self.target.account.clone(),
            region: self.target.region.clone(),
            status: out.status.clone(),
            action: serde_json::to_value(action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        }
        .emit(&self.ctx);
        Ok(StackResult {
            name: p.name.clone(),
            stack_name: p.stack_name.clone(),
            stack_id: out.stack_id,
            action,
            status: out.status,
            outputs: outputs_of(&stack),
            change_set,
        })
    }

    /// A stack that ended badly, with its cause.
    fn failure(&self, p: &StackPlan, out: &super::monitor::Outcome) -> StepError {
        let why = cause(&out.failed)
            .or_else(|| out.reason.clone())
            .unwrap_or_else(|| "no failure event was reported".into());
        StepError::permanent(format!(
            "stack {} in {}/{} ended {}: {why}",
            p.stack_name, self.target.account, self.target.region, out.status
        ))
        .with_context(json!({
            "stack": p.stack_name,
            "stack_id": out.stack_id,
            "account": self.target.account,
            "account_id": self.target.account_id,
            "region": self.target.region,
            "status": out.status,
            "status_reason": out.reason,
            "failed_events": out.failed,
            "last_events": out.recent,
        }))
    }

    /// An API call that refused the operation, with the stack's state and failed events when
    /// there are any.
    async fn api_failure(&self, p: &StackPlan, err: StepError) -> StepError {
        let status = describe(&self.cfn, &p.stack_name)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.stack_status().map(|x| x.as_str().to_string()));
        let mut seen = Default::default();
        let failed: Vec<Ev> = super::monitor::new_events(&self.cfn, &p.stack_name, &[], &mut seen)
            .await
            .map(|evs| evs.into_iter().filter(Ev::failed).collect())
            .unwrap_or_default();
        let mut context = json!({
            "stack": p.stack_name,
            "account": self.target.account,
            "account_id": self.target.account_id,
            "region": self.target.region,
            "status": status,
            "failed_events": failed,
            "api_error": err.context,
        });
        if let Some(c) = cause(&failed) {
            context["cause"] = json!(c);
        }
        StepError::new(
            err.class,
            format!(
                "stack {} in {}/{}: {}",
                p.stack_name, self.target.account, self.target.region, err.message
            ),
        )
        .with_context(context)
    }

    /// Whether the stack already is what the plan says: template, parameters and tags (the
    /// run tags aside). Nothing is written when it is.
    pub(crate) async fn same(
        &self,
        p: &StackPlan,
        params: &BTreeMap<String, String>,
        stack: &Stack,
    ) -> Result<bool, StepError> {
        if parameters_of(stack.parameters()) != p.effective(params) {
            return Ok(false);
        }
        let ignore = |k: &str| k == TAG_RUN || k == TAG_CREATED_BY;
        let have: BTreeMap<&str, &str> = stack
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?, t.value()?)))
            .filter(|(k, _)| !ignore(k))
            .collect();
        let want_tags = self.tags.tags(None);
        let want: BTreeMap<&str, &str> = want_tags
            .iter()
            .filter_map(|t| Some((t.key()?, t.value()?)))
            .filter(|(k, _)| !ignore(k))
            .collect();
        if have != want {
            return Ok(false);
        }
        let body = self
            .cfn
            .get_template()
            .stack_name(stack.stack_id().unwrap_or(&p.stack_name))
            .send()
            .await
            .map_err(|e| step_error("GetTemplate", e))?
            .template_body()
            .unwrap_or_default()
            .to_string();
        Ok(same_template(&body, &p.template_body))
    }
}

/// Templates are equal when they parse to the same document (AWS returns the text as sent;
/// some emulators re-serialise it).
pub(crate) fn same_template(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        serde_yaml::from_str::<Value>(a),
        serde_yaml::from_str::<Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

pub(crate) fn no_changes(message: &str) -> bool {
    message.contains("No updates are to be performed")
        || message.contains("didn't contain changes")
        || message.contains("does not contain changes")
}

/// The stack statuses that begin the operation a stack in `status` is in.
pub(crate) fn start_statuses(status: &str) -> Vec<&'static str> {
    match status {
        "CREATE_IN_PROGRESS" | "ROLLBACK_IN_PROGRESS" => vec!["CREATE_IN_PROGRESS"],
        "DELETE_IN_PROGRESS" => vec!["DELETE_IN_PROGRESS"],
        "IMPORT_IN_PROGRESS" | "IMPORT_ROLLBACK_IN_PROGRESS" => vec!["IMPORT_IN_PROGRESS"],
        "UPDATE_ROLLBACK_IN_PROGRESS" | "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS" => {
            vec!["UPDATE_IN_PROGRESS", "UPDATE_ROLLBACK_IN_PROGRESS"]
        }
        _ => vec!["UPDATE_IN_PROGRESS"],
    }
}

pub(crate) fn cfn_parameters(params: &BTreeMap<String, String>) -> Vec<Parameter> {
    params
        .iter()
        .map(|(k, v)| {
            Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build()
        })
        .collect()
}

/// CloudFormation parameters (a stack's, a change set's) as a map of key to value.
pub(crate) fn parameters_of(
    list: &[aws_sdk_cloudformation::types::Parameter],
) -> BTreeMap<String, String> {
    list.iter()
        .filter_map(|x| {
            Some((
                x.parameter_key()?.to_string(),
                x.parameter_value()?.to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applying(planned_at: chrono::DateTime<chrono::Utc>, region: &str) -> DeployConfig {
        serde_json::from_value(json!({
            "package": "acme-baseline@2",
            "target": { "account": "acme-prod", "account_id": "111122223333", "region": "us-east-1" },
            "plan": [{
                "status": "changes", "summary": "s", "changes": [],
                "outputs": {
                    "account_id": "111122223333", "region": region,
                    "planned_at": planned_at.to_rfc3339(),
                    "stacks": [{ "action": "none", "stack": "acme-network" }],
                },
            }],
        }))
        .unwrap()
    }

    #[test]
    fn a_target_applies_its_own_part_of_a_fresh_plan_only() {
        let now = chrono::Utc::now();
        let c = applying(now, "us-east-1");
        let (stacks, digest) = c.planned().unwrap().unwrap();
        assert_eq!(
            stacks,
            [json!({ "action": "none", "stack": "acme-network" })]
        );
        assert_eq!(digest, landfall_engine::digest_of(c.plan.as_ref().unwrap()));
        let old = applying(now - chrono::Duration::hours(25), "us-east-1");
        let e = old.planned().unwrap_err();
        assert!(
            e.message
                .contains("expired (plans may be applied for 1day)"),
            "{}",
            e.message
        );
        let elsewhere = applying(now, "eu-west-1");
        let e = elsewhere.planned().unwrap_err();
        assert!(
            e.message
                .contains("the plan has nothing for target acme-prod/us-east-1"),
            "{}",
            e.message
        );
    }

    #[test]
    fn tokens_are_stable_and_distinct_per_operation() {
        let a = client_token("k", "acme-network", "create");
        assert_eq!(a, client_token("k", "acme-network", "create"));
        assert_ne!(a, client_token("k", "acme-network", "execute"));
        assert_ne!(a, client_token("k", "acme-access", "create"));
        assert_ne!(a, client_token("k2", "acme-network", "create"));
        // ClientRequestToken: [a-zA-Z][-a-zA-Z0-9]*, at most 128 characters.
        assert!(a.len() <= 128 && a.starts_with("landfall-"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn templates_compare_by_content() {
        assert!(same_template(
            "A: 1\nB: [x]\n",
            "{\"B\": [\"x\"], \"A\": 1}"
        ));
        assert!(!same_template("A: 1", "A: 2"));
    }
}

//! AWS access for plugins: SDK configuration from the standard chain, and the one place that
//! maps SDK errors to the engine's error classes.
//!
//! Retries happen at two grains that never stack on one fault:
//! - **The call.** A throttled, 5xx, reset or time-out call is retried where it happened by the
//!   SDK's adaptive retry strategy ([`call_retries`]): exponential backoff with full jitter,
//!   at most [`CALL_ATTEMPTS`] attempts, drawing on a retry budget (token bucket), and slowing
//!   the client down while it is throttled. Budget and rate limiter are shared per *retry
//!   partition*, one per service × account × region ([`partition`]), so one customer's
//!   throttled account does not slow another's. [`TransientCodes`] adds the Organizations
//!   answers AWS documents as "try again later" that the SDK does not know.
//! - **The node.** Only when a call's retries are spent (or its budget is empty) does the error
//!   reach the engine, which retries the node by the step's policy. A node's plugin re-reads
//!   what exists and adopts it, so a node retry repeats no write already done.
//!
//! A sustained outage empties the budget: each call then makes one attempt, and the engine's
//! slower node retries and circuit breaker take over; so the grains add, never multiply.
//! Plugins that poll (account creation, stack status) back off inside their own loop and treat
//! throttling there as "wait longer", not as a failure.

pub(crate) mod errors;
pub(crate) mod iam;
pub(crate) mod org;
pub(crate) mod policy;
pub(crate) mod rate;
pub(crate) mod stack;
pub(crate) mod targets;

use std::sync::Arc;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_organizations::config::retry::RetryPartition;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, SharedRetryClassifier,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use landfall_engine::{ErrorClass, StepError};
use tokio::sync::OnceCell;

/// SDK configuration, loaded once on first use (profiles, environment, SSO, `AWS_PROFILE`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL` work as users expect).
#[derive(Debug, Default, Clone)]
pub struct Aws {
    config: Arc<OnceCell<SdkConfig>>,
    /// Request rates per service × account × region (`[aws.rate_limits]`), for every client.
    buckets: Arc<rate::Buckets>,
}

impl Aws {
    /// Uses an explicit configuration instead of the standard chain (tests, embedding).
    pub fn from_config(config: SdkConfig) -> Self {
        let cell = OnceCell::new();
        // A fresh cell cannot be full; `set` only fails then.
        let _ = cell.set(config);
        Aws {
            config: Arc::new(cell),
            buckets: Arc::default(),
        }
    }

    /// The standard chain, with requests per second per service (`[aws.rate_limits]`).
    pub fn with_rate_limits(limits: &std::collections::BTreeMap<String, u32>) -> Self {
        Aws {
            config: Arc::default(),
            buckets: Arc::new(rate::Buckets::new(limits)),
        }
    }

    pub async fn config(&self) -> &SdkConfig {
        self.config
            .get_or_init(|| async {
                aws_config::defaults(BehaviorVersion::latest())
                    .retry_config(call_retries())
                    .load()
                    .await
            })
            .await
    }

    fn region(conf: &SdkConfig) -> String {
        conf.region()
            .map_or_else(|| "no-region".into(), |r| r.to_string())
    }

    pub async fn organizations(&self) -> aws_sdk_organizations::Client {
        let conf = self.config().await;
        let region = Self::region(conf);
        let mut b = aws_sdk_organizations::config::Builder::from(conf)
            .retry_partition(partition("organizations", "management", &region))
            .retry_classifier(SharedRetryClassifier::new(TransientCodes));
        if let Some(h) =
            self.buckets
                .limited(conf.http_client(), "organizations", "management", &region)
        {
            b = b.http_client(h);
        }
        let c = b.build();
        aws_sdk_organizations::Client::from_conf(c)
    }

    /// An IAM client acting inside a member account, through `role_name` there (assumed from
    /// the management account). `session` names the session in CloudTrail.
    pub async fn iam_in(
        &self,
        account_id: &str,
        role_name: &str,
        session: &str,
    ) -> Result<aws_sdk_iam::Client, StepError> {
        let (conf, creds) = self.assume(account_id, role_name, session).await?;
        let mut b = aws_sdk_iam::config::Builder::from(conf)
            .credentials_provider(creds)
            .retry_partition(partition("iam", account_id, "global"))
            .retry_classifier(SharedRetryClassifier::new(TransientCodes));
        if let Some(h) = self
            .buckets
            .limited(conf.http_client(), "iam", account_id, "global")
        {
            b = b.http_client(h);
        }
        let c = b.build();
        Ok(aws_sdk_iam::Client::from_conf(c))
    }

    /// A CloudFormation client in `region` of a member account, through `role_name` there.
    pub async fn cloudformation_in(
        &self,
        account_id: &str,
        role_name: &str,
        region: &str,
        session: &str,
    ) -> Result<aws_sdk_cloudformation::Client, StepError> {
        let (conf, creds) = self.assume(account_id, role_name, session).await?;
        let mut b = aws_sdk_cloudformation::config::Builder::from(conf)
            .credentials_provider(creds)
            .region(aws_config::Region::new(region.to_string()))
            .retry_partition(partition("cloudformation", account_id, region))
            .retry_classifier(SharedRetryClassifier::new(TransientCodes));
        if let Some(h) =
            self.buckets
                .limited(conf.http_client(), "cloudformation", account_id, region)
        {
            b = b.http_client(h);
        }
        let c = b.build();
        Ok(aws_sdk_cloudformation::Client::from_conf(c))
    }

    /// Like [`Self::cloudformation_in`], trying each role in turn: the next is tried only when
    /// the previous one may not be assumed (access denied), never on a transient failure.
    pub async fn cloudformation_via(
        &self,
        account_id: &str,
        roles: &[String],
        region: &str,
        session: &str,
    ) -> Result<(aws_sdk_cloudformation::Client, String), StepError> {
        let mut last = StepError::permanent("no role to assume was given");
        for role in roles {
            match self
                .cloudformation_in(account_id, role, region, session)
                .await
            {
                Ok(c) => return Ok((c, role.clone())),
                Err(e) if e.class == ErrorClass::Permanent => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Waits until `role_name` in `account_id` can be assumed: IAM takes seconds to make a new
    /// role usable, and meanwhile AssumeRole answers "access denied". Bounded by
    /// [`ROLE_PROPAGATION`] and the attempt's deadline; past them the attempt fails transiently.
    pub async fn wait_assumable(
        &self,
        account_id: &str,
        role_name: &str,
        session: &str,
        ctx: &landfall_engine::StepContext,
    ) -> Result<(), StepError> {
        let start = tokio::time::Instant::now();
        let mut limit = start + ROLE_PROPAGATION;
        if let Some(d) = ctx.deadline {
            limit = limit.min(d);
        }
        let mut patience = Patience::new(Duration::from_millis(250), Some(limit));
        loop {
            match self.assume(account_id, role_name, session).await {
                Ok(_) => return Ok(()),
                Err(e) if e.class == ErrorClass::Permanent => {
                    if !patience.has_time() {
                        return Err(StepError::transient(format!(
                            "{role_name} in {account_id} was created but still cannot be assumed after {:.0?}: {}",
                            start.elapsed(),
                            e.message
                        )));
                    }
                }
                Err(e) => return Err(e),
            }
            patience.sleep(ctx).await?;
            patience.grow(2.0, Duration::from_secs(5));
        }
    }

    /// Temporary credentials for `role_name` in `account_id`.
    async fn assume(
        &self,
        account_id: &str,
        role_name: &str,
        session: &str,
    ) -> Result<(&SdkConfig, aws_credential_types::Credentials), StepError> {
        let conf = self.config().await;
        let arn = format!("arn:aws:iam::{account_id}:role/{role_name}");
        let session: String = format!("landfall-{}", session.chars().take(32).collect::<String>());
        let sts = aws_sdk_sts::config::Builder::from(conf)
            .retry_partition(partition("sts", "management", &Self::region(conf)))
            .retry_classifier(SharedRetryClassifier::new(TransientCodes))
            .build();
        let out = aws_sdk_sts::Client::from_conf(sts)
            .assume_role()
            .role_arn(&arn)
            .role_session_name(session)
            .send()
            .await
            .map_err(|e| errors::step_error("AssumeRole", e))?;
        let c = out.credentials().ok_or_else(|| {
            StepError::transient(format!("AssumeRole {arn} returned no credentials"))
        })?;
        let creds = aws_credential_types::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            std::time::SystemTime::try_from(*c.expiration()).ok(),
            "landfall-assume-role",
        );
        Ok((conf, creds))
    }
}

/// How long a new role may take to become assumable before the attempt gives up (AWS
/// documents "a few seconds"; in practice under a minute).
pub(crate) const ROLE_PROPAGATION: Duration = Duration::from_secs(60);

/// Attempts per call, the first included (the SDK's default is 3; Organizations throttles at
/// low rates in normal use, so a call gets a little more patience before the node fails).
pub(crate) const CALL_ATTEMPTS: u32 = 5;

/// The SDK's adaptive retry mode: standard retries (exponential backoff, full jitter, a retry
/// budget) plus client-side rate limiting while throttled.
pub fn call_retries() -> RetryConfig {
    RetryConfig::adaptive()
        .with_max_attempts(CALL_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(20))
}

/// How long an Organizations write refused with `ConcurrentModificationException` is tried
/// again before the node fails. AWS serialises changes to an organization and answers "try
/// again later" to a write that overlaps another (another customer's run, a console user); that
/// is contention, not a fault, so it is waited out past the SDK's [`CALL_ATTEMPTS`].
pub(crate) const CONFLICT_PATIENCE: Duration = Duration::from_secs(180);

/// One Organizations write at a time in this process. AWS serialises the changes to an
/// organization and refuses an overlapping write (`ConcurrentModificationException`); the
/// nodes and runs of one process (accounts created in parallel, customers onboarded at once)
/// would otherwise collide with each other and back off. Global because every Organizations
/// client of a process speaks for one organization (the management account's credentials).
/// Writes of other processes still collide and are waited out.
static ORGANIZATION_WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Runs an Organizations write, waiting out `ConcurrentModificationException` and
/// `TooManyRequestsException` that outlived the SDK's own retries (growing, jittered waits, for
/// at most [`CONFLICT_PATIENCE`]); any other answer is returned as it is. Both are contention
/// (writers of one organization, ours in parallel or others'), not faults, so they never fail
/// a node while there is time. The jitter keeps writers that collided from colliding again in
/// step. The wait is not tied to the attempt's cancellation: the engine drops a cancelled
/// attempt's future.
pub(crate) async fn waiting_out_conflicts<T, E, F, Fut>(
    mut call: F,
) -> Result<T, SdkError<E, HttpResponse>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata,
{
    let deadline = tokio::time::Instant::now() + CONFLICT_PATIENCE;
    let mut delay = Duration::from_millis(500);
    loop {
        let answer = {
            // Closed never: the semaphore lives as long as the process.
            let _turn = ORGANIZATION_WRITES.acquire().await;
            call().await
        };
        match answer {
            Err(e)
                if matches!(
                    e.code(),
                    Some("ConcurrentModificationException" | "TooManyRequestsException")
                ) && tokio::time::Instant::now() + delay <= deadline =>
            {
                // Equal jitter: at least half the delay, so the waits still grow.
                let r: f64 = rand::random();
                tokio::time::sleep(delay.mul_f64(0.5 + r / 2.0)).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            answer => return answer,
        }
    }
}

/// Runs the futures (lazy: none has started), at most `limit` at once, and waits for all of them before it
/// answers: one item's failure does not abandon another's side effect half-way (an account
/// creation already asked for is followed to its end and its id kept). Results come in the
/// items' order. Failures join into one error of the gravest class that names each; after a
/// critical failure no further one is started.
pub(crate) async fn each_at_most<R, Fut>(
    items: impl IntoIterator<Item = Fut>,
    limit: usize,
) -> Result<Vec<R>, StepError>
where
    Fut: std::future::Future<Output = Result<R, StepError>>,
{
    use futures_util::stream::{self, StreamExt};
    use std::sync::atomic::{AtomicBool, Ordering};
    // A future that does not start when an earlier one failed critically.
    async fn unless_stopped<R, Fut>(stop: &AtomicBool, item: Fut) -> Option<Result<R, StepError>>
    where
        Fut: std::future::Future<Output = Result<R, StepError>>,
    {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let result = item.await;
        if matches!(&result, Err(e) if e.class == landfall_engine::ErrorClass::Critical) {
            stop.store(true, Ordering::Relaxed);
        }
        Some(result)
    }
    let stop = AtomicBool::new(false);
    let guarded: Vec<_> = items
        .into_iter()
        .map(|item| unless_stopped(&stop, item))
        .collect();
    let results: Vec<Option<Result<R, StepError>>> =
        stream::iter(guarded).buffered(limit.max(1)).collect().await;
    let total = results.len();
    let mut done = Vec::with_capacity(total);
    let mut failed = Vec::new();
    let mut untried = 0;
    for r in results {
        match r {
            Some(Ok(v)) => done.push(v),
            Some(Err(e)) => failed.push(e),
            None => untried += 1,
        }
    }
    if failed.is_empty() {
        return Ok(done);
    }
    Err(joined(failed, total, untried))
}

/// One error for several: the gravest class, the first failure's message and context first.
fn joined(mut failed: Vec<StepError>, total: usize, untried: usize) -> StepError {
    use landfall_engine::ErrorClass;
    let gravity = |c: ErrorClass| match c {
        ErrorClass::Transient => 0,
        ErrorClass::Permanent => 1,
        ErrorClass::Critical => 2,
    };
    // The gravest first: its message leads, its context is kept.
    failed.sort_by_key(|e| std::cmp::Reverse(gravity(e.class)));
    if failed.len() == 1 && untried == 0 {
        return failed.remove(0);
    }
    let n = failed.len();
    let mut rest = failed.split_off(1);
    let mut first = failed.remove(0);
    let mut causes: Vec<String> = rest.iter().map(|e| e.message.clone()).collect();
    causes.extend(rest.iter_mut().flat_map(|e| std::mem::take(&mut e.causes)));
    causes.append(&mut first.causes);
    let untried = if untried > 0 {
        format!("; {untried} not tried after it")
    } else {
        String::new()
    };
    first.message = format!("{n} of {total} failed{untried}: {}", first.message);
    first.causes = causes;
    first
}

/// The retry partition of a client: retry budget and rate limiter are shared by every client
/// of one service × account × region, and by nothing else.
pub(crate) fn partition(service: &str, account: &str, region: &str) -> RetryPartition {
    RetryPartition::new(format!("landfall/{service}/{account}/{region}"))
}

/// The waits between looks at something AWS finishes on its own (an account being created, a
/// new role becoming assumable, a change set being computed): the delay grows to a cap, the
/// waiting ends at a deadline, and a cancelled attempt stops at once.
pub(crate) struct Patience {
    delay: Duration,
    deadline: Option<tokio::time::Instant>,
}

impl Patience {
    pub(crate) fn new(first: Duration, deadline: Option<tokio::time::Instant>) -> Self {
        Patience {
            delay: first,
            deadline,
        }
    }

    /// Whether the next wait ends before the deadline.
    pub(crate) fn has_time(&self) -> bool {
        self.deadline
            .is_none_or(|d| tokio::time::Instant::now() + self.delay <= d)
    }

    /// The next delay: `factor` times this one, at most `cap`.
    pub(crate) fn grow(&mut self, factor: f64, cap: Duration) {
        self.delay = self.delay.mul_f64(factor).min(cap);
    }

    /// Sleeps the current delay, or until the attempt is cancelled.
    pub(crate) async fn sleep(&self, ctx: &landfall_engine::StepContext) -> Result<(), StepError> {
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => Ok(()),
            _ = ctx.cancel.cancelled() => Err(StepError::transient("cancelled")),
        }
    }
}

/// The circuit-breaker scope of a step that works in one target (`with.target`): its account
/// and region, so the breaker, like the retry partition, is per account × region. `org` and
/// `policy` name none: every customer's calls go to the one organization's API, whose
/// throttling is indeed shared.
pub(crate) fn target_scope(with: &serde_json::Value) -> Option<String> {
    let t = &with["target"];
    Some(format!(
        "{}/{}",
        t["account_id"].as_str()?,
        t["region"].as_str()?
    ))
}

/// Marks as transient the error codes that AWS documents as "try again later" and the SDK's own
/// classifiers do not retry (they come from [`errors::CALL_RETRY_CODES`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransientCodes;

impl ClassifyRetry for TransientCodes {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(resp) = ctx.response() else {
            return RetryAction::NoActionIndicated;
        };
        let code = resp.body().bytes().and_then(errors::code_in_body);
        match code {
            Some(c) if errors::CALL_RETRY_CODES.contains(&c.as_str()) => {
                RetryAction::transient_error()
            }
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "landfall transient codes"
    }
}

/// The `environment` tags of accounts, read from Organizations (set at onboarding, outside any
/// workflow's reach): what selects the operators' approval policies.
pub(crate) async fn account_environments(
    aws: &Aws,
    accounts: impl IntoIterator<Item = &str>,
) -> Result<Vec<String>, StepError> {
    let client = aws.organizations().await;
    let mut out = Vec::new();
    for id in accounts {
        let tags = client
            .list_tags_for_resource()
            .resource_id(id)
            .send()
            .await
            .map_err(|e| errors::step_error("ListTagsForResource", e))?;
        out.extend(
            tags.tags()
                .iter()
                .filter(|t| t.key() == "environment")
                .map(|t| t.value().to_string()),
        );
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// What a write of `policy` or `iam` would change and where, for [`approved_modification`].
pub(crate) struct Modification<'a> {
    /// The accounts whose existing guard rails or roles it changes: their `environment` tags
    /// select the approval policies.
    pub accounts: Vec<String>,
    /// What the node would do now (its own plan, made just before).
    pub changes: &'a [serde_json::Value],
    /// Its `plan:` config: the approved plan (a `plan: true` node's outputs, or a list of them).
    pub plan: Option<&'a serde_json::Value>,
    /// What is changed, as messages name it (`the guard rails of ou-…`).
    pub what: String,
}

/// The enforcement point of `policy` and `iam`: a write that modifies or removes what exists
/// in accounts an approval policy covers goes ahead only as planned and approved: one entry of
/// the plan must hold exactly these changes, and the run must hold approvals for its digest.
pub(crate) async fn approved_modification(
    aws: &Aws,
    policies: &[crate::approval::policy::ApprovalPolicy],
    ctx: &landfall_engine::StepContext,
    m: Modification<'_>,
) -> Result<(), StepError> {
    let Modification {
        accounts,
        changes,
        plan,
        what,
    } = m;
    let what = what.as_str();
    let environments = account_environments(aws, accounts.iter().map(String::as_str)).await?;
    let envs: Vec<&str> = environments.iter().map(String::as_str).collect();
    if !policies.iter().any(|p| p.covers(envs.iter().copied())) {
        return Ok(());
    }
    let Some(plan) = plan else {
        let names: Vec<&str> = policies
            .iter()
            .filter(|p| p.covers(envs.iter().copied()))
            .map(|p| p.name.as_str())
            .collect();
        return Err(StepError::permanent(format!(
            "{what} would change what exists in accounts approval policy {} covers: plan it first (a `plan: true` step of this plugin), have the plan approved, and pass it as `plan:`",
            names.join(", ")
        )));
    };
    let entries: Vec<&serde_json::Value> = match plan.as_array() {
        Some(list) => list.iter().collect(),
        None => vec![plan],
    };
    if !entries
        .iter()
        .any(|e| e["changes"].as_array().map(Vec::as_slice) == Some(changes))
    {
        return Err(StepError::permanent(format!(
            "{what} changed since the plan: plan again (now: {})",
            landfall_engine::actions_counted(changes)
        )));
    }
    let digest = landfall_engine::digest_of(plan);
    crate::approval::policy::enforce(policies, ctx, &envs, Some(&digest), what)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// A service answer with `code`, as the SDK hands it to a caller.
    fn answer(
        code: &str,
    ) -> super::SdkError<
        aws_sdk_organizations::operation::tag_resource::TagResourceError,
        super::HttpResponse,
    > {
        use aws_sdk_organizations::operation::tag_resource::TagResourceError;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;
        let status = aws_smithy_runtime_api::http::StatusCode::try_from(400).expect("a status");
        super::SdkError::service_error(
            TagResourceError::generic(ErrorMetadata::builder().code(code).build()),
            super::HttpResponse::new(status, SdkBody::empty()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_are_waited_out_and_other_answers_returned_at_once() {
        use super::ProvideErrorMetadata;
        use std::time::Duration;
        let start = tokio::time::Instant::now();
        let calls = std::cell::Cell::new(0);
        // Ten refusals in a row (twice the SDK's attempts), conflicts and throttling, then
        // success.
        let r = super::waiting_out_conflicts(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                match n {
                    1..=5 => Err(answer("ConcurrentModificationException")),
                    6..=10 => Err(answer("TooManyRequestsException")),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(r.ok(), Some(11));
        // 0.5 + 1 + 2 + 4 + 8 + 15 × 5 seconds: the waits grow to their cap, each jittered
        // down to no less than half.
        assert!(start.elapsed() <= Duration::from_millis(90_500));
        assert!(start.elapsed() >= Duration::from_millis(45_250));

        calls.set(0);
        let r = super::waiting_out_conflicts(|| {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(answer("ConstraintViolationException")) }
        })
        .await;
        assert_eq!(calls.get(), 1, "any other refusal is not retried here");
        assert_eq!(
            r.err()
                .and_then(|e| e.code().map(str::to_string))
                .as_deref(),
            Some("ConstraintViolationException")
        );

        // Contention that never ends fails the call within the patience.
        let start = tokio::time::Instant::now();
        let r = super::waiting_out_conflicts(|| async {
            Err::<(), _>(answer("ConcurrentModificationException"))
        })
        .await;
        assert!(r.is_err());
        assert!(start.elapsed() <= super::CONFLICT_PATIENCE);
        assert!(start.elapsed() >= super::CONFLICT_PATIENCE - Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn each_at_most_bounds_the_work_waits_for_all_and_names_every_failure() {
        use landfall_engine::{ErrorClass, StepError};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let started = AtomicUsize::new(0);
        let work = |k: usize| {
            let (running, most, started) = (&running, &most, &started);
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10 * (10 - k as u64))).await;
                running.fetch_sub(1, Ordering::SeqCst);
                match k {
                    3 => Err(StepError::transient("three is busy")),
                    6 => Err(StepError::permanent("six is refused")),
                    _ => Ok(k),
                }
            }
        };
        let all = super::each_at_most((0..10).map(work), 4).await;
        assert_eq!(most.load(Ordering::SeqCst), 4);
        assert_eq!(
            started.load(Ordering::SeqCst),
            10,
            "a failure abandons nothing"
        );
        let e = all.unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent, "the gravest class");
        assert_eq!(e.message, "2 of 10 failed: six is refused");
        assert_eq!(e.causes, vec!["three is busy".to_string()]);

        let ok = super::each_at_most((0..5).filter(|k| *k != 3).map(work), 2).await;
        assert_eq!(ok.unwrap(), vec![0, 1, 2, 4], "in the items' order");

        // After a critical failure nothing more starts.
        started.store(0, Ordering::SeqCst);
        let critical = |k: usize| {
            let started = &started;
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                if k == 0 {
                    Err(StepError::new(ErrorClass::Critical, "limit"))
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(k)
                }
            }
        };
        let e = super::each_at_most((0..6).map(critical), 1)
            .await
            .unwrap_err();
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(e.class, ErrorClass::Critical);
        assert!(e.message.contains("5 not tried"), "{}", e.message);
    }

    #[tokio::test(start_paused = true)]
    async fn patience_grows_to_its_cap_and_ends_before_the_deadline() {
        use std::time::Duration;
        let start = tokio::time::Instant::now();
        let mut p = super::Patience::new(
            Duration::from_secs(1),
            Some(start + Duration::from_secs(10)),
        );
        let ctx = landfall_engine::StepContext::detached("x");
        let mut slept = Vec::new();
        while p.has_time() {
            let before = tokio::time::Instant::now();
            p.sleep(&ctx).await.unwrap();
            slept.push(before.elapsed().as_secs());
            p.grow(2.0, Duration::from_secs(3));
            if tokio::time::Instant::now() - start > Duration::from_secs(60) {
                panic!("never stopped");
            }
        }
        // 1 + 2 + 3 + 3 = 9 s; a fifth wait of 3 s would end past the 10 s deadline.
        assert_eq!(slept, [1, 2, 3, 3]);
        ctx.cancel.cancel();
        assert!(
            p.sleep(&ctx).await.is_err(),
            "a cancelled attempt stops waiting"
        );
    }

    #[test]
    fn breakers_are_scoped_by_the_account_and_region_a_node_works_in() {
        let reg = crate::registry(&crate::Settings::default());
        let scope = |plugin: &str, with| reg.get(plugin).unwrap().circuit_scope(&with);
        let target = json!({ "target": { "account": "prod", "account_id": "111122223333", "region": "eu-west-1" } });
        for p in ["deploy", "verify", "rollback"] {
            assert_eq!(
                scope(p, target.clone()).as_deref(),
                Some("111122223333/eu-west-1"),
                "{p}"
            );
        }
        let accounts = json!({ "accounts": [{ "name": "a", "id": "111122223333" }, { "name": "b", "id": "444455556666" }] });
        assert_eq!(
            scope("iam", accounts).as_deref(),
            Some("111122223333+444455556666")
        );
        // The organization's API is one for every customer.
        assert_eq!(scope("org", json!({ "customer": "acme" })), None);
        assert_eq!(scope("deploy", json!({})), None);
    }
}

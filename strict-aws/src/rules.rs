//! The rules, as data and pure functions: what AWS refuses or does later that moto accepts at
//! once. [`crate::layer`] applies them to live traffic; each is unit-tested here without a
//! network. `docs/aws-fidelity.md` lists every rule with the AWS documentation it comes from.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::wire::AwsError;

/// At most this many SCPs attached to one root, OU or account (FullAWSAccess counts).
pub const MAX_SCPS_PER_TARGET: usize = 5;
/// At most this many characters in one SCP document.
pub const MAX_SCP_CHARS: usize = 5120;

/// The layer's settings, from `EMULATOR_*` environment variables (see `scripts/aws-emulator.sh`).
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// Share of calls (0–1) answered by throttling, a 5xx or a reset connection.
    pub fault_rate: f64,
    /// How long `CreateAccount` stays `IN_PROGRESS` (and the account unlisted).
    pub account_delay: Duration,
    /// How long a new IAM role cannot be assumed.
    pub role_delay: Duration,
    /// Accounts the organization may hold, the management account included.
    pub account_quota: usize,
    /// Seed of the fault dice: the same seed and the same sequence of calls give the same faults.
    pub seed: u64,
    /// Chance (0–1) that a write to the organization overlapping another one is refused with
    /// `ConcurrentModificationException`.
    pub conflict_rate: f64,
    /// Time each write to the organization holds its place (so writes of concurrent runs can
    /// overlap, as AWS's do; moto answers in microseconds).
    pub write_latency: Duration,
    /// After `CreateOrganization`, how long account creation answers
    /// `FinalizingOrganizationException`.
    pub finalize_delay: Duration,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            fault_rate: 0.0,
            account_delay: Duration::from_millis(800),
            role_delay: Duration::from_secs(1),
            account_quota: 10,
            seed: 1,
            conflict_rate: 1.0,
            write_latency: Duration::from_millis(10),
            finalize_delay: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{name}={value:?}: {problem}")]
pub struct KnobError {
    pub name: &'static str,
    pub value: String,
    pub problem: &'static str,
}

impl Knobs {
    /// Reads every knob through `get` (the environment in production), defaults for the unset.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Knobs, KnobError> {
        let mut k = Knobs::default();
        let rate = |name: &'static str, v: String| -> Result<f64, KnobError> {
            match v.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(KnobError {
                    name,
                    value: v,
                    problem: "must be a number from 0 to 1",
                }),
            }
        };
        let secs = |name: &'static str, v: String| -> Result<Duration, KnobError> {
            match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
                _ => Err(KnobError {
                    name,
                    value: v,
                    problem: "must be a number of seconds, 0 or more",
                }),
            }
        };
        if let Some(v) = get("EMULATOR_FAULT_RATE") {
            k.fault_rate = rate("EMULATOR_FAULT_RATE", v)?;
        }
        if let Some(v) = get("EMULATOR_CONFLICT_RATE") {
            k.conflict_rate = rate("EMULATOR_CONFLICT_RATE", v)?;
        }
        if let Some(v) = get("EMULATOR_ACCOUNT_DELAY") {
            k.account_delay = secs("EMULATOR_ACCOUNT_DELAY", v)?;
        }
        if let Some(v) = get("EMULATOR_ROLE_DELAY") {
            k.role_delay = secs("EMULATOR_ROLE_DELAY", v)?;
        }
        if let Some(v) = get("EMULATOR_WRITE_LATENCY") {
            k.write_latency = secs("EMULATOR_WRITE_LATENCY", v)?;
        }
        if let Some(v) = get("EMULATOR_FINALIZE_DELAY") {
            k.finalize_delay = secs("EMULATOR_FINALIZE_DELAY", v)?;
        }
        if let Some(v) = get("EMULATOR_ACCOUNT_QUOTA") {
            k.account_quota = match v.trim().parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(KnobError {
                        name: "EMULATOR_ACCOUNT_QUOTA",
                        value: v,
                        problem: "must be a whole number, 1 or more",
                    })
                }
            };
        }
        if let Some(v) = get("EMULATOR_SEED") {
            k.seed = v.trim().parse::<u64>().map_err(|_| KnobError {
                name: "EMULATOR_SEED",
                value: v,
                problem: "must be a whole number",
            })?;
        }
        Ok(k)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "fault_rate": self.fault_rate,
            "account_delay": self.account_delay.as_secs_f64(),
            "role_delay": self.role_delay.as_secs_f64(),
            "account_quota": self.account_quota,
            "seed": self.seed,
            "conflict_rate": self.conflict_rate,
            "write_latency": self.write_latency.as_secs_f64(),
            "finalize_delay": self.finalize_delay.as_secs_f64(),
        })
    }

    /// Applies a partial update (the control endpoint), keys as in [`Self::to_json`].
    pub fn update(&self, patch: &Value) -> Result<Knobs, KnobError> {
        let current = self.to_json();
        let get = |env: &str| {
            let key = env.trim_start_matches("EMULATOR_").to_ascii_lowercase();
            patch
                .get(&key)
                .or_else(|| current.get(&key))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
        };
        Knobs::from_vars(get)
    }
}

/// A fault the layer injects instead of, or after, forwarding a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// 400 with the service's throttling code (AWS throttles before doing anything).
    Throttle,
    /// 429 Too Many Requests.
    TooMany,
    /// 500 Internal Failure.
    Internal,
    /// 503 Service Unavailable.
    Unavailable,
    /// The connection is closed without an answer.
    Reset,
}

/// Whether the call was carried out before the fault (its answer lost) or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

/// Seeded dice: the same seed gives the same faults for the same sequence of calls.
#[derive(Debug)]
pub struct Dice {
    rng: StdRng,
}

impl Dice {
    pub fn new(seed: u64) -> Self {
        Dice {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn chance(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.random::<f64>() < rate
    }

    /// A fault for one call at `rate`, or none. Throttling always comes before the work
    /// (AWS refuses the call); server errors and resets come before or after it, evenly.
    pub fn roll(&mut self, rate: f64) -> Option<(Fault, When)> {
        if !self.chance(rate) {
            return None;
        }
        let fault = match self.rng.random_range(0..5u8) {
            0 => Fault::Throttle,
            1 => Fault::TooMany,
            2 => Fault::Internal,
            3 => Fault::Unavailable,
            _ => Fault::Reset,
        };
        let when = match fault {
            Fault::Throttle | Fault::TooMany => When::Before,
            _ if self.rng.random::<bool>() => When::After,
            _ => When::Before,
        };
        Some((fault, when))
    }
}

/// The error AWS answers for a fault (`None` for a reset: no answer at all).
pub fn fault_error(fault: Fault, service: &str) -> Option<AwsError> {
    let json = service == "organizations";
    Some(match fault {
        Fault::Throttle if json => AwsError::new(
            400,
            "TooManyRequestsException",
            "AWS Organizations can't complete your request because of too many requests. Slow down.",
        ),
        Fault::Throttle => AwsError::new(400, "Throttling", "Rate exceeded"),
        Fault::TooMany if json => AwsError::new(429, "TooManyRequestsException", "Rate exceeded"),
        Fault::TooMany => AwsError::new(429, "Throttling", "Rate exceeded"),
        Fault::Internal if json => AwsError::new(
            500,
            "ServiceException",
            "AWS Organizations can't complete your request because of an internal service error. Try again later.",
        ),
        Fault::Internal => AwsError::new(500, "InternalFailure", "We encountered an internal error. Please try again."),
        Fault::Unavailable if json => AwsError::new(503, "ServiceUnavailableException", "Service Unavailable"),
        Fault::Unavailable => AwsError::new(503, "ServiceUnavailable", "Service Unavailable"),
        Fault::Reset => return None,
    })
}

pub fn concurrent_modification() -> AwsError {
    AwsError::new(
        400,
        "ConcurrentModificationException",
        "AWS Organizations can't complete your request because it conflicts with another attempt to modify the same entity. Try again later.",
    )
}

pub fn finalizing_organization() -> AwsError {
    AwsError::new(
        400,
        "FinalizingOrganizationException",
        "AWS Organizations couldn't perform the operation because your organization hasn't finished initializing. This can take up to an hour. Try again later.",
    )
}

fn constraint(reason: &str, message: &str) -> AwsError {
    AwsError::new(400, "ConstraintViolationException", message).with_reason(reason)
}

/// Attaching `policy` to a target that has `attached` SCPs.
pub fn scp_attach(attached: &[String], policy: &str) -> Option<AwsError> {
    if attached.iter().any(|p| p == policy) {
        return Some(AwsError::new(
            400,
            "DuplicatePolicyAttachmentException",
            "The selected policy is already attached to the specified target.",
        ));
    }
    (attached.len() >= MAX_SCPS_PER_TARGET).then(|| {
        constraint(
            "MAX_POLICY_TYPE_ATTACHMENT_LIMIT_EXCEEDED",
            "You attempted to exceed the number of policies of a certain type that can be attached to an entity at one time.",
        )
    })
}

/// Detaching `policy` from a target that has `attached` SCPs: a target keeps at least one.
pub fn scp_detach(attached: &[String], policy: &str) -> Option<AwsError> {
    if !attached.iter().any(|p| p == policy) {
        return Some(AwsError::new(
            400,
            "PolicyNotAttachedException",
            "The policy isn't attached to the specified target in the specified root.",
        ));
    }
    (attached.len() == 1).then(|| {
        constraint(
            "MIN_POLICY_TYPE_ATTACHMENT_LIMIT_EXCEEDED",
            "You attempted to detach a policy from an entity that would cause the entity to have fewer than the minimum number of policies of a certain type required.",
        )
    })
}

/// An SCP document's size, counted in characters as AWS counts them.
pub fn scp_content(content: &str) -> Option<AwsError> {
    (content.chars().count() > MAX_SCP_CHARS).then(|| {
        constraint(
            "POLICY_CONTENT_LIMIT_EXCEEDED",
            "You attempted to create a policy that is larger than the maximum size.",
        )
    })
}

/// Creating an account when the organization holds `accounts` (listed or being created).
pub fn account_quota(accounts: usize, quota: usize) -> Option<AwsError> {
    (accounts >= quota).then(|| {
        constraint(
            "ACCOUNT_NUMBER_LIMIT_EXCEEDED",
            "You attempted to exceed the limit on the number of accounts in an organization.",
        )
    })
}

/// Creating an OU named `name` under a parent whose OUs are `siblings`.
pub fn duplicate_ou(siblings: &[String], name: &str) -> Option<AwsError> {
    siblings.iter().any(|s| s == name).then(|| {
        AwsError::new(
            400,
            "DuplicateOrganizationalUnitException",
            "An OU with the same name already exists.",
        )
    })
}

/// For an Organizations call that names an account: the parameter holding it, and what AWS
/// answers while that account is still being created (as for an account that does not exist).
pub fn unready_account(operation: &str) -> Option<(&'static str, AwsError)> {
    const TARGET: &str =
        "We can't find a root, OU, account, or policy with the TargetId that you specified.";
    let (param, code, message) = match operation {
        "DescribeAccount" | "MoveAccount" => (
            "AccountId",
            "AccountNotFoundException",
            "You specified an account that doesn't exist.",
        ),
        "ListParents" => (
            "ChildId",
            "ChildNotFoundException",
            "We can't find an organizational unit (OU) or AWS account with the ChildId that you specified.",
        ),
        "TagResource" | "UntagResource" | "ListTagsForResource" => {
            ("ResourceId", "TargetNotFoundException", TARGET)
        }
        "AttachPolicy" => ("TargetId", "TargetNotFoundException", TARGET),
        _ => return None,
    };
    Some((param, AwsError::new(400, code, message)))
}

/// A role that cannot be assumed yet: AWS says access denied, not "wait".
pub fn not_assumable(arn: &str) -> AwsError {
    AwsError::new(
        403,
        "AccessDenied",
        &format!("User: arn:aws:iam::123456789012:root is not authorized to perform: sts:AssumeRole on resource: {arn}"),
    )
}

/// One `CreateAccount` request and what AWS will say of it.
#[derive(Debug, Clone)]
pub struct Creation {
    pub request_id: String,
    pub name: String,
    pub email: String,
    /// The account moto made at once (hidden until `ready`); `None` for a request that fails.
    pub account_id: Option<String>,
    /// Why it fails (`EMAIL_ALREADY_EXISTS`), once `ready`.
    pub failure: Option<&'static str>,
    pub requested: SystemTime,
    /// How long it takes (`ready` is `delay` after the request).
    pub delay: Duration,
    pub ready: Instant,
}

/// Every account creation seen, so `DescribeCreateAccountStatus`, `ListCreateAccountStatus` and
/// the account listings answer as AWS does while creations are under way.
#[derive(Debug, Default)]
pub struct AccountBook {
    creations: Vec<Creation>,
    next: u64,
}

impl AccountBook {
    pub fn clear(&mut self) {
        self.creations.clear();
    }

    /// A request id in AWS's shape (`car-` and 32 lower-case hex digits).
    pub fn new_request_id(&mut self, seed: u64) -> String {
        self.next += 1;
        format!("car-{:016x}{:016x}", seed, self.next)
    }

    pub fn record(&mut self, c: Creation) {
        self.creations.push(c);
    }

    /// Accounts that exist in moto but not yet for AWS's callers.
    pub fn hidden(&self, now: Instant) -> HashSet<String> {
        self.creations
            .iter()
            .filter(|c| now < c.ready)
            .filter_map(|c| c.account_id.clone())
            .collect()
    }

    /// Whether a creation with this email is under way (and will succeed).
    pub fn email_in_flight(&self, email: &str, now: Instant) -> bool {
        self.creations
            .iter()
            .any(|c| now < c.ready && c.failure.is_none() && c.email.eq_ignore_ascii_case(email))
    }

    pub fn status(&self, request_id: &str, now: Instant) -> Option<Value> {
        self.creations
            .iter()
            .find(|c| c.request_id == request_id)
            .map(|c| status_of(c, now))
    }

    /// `ListCreateAccountStatus`: newest first, filtered by state (all when `states` is empty).
    pub fn list(&self, states: &[String], now: Instant) -> Vec<Value> {
        self.creations
            .iter()
            .rev()
            .map(|c| status_of(c, now))
            .filter(|s| {
                states.is_empty()
                    || s["State"]
                        .as_str()
                        .is_some_and(|st| states.iter().any(|w| w == st))
            })
            .collect()
    }
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn status_of(c: &Creation, now: Instant) -> Value {
    let mut s = json!({
        "Id": c.request_id,
        "AccountName": c.name,
        "RequestedTimestamp": epoch(c.requested),
    });
    if now < c.ready {
        s["State"] = json!("IN_PROGRESS");
        return s;
    }
    s["CompletedTimestamp"] = json!(epoch(c.requested) + c.delay.as_secs_f64());
    match (c.failure, &c.account_id) {
        (Some(reason), _) => {
            s["State"] = json!("FAILED");
            s["FailureReason"] = json!(reason);
        }
        (None, Some(id)) => {
            s["State"] = json!("SUCCEEDED");
            s["AccountId"] = json!(id);
        }
        (None, None) => {
            s["State"] = json!("FAILED");
            s["FailureReason"] = json!("INTERNAL_FAILURE");
        }
    }
    s
}

/// Roles created through the layer and when they become assumable.
#[derive(Debug, Default)]
pub struct RoleBook {
    ready: HashMap<String, Instant>,
}

impl RoleBook {
    pub fn clear(&mut self) {
        self.ready.clear();
    }

    pub fn created(&mut self, arn: &str, ready: Instant) {
        self.ready.insert(arn.to_string(), ready);
    }

    pub fn assumable(&self, arn: &str, now: Instant) -> bool {
        self.ready.get(arn).is_none_or(|r| now >= *r)
    }
}

/// The account id in an IAM ARN (`arn:aws:iam::123456789012:role/x`).
pub fn arn_account(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// What the layer did, for tests and the torture harness (`GET /strict-aws/stats`).
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub refusals: BTreeMap<String, u64>,
}

impl Stats {
    pub fn to_json(&self) -> Value {
        json!({ "calls": self.calls, "faults": self.faults, "refusals": self.refusals })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p-{i}")).collect()
    }

    #[test]
    fn a_sixth_scp_is_refused_with_the_attachment_reason() {
        assert_eq!(scp_attach(&ids(4), "p-new"), None);
        let e = scp_attach(&ids(5), "p-new").unwrap();
        assert_eq!(e.code, "ConstraintViolationException");
        assert_eq!(
            e.reason.as_deref(),
            Some("MAX_POLICY_TYPE_ATTACHMENT_LIMIT_EXCEEDED")
        );
        assert_eq!(
            scp_attach(&ids(2), "p-1").unwrap().code,
            "DuplicatePolicyAttachmentException"
        );
    }

    #[test]
    fn calls_naming_an_account_being_created_answer_as_for_an_unknown_one() {
        let found = |op| unready_account(op).map(|(param, e)| (param, e.code));
        assert_eq!(
            found("MoveAccount"),
            Some(("AccountId", "AccountNotFoundException".to_string()))
        );
        assert_eq!(
            found("ListParents"),
            Some(("ChildId", "ChildNotFoundException".to_string()))
        );
        assert_eq!(
            found("ListTagsForResource"),
            Some(("ResourceId", "TargetNotFoundException".to_string()))
        );
        assert_eq!(
            found("AttachPolicy"),
            Some(("TargetId", "TargetNotFoundException".to_string()))
        );
        assert_eq!(found("ListAccounts"), None);
    }

    #[test]
    fn the_last_scp_stays_attached() {
        assert_eq!(scp_detach(&ids(2), "p-1"), None);
        assert_eq!(
            scp_detach(&ids(1), "p-0").unwrap().reason.as_deref(),
            Some("MIN_POLICY_TYPE_ATTACHMENT_LIMIT_EXCEEDED")
        );
        assert_eq!(
            scp_detach(&ids(2), "p-9").unwrap().code,
            "PolicyNotAttachedException"
        );
    }

    #[test]
    fn scp_size_counts_characters_not_bytes() {
        assert_eq!(scp_content(&"a".repeat(5120)), None);
        assert!(scp_content(&"a".repeat(5121)).is_some());
        // 5,120 two-byte characters are 10,240 bytes and still fit.
        assert_eq!(scp_content(&"é".repeat(5120)), None);
        assert_eq!(
            scp_content(&"a".repeat(6000)).unwrap().reason.as_deref(),
            Some("POLICY_CONTENT_LIMIT_EXCEEDED")
        );
    }

    #[test]
    fn the_account_quota_counts_every_account() {
        assert_eq!(account_quota(9, 10), None);
        assert_eq!(
            account_quota(10, 10).unwrap().reason.as_deref(),
            Some("ACCOUNT_NUMBER_LIMIT_EXCEEDED")
        );
    }

    #[test]
    fn duplicate_ou_names_under_one_parent_are_refused() {
        let siblings = vec!["Customers".to_string()];
        assert_eq!(
            duplicate_ou(&siblings, "Customers").unwrap().code,
            "DuplicateOrganizationalUnitException"
        );
        assert_eq!(duplicate_ou(&siblings, "customers"), None);
    }

    #[test]
    fn an_account_is_hidden_and_in_progress_until_ready() {
        let t0 = Instant::now();
        let mut book = AccountBook::default();
        let id = book.new_request_id(7);
        assert!(id.starts_with("car-") && id.len() == 36, "{id}");
        book.record(Creation {
            request_id: id.clone(),
            name: "acme-prod".into(),
            email: "Prod@acme.example".into(),
            account_id: Some("111111111111".into()),
            failure: None,
            requested: SystemTime::now(),
            delay: Duration::from_secs(3),
            ready: t0 + Duration::from_secs(3),
        });
        assert!(book.hidden(t0).contains("111111111111"));
        assert!(book.email_in_flight("prod@ACME.example", t0));
        assert_eq!(book.status(&id, t0).unwrap()["State"], "IN_PROGRESS");
        assert!(book.status(&id, t0).unwrap().get("AccountId").is_none());
        assert_eq!(book.list(&["IN_PROGRESS".into()], t0).len(), 1);

        let later = t0 + Duration::from_secs(3);
        assert!(book.hidden(later).is_empty());
        assert!(!book.email_in_flight("prod@acme.example", later));
        let s = book.status(&id, later).unwrap();
        assert_eq!(s["State"], "SUCCEEDED");
        assert_eq!(s["AccountId"], "111111111111");
        assert!(book.list(&["IN_PROGRESS".into()], later).is_empty());
        assert_eq!(book.list(&[], later).len(), 1);
    }

    #[test]
    fn a_request_for_an_email_in_use_fails_later_with_its_reason() {
        let t0 = Instant::now();
        let mut book = AccountBook::default();
        let id = book.new_request_id(1);
        book.record(Creation {
            request_id: id.clone(),
            name: "dup".into(),
            email: "a@b.example".into(),
            account_id: None,
            failure: Some("EMAIL_ALREADY_EXISTS"),
            requested: SystemTime::now(),
            delay: Duration::from_secs(1),
            ready: t0 + Duration::from_secs(1),
        });
        assert_eq!(book.status(&id, t0).unwrap()["State"], "IN_PROGRESS");
        // A failing request does not make its email "in flight" for another request.
        assert!(!book.email_in_flight("a@b.example", t0));
        let s = book.status(&id, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(s["State"], "FAILED");
        assert_eq!(s["FailureReason"], "EMAIL_ALREADY_EXISTS");
        assert_eq!(
            book.list(&["FAILED".into()], t0 + Duration::from_secs(2))
                .len(),
            1
        );
    }

    #[test]
    fn new_roles_are_assumable_only_after_the_delay() {
        let t0 = Instant::now();
        let mut roles = RoleBook::default();
        let arn = "arn:aws:iam::222222222222:role/landfall-deployer";
        roles.created(arn, t0 + Duration::from_secs(2));
        assert!(!roles.assumable(arn, t0));
        assert!(roles.assumable(arn, t0 + Duration::from_secs(2)));
        assert!(roles.assumable("arn:aws:iam::1:role/other", t0));
        assert_eq!(arn_account(arn), Some("222222222222"));
        assert_eq!(arn_account("nonsense"), None);
    }

    #[test]
    fn the_dice_are_reproducible_and_near_their_rate() {
        let rolls = |seed| {
            let mut d = Dice::new(seed);
            (0..2000).map(|_| d.roll(0.3)).collect::<Vec<_>>()
        };
        assert_eq!(rolls(42), rolls(42));
        assert_ne!(rolls(42), rolls(43));
        let hits = rolls(42).iter().filter(|r| r.is_some()).count();
        assert!((500..700).contains(&hits), "{hits} faults in 2000 at 30%");
        let r = rolls(42);
        for kind in [
            Fault::Throttle,
            Fault::TooMany,
            Fault::Internal,
            Fault::Unavailable,
            Fault::Reset,
        ] {
            assert!(
                r.iter().flatten().any(|(f, _)| *f == kind),
                "{kind:?} never rolled"
            );
        }
        // Throttling is never "after": AWS refuses the call before doing it.
        assert!(r
            .iter()
            .flatten()
            .all(|(f, w)| !matches!(f, Fault::Throttle | Fault::TooMany) || *w == When::Before));
        assert!(r.iter().flatten().any(|(_, w)| *w == When::After));
        assert!(Dice::new(1).roll(0.0).is_none());
    }

    #[test]
    fn fault_answers_use_each_service_s_codes() {
        assert_eq!(
            fault_error(Fault::Throttle, "organizations").unwrap().code,
            "TooManyRequestsException"
        );
        assert_eq!(
            fault_error(Fault::Throttle, "iam").unwrap().code,
            "Throttling"
        );
        assert_eq!(fault_error(Fault::TooMany, "sts").unwrap().status, 429);
        assert_eq!(
            fault_error(Fault::Unavailable, "cloudformation")
                .unwrap()
                .status,
            503
        );
        assert_eq!(fault_error(Fault::Reset, "iam"), None);
    }

    #[test]
    fn knobs_come_from_the_environment_and_bad_values_are_named() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Knobs::from_vars(|_| None).unwrap(), Knobs::default());
        let k = Knobs::from_vars(vars(&[
            ("EMULATOR_FAULT_RATE", "0.25"),
            ("EMULATOR_ACCOUNT_DELAY", "3"),
            ("EMULATOR_ROLE_DELAY", "0.5"),
            ("EMULATOR_ACCOUNT_QUOTA", "25"),
            ("EMULATOR_SEED", "9"),
        ]))
        .unwrap();
        assert_eq!(k.fault_rate, 0.25);
        assert_eq!(k.account_delay, Duration::from_secs(3));
        assert_eq!(k.role_delay, Duration::from_millis(500));
        assert_eq!(k.account_quota, 25);
        assert_eq!(k.seed, 9);
        let e = Knobs::from_vars(vars(&[("EMULATOR_FAULT_RATE", "2")])).unwrap_err();
        assert_eq!(e.name, "EMULATOR_FAULT_RATE");
        assert!(Knobs::from_vars(vars(&[("EMULATOR_ACCOUNT_QUOTA", "0")])).is_err());
        assert!(Knobs::from_vars(vars(&[("EMULATOR_ROLE_DELAY", "-1")])).is_err());
        let patched = k.update(&json!({ "fault_rate": 0.1 })).unwrap();
        assert_eq!(patched.fault_rate, 0.1);
        assert_eq!(patched.account_quota, 25);
    }
}

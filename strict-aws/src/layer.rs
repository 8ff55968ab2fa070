//! The proxy: every request from the SDK passes here on its way to moto. Calls that AWS would
//! refuse are refused here, with AWS's error; calls AWS answers later (account creation) are
//! answered as AWS answers them meanwhile; faults are injected by seeded dice.
//!
//! Rules that must look at the emulator's state (how many SCPs a target has, which OUs a
//! parent has) ask moto directly with the caller's credentials, and hold `org_lock` from the
//! look to the write, so two concurrent callers cannot both pass a check that only one may.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::rules::{self, AccountBook, Creation, Dice, Knobs, RoleBook, Stats, When};
use crate::wire::{xml_text, AwsError, Call, Protocol};

/// Why a request got no answer: the connection is to be closed (an injected reset).
#[derive(Debug, thiserror::Error)]
#[error("connection reset by the strict AWS layer")]
pub struct Reset;

/// An answer, its body whole: rules read and rewrite moto's answers before they are sent.
pub type Answer = Response<Bytes>;

pub struct Layer {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    knobs: Mutex<Knobs>,
    dice: Mutex<Dice>,
    accounts: Mutex<AccountBook>,
    roles: Mutex<RoleBook>,
    org_created: Mutex<Option<Instant>>,
    org_lock: tokio::sync::Mutex<()>,
    org_writes: AtomicUsize,
    stats: Mutex<Stats>,
}

/// Poisoned locks hold plain bookkeeping that stays consistent: keep going with it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct WriteSlot<'a>(&'a AtomicUsize);
impl Drop for WriteSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Layer {
    pub fn new(upstream: String, knobs: Knobs) -> Self {
        Layer {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            dice: Mutex::new(Dice::new(knobs.seed)),
            knobs: Mutex::new(knobs),
            accounts: Mutex::default(),
            roles: Mutex::default(),
            org_created: Mutex::new(None),
            org_lock: tokio::sync::Mutex::new(()),
            org_writes: AtomicUsize::new(0),
            stats: Mutex::default(),
        }
    }

    pub fn knobs(&self) -> Knobs {
        lock(&self.knobs).clone()
    }

    fn count(
        &self,
        table: fn(&mut Stats) -> &mut std::collections::BTreeMap<String, u64>,
        key: String,
    ) {
        *table(&mut lock(&self.stats)).entry(key).or_default() += 1;
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Result<Answer, Reset> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Err(Reset),
        };
        let path = parts.uri.path().to_string();
        if let Some(control) = path.strip_prefix("/strict-aws/") {
            return Ok(self.control(&parts.method, control, &body));
        }
        if path == "/moto-api/reset" {
            lock(&self.accounts).clear();
            lock(&self.roles).clear();
            *lock(&self.org_created) = None;
        }
        let Some(call) = Call::parse(&parts.headers, &body) else {
            return Ok(self.forward(&parts, body).await);
        };
        self.count(
            |s| &mut s.calls,
            format!("{}:{}", call.service, call.operation),
        );

        let knobs = self.knobs();
        let fault = lock(&self.dice).roll(knobs.fault_rate);
        if let Some((f, When::Before)) = fault {
            return self.fault(&call, f);
        }

        let _slot = if call.is_organizations_write() {
            let others = self.org_writes.fetch_add(1, Ordering::SeqCst);
            let slot = WriteSlot(&self.org_writes);
            if others > 0 && lock(&self.dice).chance(knobs.conflict_rate) {
                return Ok(self.refuse(
                    &call,
                    "ConcurrentModification",
                    rules::concurrent_modification(),
                ));
            }
            tokio::time::sleep(knobs.write_latency).await;
            Some(slot)
        } else {
            None
        };

        let answer = self.apply(&parts, &call, body, &knobs).await;
        match fault {
            Some((f, When::After)) => self.fault(&call, f),
            _ => Ok(answer),
        }
    }

    fn fault(&self, call: &Call, f: rules::Fault) -> Result<Answer, Reset> {
        self.count(|s| &mut s.faults, format!("{f:?}"));
        match rules::fault_error(f, &call.service) {
            Some(e) => Ok(error_answer(&e, call.protocol)),
            None => Err(Reset),
        }
    }

    fn refuse(&self, call: &Call, rule: &str, e: AwsError) -> Answer {
        self.count(|s| &mut s.refusals, rule.to_string());
        error_answer(&e, call.protocol)
    }

    /// The rules of one call, then moto.
    async fn apply(
        &self,
        parts: &hyper::http::request::Parts,
        call: &Call,
        body: Bytes,
        knobs: &Knobs,
    ) -> Answer {
        let now = Instant::now();
        let hidden = lock(&self.accounts).hidden(now);
        let h = &parts.headers;
        if call.service == "organizations" {
            if let Some((param, e)) = rules::unready_account(&call.operation) {
                if call.param(param).is_some_and(|a| hidden.contains(a)) {
                    return self.refuse(call, "AccountNotReady", e);
                }
            }
        }
        match (call.service.as_str(), call.operation.as_str()) {
            ("organizations", "CreateOrganization") => {
                let answer = self.forward(parts, body).await;
                if answer.status().is_success() {
                    *lock(&self.org_created) = Some(Instant::now());
                }
                answer
            }
            ("organizations", "CreateAccount") => {
                self.create_account(parts, call, body, knobs).await
            }
            ("organizations", "DescribeCreateAccountStatus") => {
                let id = call.param("CreateAccountRequestId").unwrap_or_default();
                match lock(&self.accounts).status(id, now) {
                    Some(s) => json_answer(json!({ "CreateAccountStatus": s })),
                    None => error_answer(
                        &AwsError::new(400, "CreateAccountStatusNotFoundException", "We can't find an create account request with the CreateAccountRequestId that you specified."),
                        call.protocol,
                    ),
                }
            }
            ("organizations", "ListCreateAccountStatus") => {
                let states: Vec<String> = call.params["States"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                json_answer(
                    json!({ "CreateAccountStatuses": lock(&self.accounts).list(&states, now) }),
                )
            }
            ("organizations", "ListAccounts" | "ListAccountsForParent") => {
                let answer = self.forward(parts, body).await;
                filter_list(answer, "Accounts", "Id", &hidden)
            }
            ("organizations", "ListChildren") => {
                let answer = self.forward(parts, body).await;
                filter_list(answer, "Children", "Id", &hidden)
            }
            ("organizations", "CreateOrganizationalUnit") => {
                let _held = self.org_lock.lock().await;
                let parent = call.param("ParentId").unwrap_or_default();
                let siblings = match self
                    .moto_list(
                        h,
                        "ListOrganizationalUnitsForParent",
                        json!({ "ParentId": parent }),
                        "OrganizationalUnits",
                    )
                    .await
                {
                    Ok(list) => names(&list, "Name"),
                    // Let moto give its own answer (e.g. ParentNotFoundException).
                    Err(_) => Vec::new(),
                };
                match rules::duplicate_ou(&siblings, call.param("Name").unwrap_or_default()) {
                    Some(e) => self.refuse(call, "DuplicateOrganizationalUnit", e),
                    None => self.forward(parts, body).await,
                }
            }
            ("organizations", "CreatePolicy" | "UpdatePolicy") => {
                match call.param("Content").and_then(rules::scp_content) {
                    Some(e) if is_scp_call(call) => self.refuse(call, "PolicyContentLimit", e),
                    _ => self.forward(parts, body).await,
                }
            }
            ("organizations", "AttachPolicy" | "DetachPolicy") => {
                let _held = self.org_lock.lock().await;
                let policy = call.param("PolicyId").unwrap_or_default().to_string();
                let target = call.param("TargetId").unwrap_or_default().to_string();
                let is_scp = self
                    .moto(h, "DescribePolicy", json!({ "PolicyId": policy }))
                    .await
                    .ok()
                    .is_some_and(|d| {
                        d["Policy"]["PolicySummary"]["Type"] == "SERVICE_CONTROL_POLICY"
                    });
                if !is_scp {
                    return self.forward(parts, body).await;
                }
                let attached = match self
                    .moto_list(
                        h,
                        "ListPoliciesForTarget",
                        json!({ "TargetId": target, "Filter": "SERVICE_CONTROL_POLICY" }),
                        "Policies",
                    )
                    .await
                {
                    Ok(list) => names(&list, "Id"),
                    Err(_) => return self.forward(parts, body).await,
                };
                let verdict = if call.operation == "AttachPolicy" {
                    rules::scp_attach(&attached, &policy)
                } else {
                    rules::scp_detach(&attached, &policy)
                };
                match verdict {
                    Some(e) => self.refuse(call, "PolicyAttachment", e),
                    None => self.forward(parts, body).await,
                }
            }
            ("iam", "CreateRole") => {
                let answer = self.forward(parts, body).await;
                if answer.status().is_success() {
                    let text = answer_text(&answer);
                    if let Some(arn) = xml_text(&text, "Arn") {
                        lock(&self.roles).created(arn, Instant::now() + knobs.role_delay);
                    }
                }
                answer
            }
            ("sts", "AssumeRole") => {
                let arn = call.param("RoleArn").unwrap_or_default();
                let unready_account = rules::arn_account(arn).is_some_and(|a| hidden.contains(a));
                if unready_account || !lock(&self.roles).assumable(arn, now) {
                    self.refuse(call, "RoleNotAssumableYet", rules::not_assumable(arn))
                } else {
                    self.forward(parts, body).await
                }
            }
            _ => self.forward(parts, body).await,
        }
    }

    async fn create_account(
        &self,
        parts: &hyper::http::request::Parts,
        call: &Call,
        body: Bytes,
        knobs: &Knobs,
    ) -> Answer {
        let _held = self.org_lock.lock().await;
        let created = *lock(&self.org_created);
        if created.is_some_and(|t| t.elapsed() < knobs.finalize_delay) {
            return self.refuse(
                call,
                "FinalizingOrganization",
                rules::finalizing_organization(),
            );
        }
        let email = call.param("Email").unwrap_or_default().to_string();
        let name = call.param("AccountName").unwrap_or_default().to_string();
        let listed = match self
            .moto_list(&parts.headers, "ListAccounts", json!({}), "Accounts")
            .await
        {
            Ok(l) => l,
            // No organization, bad credentials…: moto's own answer says it best.
            Err(_) => return self.forward(parts, body).await,
        };
        let now = Instant::now();
        let in_use = listed
            .iter()
            .filter_map(|a| a["Email"].as_str())
            .any(|e| e.eq_ignore_ascii_case(&email))
            || lock(&self.accounts).email_in_flight(&email, now);
        if in_use {
            let mut book = lock(&self.accounts);
            let request_id = book.new_request_id(knobs.seed);
            let delay = knobs.account_delay.min(std::time::Duration::from_secs(1));
            book.record(Creation {
                request_id: request_id.clone(),
                name,
                email,
                account_id: None,
                failure: Some("EMAIL_ALREADY_EXISTS"),
                requested: SystemTime::now(),
                delay,
                ready: now + delay,
            });
            self.count(|s| &mut s.refusals, "EmailAlreadyExists".into());
            let status = book.status(&request_id, now).unwrap_or_default();
            return json_answer(json!({ "CreateAccountStatus": status }));
        }
        if let Some(e) = rules::account_quota(listed.len(), knobs.account_quota) {
            return self.refuse(call, "AccountQuota", e);
        }
        let answer = self.forward(parts, body).await;
        if !answer.status().is_success() {
            return answer;
        }
        let Ok(moto) = serde_json::from_str::<Value>(&answer_text(&answer)) else {
            return answer;
        };
        let s = &moto["CreateAccountStatus"];
        let (Some(request_id), Some(account_id)) = (s["Id"].as_str(), s["AccountId"].as_str())
        else {
            return answer;
        };
        let mut book = lock(&self.accounts);
        book.record(Creation {
            request_id: request_id.to_string(),
            name,
            email,
            account_id: Some(account_id.to_string()),
            failure: None,
            requested: SystemTime::now(),
            delay: knobs.account_delay,
            ready: now + knobs.account_delay,
        });
        let status = book.status(request_id, now).unwrap_or_default();
        json_answer(json!({ "CreateAccountStatus": status }))
    }

    /// `GET /strict-aws/knobs`, `POST /strict-aws/knobs` (a partial JSON update),
    /// `GET /strict-aws/stats`.
    fn control(&self, method: &Method, what: &str, body: &[u8]) -> Answer {
        match (method, what) {
            (&Method::GET, "knobs") => json_answer(self.knobs().to_json()),
            (&Method::POST, "knobs") => {
                let patch: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                let updated = self.knobs().update(&patch);
                match updated {
                    Ok(k) => {
                        if patch.get("seed").is_some() {
                            *lock(&self.dice) = Dice::new(k.seed);
                        }
                        *lock(&self.knobs) = k.clone();
                        json_answer(k.to_json())
                    }
                    Err(e) => plain(StatusCode::BAD_REQUEST, &e.to_string()),
                }
            }
            (&Method::GET, "stats") => json_answer(lock(&self.stats).to_json()),
            _ => plain(StatusCode::NOT_FOUND, "unknown control endpoint"),
        }
    }

    async fn forward(&self, parts: &hyper::http::request::Parts, body: Bytes) -> Answer {
        let uri = format!(
            "{}{}",
            self.upstream,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut req = Request::builder().method(parts.method.clone()).uri(uri);
        for (k, v) in &parts.headers {
            if k != CONTENT_LENGTH {
                req = req.header(k, v);
            }
        }
        let Ok(req) = req.body(Full::new(body)) else {
            return plain(StatusCode::BAD_REQUEST, "unforwardable request");
        };
        match self.client.request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut out = Response::from_parts(parts, bytes);
                out.headers_mut().remove(CONTENT_LENGTH);
                out
            }
            Err(e) => plain(
                StatusCode::BAD_GATEWAY,
                &format!("the emulator did not answer: {e}"),
            ),
        }
    }

    /// An Organizations call to moto on the caller's behalf (its credentials pick the account).
    async fn moto(
        &self,
        caller: &HeaderMap,
        operation: &str,
        body: Value,
    ) -> Result<Value, String> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/", self.upstream))
            .header(CONTENT_TYPE, "application/x-amz-json-1.1")
            .header(
                "x-amz-target",
                format!("AWSOrganizationsV20161128.{operation}"),
            );
        for name in [
            "authorization",
            "x-amz-date",
            "x-amz-security-token",
            "host",
        ] {
            if let Some(v) = caller.get(name) {
                req = req.header(name, v);
            }
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if ok {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    }

    /// Every item of a paginated Organizations list.
    async fn moto_list(
        &self,
        caller: &HeaderMap,
        operation: &str,
        mut body: Value,
        key: &str,
    ) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        loop {
            let page = self.moto(caller, operation, body.clone()).await?;
            out.extend(page[key].as_array().cloned().unwrap_or_default());
            match page["NextToken"].as_str() {
                Some(t) if !t.is_empty() => body["NextToken"] = json!(t),
                _ => return Ok(out),
            }
        }
    }
}

fn is_scp_call(call: &Call) -> bool {
    // UpdatePolicy names no type; only SCPs exist in the workflows this layer serves, and
    // AWS's other policy types have their own, larger limits.
    call.operation == "UpdatePolicy" || call.param("Type") == Some("SERVICE_CONTROL_POLICY")
}

fn names(list: &[Value], field: &str) -> Vec<String> {
    list.iter()
        .filter_map(|v| v[field].as_str().map(str::to_string))
        .collect()
}

fn answer_text(a: &Answer) -> String {
    String::from_utf8_lossy(a.body()).into_owned()
}

/// Drops the hidden items from a JSON list answer.
fn filter_list(answer: Answer, key: &str, id: &str, hidden: &HashSet<String>) -> Answer {
    if hidden.is_empty() || !answer.status().is_success() {
        return answer;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(&answer_text(&answer)) else {
        return answer;
    };
    if let Some(items) = v[key].as_array_mut() {
        items.retain(|a| a[id].as_str().is_none_or(|i| !hidden.contains(i)));
    }
    json_answer(v)
}

fn json_answer(v: Value) -> Answer {
    let mut r = Response::new(Bytes::from(v.to_string()));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

fn plain(status: StatusCode, text: &str) -> Answer {
    let mut r = Response::new(Bytes::from(text.to_string()));
    *r.status_mut() = status;
    r
}

pub fn error_answer(e: &AwsError, protocol: Protocol) -> Answer {
    let (ctype, body) = e.render(protocol);
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    if protocol == Protocol::Json {
        if let Ok(v) = HeaderValue::from_str(&e.code) {
            r.headers_mut().insert("x-amzn-errortype", v);
        }
    }
    r
}

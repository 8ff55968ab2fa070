//! `landfall serve`: Slack's slash commands, events (mentions) and interactions (approval
//! buttons), over HTTP (each request verified before anything else) or Socket Mode
//! (`socket.rs`; both call the same `FrontDoor::on_*` methods), answered at once; runs start in
//! the background in this process and share the state file with the CLI.
//!
//! Who may do what: the server's allowlist (`--allow-user`, `--allow-channel`, and the config
//! file's) gates every command but `help`; a workflow's own `allowed_users` /
//! `allowed_channels` / `allowed_groups` narrow who may start *it*. No allowlist at all means nobody may start anything (said at start-up). Every
//! refusal is audited with the Slack user as actor; requests that fail verification are
//! audited too (without the body) and never acted on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use landfall_engine::events::{Observer, RunEvent};
use landfall_engine::scheduler::RunControl;
use landfall_engine::source::{self, Source};
use landfall_engine::state::{Signal, Trigger};
use landfall_engine::store::{AuditDraft, Batch, Store};
use landfall_engine::{Engine, NewRun, Registry, Workflow};
use serde_json::{json, Map, Value};

use super::signature;
use crate::route::{self, Intent, Route};

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Verifies HTTP requests; without it (Socket Mode only) the HTTP Slack routes are off.
    pub signing_secret: Option<String>,
    pub allow_users: Vec<String>,
    pub allow_channels: Vec<String>,
    /// Largest request body accepted.
    pub max_body: usize,
    pub max_parallel: usize,
    /// When the server stops, how long running attempts may finish before they are cut off.
    pub grace: std::time::Duration,
}

/// The app's OAuth credentials, for installs (`/slack/install` → Slack → `/slack/oauth/callback`).
pub struct OAuth {
    pub client_id: String,
    pub client_secret: String,
    /// Seals the grant in the state file.
    pub key: landfall_engine::crypto::DataKey,
    pub api_url: String,
    pub authorize_url: String,
    pub redirect_url: Option<String>,
    pub scopes: String,
}

/// How long an install's `state` stays valid.
const STATE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Where a run's messages go: Slack's Web API, or the console when there is no bot token.
pub type Outbound = Option<Arc<dyn super::web::Chat>>;

/// The front door's state, shared by every request.
pub struct FrontDoor {
    engine: Engine,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    routes: Vec<Route>,
    workflows: HashMap<String, Arc<Workflow>>,
    opts: Options,
    /// Event and trigger ids already acted on (Slack retries deliveries).
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
    /// Runs executing in this process, for `/landfall cancel`.
    live: Mutex<HashMap<String, RunControl>>,
    chat: Outbound,
    oauth: Option<OAuth>,
    /// Install `state` values handed out and not yet used (CSRF protection), with their age.
    states: Mutex<HashMap<String, std::time::Instant>>,
    /// User groups' members as Slack last listed them, and when.
    groups: tokio::sync::Mutex<HashMap<String, (std::time::Instant, Vec<String>)>>,
}

/// How long a user group's membership is trusted before it is listed again.
const GROUP_TTL: std::time::Duration = std::time::Duration::from_secs(60);

const SEEN_MAX: usize = 10_000;

impl FrontDoor {
    pub fn new(
        engine: Engine,
        registry: Arc<Registry>,
        workflows: Vec<(PathBuf, Workflow)>,
        opts: Options,
        chat: Outbound,
        oauth: Option<OAuth>,
    ) -> Result<Arc<Self>, String> {
        let routes = route::routes(&workflows)?;
        let store = Arc::clone(&engine.store);
        Ok(Arc::new(FrontDoor {
            engine,
            store,
            registry,
            routes,
            workflows: workflows
                .into_iter()
                .map(|(_, w)| (w.name.clone(), Arc::new(w)))
                .collect(),
            opts,
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
            live: Mutex::new(HashMap::new()),
            chat,
            oauth,
            states: Mutex::new(HashMap::new()),
            groups: tokio::sync::Mutex::new(HashMap::new()),
        }))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Stopping: every run this process executes is interrupted like a CLI run on Ctrl-C
    /// (no new attempts; running ones get the grace period, then are cut off and will run
    /// again on resume). Returns once they have all recorded that, or a little after the
    /// grace period if one cannot.
    pub async fn drain(&self) {
        let controls: Vec<(String, RunControl)> = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        if controls.is_empty() {
            return;
        }
        eprintln!(
            "landfall serve: interrupting {} run(s), {} grace; resume them with /landfall resume RUN or landfall resume RUN",
            controls.len(),
            humantime::format_duration(self.opts.grace)
        );
        for (_, c) in &controls {
            c.interrupt.cancel();
        }
        let deadline =
            tokio::time::Instant::now() + self.opts.grace + std::time::Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tracing::warn!("some runs did not stop within the grace period");
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let mut r = Router::new().route("/healthz", get(|| async { "ok" }));
        if self.opts.signing_secret.is_some() {
            r = r
                .route("/slack/commands", post(commands))
                .route("/slack/events", post(events))
                .route("/slack/interactions", post(interactions));
        }
        r.route("/slack/install", get(install))
            .route("/slack/oauth/callback", get(oauth_callback))
            .layer(DefaultBodyLimit::max(self.opts.max_body))
            .with_state(Arc::clone(self))
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    fn audit(&self, actor: &str, kind: &str, details: Value) {
        let r = self.store.commit(Batch {
            audit: vec![AuditDraft::new(actor, "", kind, details).into()],
            ..Batch::default()
        });
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot write the front door's audit entry");
        }
    }

    /// Verifies a request; a refusal is audited and answered 401.
    fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let now = chrono::Utc::now().timestamp();
        signature::verify(
            self.opts.signing_secret.as_deref().unwrap_or_default(),
            h("x-slack-request-timestamp"),
            h("x-slack-signature"),
            body,
            now,
        )
        .map_err(|refusal| {
            tracing::warn!(%refusal, "refused an unverified Slack request");
            self.audit(
                "slack:unverified",
                "slack_request_refused",
                json!({ "reason": refusal.to_string(), "bytes": body.len() }),
            );
            (StatusCode::UNAUTHORIZED, "request signature not verified").into_response()
        })
    }

    /// True the first time an id is seen.
    fn first_time(&self, id: &str) -> bool {
        if id.is_empty() {
            return true;
        }
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        if !set.insert(id.to_string()) {
            return false;
        }
        order.push_back(id.to_string());
        if order.len() > SEEN_MAX {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }

    fn allowed(&self, user: &str, channel: &str) -> bool {
        self.opts.allow_users.iter().any(|u| u == user)
            || self.opts.allow_channels.iter().any(|c| c == channel)
    }

    fn refuse(&self, user: &str, channel: &str, what: &str) -> String {
        self.audit(
            user,
            "slack_command_refused",
            json!({ "channel": channel, "what": what }),
        );
        format!("Sorry, you are not allowed to {what} here. Ask a Landfall admin to add you to the allowlist.")
    }

    /// Acts on one message; the text is the reply.
    pub async fn act(self: &Arc<Self>, text: &str, user: &str, channel: &str) -> String {
        let intent = route::classify(text, &self.routes);
        if !matches!(
            intent,
            Intent::Help | Intent::Usage { .. } | Intent::Unknown { .. }
        ) && !self.allowed(user, channel)
        {
            return self.refuse(user, channel, "use /landfall");
        }
        match intent {
            Intent::Help => route::help(&self.routes),
            Intent::Unknown { text } => {
                format!("I don't know `{text}`.\n{}", route::help(&self.routes))
            }
            Intent::Usage { usage, problem, .. } => format!("{problem}. Usage: `{usage}`"),
            Intent::Runs | Intent::Status { run: None } => self.runs(),
            Intent::Status { run: Some(r) } => self.status(&r),
            Intent::Cancel { run } => {
                let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
                match live.get(&run) {
                    Some(c) => {
                        c.cancel.cancel();
                        self.audit(user, "slack_cancel", json!({ "run": run }));
                        format!("Cancelling {run}.")
                    }
                    None => format!("{run} is not running in this server."),
                }
            }
            Intent::Resume { run } => self.resume(&run, user),
            Intent::Decide { run, node, approve } => self.decide(&run, &node, approve, user),
            Intent::Start { workflow, inputs } => {
                self.start(&workflow, inputs, user, channel, text).await
            }
        }
    }

    /// Answers where the request came from, without holding up the HTTP response.
    fn say(&self, channel: &str, thread_ts: Option<&str>, text: String) {
        match &self.chat {
            None => println!("[slack {channel}] {text}"),
            Some(chat) => {
                let chat = Arc::clone(chat);
                let (channel, thread) = (channel.to_string(), thread_ts.map(str::to_string));
                tokio::spawn(async move {
                    if let Err(e) = chat.post(&channel, thread.as_deref(), &text, None).await {
                        tracing::warn!(%channel, error = %e, "a reply was not delivered");
                    }
                });
            }
        }
    }

    fn runs(&self) -> String {
        match self.store.runs() {
            Ok(runs) if runs.is_empty() => "No runs yet.".into(),
            Ok(mut runs) => {
                runs.sort_by_key(|r| std::cmp::Reverse(r.started_at));
                runs.iter()
                    .take(10)
                    .map(|r| {
                        format!(
                            "• `{}` {} {} (by {})",
                            r.run_id, r.workflow, r.status, r.trigger.actor
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Err(e) => format!("Cannot read runs: {e}"),
        }
    }

    fn status(&self, run: &str) -> String {
        match (self.store.run(run), self.store.nodes(run)) {
            (Ok(Some(r)), Ok(nodes)) => {
                let mut out = format!("`{}` {}: {}", r.run_id, r.workflow, r.status);
                for n in nodes {
                    out.push_str(&format!("\n• {} {}", n.node_id, n.status));
                }
                out
            }
            (Ok(None), _) => format!("No run `{run}`."),
            (Err(e), _) | (_, Err(e)) => format!("Cannot read {run}: {e}"),
        }
    }

    /// Whether `user` belongs to one of `groups`. Membership comes from Slack
    /// (`usergroups.users.list`, cached for a minute); when it cannot be had, the answer is
    /// an error to show, never a guess.
    async fn in_groups(&self, user: &str, groups: &[String]) -> Result<bool, String> {
        if groups.is_empty() {
            return Ok(false);
        }
        let Some(chat) = &self.chat else {
            return Err("group membership cannot be checked without a Slack bot token".into());
        };
        let mut cache = self.groups.lock().await;
        for g in groups {
            let fresh = cache.get(g).filter(|(at, _)| at.elapsed() < GROUP_TTL);
            let members = match fresh {
                Some((_, m)) => m.clone(),
                None => {
                    let m = chat.group_members(g).await.map_err(|e| {
                        tracing::warn!(group = %g, error = %e, "cannot list a user group");
                        format!("cannot check membership of group {g}")
                    })?;
                    cache.insert(g.clone(), (std::time::Instant::now(), m.clone()));
                    m
                }
            };
            if members.iter().any(|m| m == user) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn start(
        self: &Arc<Self>,
        workflow: &str,
        args: std::collections::BTreeMap<String, String>,
        user: &str,
        channel: &str,
        text: &str,
    ) -> String {
        let (Some(route), Some(wf)) = (
            self.routes.iter().find(|r| r.workflow == workflow),
            self.workflows.get(workflow),
        ) else {
            return format!("No workflow `{workflow}`.");
        };
        let t = &route.trigger;
        let own = !t.allowed_users.is_empty()
            || !t.allowed_channels.is_empty()
            || !t.allowed_groups.is_empty();
        if own
            && !t.allowed_users.iter().any(|u| u == user)
            && !t.allowed_channels.iter().any(|c| c == channel)
        {
            match self.in_groups(user, &t.allowed_groups).await {
                Ok(true) => {}
                Ok(false) => return self.refuse(user, channel, &format!("start {workflow}")),
                Err(why) => {
                    self.refuse(user, channel, &format!("start {workflow}"));
                    return format!("Sorry, I cannot start {workflow} for you: {why}.");
                }
            }
        }
        let provided = match &t.input_file {
            None => Map::new(),
            Some(template) => match input_file(template, &args) {
                Ok(m) => m,
                Err(e) => return e,
            },
        };
        let sets: Vec<(String, String)> = args.into_iter().collect();
        let inputs =
            match landfall_engine::inputs::resolve_and_check(wf, &self.registry, provided, &sets) {
                Ok(i) => i,
                Err(errs) => {
                    return format!(
                        "Cannot start {workflow}:\n{}",
                        errs.iter()
                            .map(|e| format!("• `{}`: {}", e.field, e.message))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                }
            };
        let record = match self.engine.create_run(
            wf,
            NewRun {
                run_id: None,
                inputs,
                trigger: Trigger {
                    source: "slack".into(),
                    actor: user.to_string(),
                    details: json!({ "channel": channel, "text": text }),
                },
                max_parallel: wf.max_parallel.unwrap_or(self.opts.max_parallel),
            },
        ) {
            Ok(r) => r,
            Err(e) => return format!("Cannot start {workflow}: {e}"),
        };
        let run_id = record.run_id.clone();
        if let Err(e) = self
            .engine
            .annotate(&run_id, "slack.thread", json!({ "channel": channel }))
        {
            tracing::warn!(run = %run_id, error = %e, "cannot record the run's thread");
        }
        self.spawn(Arc::clone(wf), record, channel.to_string());
        format!("Started {workflow} as `{run_id}`. Updates follow in this run's thread.")
    }

    fn spawn(
        self: &Arc<Self>,
        wf: Arc<Workflow>,
        record: landfall_engine::state::RunRecord,
        channel: String,
    ) {
        let me = Arc::clone(self);
        let run_id = record.run_id.clone();
        let control = RunControl {
            grace: self.opts.grace,
            ..RunControl::default()
        };
        me.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.clone(), control.clone());
        let thread = me.chat.as_ref().map(|chat| {
            Arc::new(super::thread::start(
                Arc::clone(chat),
                me.engine.clone(),
                run_id.clone(),
                record.workflow.clone(),
                channel.clone(),
                record.trigger.actor.clone(),
            ))
        });
        let observer: Arc<dyn Observer> = match &thread {
            Some(t) => Arc::clone(t) as Arc<dyn Observer>,
            None => Arc::new(Console {
                channel,
                run_id: run_id.clone(),
            }),
        };
        tokio::spawn(async move {
            let out = me.engine.execute(wf, record, control, &[observer]).await;
            if let Err(e) = out {
                tracing::error!(run = %run_id, error = %e, "run could not execute");
            }
            // The run stays live until its thread's last messages are out, so that a server
            // stopping (`drain`) does not drop them.
            if let Some(t) = thread {
                t.flush(std::time::Duration::from_secs(15)).await;
            }
            me.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run_id);
        });
    }

    fn resume(self: &Arc<Self>, run: &str, user: &str) -> String {
        let record = match self.store.run(run) {
            Ok(Some(r)) => r,
            Ok(None) => return format!("No run `{run}`."),
            Err(e) => return format!("Cannot read {run}: {e}"),
        };
        if record.status.is_terminal() {
            return format!("`{run}` already finished ({}).", record.status);
        }
        let source = Source::new(record.workflow_file.clone(), record.workflow_text.clone());
        let Some(wf) = landfall_engine::compile::compile(&source, &self.registry).workflow else {
            return format!("`{run}`'s workflow no longer compiles with this build.");
        };
        let channel = record.trigger.details["channel"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.audit(user, "slack_resume", json!({ "run": run }));
        self.spawn(Arc::new(wf), record, channel);
        format!("Resuming `{run}`.")
    }

    fn decide(&self, run: &str, node: &str, approve: bool, user: &str) -> String {
        let digest = match crate::app::approval_request(self.store.as_ref(), run, node) {
            Ok(req) => req["digest"].as_str().unwrap_or_default().to_string(),
            Err(e) => return e,
        };
        let decision = if approve { "approve" } else { "reject" };
        let signal = Signal {
            actor: user.to_string(),
            at: chrono::Utc::now(),
            value: json!({ "decision": decision, "digest": digest }),
        };
        match self.engine.signal(run, node, signal) {
            Ok(()) => format!("<@{user}> {}d `{node}` of `{run}`.", decision),
            Err(e) => format!("Cannot record the decision: {e}"),
        }
    }
}

/// Reads the inputs file a trigger names, the path rendered from the args.
fn input_file(
    template: &str,
    args: &std::collections::BTreeMap<String, String>,
) -> Result<Map<String, Value>, String> {
    let path = landfall_engine::expr::render_str(
        template,
        &landfall_engine::expr::ctx_value(json!({ "args": args })),
    )
    .map_err(|e| format!("Cannot work out the inputs file: {e}"))?;
    let path = path.as_str().unwrap_or_default().to_string();
    if path.contains("..") {
        return Err(format!("`{path}` is not a file I may read."));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|_| format!("There is no `{path}`: check the name, or add the file."))?;
    let (doc, _) = source::parse(&Source::new(path.clone(), text))
        .map_err(|d| format!("`{path}` is not valid: {}", d.message))?;
    match doc.value {
        Value::Object(m) => Ok(m),
        _ => Err(format!(
            "`{path}` must be a mapping of input names to values."
        )),
    }
}

/// Without a bot token, messages for a run's thread are printed here.
struct Console {
    channel: String,
    run_id: String,
}

impl Observer for Console {
    fn on_event(&self, e: &RunEvent) {
        let line = match e {
            RunEvent::Milestone { kind, data, .. } if kind == "notification" => {
                data["text"].as_str().map(str::to_string)
            }
            RunEvent::Milestone { kind, data, node, .. } if kind == "approval_requested" => {
                Some(format!(
                    "Approval needed: {} (digest {}). [Approve] [Reject], or `/landfall approve {} {node}`",
                    data["title"].as_str().unwrap_or_default(),
                    data["digest"].as_str().unwrap_or_default(),
                    self.run_id
                ))
            }
            RunEvent::NodeFinished {
                node,
                status,
                error,
                ..
            } => Some(format!(
                "{node} {status}{}",
                error
                    .as_ref()
                    .map(|e| format!(": {}", e.message))
                    .unwrap_or_default()
            )),
            RunEvent::RunFinished { status, .. } => Some(format!("run {status}")),
            _ => None,
        };
        if let Some(l) = line {
            println!("[slack {} · {}] {l}", self.channel, self.run_id);
        }
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

impl FrontDoor {
    /// A slash command (over HTTP or Socket Mode); the text is the ephemeral answer.
    pub async fn on_command(
        self: &Arc<Self>,
        text: &str,
        user: &str,
        channel: &str,
        trigger_id: &str,
    ) -> String {
        if !self.first_time(&format!("trigger:{trigger_id}")) {
            return "Already on it.".into();
        }
        self.act(text, user, channel).await
    }

    /// An Events API callback (`event_callback`): mentions are acted on, answered in their
    /// thread; a delivery already seen is ignored.
    pub async fn on_event(self: &Arc<Self>, v: &Value) {
        let id = v["event_id"].as_str().unwrap_or_default();
        if !self.first_time(&format!("event:{id}")) {
            return;
        }
        let e = &v["event"];
        if matches!(e["type"].as_str(), Some("app_mention")) && e["bot_id"].is_null() {
            let text = e["text"].as_str().unwrap_or_default();
            let user = e["user"].as_str().unwrap_or_default();
            let channel = e["channel"].as_str().unwrap_or_default();
            let reply = self.act(text, user, channel).await;
            self.say(channel, e["ts"].as_str(), reply);
        }
    }

    /// A block action: the approval buttons. Answers go to the clicked message's thread.
    pub fn on_interaction(self: &Arc<Self>, payload: &Value) {
        let user = payload["user"]["id"].as_str().unwrap_or_default();
        let channel = payload["channel"]["id"].as_str().unwrap_or_default();
        for a in payload["actions"].as_array().into_iter().flatten() {
            let approve = match a["action_id"].as_str() {
                Some("approve") => true,
                Some("reject") => false,
                _ => continue,
            };
            let value: Value = a["value"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            let (Some(run), Some(node)) = (value["run"].as_str(), value["node"].as_str()) else {
                continue;
            };
            let reply = if self.allowed(user, channel) {
                self.decide(run, node, approve, user)
            } else {
                self.refuse(user, channel, "decide approvals")
            };
            let thread = payload["message"]["thread_ts"]
                .as_str()
                .or(payload["container"]["thread_ts"].as_str())
                .or(payload["message"]["ts"].as_str());
            self.say(channel, thread, reply);
        }
    }
}

async fn commands(State(fd): State<Arc<FrontDoor>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = fd.check(&headers, &body) {
        return r;
    }
    let f = form(&body);
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let reply = fd
        .on_command(
            get("text"),
            get("user_id"),
            get("channel_id"),
            get("trigger_id"),
        )
        .await;
    Json(json!({ "response_type": "ephemeral", "text": reply })).into_response()
}

async fn events(State(fd): State<Arc<FrontDoor>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = fd.check(&headers, &body) {
        return r;
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (StatusCode::BAD_REQUEST, "not JSON").into_response(),
    };
    match v["type"].as_str() {
        Some("url_verification") => Json(json!({ "challenge": v["challenge"] })).into_response(),
        Some("event_callback") => {
            fd.on_event(&v).await;
            StatusCode::OK.into_response()
        }
        _ => StatusCode::OK.into_response(),
    }
}

async fn interactions(
    State(fd): State<Arc<FrontDoor>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = fd.check(&headers, &body) {
        return r;
    }
    let f = form(&body);
    let Some(payload) = f
        .get("payload")
        .and_then(|p| serde_json::from_str::<Value>(p).ok())
    else {
        return (StatusCode::BAD_REQUEST, "no payload").into_response();
    };
    fd.on_interaction(&payload);
    StatusCode::OK.into_response()
}

/// Listens on `addr`; the bound address is returned (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Starts an install: a fresh single-use `state`, then Slack's consent page.
async fn install(State(fd): State<Arc<FrontDoor>>) -> Response {
    let Some(o) = &fd.oauth else {
        return (StatusCode::NOT_FOUND, "OAuth installs are not configured").into_response();
    };
    let state: String = {
        use rand::Rng;
        let bytes: [u8; 16] = rand::rng().random();
        hex::encode(bytes)
    };
    {
        let mut states = fd.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, at| at.elapsed() < STATE_TTL);
        states.insert(state.clone(), std::time::Instant::now());
    }
    let mut params = vec![
        ("client_id", o.client_id.as_str()),
        ("scope", o.scopes.as_str()),
        ("state", state.as_str()),
    ];
    if let Some(r) = &o.redirect_url {
        params.push(("redirect_uri", r.as_str()));
    }
    let query = serde_urlencoded::to_string(&params).unwrap_or_default();
    (
        StatusCode::FOUND,
        [(
            axum::http::header::LOCATION,
            format!("{}?{query}", o.authorize_url),
        )],
    )
        .into_response()
}

/// Finishes an install: the `state` must be one we handed out (once, recently); then the
/// code is exchanged and the grant sealed into the state file.
async fn oauth_callback(
    State(fd): State<Arc<FrontDoor>>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let Some(o) = &fd.oauth else {
        return (StatusCode::NOT_FOUND, "OAuth installs are not configured").into_response();
    };
    let state = q.get("state").cloned().unwrap_or_default();
    let fresh = {
        let mut states = fd.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .remove(&state)
            .is_some_and(|at| at.elapsed() < STATE_TTL)
    };
    if !fresh {
        fd.audit(
            "slack:oauth",
            "slack_install_refused",
            json!({ "reason": "unknown, used or expired state" }),
        );
        return (
            StatusCode::FORBIDDEN,
            "This install link is not valid (expired or already used). Start again from /slack/install.",
        )
            .into_response();
    }
    if let Some(err) = q.get("error") {
        return (StatusCode::BAD_REQUEST, format!("Slack said: {err}")).into_response();
    }
    let code = q.get("code").cloned().unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    let grant = super::tokens::exchange_code(
        &o.api_url,
        &o.client_id,
        &o.client_secret,
        &code,
        o.redirect_url.as_deref(),
        now,
    )
    .await;
    match grant.and_then(|g| {
        super::tokens::save_grant(fd.store.as_ref(), &o.key, &g).map(|_| g.team_id.clone())
    }) {
        Ok(team) => {
            fd.audit("slack:oauth", "slack_installed", json!({ "team": team }));
            (
                StatusCode::OK,
                "Landfall is installed in your Slack workspace.",
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "a Slack install failed");
            (
                StatusCode::BAD_GATEWAY,
                format!("The install did not complete: {e}"),
            )
                .into_response()
        }
    }
}

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

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use landfall_engine::store::{AuditDraft, Batch, Store};
use landfall_engine::RunControl;
use landfall_engine::{Engine, Registry, Workflow};
use serde_json::{json, Value};

mod actions;
mod allowed;
mod decisions;
mod http;
mod oauth;
mod plans;
mod workers;

use crate::route::{self, Route};
/// How every reply that echoes data is made safe (escaped, bounded); public for the fuzzer.
pub use actions::reply;

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Verifies HTTP requests; without it (Socket Mode only) the HTTP Slack routes are off.
    pub signing_secret: Option<String>,
    pub allow_users: Vec<String>,
    pub allow_channels: Vec<String>,
    /// Largest request body accepted.
    pub max_body: usize,
    /// A request's body must arrive within this once its headers have.
    pub body_read_timeout: std::time::Duration,
    /// Refusals are audited as one summary per this period.
    pub refusal_summary_every: std::time::Duration,
    /// What the HTTP listener admits.
    pub limits: super::listen::Limits,
    pub max_parallel: usize,
    /// When the server stops, how long running attempts may finish before they are cut off.
    pub grace: std::time::Duration,
    /// The slash command this app answers (`/landfall`); Slack names it in every command.
    pub command: String,
    /// The workspace or Grid organization served, when pinned (`slack.team_id`).
    pub team_id: Option<String>,
    /// This app's id, when configured (`slack.app_id`).
    pub app_id: Option<String>,
}

/// The app's OAuth credentials, for installs (`/slack/install` → Slack → `/slack/oauth/callback`).
pub struct OAuth {
    pub client_id: String,
    pub client_secret: String,
    /// Seals the grant in the state file.
    pub key: landfall_engine::DataKey,
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
    /// Wakes [`FrontDoor::pick_up`] when this process created a run on a shared store.
    created: tokio::sync::Notify,
    chat: Outbound,
    oauth: Option<OAuth>,
    /// Install `state` values handed out and not yet used (CSRF protection), with their age
    /// and the browser they were handed to.
    states: Mutex<HashMap<String, oauth::PendingInstall>>,
    /// User groups' members as Slack last listed them, and when.
    groups: Mutex<HashMap<String, (std::time::Instant, Vec<String>)>>,
    /// Requests refused before anyone was known, audited as periodic summaries.
    refusals: Arc<super::refusals::Refusals>,
}

/// A slash command as Slack sends it (HTTP form or Socket Mode envelope).
pub struct SlashCommand<'a> {
    pub command: &'a str,
    pub text: &'a str,
    pub user: &'a str,
    pub channel: &'a str,
    pub trigger_id: &'a str,
    pub team: &'a str,
    pub enterprise: &'a str,
    /// `api_app_id` (HTTP); `None` over Socket Mode, whose connection belongs to one app.
    pub app: Option<&'a str>,
}

/// How long a user group's membership is trusted before it is listed again.
const GROUP_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a group's listing may take (Slack's retries included) before the answer is "cannot
/// check".
const GROUP_LOOKUP: std::time::Duration = std::time::Duration::from_secs(20);

/// Slack wants an answer within 3 seconds; what is not decided by then is answered "working on
/// it" and followed up in the channel.
const ACK_WITHIN: std::time::Duration = std::time::Duration::from_millis(2000);

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
            created: tokio::sync::Notify::new(),
            chat,
            oauth,
            states: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            refusals: Arc::default(),
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
                .route("/slack/commands", post(http::commands))
                .route("/slack/events", post(http::events))
                .route("/slack/interactions", post(http::interactions));
        }
        r.route("/slack/install", get(oauth::install))
            .route("/slack/oauth/callback", get(oauth::oauth_callback))
            // Bodies are read by `body()`, which audits what it refuses.
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(self))
    }

    /// Serves until `shutdown` is cancelled, with the listener's limits; refusals are audited
    /// as a summary every period and once more at the end.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<()> {
        let (limits, lowered) = self.opts.limits.effective();
        if let Some(why) = lowered {
            tracing::warn!("{why}");
        }
        let me = Arc::clone(&self);
        let stop = shutdown.clone();
        let summaries = tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.opts.refusal_summary_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => me.audit_refusals(),
                }
            }
        });
        let served = super::listen::serve(
            listener,
            self.router(),
            limits,
            Arc::clone(&self.refusals),
            shutdown,
            std::time::Duration::from_secs(5),
        )
        .await;
        let _ = summaries.await;
        self.audit_refusals();
        served
    }

    /// The period's refusals as one audit entry (none when there were none).
    pub fn audit_refusals(&self) {
        let Some(s) = self.refusals.take() else {
            return;
        };
        tracing::warn!(
            total = s.total,
            addresses = s.refusals.len(),
            "refused {} request(s) since {} (see `landfall audit - --kind slack_requests_refused`)",
            s.total,
            s.since.format("%H:%M:%S")
        );
        self.audit(
            "slack:unverified",
            "slack_requests_refused",
            serde_json::to_value(&s).unwrap_or_default(),
        );
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

    /// True the first time an id is seen.
    /// Whether a delivery of `kind` with Slack's `id` is new. One without an id cannot be
    /// told from another, so it is always new (checked before the kind is prefixed: `trigger:`
    /// alone would match every later request without an id).
    fn first_time(&self, kind: &str, id: &str) -> bool {
        if id.is_empty() {
            return true;
        }
        let key = format!("{kind}:{id}");
        // Workers sharing a store see each other's deliveries (Slack may retry on another).
        match self.store.first_delivery(&key) {
            Ok(Some(first)) => return first,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a delivery in the store; checking this worker's memory only")
            }
        }
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        if !set.insert(key.clone()) {
            return false;
        }
        order.push_back(key);
        if order.len() > SEEN_MAX {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }

    /// Whether a verified request comes from the workspace and app this server is set up for
    /// (`slack.team_id`, `slack.app_id`, when configured). `app` is `None` where the channel
    /// itself proves the app (Socket Mode: the connection belongs to one app). A refusal is
    /// audited.
    pub fn from_expected(
        &self,
        team: &str,
        enterprise: &str,
        app: Option<&str>,
        user: &str,
    ) -> bool {
        let team_ok = self
            .opts
            .team_id
            .as_deref()
            .is_none_or(|t| t == team || (!enterprise.is_empty() && t == enterprise));
        let app_ok = match (self.opts.app_id.as_deref(), app) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        };
        if team_ok && app_ok {
            return true;
        }
        self.audit(
            user,
            "slack_command_refused",
            json!({
                "what": "a request from another workspace or app",
                "team": crate::slack::thread::truncate(team, 40),
                "app": app.map(|a| crate::slack::thread::truncate(a, 40)),
            }),
        );
        false
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
}

impl FrontDoor {
    /// A slash command (over HTTP or Socket Mode); the text is the ephemeral answer.
    pub async fn on_command(self: &Arc<Self>, c: SlashCommand<'_>) -> String {
        let SlashCommand {
            command,
            text,
            user,
            channel,
            trigger_id,
            ..
        } = c;
        if !self.from_expected(c.team, c.enterprise, c.app, user) {
            return "This Landfall is not set up for this workspace.".into();
        }
        if command != self.opts.command {
            // Another app's command, or a request not made by Slack's `/landfall`.
            self.audit(
                user,
                "slack_command_refused",
                json!({ "channel": channel, "what": "unknown slash command", "command": command }),
            );
            return actions::reply(
                user,
                &format!(
                    "This app answers `{}`, not `{}`.",
                    self.opts.command,
                    crate::slack::thread::truncate(command, 40)
                ),
            );
        }
        if !self.first_time("trigger", trigger_id) {
            return "Already on it.".into();
        }
        self.act_in_time(text, user, channel).await
    }

    /// [`Self::act`] within Slack's window: what takes longer (a user group listed by a slow
    /// Slack) is answered "working on it" now and followed up, only to `user`, when decided.
    async fn act_in_time(self: &Arc<Self>, text: &str, user: &str, channel: &str) -> String {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<String>();
        let me = Arc::clone(self);
        let (text, user, channel) = (text.to_string(), user.to_string(), channel.to_string());
        tokio::spawn(async move {
            let reply = me.act(&text, &user, &channel).await;
            if let Err(late) = tx.send(reply) {
                me.say_to(&channel, &user, late);
            }
        });
        match tokio::time::timeout(ACK_WITHIN, &mut rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => "Something went wrong on my side; see the server's log.".into(),
            Err(_) => {
                // Closed first: an answer sent from now on comes back to the task (which
                // follows up); one sent just before is still read here.
                rx.close();
                rx.try_recv().unwrap_or_else(|_| {
                    "Working on it: the answer follows here in a moment.".into()
                })
            }
        }
    }

    /// An Events API callback (`event_callback`): mentions are acted on, answered in their
    /// thread; a delivery already seen is ignored. Acknowledged at once: the work and the
    /// answer happen after.
    pub fn on_event(self: &Arc<Self>, v: &Value) {
        let id = v["event_id"].as_str().unwrap_or_default();
        if !self.first_time("event", id) {
            return;
        }
        let e = &v["event"];
        if matches!(e["type"].as_str(), Some("app_mention")) && e["bot_id"].is_null() {
            let enterprise = v["enterprise_id"]
                .as_str()
                .or(v["authorizations"][0]["enterprise_id"].as_str())
                .unwrap_or_default();
            if !self.from_expected(
                v["team_id"].as_str().unwrap_or_default(),
                enterprise,
                Some(v["api_app_id"].as_str().unwrap_or_default()),
                e["user"].as_str().unwrap_or_default(),
            ) {
                return;
            }
            let text = e["text"].as_str().unwrap_or_default().to_string();
            let user = e["user"].as_str().unwrap_or_default().to_string();
            let channel = e["channel"].as_str().unwrap_or_default().to_string();
            // In the thread the mention was made in (its parent), else under the mention.
            let thread = e["thread_ts"]
                .as_str()
                .or(e["ts"].as_str())
                .map(str::to_string);
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let reply = me.act(&text, &user, &channel).await;
                me.say(&channel, thread.as_deref(), reply);
            });
        }
    }
}

/// Listens on `addr`; the bound address is returned (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

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
use landfall_engine::store::{AuditDraft, Batch, Store};
use landfall_engine::RunControl;
use landfall_engine::{Engine, Registry, Workflow};
use serde_json::{json, Value};

use super::signature;

mod actions;
mod decisions;
mod plans;
use crate::route::{self, Route};

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
    /// The slash command this app answers (`/landfall`); Slack names it in every command.
    pub command: String,
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
    /// Whether a delivery of `kind` with Slack's `id` is new. One without an id cannot be
    /// told from another, so it is always new (checked before the kind is prefixed: `trigger:`
    /// alone would match every later request without an id).
    fn first_time(&self, kind: &str, id: &str) -> bool {
        if id.is_empty() {
            return true;
        }
        let key = format!("{kind}:{id}");
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

fn form(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

impl FrontDoor {
    /// A slash command (over HTTP or Socket Mode); the text is the ephemeral answer.
    pub async fn on_command(
        self: &Arc<Self>,
        command: &str,
        text: &str,
        user: &str,
        channel: &str,
        trigger_id: &str,
    ) -> String {
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
        self.act(text, user, channel).await
    }

    /// An Events API callback (`event_callback`): mentions are acted on, answered in their
    /// thread; a delivery already seen is ignored.
    pub async fn on_event(self: &Arc<Self>, v: &Value) {
        let id = v["event_id"].as_str().unwrap_or_default();
        if !self.first_time("event", id) {
            return;
        }
        let e = &v["event"];
        if matches!(e["type"].as_str(), Some("app_mention")) && e["bot_id"].is_null() {
            let text = e["text"].as_str().unwrap_or_default();
            let user = e["user"].as_str().unwrap_or_default();
            let channel = e["channel"].as_str().unwrap_or_default();
            let reply = self.act(text, user, channel).await;
            // In the thread the mention was made in (its parent), else under the mention.
            self.say(channel, e["thread_ts"].as_str().or(e["ts"].as_str()), reply);
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
            get("command"),
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

//! Slack set up from the configuration (`[slack]` in `landfall.toml` and the `SLACK_*`
//! variables, one layer of `config.rs`): the Web API client and its token, the front door of
//! `landfall serve` and the thread of a CLI run. Nothing here reads the environment itself, so
//! `landfall config show` explains every Slack setting.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use landfall_engine::state::RunRecord;
use landfall_engine::store::Store;
use landfall_engine::DataKey;
use landfall_engine::{Engine, Registry, Workflow};

use super::server::{FrontDoor, OAuth, Options, Outbound};
use super::thread::ThreadObserver;
use super::web::{self, Auth, InstalledAuth};
use crate::config::SlackConfig;

/// Why Slack could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration is wrong or incomplete: the sentence says what to set.
    #[error("{0}")]
    Config(String),
    /// The machine refused (a client could not be built).
    #[error("{0}")]
    Env(String),
}

const SCOPES: &str = "commands,chat:write,app_mentions:read,usergroups:read";

/// With a bot token, a CLI run talks in Slack too: in its own thread when it has one (a run
/// started from Slack, resumed here), else in `slack.default_channel`; `None` when neither.
pub fn cli_thread(
    slack: &SlackConfig,
    engine: &Engine,
    store: &dyn Store,
    workflow: &str,
    record: &RunRecord,
) -> Result<Option<Arc<ThreadObserver>>, SetupError> {
    let Some(token) = slack.bot_token.clone() else {
        return Ok(None);
    };
    let kept = store
        .annotations(&record.run_id)
        .ok()
        .and_then(|a| a.get("slack.thread").cloned())
        .and_then(|t| t["channel"].as_str().map(str::to_string));
    let Some(channel) = kept.or_else(|| slack.default_channel.clone()) else {
        return Ok(None);
    };
    let chat = web::client(&slack.api_url(), Auth::Static(token))
        .map_err(|e| SetupError::Env(format!("cannot set up the Slack client: {e}")))?;
    Ok(Some(Arc::new(super::thread::start(
        Arc::from(chat),
        engine.clone(),
        record.run_id.clone(),
        workflow.to_string(),
        channel,
        record.trigger.actor.clone(),
    ))))
}

/// What `landfall serve` was asked for besides the configuration.
pub struct ServeSettings {
    pub socket_mode: bool,
    /// Added to `slack.allow_users` / `slack.allow_channels`.
    pub allow_users: Vec<String>,
    pub allow_channels: Vec<String>,
    /// `[serve]`, and `--max-body` which wins over its `max_body`.
    pub limits: crate::config::ServeConfig,
    pub max_body: Option<usize>,
    pub max_parallel: usize,
    pub grace: Duration,
    /// Seals OAuth grants; needed only when the app's client id and secret are set.
    pub data_key: Option<DataKey>,
}

/// A front door ready to serve.
pub struct Serving {
    pub front_door: Arc<FrontDoor>,
    /// Set with `--socket-mode`: the app-level token to open the WebSocket with.
    pub app_token: Option<String>,
    pub api_url: String,
    /// Nobody is allowed to start anything (said at start-up).
    pub nobody_allowed: bool,
    /// Messages go to the console: there is no token to post with.
    pub console_only: bool,
}

/// Refuses a configuration that cannot serve, before any work: a Socket Mode server without
/// an app-level token, an HTTP server without a signing secret.
pub fn check(slack: &SlackConfig, socket_mode: bool) -> Result<(), SetupError> {
    if socket_mode {
        match slack.app_token.as_deref() {
            None => return Err(SetupError::Config(
                "--socket-mode needs an app-level token: set SLACK_APP_TOKEN (xapp-…; Slack app settings → Basic Information → App-Level Tokens, scope connections:write)".into(),
            )),
            Some(t) if !t.starts_with("xapp-") => return Err(SetupError::Config(
                "SLACK_APP_TOKEN must be an app-level token (xapp-…), not a bot or user token".into(),
            )),
            Some(_) => {}
        }
    } else if slack.signing_secret.is_none() {
        return Err(SetupError::Config(
            "no Slack signing secret: set SLACK_SIGNING_SECRET (or slack.signing_secret in landfall.toml), or use --socket-mode".into(),
        ));
    }
    Ok(())
}

/// The front door of `landfall serve`, its Web API client and, when the app's credentials
/// are set, OAuth installs (token rotation).
pub fn front_door(
    slack: &SlackConfig,
    s: ServeSettings,
    engine: Engine,
    registry: Arc<Registry>,
    workflows: Vec<(PathBuf, Workflow)>,
) -> Result<Serving, SetupError> {
    check(slack, s.socket_mode)?;
    let union = |a: &[String], b: &[String]| {
        let mut v: Vec<String> = a.iter().chain(b).cloned().collect();
        v.sort();
        v.dedup();
        v
    };
    let allow_users = union(&s.allow_users, &slack.allow_users);
    let allow_channels = union(&s.allow_channels, &slack.allow_channels);
    let nobody_allowed = allow_users.is_empty() && allow_channels.is_empty();
    let opts = Options {
        signing_secret: slack.signing_secret.clone(),
        allow_users,
        allow_channels,
        max_body: s.max_body.unwrap_or(s.limits.max_body),
        body_read_timeout: s.limits.body_read_timeout,
        refusal_summary_every: s.limits.refusal_summary_every,
        limits: super::listen::Limits {
            header_read_timeout: s.limits.header_read_timeout,
            max_connections: s.limits.max_connections,
            max_connections_per_peer: s.limits.max_connections_per_peer,
        },
        max_parallel: s.max_parallel,
        grace: s.grace,
        command: slack.command.clone().unwrap_or_else(|| "/landfall".into()),
        team_id: slack.team_id.clone(),
        app_id: slack.app_id.clone(),
    };
    let api_url = slack.api_url();
    let oauth = match (&slack.client_id, &slack.client_secret) {
        (Some(id), Some(secret)) => {
            let key = s.data_key.ok_or_else(|| {
                SetupError::Config(
                    "OAuth installs need a data key to seal tokens with: set LANDFALL_DATA_KEY or --data-key-file (64 hex digits, e.g. `openssl rand -hex 32`)".into(),
                )
            })?;
            Some(OAuth {
                client_id: id.clone(),
                client_secret: secret.clone(),
                key,
                api_url: api_url.clone(),
                authorize_url: slack
                    .authorize_url
                    .clone()
                    .unwrap_or_else(|| "https://slack.com/oauth/v2/authorize".into()),
                redirect_url: slack.redirect_url.clone(),
                scopes: SCOPES.into(),
            })
        }
        _ => None,
    };
    let auth = match (&slack.bot_token, &oauth) {
        (Some(t), _) => Some(Auth::Static(t.clone())),
        (None, Some(o)) => Some(Auth::Installed(InstalledAuth {
            store: Arc::clone(&engine.store),
            key: o.key.clone(),
            client_id: o.client_id.clone(),
            client_secret: o.client_secret.clone(),
        })),
        (None, None) => None,
    };
    let console_only = auth.is_none();
    let chat: Outbound = match auth {
        None => None,
        Some(auth) => Some(Arc::from(web::client(&api_url, auth).map_err(|e| {
            SetupError::Env(format!("cannot set up the Slack client: {e}"))
        })?)),
    };
    let front_door = FrontDoor::new(engine, registry, workflows, opts, chat, oauth)
        .map_err(SetupError::Config)?;
    Ok(Serving {
        front_door,
        app_token: if s.socket_mode {
            slack.app_token.clone()
        } else {
            None
        },
        api_url,
        nobody_allowed,
        console_only,
    })
}

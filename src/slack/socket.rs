//! Socket Mode (`landfall serve --socket-mode`): the same front door over Slack's WebSocket,
//! for installations Slack cannot reach over HTTP. slack-morphism keeps the connections
//! (opened with the app-level token through `apps.connections.open`, pinged, reopened when
//! Slack says `disconnect`); each envelope goes to the [`FrontDoor`] exactly as its HTTP twin
//! would, and is acknowledged within Slack's window: work that could take longer (a user
//! group listed by a slow Slack) continues after the acknowledgement and answers later.
//!
//! No request signatures here: the WebSocket is authenticated by the app token. Redelivered
//! envelopes are deduplicated like HTTP retries, by trigger and event id.

use std::sync::Arc;

use hyper_util::client::legacy::connect::Connect;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use super::refusals::Every;
use super::server::{FrontDoor, SlashCommand};

/// Why Socket Mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("SLACK_APP_TOKEN must be an app-level token (xapp-…)")]
    NotAnAppToken,
    #[error("cannot set up the Slack client: {0}")]
    Client(#[from] std::io::Error),
    #[error("cannot register the app token: {0}")]
    Register(String),
}

/// Connects to Slack with `app_token` and serves until `shutdown` resolves.
pub async fn serve(
    api_url: &str,
    app_token: &str,
    fd: Arc<FrontDoor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SocketError> {
    if !app_token.starts_with("xapp-") {
        return Err(SocketError::NotAnAppToken);
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let token = SlackApiToken::new(SlackApiTokenValue::new(app_token.to_string()));
    let url = api_url.trim_end_matches('/');
    if url.starts_with("http://") {
        let c = SlackClientHyperConnector::with_connector(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .with_slack_api_url(url);
        listen(c, token, fd, shutdown).await
    } else {
        let c = SlackClientHyperConnector::new()?.with_slack_api_url(url);
        listen(c, token, fd, shutdown).await
    }
}

async fn listen<H>(
    connector: SlackClientHyperConnector<H>,
    token: SlackApiToken,
    fd: Arc<FrontDoor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SocketError>
where
    H: Send + Sync + Clone + Connect + 'static,
{
    type C<H> = SlackClientHyperConnector<H>;
    let env = Arc::new(
        SlackClientEventsListenerEnvironment::new(Arc::new(SlackClient::new(connector)))
            .with_error_handler(on_error::<C<H>>)
            .with_user_state(fd),
    );
    let callbacks = SlackSocketModeListenerCallbacks::new()
        .with_hello_events(on_hello::<_, C<H>>)
        .with_command_events(on_command::<C<H>>)
        .with_push_events(on_push::<C<H>>)
        .with_interaction_events(on_interaction::<C<H>>);
    let listener =
        SlackClientSocketModeListener::new(&SlackClientSocketModeConfig::new(), env, callbacks);
    listener
        .listen_for(&token)
        .await
        .map_err(|e| SocketError::Register(e.to_string()))?;
    listener.start().await;
    shutdown.await;
    listener.shutdown().await;
    Ok(())
}

async fn front_door(state: &SlackClientEventsUserState) -> Option<Arc<FrontDoor>> {
    state
        .read()
        .await
        .get_user_state::<Arc<FrontDoor>>()
        .cloned()
}

// Generic over the event: slack-morphism does not export the hello event's type by name.
async fn on_hello<E, S: SlackClientHttpConnector + Send + Sync>(
    _: E,
    _: Arc<SlackClient<S>>,
    _: SlackClientEventsUserState,
) {
    // Said on stderr like `listening on`: an operator (or a test) sees the link is up.
    eprintln!("landfall serve: connected to Slack (socket mode)");
}

async fn on_command<S: SlackClientHttpConnector + Send + Sync>(
    ev: SlackCommandEvent,
    _: Arc<SlackClient<S>>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<SlackCommandEventResponse> {
    let reply = match front_door(&state).await {
        Some(fd) => {
            let text = ev.text.as_deref().unwrap_or_default();
            fd.on_command(SlashCommand {
                command: ev.command.as_ref(),
                text,
                user: ev.user_id.as_ref(),
                channel: ev.channel_id.as_ref(),
                trigger_id: ev.trigger_id.as_ref(),
                team: ev.team_id.as_ref(),
                enterprise: "",
                app: None,
            })
            .await
        }
        None => "Landfall is starting; try again in a moment.".into(),
    };
    Ok(
        SlackCommandEventResponse::new(SlackMessageContent::new().with_text(reply))
            .with_response_type(SlackMessageResponseType::Ephemeral),
    )
}

async fn on_push<S: SlackClientHttpConnector + Send + Sync>(
    ev: SlackPushEventCallback,
    _: Arc<SlackClient<S>>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    if let Some(fd) = front_door(&state).await {
        fd.on_event(&serde_json::to_value(&ev)?);
    }
    Ok(())
}

async fn on_interaction<S: SlackClientHttpConnector + Send + Sync>(
    ev: SlackInteractionEvent,
    _: Arc<SlackClient<S>>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    if let Some(fd) = front_door(&state).await {
        fd.on_interaction(&serde_json::to_value(&ev)?);
    }
    Ok(())
}

/// An envelope that could not be read or handled is logged and acknowledged: Slack would
/// only deliver the same bytes again.
fn on_error<S: SlackClientHttpConnector + Send + Sync>(
    err: Box<dyn std::error::Error + Send + Sync>,
    _: Arc<SlackClient<S>>,
    _: SlackClientEventsUserState,
) -> HttpStatusCode {
    // A protocol error carries the envelope's body, and a slash command's body carries Slack's
    // (legacy) verification token: log what went wrong, never the body.
    let protocol = match err.downcast_ref::<SlackClientError>() {
        Some(SlackClientError::ProtocolError(p)) => Some(&p.json_error),
        _ => err
            .downcast_ref::<slack_morphism::errors::SlackClientProtocolError>()
            .map(|p| &p.json_error),
    };
    // Said once a minute at most: Slack can send many frames this build does not read.
    static EVERY: std::sync::Mutex<Option<Every>> = std::sync::Mutex::new(None);
    let (due, suppressed) = {
        let mut g = EVERY.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.get_or_insert_with(|| Every::new(std::time::Duration::from_secs(60)));
        let suppressed = e.suppressed;
        (e.due(), suppressed)
    };
    if due {
        match protocol {
            Some(e) => {
                tracing::warn!(error = %e, suppressed, "a Socket Mode envelope could not be read")
            }
            None => {
                tracing::warn!(error = %err, suppressed, "a Socket Mode envelope was not handled")
            }
        }
    }
    HttpStatusCode::OK
}

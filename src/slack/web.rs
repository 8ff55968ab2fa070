//! Slack's Web API through slack-morphism: post into a thread, edit a message. Every call is
//! retried on 429 (after `Retry-After`) and on 5xx, a few times, then given up: delivery never
//! blocks or fails a run (the caller logs and audits a message that could not be delivered).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

/// Why a message was not delivered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Undelivered(pub String);

/// What the run threads need from Slack.
#[async_trait]
pub trait Chat: Send + Sync {
    /// Posts a message (into `thread_ts` when given); returns its `ts`.
    async fn post(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        text: &str,
        blocks: Option<&Value>,
    ) -> Result<String, Undelivered>;
    /// Posts a message only `user` sees (an answer that came after the acknowledgement).
    async fn ephemeral(&self, channel: &str, user: &str, text: &str) -> Result<(), Undelivered>;
    /// Replaces the text of message `ts`.
    async fn update(&self, channel: &str, ts: &str, text: &str) -> Result<(), Undelivered>;
    /// The members of a user group (`usergroups.users.list`), for workflows' `allowed_groups`.
    async fn group_members(&self, group: &str) -> Result<Vec<String>, Undelivered>;
}

/// Attempts per message (the first and the retries).
const ATTEMPTS: u32 = 5;

/// Where the bot token comes from.
pub enum Auth {
    /// A fixed token (`SLACK_BOT_TOKEN`).
    Static(String),
    /// The grant of an OAuth install, sealed in the state file and rotated before expiry.
    Installed(InstalledAuth),
}

/// What an installed (OAuth) token needs.
pub struct InstalledAuth {
    pub store: std::sync::Arc<dyn landfall_engine::store::Store>,
    pub key: landfall_engine::DataKey,
    pub client_id: String,
    pub client_secret: String,
}

/// The Web API client.
pub struct Web<C: SlackClientHttpConnector + Send + Sync> {
    client: SlackClient<C>,
    token: Option<SlackApiToken>,
    tokens: Option<super::tokens::Tokens<C>>,
}

/// The client for `api_url` (`https://slack.com/api` unless a test or proxy says otherwise;
/// no trailing slash). Plain `http://` is accepted for local test servers only.
pub fn client(api_url: &str, auth: Auth) -> std::io::Result<Box<dyn Chat>> {
    // Both rustls back ends are linked (AWS SDK, Slack): pick one for the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let url = api_url.trim_end_matches('/');
    if url.starts_with("http://") {
        let c = SlackClientHyperConnector::with_connector(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .with_slack_api_url(url);
        Ok(Box::new(Web::new(c, auth)))
    } else {
        let c = SlackClientHyperConnector::new()?.with_slack_api_url(url);
        Ok(Box::new(Web::new(c, auth)))
    }
}

impl<C: SlackClientHttpConnector + Send + Sync + Clone> Web<C> {
    fn new(connector: C, auth: Auth) -> Self {
        match auth {
            Auth::Static(t) => Web {
                client: SlackClient::new(connector),
                token: Some(SlackApiToken::new(SlackApiTokenValue::new(t))),
                tokens: None,
            },
            Auth::Installed(a) => Web {
                client: SlackClient::new(connector.clone()),
                token: None,
                tokens: Some(super::tokens::Tokens {
                    client: SlackClient::new(connector),
                    store: a.store,
                    key: a.key,
                    client_id: a.client_id,
                    client_secret: a.client_secret,
                }),
            },
        }
    }
}

impl<C: SlackClientHttpConnector + Send + Sync> Web<C> {
    /// The token for the next call: the fixed one, or the installed grant, refreshed if due.
    async fn token(&self) -> Result<SlackApiToken, Undelivered> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let Some(tokens) = &self.tokens else {
            return Err(Undelivered("no Slack token".into()));
        };
        let t = tokens
            .current(chrono::Utc::now().timestamp())
            .await
            .map_err(|e| Undelivered(e.to_string()))?;
        Ok(SlackApiToken::new(SlackApiTokenValue::new(t)))
    }

    /// Slack says the token is dead: never use it again.
    fn dead_token(&self, e: &Undelivered) {
        let dead = [
            "token_revoked",
            "invalid_auth",
            "account_inactive",
            "token_expired",
        ]
        .iter()
        .any(|c| e.0.contains(c));
        if let (true, Some(tokens)) = (dead, &self.tokens) {
            if let Err(err) = tokens.revoke() {
                tracing::error!(error = %err, "cannot mark the Slack token revoked");
            }
        }
    }
}

/// What to do about a failed call: wait this long and try again, or give up.
fn retry_after(e: &SlackClientError, attempt: u32) -> Option<Duration> {
    let backoff = Duration::from_millis(250 * 2u64.pow(attempt.min(6)));
    match e {
        SlackClientError::RateLimitError(r) => Some(r.retry_after.unwrap_or(backoff)),
        SlackClientError::HttpError(h) if h.status_code.is_server_error() => Some(backoff),
        SlackClientError::HttpProtocolError(_) | SlackClientError::EndOfStream(_) => Some(backoff),
        _ => None,
    }
}

async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> Result<T, Undelivered>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SlackClientError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => match retry_after(&e, attempt) {
                Some(wait) if attempt < ATTEMPTS => {
                    tracing::debug!(%what, attempt, ?wait, error = %e, "Slack call failed; retrying");
                    tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                }
                _ => {
                    return Err(Undelivered(format!(
                        "{what}: {e} (after {attempt} attempts)"
                    )))
                }
            },
        }
    }
}

#[async_trait]
impl<C: SlackClientHttpConnector + Send + Sync> Chat for Web<C> {
    async fn post(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        text: &str,
        blocks: Option<&Value>,
    ) -> Result<String, Undelivered> {
        let mut content = SlackMessageContent::new().with_text(text.to_string());
        if let Some(b) =
            blocks.and_then(|b| serde_json::from_value::<Vec<SlackBlock>>(b.clone()).ok())
        {
            content = content.with_blocks(b);
        }
        let mut req = SlackApiChatPostMessageRequest::new(channel.into(), content);
        if let Some(t) = thread_ts {
            req = req.with_thread_ts(t.into());
        }
        let token = self.token().await?;
        let session = self.client.open_session(&token);
        let out = with_retries("chat.postMessage", || session.chat_post_message(&req))
            .await
            .inspect_err(|e| self.dead_token(e))?;
        Ok(out.ts.to_string())
    }

    async fn ephemeral(&self, channel: &str, user: &str, text: &str) -> Result<(), Undelivered> {
        let req = SlackApiChatPostEphemeralRequest::new(
            channel.into(),
            user.into(),
            SlackMessageContent::new().with_text(text.to_string()),
        );
        let token = self.token().await?;
        let session = self.client.open_session(&token);
        with_retries("chat.postEphemeral", || session.chat_post_ephemeral(&req))
            .await
            .inspect_err(|e| self.dead_token(e))?;
        Ok(())
    }

    async fn update(&self, channel: &str, ts: &str, text: &str) -> Result<(), Undelivered> {
        let req = SlackApiChatUpdateRequest::new(
            channel.into(),
            SlackMessageContent::new().with_text(text.to_string()),
            ts.into(),
        );
        let token = self.token().await?;
        let session = self.client.open_session(&token);
        with_retries("chat.update", || session.chat_update(&req))
            .await
            .inspect_err(|e| self.dead_token(e))?;
        Ok(())
    }

    async fn group_members(&self, group: &str) -> Result<Vec<String>, Undelivered> {
        let req = SlackApiUserGroupsUsersListRequest::new(group.into());
        let token = self.token().await?;
        let session = self.client.open_session(&token);
        let out = with_retries("usergroups.users.list", || {
            session.usergroups_users_list(&req)
        })
        .await
        .inspect_err(|e| self.dead_token(e))?;
        Ok(out.users.into_iter().map(|u| u.to_string()).collect())
    }
}

//! Bot tokens: checked before every use, kept sealed in the state file, refreshed before they
//! expire (Slack's token rotation: `oauth.v2.access` with `grant_type=refresh_token`, written
//! on slack-morphism's HTTP client, which has no refresh of its own).
//!
//! A token that is malformed, expired, or that Slack reported revoked is never handed out:
//! [`Tokens::current`] says why instead. Refresh happens [`REFRESH_BEFORE`] ahead of expiry.
//!
//! One refresh at a time: Slack revokes a refresh token once it has been used, so two
//! refreshes with the same one (two messages sent at once near expiry, or two workers) leave
//! the loser with `invalid_refresh_token` and possibly the store with a revoked token, which
//! ends the installation. Refreshes take turns in a process, and across processes sharing the
//! store they hold the store's lease [`REFRESH_LEASE`] (a run's kind of lease: a file lock on
//! redb, a lease row on PostgreSQL); whoever waited reads the grant the other one saved.

use std::sync::Arc;

use landfall_engine::store::{Batch, Store};
use landfall_engine::{CryptoError, DataKey};
use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;

/// Refresh this long (seconds) before a token expires.
pub const REFRESH_BEFORE: i64 = 5 * 60;
/// The name of the bot grant in the state file (and the AEAD's associated data).
const NAME: &str = "slack.bot-grant";
/// The lease a process holds while it refreshes the grant.
pub const REFRESH_LEASE: &str = "slack.bot-grant.refresh";
/// How long a refresh waits for another process's before it gives up (the token is expired by
/// then, or it would have been used meanwhile).
const REFRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Refreshes in this process take turns (one grant per process).
static REFRESHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What an install (or a refresh) gave us.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix seconds; `None` for tokens that do not expire (rotation off).
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub team_id: Option<String>,
    /// The Enterprise Grid organization, for an org-wide install.
    #[serde(default)]
    pub enterprise_id: Option<String>,
    /// Slack said `token_revoked` / `invalid_auth`: never used again until a new install.
    #[serde(default)]
    pub revoked: bool,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token, not even in a debug dump.
        f.debug_struct("Grant")
            .field("expires_at", &self.expires_at)
            .field("team_id", &self.team_id)
            .field("enterprise_id", &self.enterprise_id)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no Slack installation: install the app (or set SLACK_BOT_TOKEN)")]
    NotInstalled,
    #[error("the stored Slack token is malformed")]
    Malformed,
    #[error("the Slack token expired and could not be refreshed")]
    Expired,
    #[error("Slack revoked the token: install the app again")]
    Revoked,
    #[error("refreshing the Slack token failed: {0}")]
    Refresh(String),
    #[error("the stored Slack grant cannot be opened: {0}")]
    Sealed(#[from] CryptoError),
    #[error("the state file: {0}")]
    Store(String),
}

/// Whether `token` looks like a Slack token at all (bot, user, app or rotating).
pub fn well_formed(token: &str) -> bool {
    let rest = token.strip_prefix("xoxe.").unwrap_or(token);
    let known = ["xoxb-", "xoxp-", "xoxa-", "xapp-", "xoxe-"]
        .iter()
        .any(|p| rest.starts_with(p));
    known
        && (20..=512).contains(&token.len())
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// What to do with a grant at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Use,
    Refresh,
    Refuse(TokenVerdict),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVerdict {
    Malformed,
    Expired,
    Revoked,
}

impl From<TokenVerdict> for TokenError {
    fn from(v: TokenVerdict) -> Self {
        match v {
            TokenVerdict::Malformed => TokenError::Malformed,
            TokenVerdict::Expired => TokenError::Expired,
            TokenVerdict::Revoked => TokenError::Revoked,
        }
    }
}

/// The decision table of [`Tokens::current`]. Pure.
pub fn verdict(g: &Grant, now: i64) -> Verdict {
    if g.revoked {
        return Verdict::Refuse(TokenVerdict::Revoked);
    }
    match g.expires_at {
        Some(exp) if now + REFRESH_BEFORE >= exp => {
            if g.refresh_token.as_deref().is_some_and(well_formed) {
                Verdict::Refresh
            } else if now >= exp {
                Verdict::Refuse(TokenVerdict::Expired)
            } else if well_formed(&g.access_token) {
                // Close to expiry with no way to refresh: use it while it lasts.
                Verdict::Use
            } else {
                Verdict::Refuse(TokenVerdict::Malformed)
            }
        }
        _ if well_formed(&g.access_token) => Verdict::Use,
        _ => Verdict::Refuse(TokenVerdict::Malformed),
    }
}

#[derive(Deserialize)]
struct Refreshed {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// The bot grant of this installation.
pub struct Tokens<C: SlackClientHttpConnector + Send + Sync> {
    pub client: SlackClient<C>,
    pub store: Arc<dyn Store>,
    pub key: DataKey,
    pub client_id: String,
    pub client_secret: String,
}

/// Seals and stores the bot grant.
pub fn save_grant(store: &dyn Store, key: &DataKey, g: &Grant) -> Result<(), TokenError> {
    let plain = serde_json::to_vec(g).map_err(|e| TokenError::Store(e.to_string()))?;
    store
        .commit(Batch {
            secrets: vec![(NAME.to_string(), key.seal(&plain, NAME.as_bytes()))],
            ..Batch::default()
        })
        .map_err(|e| TokenError::Store(e.to_string()))
}

/// The stored bot grant, opened (a changed or foreign ciphertext is an error, never a token).
pub fn load_grant(store: &dyn Store, key: &DataKey) -> Result<Option<Grant>, TokenError> {
    let Some(sealed) = store
        .secret(NAME)
        .map_err(|e| TokenError::Store(e.to_string()))?
    else {
        return Ok(None);
    };
    let plain = key.open(&sealed, NAME.as_bytes())?;
    serde_json::from_slice(&plain)
        .map(Some)
        .map_err(|_| TokenError::Malformed)
}

/// What went wrong with a call to `oauth.v2.access`, never with the answer's body: an error
/// answer may carry tokens (and a proxy's error page anything), and this text reaches logs
/// and browsers.
fn without_body(e: &slack_morphism::errors::SlackClientError) -> String {
    use slack_morphism::errors::SlackClientError as E;
    match e {
        E::ApiError(a) => format!("Slack answered `{}`", super::thread::truncate(&a.code, 60)),
        E::HttpError(h) => format!("Slack answered HTTP {}", h.status_code),
        E::RateLimitError(_) => "Slack is rate-limiting this app; try again in a minute".into(),
        E::ProtocolError(_) | E::HttpProtocolError(_) | E::EndOfStream(_) => {
            "Slack's answer could not be read".into()
        }
        E::SystemError(_) | E::SocketModeProtocolError(_) => "Slack could not be reached".into(),
    }
}

/// `oauth.v2.access` with an install's `code`: the grant (refresh token and expiry included
/// when the app rotates tokens; slack-morphism's own response type drops them).
pub async fn exchange_code(
    api_url: &str,
    client_id: &str,
    client_secret: &str,
    code: &str,
    redirect_url: Option<&str>,
    now: i64,
) -> Result<Grant, TokenError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let url = api_url.trim_end_matches('/');
    let mut params = vec![("code", Some(code))];
    if let Some(r) = redirect_url {
        params.push(("redirect_uri", Some(r)));
    }
    let id = SlackClientId::new(client_id.to_string());
    let secret = SlackClientSecret::new(client_secret.to_string());
    let r: Installed = if url.starts_with("http://") {
        let c = SlackClientHyperConnector::with_connector(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .with_slack_api_url(url);
        oauth_get(&c, &params, &id, &secret).await?
    } else {
        let c = SlackClientHyperConnector::new()
            .map_err(|e| TokenError::Refresh(e.to_string()))?
            .with_slack_api_url(url);
        oauth_get(&c, &params, &id, &secret).await?
    };
    if !well_formed(&r.access_token) {
        return Err(TokenError::Malformed);
    }
    Ok(Grant {
        access_token: r.access_token,
        refresh_token: r.refresh_token,
        expires_at: r.expires_in.map(|s| now + s),
        team_id: r.team.and_then(|t| t.id),
        enterprise_id: r.enterprise.and_then(|t| t.id),
        revoked: false,
    })
}

#[derive(Deserialize)]
struct Installed {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    team: Option<Team>,
    #[serde(default)]
    enterprise: Option<Team>,
}

#[derive(Deserialize)]
struct Team {
    #[serde(default)]
    id: Option<String>,
}

async fn oauth_get<C: SlackClientHttpConnector + Send + Sync, RS>(
    connector: &C,
    params: &[(&str, Option<&str>)],
    id: &SlackClientId,
    secret: &SlackClientSecret,
) -> Result<RS, TokenError>
where
    RS: for<'de> Deserialize<'de> + Send,
{
    let base = connector
        .create_method_uri_path("oauth.v2.access")
        .map_err(|e| TokenError::Refresh(e.to_string()))?;
    let url = SlackClientHttpApiUri::create_url_with_params(base, &params.to_vec())
        .map_err(|e| TokenError::Refresh(e.to_string()))?;
    connector
        .http_get_with_client_secret(url, id, secret)
        .await
        .map_err(|e| match e {
            slack_morphism::errors::SlackClientError::ApiError(a)
                if matches!(
                    a.code.as_str(),
                    "invalid_refresh_token" | "token_revoked" | "invalid_code"
                ) =>
            {
                TokenError::Revoked
            }
            other => TokenError::Refresh(without_body(&other)),
        })
}

impl<C: SlackClientHttpConnector + Send + Sync> Tokens<C> {
    pub fn save(&self, g: &Grant) -> Result<(), TokenError> {
        save_grant(self.store.as_ref(), &self.key, g)
    }

    pub fn load(&self) -> Result<Option<Grant>, TokenError> {
        load_grant(self.store.as_ref(), &self.key)
    }

    /// Slack reported the token revoked (or the auth invalid): never use it again.
    pub fn revoke(&self) -> Result<(), TokenError> {
        if let Some(mut g) = self.load()? {
            g.revoked = true;
            self.save(&g)?;
        }
        Ok(())
    }

    /// A token fit to use at `now` (Unix seconds), refreshed first when it is about to expire.
    pub async fn current(&self, now: i64) -> Result<String, TokenError> {
        let g = self.load()?.ok_or(TokenError::NotInstalled)?;
        match verdict(&g, now) {
            Verdict::Use => Ok(g.access_token),
            Verdict::Refuse(v) => Err(v.into()),
            Verdict::Refresh => self.refreshed(now).await,
        }
    }

    /// A token after a refresh: this one's, or (having waited its turn) another's.
    async fn refreshed(&self, now: i64) -> Result<String, TokenError> {
        let _turn = REFRESHING.lock().await;
        let give_up = tokio::time::Instant::now() + REFRESH_WAIT;
        loop {
            // Read again each time: the one we waited for may have saved a fresh grant.
            let g = self.load()?.ok_or(TokenError::NotInstalled)?;
            match verdict(&g, now) {
                Verdict::Use => return Ok(g.access_token),
                Verdict::Refuse(v) => return Err(v.into()),
                Verdict::Refresh => {}
            }
            let lease = self
                .store
                .lease(REFRESH_LEASE)
                .map_err(|e| TokenError::Store(e.to_string()))?;
            if lease.is_some() {
                // Under the lease, the grant read above may already be old.
                let g = self.load()?.ok_or(TokenError::NotInstalled)?;
                match verdict(&g, now) {
                    Verdict::Use => return Ok(g.access_token),
                    Verdict::Refuse(v) => return Err(v.into()),
                    Verdict::Refresh => {}
                }
                let fresh = self.refresh(&g, now).await?;
                if !well_formed(&fresh.access_token) {
                    return Err(TokenError::Malformed);
                }
                self.save(&fresh)?;
                return Ok(fresh.access_token);
            }
            // Another process is refreshing. Until it saves, the token in hand still works
            // if it has not expired (a refresh starts minutes before expiry).
            if well_formed(&g.access_token) && g.expires_at.is_some_and(|exp| now < exp) {
                return Ok(g.access_token);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(TokenError::Refresh(format!(
                    "the token expired and another Landfall process sharing the store has been \
                     refreshing it for {} s without saving a new one; try again, and if this \
                     repeats, look at that process's log",
                    REFRESH_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn refresh(&self, g: &Grant, now: i64) -> Result<Grant, TokenError> {
        let refresh_token = g.refresh_token.clone().unwrap_or_default();
        let id = SlackClientId::new(self.client_id.clone());
        let secret = SlackClientSecret::new(self.client_secret.clone());
        let r: Refreshed = oauth_get(
            self.client.http_api.connector.as_ref(),
            &[
                ("grant_type", Some("refresh_token")),
                ("refresh_token", Some(refresh_token.as_str())),
            ],
            &id,
            &secret,
        )
        .await?;
        Ok(Grant {
            access_token: r.access_token,
            refresh_token: r.refresh_token.or_else(|| g.refresh_token.clone()),
            expires_at: r.expires_in.map(|s| now + s),
            team_id: g.team_id.clone(),
            enterprise_id: g.enterprise_id.clone(),
            revoked: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    /// By hand, from Slack's token formats: the prefixes of bot, user, app and rotating
    /// tokens, and what must never reach an `Authorization` header.
    #[test]
    fn well_formed_knows_slacks_token_shapes() {
        for good in [
            "xoxb-123456-abcdefghijklmnopqrst",
            "xoxp-1-2-3-abcdefabcdefabcdef",
            "xapp-1-A0123-456-abcdef0123456789",
            "xoxe.xoxb-1-abcdefghijklmnopqrstuvwx",
            "xoxe-1-refresh-token-0000",
        ] {
            assert!(well_formed(good), "{good}");
        }
        let long = format!("xoxb-{}", "a".repeat(600));
        for bad in [
            "",
            "xoxb-short",
            "xoxz-123456-abcdefghijklmnopqrst",
            "Bearer xoxb-123456-abcdefghijklmnop",
            "xoxb-123456-abcdefghij klmnopqrst",
            "xoxb-123456-abcdefghij\nklmnopqrst",
            "xoxe.xoxz-1-abcdefghijklmnopqrstuvwx",
            long.as_str(),
        ] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }
}

//! OAuth installs: from a one-time link (`landfall slack install-link`) to a grant sealed in
//! the state file, the install tied to one browser and one workspace.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{FrontDoor, STATE_TTL};

/// The cookie that ties an install's `state` to the browser that started it.
const INSTALL_COOKIE: &str = "landfall_install";

/// An install under way: handed to Slack as `state`, expected back from the same browser.
pub(super) struct PendingInstall {
    at: std::time::Instant,
    /// SHA-256 of the browser's cookie.
    browser: [u8; 32],
    /// Who made the link it started from.
    link_by: String,
}

fn random_hex() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

fn sha256(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Starts an install from a one-time link (`landfall slack install-link`): the link is used
/// up, the browser gets a cookie, Slack gets a fresh `state`; then Slack's consent page.
pub(super) async fn install(
    State(fd): State<Arc<FrontDoor>>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let Some(o) = &fd.oauth else {
        return (StatusCode::NOT_FOUND, "OAuth installs are not configured").into_response();
    };
    let link = q.get("link").map(String::as_str).unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    let link_by = match crate::slack::install::redeem(fd.store.as_ref(), &o.key, link, now) {
        Ok(by) => by,
        Err(why) => {
            fd.audit(
                "slack:oauth",
                "slack_install_refused",
                json!({ "reason": why.to_string() }),
            );
            return (
                StatusCode::FORBIDDEN,
                format!("{why}. Installs start from a one-time link: ask a Landfall operator to run `landfall slack install-link`."),
            )
                .into_response();
        }
    };
    let state = random_hex();
    let browser = random_hex();
    let pending = PendingInstall {
        at: std::time::Instant::now(),
        browser: sha256(&browser),
        link_by,
    };
    // Workers sharing a store: Slack's redirect may reach another worker.
    let shared = fd.store.put_shared(
        &format!("install:{state}"),
        &json!({ "browser": hex::encode(pending.browser), "link_by": pending.link_by }),
    );
    if !matches!(shared, Ok(true)) {
        let mut states = fd.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, p| p.at.elapsed() < STATE_TTL);
        states.insert(state.clone(), pending);
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
    // Lax: the cookie comes back on Slack's top-level redirect to the callback, not on
    // requests other sites make in the background.
    let secure = if o
        .redirect_url
        .as_deref()
        .is_some_and(|r| r.starts_with("https://"))
    {
        "; Secure"
    } else {
        ""
    };
    (
        StatusCode::FOUND,
        [
            (
                axum::http::header::LOCATION,
                format!("{}?{query}", o.authorize_url),
            ),
            (
                axum::http::header::SET_COOKIE,
                format!(
                    "{INSTALL_COOKIE}={browser}; Path=/slack/oauth; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                    STATE_TTL.as_secs()
                ),
            ),
        ],
    )
        .into_response()
}

/// Finishes an install: the `state` must be one we handed out (once, recently) to this very
/// browser; the code is exchanged; the grant is kept only for the workspace this server
/// serves (`slack.team_id`), and never silently replaces another workspace's grant.
pub(super) async fn oauth_callback(
    State(fd): State<Arc<FrontDoor>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let Some(o) = &fd.oauth else {
        return (StatusCode::NOT_FOUND, "OAuth installs are not configured").into_response();
    };
    let refuse = |status: StatusCode, reason: &str, say: String| {
        fd.audit(
            "slack:oauth",
            "slack_install_refused",
            json!({ "reason": reason }),
        );
        (status, say).into_response()
    };
    let state = q.get("state").cloned().unwrap_or_default();
    let pending = {
        let mut states = fd.states.lock().unwrap_or_else(|p| p.into_inner());
        states.remove(&state).filter(|p| p.at.elapsed() < STATE_TTL)
    };
    let pending = match pending {
        Some(p) => Some(p),
        None if !state.is_empty() => fd
            .store
            .take_shared(&format!("install:{state}"), STATE_TTL)
            .ok()
            .flatten()
            .and_then(|v| {
                let browser: [u8; 32] =
                    hex::decode(v["browser"].as_str()?).ok()?.try_into().ok()?;
                Some(PendingInstall {
                    at: std::time::Instant::now(),
                    browser,
                    link_by: v["link_by"].as_str()?.to_string(),
                })
            }),
        None => None,
    };
    let Some(pending) = pending else {
        return refuse(
            StatusCode::FORBIDDEN,
            "unknown, used or expired state",
            "This install is not valid (expired or already used). Ask a Landfall operator for a new install link.".into(),
        );
    };
    let same_browser =
        cookie(&headers, INSTALL_COOKIE).is_some_and(|c| sha256(c) == pending.browser);
    if !same_browser {
        return refuse(
            StatusCode::FORBIDDEN,
            "state presented by another browser",
            "This install was started in another browser. Ask a Landfall operator for a new install link and open it here.".into(),
        );
    }
    if let Some(err) = q.get("error") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "declined at Slack",
            format!("Slack said: {}", crate::slack::thread::truncate(err, 60)),
        );
    }
    let code = q.get("code").cloned().unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    let grant = match crate::slack::tokens::exchange_code(
        &o.api_url,
        &o.client_id,
        &o.client_secret,
        &code,
        o.redirect_url.as_deref(),
        now,
    )
    .await
    {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "a Slack install failed");
            return refuse(
                StatusCode::BAD_GATEWAY,
                "token exchange failed",
                format!("The install did not complete: {e}. Nothing was stored."),
            );
        }
    };
    let team = grant.team_id.clone().unwrap_or_default();
    let enterprise = grant.enterprise_id.clone().unwrap_or_default();
    let pinned = fd.opts.team_id.as_deref();
    if let Some(p) = pinned.filter(|p| *p != team && *p != enterprise) {
        return refuse(
            StatusCode::FORBIDDEN,
            "install for another workspace than slack.team_id",
            format!(
                "This Landfall serves workspace {p}; the install was for {}. Nothing was stored.",
                crate::slack::thread::truncate(&team, 20)
            ),
        );
    }
    let existing = crate::slack::tokens::load_grant(fd.store.as_ref(), &o.key)
        .ok()
        .flatten();
    if let Some(old) = existing.filter(|g| !g.revoked) {
        let old_team = old.team_id.unwrap_or_default();
        // Another workspace's install replaces the grant only when configuration pins the new one.
        if old_team != team && pinned.is_none() {
            return refuse(
                StatusCode::CONFLICT,
                "would replace another workspace's grant",
                format!(
                    "Landfall is installed for workspace {old_team}; an install for {} does not replace it. To move Landfall, set slack.team_id = \"{}\" and install again. Nothing was stored.",
                    crate::slack::thread::truncate(&team, 20),
                    crate::slack::thread::truncate(&team, 20)
                ),
            );
        }
    }
    match crate::slack::tokens::save_grant(fd.store.as_ref(), &o.key, &grant) {
        Ok(()) => {
            fd.audit(
                "slack:oauth",
                "slack_installed",
                json!({ "team": team, "enterprise": enterprise, "link_by": pending.link_by }),
            );
            (
                StatusCode::OK,
                "Landfall is installed in your Slack workspace.",
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "a Slack install could not be stored");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The install could not be stored; see the server's log.",
            )
                .into_response()
        }
    }
}

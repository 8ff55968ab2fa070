//! The HTTP side of the front door: a request's body read within its limits, its signature
//! checked (refusals counted, not audited one by one), then the command, event or interaction
//! handed to the same `FrontDoor` methods Socket Mode uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{FrontDoor, SlashCommand};
use crate::slack::signature;

impl FrontDoor {
    /// A request's body, within `max_body` and `body_read_timeout`; what is refused is
    /// counted with the peer's address.
    async fn body(
        &self,
        peer: Option<std::net::IpAddr>,
        req: Request,
    ) -> Result<(HeaderMap, Bytes), Response> {
        let (parts, body) = req.into_parts();
        let claimed = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = |bytes: u64| {
            self.refusals.note(
                "body over the limit",
                peer,
                usize::try_from(bytes).unwrap_or(usize::MAX),
            );
            (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response()
        };
        if let Some(n) = claimed.filter(|n| *n > self.opts.max_body as u64) {
            return Err(too_large(n));
        }
        match tokio::time::timeout(
            self.opts.body_read_timeout,
            axum::body::to_bytes(Body::new(body), self.opts.max_body),
        )
        .await
        {
            Ok(Ok(b)) => Ok((parts.headers, b)),
            Ok(Err(e)) => {
                let over = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                    || e.to_string().contains("length limit");
                if over {
                    Err(too_large(self.opts.max_body as u64 + 1))
                } else {
                    self.refusals.note("body unreadable", peer, 0);
                    Err((StatusCode::BAD_REQUEST, "request body unreadable").into_response())
                }
            }
            Err(_) => {
                self.refusals.note("body not sent in time", peer, 0);
                Err((StatusCode::REQUEST_TIMEOUT, "request body not sent in time").into_response())
            }
        }
    }

    /// Reads and verifies a request: its headers and body, or the answer that refused it
    /// (counted for the refusal summary).
    async fn verified(&self, req: Request) -> Result<(HeaderMap, Bytes), Response> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let (headers, body) = self.body(peer, req).await?;
        self.check(peer, &headers, &body)?;
        Ok((headers, body))
    }

    /// Verifies a request's signature; a refusal is counted and answered 401.
    fn check(
        &self,
        peer: Option<std::net::IpAddr>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Response> {
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
            self.refusals.note(refusal.reason(), peer, body.len());
            (StatusCode::UNAUTHORIZED, "request signature not verified").into_response()
        })
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

pub(super) async fn commands(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    let body = match fd.verified(req).await {
        Ok((_, body)) => body,
        Err(r) => return r,
    };
    let f = form(&body);
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let reply = fd
        .on_command(SlashCommand {
            command: get("command"),
            text: get("text"),
            user: get("user_id"),
            channel: get("channel_id"),
            trigger_id: get("trigger_id"),
            team: get("team_id"),
            enterprise: get("enterprise_id"),
            app: Some(get("api_app_id")),
        })
        .await;
    Json(json!({ "response_type": "ephemeral", "text": reply })).into_response()
}

pub(super) async fn events(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    let body = match fd.verified(req).await {
        Ok((_, body)) => body,
        Err(r) => return r,
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (StatusCode::BAD_REQUEST, "not JSON").into_response(),
    };
    match v["type"].as_str() {
        Some("url_verification") => Json(json!({ "challenge": v["challenge"] })).into_response(),
        Some("event_callback") => {
            fd.on_event(&v);
            StatusCode::OK.into_response()
        }
        _ => StatusCode::OK.into_response(),
    }
}

pub(super) async fn interactions(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    let body = match fd.verified(req).await {
        Ok((_, body)) => body,
        Err(r) => return r,
    };
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

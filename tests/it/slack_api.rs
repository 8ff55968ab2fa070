//! A small Slack Web API for tests: real HTTP on 127.0.0.1, answers like Slack
//! (`chat.postMessage` with `ts` and `message.ts`, `chat.update`, `usergroups.users.list`),
//! records every call, and can answer 429 with `Retry-After` or 500 first. It is also Slack's
//! end of Socket Mode: `apps.connections.open` hands out a `ws://` URL whose connections get
//! `hello`, then the envelopes a test pushes; their acknowledgements are recorded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::Query;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// One call as Slack received it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: String,
    pub body: Value,
    /// The `ts` Slack gave the message (postMessage) or was asked to edit (update).
    pub ts: String,
    pub authorization: String,
}

/// Members of the user groups the test Slack knows.
pub(crate) const GROUP: &str = "S0ADMINS";
pub(crate) const GROUP_MEMBER: &str = "U0GROUPIE";

#[derive(Default)]
struct Inner {
    /// `ws://` address of the Socket Mode listener.
    socket_url: Mutex<String>,
    /// One sender per open Socket Mode connection.
    sockets: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<String>>>,
    /// Frames the client sent back (acknowledgements).
    acks: Mutex<Vec<Value>>,
    /// How long every Web API answer takes, in milliseconds (a slow Slack).
    delay_ms: std::sync::atomic::AtomicU64,
    calls: Mutex<Vec<Call>>,
    next: AtomicUsize,
    /// Fail this many calls first: 500 for the first, then 429 (with Retry-After: 1), …
    failures: AtomicUsize,
    failed: AtomicUsize,
    /// Refresh tokens already exchanged: Slack revokes one once it is used.
    used_refresh: Mutex<std::collections::HashSet<String>>,
}

pub(crate) struct SlackApi {
    pub url: String,
    inner: Arc<Inner>,
    _rt: tokio::runtime::Runtime,
}

impl SlackApi {
    pub(crate) fn start(fail_first: usize) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let inner = Arc::new(Inner::default());
        inner.failures.store(fail_first, Ordering::SeqCst);
        let app = Router::new()
            .route("/api/{method}", post(call).get(oauth))
            .with_state(Arc::clone(&inner));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        let ws = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        *inner.socket_url.lock().unwrap() = format!("ws://{}/link", ws.local_addr().unwrap());
        rt.spawn(sockets(ws, Arc::clone(&inner)));
        SlackApi {
            url: format!("http://{addr}/api"),
            inner,
            _rt: rt,
        }
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// Makes every Web API answer take this long from now on.
    pub(crate) fn slow_down(&self, by: std::time::Duration) {
        self.inner
            .delay_ms
            .store(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sends a Socket Mode envelope down the first open connection.
    pub(crate) fn push(&self, envelope: Value) {
        let sockets = self.inner.sockets.lock().unwrap();
        let tx = sockets.first().expect("a Socket Mode connection is open");
        tx.send(envelope.to_string()).unwrap();
    }

    pub(crate) fn connections(&self) -> usize {
        self.inner.sockets.lock().unwrap().len()
    }

    /// The acknowledgement of envelope `id`, once it came.
    pub(crate) fn ack(&self, id: &str) -> Option<Value> {
        let acks = self.inner.acks.lock().unwrap();
        acks.iter().find(|a| a["envelope_id"] == id).cloned()
    }

    /// How many calls were refused on purpose.
    pub(crate) fn refused(&self) -> usize {
        self.inner.failed.load(Ordering::SeqCst)
    }
}

async fn call(
    State(s): State<Arc<Inner>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if s.failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let n = s.failed.fetch_add(1, Ordering::SeqCst);
        return if n % 2 == 1 {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "").into_response()
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response()
        };
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if method == "apps.connections.open" {
        s.calls.lock().unwrap().push(Call {
            method,
            body: v,
            ts: String::new(),
            authorization: auth(&headers),
        });
        let url = s.socket_url.lock().unwrap().clone();
        return Json(json!({ "ok": true, "url": url })).into_response();
    }
    let channel = v["channel"].as_str().unwrap_or_default().to_string();
    let ts = match method.as_str() {
        "chat.postMessage" => format!(
            "1700000000.{:06}",
            s.next.fetch_add(1, Ordering::SeqCst) + 1
        ),
        _ => v["ts"].as_str().unwrap_or_default().to_string(),
    };
    s.calls.lock().unwrap().push(Call {
        method: method.clone(),
        body: v.clone(),
        ts: ts.clone(),
        authorization: auth(&headers),
    });
    let text = v["text"].clone();
    Json(json!({
        "ok": true,
        "channel": channel,
        "ts": ts,
        "message": { "ts": ts, "text": text },
    }))
    .into_response()
}

/// `oauth.v2.access` (GET, client id and secret in Basic auth): token rotation's refresh.
async fn oauth(
    State(s): State<Arc<Inner>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: HeaderMap,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let n = s.next.fetch_add(1, Ordering::SeqCst) + 1;
    s.calls.lock().unwrap().push(Call {
        method: method.clone(),
        body: serde_json::to_value(&q).unwrap_or_default(),
        ts: String::new(),
        authorization: auth(&headers),
    });
    if method == "usergroups.users.list" {
        let users: Vec<&str> = match q.get("usergroup").map(String::as_str) {
            Some(GROUP) => vec![GROUP_MEMBER, "U0SOMEONE"],
            _ => vec![],
        };
        return Json(json!({ "ok": true, "users": users })).into_response();
    }
    // Install codes: `code-for-T…` installs into that workspace; `leaky-code` fails with a body
    // holding a token (which must not travel further).
    let code = q.get("code").map(String::as_str).unwrap_or_default();
    if code == "leaky-code" {
        return (
            StatusCode::BAD_GATEWAY,
            "upstream error; request had access_token=xoxb-leaked-in-body",
        )
            .into_response();
    }
    let team = code
        .strip_prefix("code-for-")
        .unwrap_or("T0TEAM")
        .to_string();
    if let Some(r) = q.get("refresh_token") {
        let reused = !s.used_refresh.lock().unwrap().insert(r.clone());
        if reused || r == "xoxe-1-revoked-refresh-token" {
            return Json(json!({ "ok": false, "error": "invalid_refresh_token" })).into_response();
        }
    }
    Json(json!({
        "ok": true,
        "access_token": format!("xoxe.xoxb-1-fresh-token-{n:04}"),
        "refresh_token": format!("xoxe-1-refresh-token-{n:04}"),
        "expires_in": 43200,
        "token_type": "bot",
        "team": { "id": team },
    }))
    .into_response()
}

fn auth(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Slack's side of Socket Mode: `hello` on connect, then whatever the test pushes.
async fn sockets(listener: tokio::net::TcpListener, s: Arc<Inner>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    while let Ok((tcp, _)) = listener.accept().await {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let (mut write, mut read) = ws.split();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let hello = json!({
                "type": "hello",
                "num_connections": s.sockets.lock().unwrap().len() + 1,
                "connection_info": { "app_id": "A0LANDFALL" },
                "debug_info": { "host": "test-slack" },
            });
            if write.send(Message::text(hello.to_string())).await.is_err() {
                return;
            }
            s.sockets.lock().unwrap().push(tx);
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(text) => {
                            if write.send(Message::text(text)).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    inbound = read.next() => match inbound {
                        Some(Ok(Message::Text(t))) => {
                            if let Ok(v) = serde_json::from_str::<Value>(&t) {
                                s.acks.lock().unwrap().push(v);
                            }
                        }
                        Some(Ok(Message::Ping(p))) => {
                            let _ = write.send(Message::Pong(p)).await;
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
        });
    }
}

//! A small Slack Web API for tests: real HTTP on 127.0.0.1, answers like Slack
//! (`chat.postMessage` with `ts` and `message.ts`, `chat.update`), records every call, and can
//! answer 429 with `Retry-After` or 500 first.

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
pub struct Call {
    pub method: String,
    pub body: Value,
    /// The `ts` Slack gave the message (postMessage) or was asked to edit (update).
    pub ts: String,
    pub authorization: String,
}

#[derive(Default)]
struct Inner {
    calls: Mutex<Vec<Call>>,
    next: AtomicUsize,
    /// Fail this many calls first: 500 for the first, then 429 (with Retry-After: 1), …
    failures: AtomicUsize,
    failed: AtomicUsize,
}

pub struct SlackApi {
    pub url: String,
    inner: Arc<Inner>,
    _rt: tokio::runtime::Runtime,
}

impl SlackApi {
    pub fn start(fail_first: usize) -> Self {
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
        SlackApi {
            url: format!("http://{addr}/api"),
            inner,
            _rt: rt,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// How many calls were refused on purpose.
    pub fn refused(&self) -> usize {
        self.inner.failed.load(Ordering::SeqCst)
    }
}

async fn call(
    State(s): State<Arc<Inner>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
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
        authorization: headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string(),
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
    let n = s.next.fetch_add(1, Ordering::SeqCst) + 1;
    s.calls.lock().unwrap().push(Call {
        method: method.clone(),
        body: serde_json::to_value(&q).unwrap_or_default(),
        ts: String::new(),
        authorization: headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    });
    if q.get("refresh_token").map(String::as_str) == Some("xoxe-1-revoked-refresh-token") {
        return Json(json!({ "ok": false, "error": "invalid_refresh_token" })).into_response();
    }
    Json(json!({
        "ok": true,
        "access_token": format!("xoxe.xoxb-1-fresh-token-{n:04}"),
        "refresh_token": format!("xoxe-1-refresh-token-{n:04}"),
        "expires_in": 43200,
        "token_type": "bot",
        "team": { "id": "T0TEAM" },
    }))
    .into_response()
}

//! One Slack thread per run: a header message edited in place with live progress, replies for
//! the events people act on (notifications, approvals with buttons, failures), and the end.
//!
//! The thread (`channel`, `ts` of the header) is kept with the run as the `slack.thread`
//! annotation, so a resumed run keeps talking in the same thread, and every message of a run
//! goes to that run's thread only. Header edits are coalesced (at most one per
//! [`EDIT_EVERY`]), well inside Slack's tier for `chat.update`. Delivery happens on its own
//! task: a slow or failing Slack never holds up the run; a message that could not be
//! delivered is logged and audited.

use std::sync::Arc;
use std::time::Duration;

use landfall_engine::state::NodeStatus;
use landfall_engine::store::{AuditDraft, Batch};
use landfall_engine::Engine;
use landfall_engine::{Observer, RunEvent};
use landfall_steps::approval::Verdict;
use landfall_steps::milestone::Milestone;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::web::Chat;

/// The least time between two edits of a run's header.
pub const EDIT_EVERY: Duration = Duration::from_secs(2);

/// The observer half: hands events to the thread's task, never blocks.
pub struct ThreadObserver {
    tx: mpsc::UnboundedSender<RunEvent>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Observer for ThreadObserver {
    fn on_event(&self, e: &RunEvent) {
        let _ = self.tx.send(e.clone());
    }
}

impl ThreadObserver {
    /// Waits (at most `limit`) until the thread's last messages are out: a process that ends
    /// right after its run (the CLI) would otherwise drop them.
    pub async fn flush(&self, limit: Duration) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = tokio::time::timeout(limit, t).await;
        }
    }
}

/// Starts the thread task of `run_id` in `channel`; returns the observer to give the run.
pub fn start(
    chat: Arc<dyn Chat>,
    engine: Engine,
    run_id: String,
    workflow: String,
    channel: String,
    actor: String,
) -> ThreadObserver {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_thread(
        chat, engine, run_id, workflow, channel, actor, rx,
    ));
    ThreadObserver {
        tx,
        task: std::sync::Mutex::new(Some(task)),
    }
}

struct Header {
    workflow: String,
    run_id: String,
    actor: String,
    done: usize,
    total: usize,
    current: Option<(String, f64)>,
    status: Option<String>,
}

impl Header {
    fn text(&self) -> String {
        let icon = match self.status.as_deref() {
            Some("succeeded") => ":white_check_mark:",
            Some("failed") | Some("cancelled") => ":x:",
            Some(_) => ":double_vertical_bar:",
            None => ":hourglass_flowing_sand:",
        };
        let mut t = format!(
            "{icon} *{}* `{}` started by <@{}>: {}/{} steps",
            self.workflow, self.run_id, self.actor, self.done, self.total
        );
        match (&self.status, &self.current) {
            (Some(s), _) => t.push_str(&format!(" · {s}")),
            (None, Some((node, p))) => t.push_str(&format!(" · {node} {p:.0}%")),
            _ => {}
        }
        t
    }
}

/// A stakeholder or actor as Slack markup when it is shaped like a Slack id (a user, channel
/// or user group), else as escaped text: data never becomes a ping or a link.
fn mention(who: &str) -> String {
    use landfall_steps::SlackTarget;
    match landfall_steps::slack_target(who) {
        Ok(SlackTarget::User(id)) => format!("<@{id}>"),
        Ok(SlackTarget::Channel(id)) => format!("<#{id}>"),
        Ok(SlackTarget::Group(id)) => format!("<!subteam^{id}>"),
        Ok(SlackTarget::ChannelName(name)) => escape(&name),
        Err(_) => escape(who),
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters (links, mentions): data
/// shown in a message is escaped, so an error text like `<taken>` can never ping anyone.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn escape_texts(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if k == "text" => *s = escape(s),
                    _ => escape_texts(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(escape_texts),
        _ => {}
    }
}

/// A reply for an event people should see, if it is one (data escaped; the mentions we add
/// are the only markup).
pub(crate) fn reply_for(e: &RunEvent, run_id: &str) -> Option<(String, Option<Value>)> {
    match e {
        RunEvent::RunQueued {
            key,
            ahead,
            holders,
            ..
        } => {
            let holders: Vec<String> = holders.iter().map(|h| format!("`{}`", escape(h))).collect();
            let ahead = match ahead {
                0 => String::new(),
                n => format!(" ({n} waiting before it)"),
            };
            Some((
                format!(
                    ":double_vertical_bar: Queued: {} is taken by {}{ahead}. `{run_id}` starts by itself when a slot frees.",
                    escape(key),
                    holders.join(", ")
                ),
                None,
            ))
        }
        RunEvent::Milestone {
            kind, data, node, ..
        } => match Milestone::parse(kind, data)? {
            Milestone::Notification {
                to, text, blocks, ..
            } => {
                let to: Vec<String> = to.iter().map(|w| mention(w)).collect();
                let text = escape(&text);
                let text = if to.is_empty() {
                    text.to_string()
                } else {
                    format!("{}\n{text}", to.join(" "))
                };
                // Block Kit from the template when there is one; the text stays as the
                // notification's fallback (and what screen readers announce).
                let blocks = blocks.as_ref().and_then(Value::as_array).map(|b| {
                    let mut b = b.clone();
                    b.iter_mut().for_each(escape_texts);
                    if !to.is_empty() && b.len() < 50 {
                        b.insert(0, json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": to.join(" ") }] }));
                    }
                    Value::Array(b)
                });
                Some((text, blocks))
            }
            Milestone::ApprovalRequested(r) => {
                let (text, blocks) = super::approval_message::request(&r, run_id, node);
                Some((text, Some(blocks)))
            }
            Milestone::ApprovalDecided {
                decision,
                actor,
                standing,
                ..
            } => Some((
                match decision {
                    // Said "approved" only once the request is: until then, what is recorded.
                    Verdict::Approve if !standing.is_empty() && standing != "approved" => {
                        format!("{}: {}", mention(&actor), escape(&standing))
                    }
                    _ => format!("{} by {}", decision.past(), mention(&actor)),
                },
                None,
            )),
            Milestone::PackagePublished { id, version, .. } => Some((
                format!(":package: package {}@{version} published", escape(&id)),
                None,
            )),
            Milestone::Rollback(r) => Some((
                format!(
                    ":rewind: rollback in {}/{}: {}",
                    escape(&r.account),
                    escape(&r.region),
                    escape(&r.causes.join("; "))
                ),
                None,
            )),
            // The console's progress says these; in Slack they would be noise.
            Milestone::AccountCreated { .. }
            | Milestone::PolicyAttached { .. }
            | Milestone::StackStarted { .. }
            | Milestone::StackFinished { .. }
            | Milestone::RollbackStarted { .. }
            | Milestone::ApprovalIgnored { .. } => None,
        },
        RunEvent::NodeFinished {
            node,
            status: NodeStatus::Failed,
            error,
            ..
        } => Some((
            format!(
                ":x: {node} failed: {}",
                error
                    .as_ref()
                    .map(|e| escape(&e.message))
                    .unwrap_or_else(|| "unknown".into())
            ),
            None,
        )),
        _ => None,
    }
}

async fn run_thread(
    chat: Arc<dyn Chat>,
    engine: Engine,
    run_id: String,
    workflow: String,
    channel: String,
    actor: String,
    mut rx: mpsc::UnboundedReceiver<RunEvent>,
) {
    let store = Arc::clone(&engine.store);
    let undelivered = |what: &str, err: &str| {
        tracing::warn!(run = %run_id, %what, error = %err, "a Slack message was not delivered");
        let _ = store.commit(Batch {
            audit: vec![AuditDraft::new(
                "landfall",
                &run_id,
                "slack_delivery_failed",
                json!({ "what": what, "error": err }),
            )
            .into()],
            ..Batch::default()
        });
    };
    let mut header = Header {
        workflow,
        run_id: run_id.clone(),
        actor,
        done: 0,
        total: 0,
        current: None,
        status: None,
    };
    // The thread survives restarts: a resumed run finds its header's ts with the run.
    let kept = store
        .annotations(&run_id)
        .ok()
        .and_then(|a| a.get("slack.thread").cloned())
        .and_then(|t| t["ts"].as_str().map(str::to_string));
    let ts = match kept {
        Some(ts) => Some(ts),
        None => match chat.post(&channel, None, &header.text(), None).await {
            Ok(ts) => {
                let _ = engine.annotate(
                    &run_id,
                    "slack.thread",
                    json!({ "channel": channel, "ts": ts }),
                );
                Some(ts)
            }
            Err(e) => {
                undelivered("thread header", &e.0);
                None
            }
        },
    };
    let mut stakeholders = std::collections::BTreeSet::new();
    let mut dirty = false;
    let mut last_edit = tokio::time::Instant::now() - EDIT_EVERY;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = tick.tick() => {
                if dirty && last_edit.elapsed() >= EDIT_EVERY {
                    if let Some(ts) = &ts {
                        if let Err(e) = chat.update(&channel, ts, &header.text()).await {
                            undelivered("progress", &e.0);
                        }
                    }
                    dirty = false;
                    last_edit = tokio::time::Instant::now();
                }
                continue;
            }
        };
        let Some(e) = event else { break };
        match &e {
            RunEvent::RunStarted { nodes_total, .. } => {
                header.total = *nodes_total;
                header.status = None;
                dirty = true;
            }
            RunEvent::RunQueued { .. } => {
                header.status = Some("queued".into());
                dirty = true;
            }
            RunEvent::NodeFinished { .. } => {
                header.done += 1;
                header.total = header.total.max(header.done);
                dirty = true;
            }
            RunEvent::Progress { node, percent, .. } => {
                header.current = Some((node.clone(), *percent));
                dirty = true;
            }
            _ => {}
        }
        // The stakeholders the run's notifications named are named again in the summary.
        if let RunEvent::Milestone { kind, data, .. } = &e {
            if let Some(Milestone::Notification { to, .. }) = Milestone::parse(kind, data) {
                for w in &to {
                    stakeholders.insert(mention(w));
                }
            }
        }
        if let Some((text, blocks)) = reply_for(&e, &run_id) {
            let text = truncate(&text, 3000);
            if let Err(err) = chat
                .post(&channel, ts.as_deref(), &text, blocks.as_ref())
                .await
            {
                undelivered("reply", &err.0);
            }
        }
        if let RunEvent::RunFinished { status, .. } = &e {
            header.status = Some(status.to_string());
            if let Some(ts) = &ts {
                if let Err(err) = chat.update(&channel, ts, &header.text()).await {
                    undelivered("final header", &err.0);
                }
                let mut summary =
                    format!("Run `{run_id}` {status}. `landfall status {run_id}` has the details.");
                if !stakeholders.is_empty() {
                    summary.push_str(&format!(
                        "\ncc {}",
                        stakeholders.iter().cloned().collect::<Vec<_>>().join(" ")
                    ));
                }
                if let Err(err) = chat.post(&channel, Some(ts), &summary, None).await {
                    undelivered("summary", &err.0);
                }
            }
            break;
        }
    }
}

/// Slack allows 3,000 characters per section: longer text is cut, and says so.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}… (truncated; `landfall status` has all of it)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_ping_or_link() {
        let e = RunEvent::NodeFinished {
            run_id: "r".into(),
            node: "deploy[0]".into(),
            status: NodeStatus::Failed,
            attempts: 1,
            error: Some(landfall_engine::StepError::permanent(
                "<!channel> & <http://x|y>",
            )),
            reason: None,
        };
        let (text, _) = reply_for(&e, "r").unwrap();
        assert_eq!(
            text,
            ":x: deploy[0] failed: &lt;!channel&gt; &amp; &lt;http://x|y&gt;"
        );
        let n = RunEvent::Milestone {
            run_id: "r".into(),
            node: "notify".into(),
            kind: "notification".into(),
            data: json!({ "template": "t", "text": "a <b>", "to": ["U1"], "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": "<@U9>" } }] }),
        };
        let (text, blocks) = reply_for(&n, "r").unwrap();
        assert_eq!(
            text, "<@U1>\na &lt;b&gt;",
            "our mention stays, the data is escaped"
        );
        assert_eq!(blocks.unwrap()[1]["text"]["text"], "&lt;@U9&gt;");
        assert!(truncate(&"x".repeat(4000), 3000).ends_with("has all of it)"));
    }
}

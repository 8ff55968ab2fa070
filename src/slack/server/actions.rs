//! What the front door does once a request is verified and allowed: acting on a message
//! (start a workflow, status, runs, cancel, resume; approval decisions are `decisions.rs`),
//! starting runs in the background with their Slack thread (or the console), and replying.

use std::sync::Arc;

use landfall_engine::state::Trigger;
use landfall_engine::{parse_document, Source};
use landfall_engine::{NewRun, Workflow};
use landfall_engine::{Observer, RunEvent};
use landfall_steps::milestone::Milestone;
use serde_json::{json, Map, Value};

use super::FrontDoor;
use crate::route::{self, Intent};
use landfall_engine::RunControl;

impl FrontDoor {
    /// Acts on one message; the text is the reply (see [`reply`]).
    pub async fn act(self: &Arc<Self>, text: &str, user: &str, channel: &str) -> String {
        reply(user, &self.act_on(text, user, channel).await)
    }

    async fn act_on(self: &Arc<Self>, text: &str, user: &str, channel: &str) -> String {
        let intent = route::classify(text, &self.routes);
        if !matches!(
            intent,
            Intent::Help | Intent::Usage { .. } | Intent::Unknown { .. }
        ) && !self.allowed(user, channel)
        {
            return self.refuse(user, channel, "use /landfall");
        }
        // A run is acted on only by those its workflow lets start it.
        if let Intent::Cancel { run }
        | Intent::Resume { run }
        | Intent::Redrive { run, .. }
        | Intent::Decide { run, .. } = &intent
        {
            if let Err(refusal) = self.run_allows(run, user, channel, "act on this run").await {
                return refusal;
            }
        }
        match intent {
            Intent::Help => route::help(&self.routes),
            Intent::Unknown { text } => {
                let text = crate::slack::thread::truncate(&text, 100);
                format!("I don't know `{text}`.\n{}", route::help(&self.routes))
            }
            Intent::Usage { usage, problem, .. } => format!("{problem}. Usage: `{usage}`"),
            Intent::Runs | Intent::Status { run: None } => self.runs(),
            Intent::Status { run: Some(r) } => self.status(&r),
            Intent::Cancel { run } => {
                let here = {
                    let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
                    live.get(&run).map(|c| c.cancel.cancel()).is_some()
                };
                if here {
                    self.audit(user, "slack_cancel", json!({ "run": run }));
                    return format!("Cancelling {run}.");
                }
                if !self.store.shares_work() {
                    return format!("{run} is not running in this server.");
                }
                // Another worker runs it (or will): it reads the request within a poll.
                match self.store.run(&run) {
                    Ok(Some(r)) if !r.status.is_terminal() => {
                        let asked = json!({ "by": user, "at": chrono::Utc::now() });
                        if let Err(e) =
                            self.engine
                                .annotate(&run, super::workers::CANCEL_REQUESTED, asked)
                        {
                            return format!("Cannot cancel {run}: {e}");
                        }
                        self.audit(user, "slack_cancel", json!({ "run": run }));
                        format!("Cancelling {run} (on the worker that runs it).")
                    }
                    Ok(Some(r)) => format!("{run} already finished ({}).", r.status),
                    Ok(None) => format!("No run `{run}`."),
                    Err(e) => format!("Cannot read {run}: {e}"),
                }
            }
            Intent::Resume { run } => self.resume(&run, user),
            Intent::Redrive { run, from } => self.redrive(&run, from.as_deref(), user),
            Intent::Decide { run, node, verdict } => {
                self.decide(&run, &node, verdict, user, None).await
            }
            Intent::Start { workflow, inputs } => {
                self.start(&workflow, inputs, user, channel, text).await
            }
            Intent::Plan { workflow, inputs } => self.plan(&workflow, inputs, user, channel).await,
            Intent::Apply { plan } => self.apply(&plan, user, channel, None).await,
        }
    }

    /// Answers where the request came from, without holding up the HTTP response.
    pub(super) fn say(&self, channel: &str, thread_ts: Option<&str>, text: String) {
        self.say_blocks(channel, thread_ts, text, None);
    }

    /// Answers `user` alone in `channel` (an answer that came after the acknowledgement).
    pub(super) fn say_to(&self, channel: &str, user: &str, text: String) {
        match &self.chat {
            None => println!("[slack {channel} to {user}] {text}"),
            Some(chat) => {
                let chat = Arc::clone(chat);
                let (channel, user) = (channel.to_string(), user.to_string());
                tokio::spawn(async move {
                    if let Err(e) = chat.ephemeral(&channel, &user, &text).await {
                        tracing::warn!(%channel, error = %e, "a reply was not delivered");
                    }
                });
            }
        }
    }

    /// [`Self::say`] with Block Kit blocks (the text is their fallback).
    pub(super) fn say_blocks(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        text: String,
        blocks: Option<Value>,
    ) {
        match &self.chat {
            None => println!("[slack {channel}] {text}"),
            Some(chat) => {
                let chat = Arc::clone(chat);
                let (channel, thread) = (channel.to_string(), thread_ts.map(str::to_string));
                tokio::spawn(async move {
                    if let Err(e) = chat
                        .post(&channel, thread.as_deref(), &text, blocks.as_ref())
                        .await
                    {
                        tracing::warn!(%channel, error = %e, "a reply was not delivered");
                    }
                });
            }
        }
    }

    pub(super) fn runs(&self) -> String {
        match self.store.runs() {
            Ok(runs) if runs.is_empty() => "No runs yet.".into(),
            Ok(mut runs) => {
                runs.sort_by_key(|r| std::cmp::Reverse(r.started_at));
                runs.iter()
                    .take(10)
                    .map(|r| {
                        format!(
                            "• `{}` {} {} (by {})",
                            r.run_id, r.workflow, r.status, r.trigger.actor
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Err(e) => format!("Cannot read runs: {e}"),
        }
    }

    pub(super) fn status(&self, run: &str) -> String {
        match (self.store.run(run), self.store.nodes(run)) {
            (Ok(Some(r)), Ok(nodes)) => {
                let mut out = format!("`{}` {}: {}", r.run_id, r.workflow, r.status);
                for n in nodes {
                    out.push_str(&format!("\n• {} {}", n.node_id, n.status));
                }
                out
            }
            (Ok(None), _) => format!("No run `{run}`."),
            (Err(e), _) | (_, Err(e)) => format!("Cannot read {run}: {e}"),
        }
    }

    /// The workflow `workflow` and its inputs from a message's arguments, if `user` in
    /// `channel` may `doing` it: the trigger's allowlists, then every input checked.
    pub(super) async fn checked(
        &self,
        workflow: &str,
        args: std::collections::BTreeMap<String, String>,
        user: &str,
        channel: &str,
        doing: &str,
    ) -> Result<(Arc<Workflow>, Map<String, Value>), String> {
        let (Some(route), Some(wf)) = (
            self.routes.iter().find(|r| r.workflow == workflow),
            self.workflows.get(workflow),
        ) else {
            return Err(format!("No workflow `{workflow}`."));
        };
        let t = &route.trigger;
        self.workflow_allows(t, user, channel, &format!("{doing} {workflow}"))
            .await?;
        let provided = match &t.input_file {
            None => Map::new(),
            Some(template) => input_file(template, &args)?,
        };
        let sets: Vec<(String, String)> = args.into_iter().collect();
        match landfall_engine::resolve_and_check(wf, &self.registry, provided, &sets) {
            Ok(i) => Ok((Arc::clone(wf), i)),
            Err(errs) => Err(format!(
                "Cannot {doing} {workflow}:\n{}",
                errs.iter()
                    .map(|e| format!("• `{}`: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("\n")
            )),
        }
    }

    /// Starts `workflow` for `user`; the reply says where its updates go.
    pub(super) async fn start(
        self: &Arc<Self>,
        workflow: &str,
        args: std::collections::BTreeMap<String, String>,
        user: &str,
        channel: &str,
        text: &str,
    ) -> String {
        let (wf, inputs) = match self.checked(workflow, args, user, channel, "start").await {
            Ok(x) => x,
            Err(refusal) => return refusal,
        };
        let trigger = Trigger {
            source: "slack".into(),
            actor: user.to_string(),
            details: json!({ "channel": channel, "text": text }),
        };
        match self.launch(wf, None, inputs, trigger, channel) {
            Ok(run_id) => {
                format!("Started {workflow} as `{run_id}`. Updates follow in this run's thread.")
            }
            Err(e) => format!("Cannot start {workflow}: {e}"),
        }
    }

    /// Creates a run of `wf` (applying `plan`, if given), keeps `channel` as its thread's
    /// place and executes it in the background; its id.
    pub(super) fn launch(
        self: &Arc<Self>,
        wf: Arc<Workflow>,
        plan: Option<String>,
        inputs: Map<String, Value>,
        trigger: Trigger,
        channel: &str,
    ) -> Result<String, landfall_engine::EngineError> {
        let record = self.engine.create_run(
            &wf,
            NewRun {
                run_id: None,
                plan,
                inputs,
                trigger,
                max_parallel: wf.max_parallel.unwrap_or(self.opts.max_parallel),
            },
        )?;
        let run_id = record.run_id.clone();
        if let Err(e) = self
            .engine
            .annotate(&run_id, "slack.thread", json!({ "channel": channel }))
        {
            tracing::warn!(run = %run_id, error = %e, "cannot record the run's thread");
        }
        if self.store.shares_work() {
            // Whichever worker takes it first runs it (usually this one, woken now).
            self.created.notify_one();
        } else {
            self.spawn(wf, record, channel.to_string());
        }
        Ok(run_id)
    }

    /// Whether this server executes `run` now.
    pub(super) fn is_live(&self, run: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(run)
    }

    pub(super) fn spawn(
        self: &Arc<Self>,
        wf: Arc<Workflow>,
        record: landfall_engine::state::RunRecord,
        channel: String,
    ) {
        let me = Arc::clone(self);
        let run_id = record.run_id.clone();
        let control = RunControl {
            grace: self.opts.grace,
            ..RunControl::default()
        };
        me.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.clone(), control.clone());
        let thread = me.chat.as_ref().map(|chat| {
            Arc::new(crate::slack::thread::start(
                Arc::clone(chat),
                me.engine.clone(),
                run_id.clone(),
                record.workflow.clone(),
                channel.clone(),
                record.trigger.actor.clone(),
            ))
        });
        let told = channel.clone();
        let observer: Arc<dyn Observer> = match &thread {
            Some(t) => Arc::clone(t) as Arc<dyn Observer>,
            None => Arc::new(Console {
                channel,
                run_id: run_id.clone(),
            }),
        };
        tokio::spawn(async move {
            let out = me.engine.execute(wf, record, control, &[observer]).await;
            match out {
                // The workflow refuses to wait for its concurrency key: the people who asked
                // hear why nothing happened.
                Err(e @ landfall_engine::EngineError::Refused { .. }) => {
                    me.say(
                        &told,
                        None,
                        format!(":no_entry: `{run_id}` did not start: {e}"),
                    );
                }
                Err(e) => tracing::error!(run = %run_id, error = %e, "run could not execute"),
                Ok(_) => {}
            }
            // The run stays live until its thread's last messages are out, so that a server
            // stopping (`drain`) does not drop them.
            if let Some(t) = thread {
                t.flush(std::time::Duration::from_secs(15)).await;
            }
            me.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run_id);
        });
    }

    pub(super) fn resume(self: &Arc<Self>, run: &str, user: &str) -> String {
        if self.is_live(run) {
            // Spawning it again would replace its entry in the live map (and then remove it):
            // the run could no longer be cancelled or drained.
            return format!("`{run}` is already running here.");
        }
        let record = match self.store.run(run) {
            Ok(Some(r)) => r,
            Ok(None) => return format!("No run `{run}`."),
            Err(e) => return format!("Cannot read {run}: {e}"),
        };
        if record.status.is_terminal() {
            return format!("`{run}` already finished ({}).", record.status);
        }
        // Another process (a CLI run, another server) holding the run's lease: say so rather
        // than "resuming" a run the engine will refuse to execute.
        match self.store.lease(run) {
            Ok(Some(_probe)) => {}
            Ok(None) => return format!("`{run}` is being executed by another process."),
            Err(e) => return format!("Cannot read {run}: {e}"),
        }
        let source = Source::new(record.workflow_file.clone(), record.workflow_text.clone());
        let Some(wf) = landfall_engine::compile(&source, &self.registry).workflow else {
            return format!("`{run}`'s workflow no longer compiles with this build.");
        };
        let channel = record.trigger.details["channel"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.audit(user, "slack_resume", json!({ "run": run }));
        self.spawn(Arc::new(wf), record, channel);
        format!("Resuming `{run}`.")
    }

    /// `/landfall redrive RUN [from STEP]`: a finished run that failed runs again where it
    /// failed (see `Engine::redrive`), in this server, told in the run's channel.
    pub(super) fn redrive(self: &Arc<Self>, run: &str, from: Option<&str>, user: &str) -> String {
        if self.is_live(run) {
            return format!("`{run}` is already running here.");
        }
        let record = match self.store.run(run) {
            Ok(Some(r)) => r,
            Ok(None) => return format!("No run `{run}`."),
            Err(e) => return format!("Cannot read {run}: {e}"),
        };
        let source = Source::new(record.workflow_file.clone(), record.workflow_text.clone());
        let Some(wf) = landfall_engine::compile(&source, &self.registry).workflow else {
            return format!("`{run}`'s workflow no longer compiles with this build.");
        };
        let redrive = match self.engine.redrive(&wf, run, from, user) {
            Ok(r) => r,
            Err(e) => return format!("Cannot redrive: {e}"),
        };
        let channel = record.trigger.details["channel"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.audit(user, "slack_redrive", json!({ "run": run, "from": from }));
        let mut what: Vec<String> = redrive.reset.iter().map(|n| format!("`{n}`")).collect();
        what.extend(redrive.steps.iter().map(|s| format!("`{s}` (anew)")));
        self.spawn(Arc::new(wf), redrive.run, channel);
        format!(
            "Redriving `{run}` (redrive {}): {}.",
            redrive.number,
            what.join(", ")
        )
    }
}

/// Reads the inputs file a trigger names, the path rendered from the args.
fn input_file(
    template: &str,
    args: &std::collections::BTreeMap<String, String>,
) -> Result<Map<String, Value>, String> {
    let path = landfall_engine::render_str(
        template,
        &landfall_engine::ctx_value(json!({ "args": args })),
    )
    .map_err(|e| format!("Cannot work out the inputs file: {e}"))?;
    let path = path.as_str().unwrap_or_default().to_string();
    if path.contains("..") {
        return Err(format!("`{path}` is not a file I may read."));
    }
    if !std::path::Path::new(&path).is_file() {
        return Err(format!(
            "There is no `{path}`: check the name, or add the file."
        ));
    }
    let source = Source::read(std::path::Path::new(&path))?;
    let (doc, _) =
        parse_document(&source).map_err(|d| format!("`{path}` is not valid: {}", d.message))?;
    match doc.value {
        Value::Object(m) => Ok(m),
        _ => Err(format!(
            "`{path}` must be a mapping of input names to values."
        )),
    }
}

/// Without a bot token, messages for a run's thread are printed here.
struct Console {
    channel: String,
    run_id: String,
}

impl Observer for Console {
    fn on_event(&self, e: &RunEvent) {
        let line = match e {
            RunEvent::Milestone {
                kind, data, node, ..
            } => match Milestone::parse(kind, data) {
                Some(Milestone::Notification { text, .. }) => Some(text),
                Some(Milestone::ApprovalRequested(r)) => Some(format!(
                    "Approval needed: {} (digest {}). [Approve] [Reject], or `/landfall approve {} {node}`",
                    r.title, r.digest, self.run_id
                )),
                _ => None,
            },
            RunEvent::NodeFinished {
                node,
                status,
                error,
                ..
            } => Some(format!(
                "{node} {status}{}",
                error
                    .as_ref()
                    .map(|e| format!(": {}", e.message))
                    .unwrap_or_default()
            )),
            RunEvent::RunFinished { status, .. } => Some(format!("run {status}")),
            _ => None,
        };
        if let Some(l) = line {
            println!("[slack {} · {}] {l}", self.channel, self.run_id);
        }
    }
}

/// What the bot answers a person is data (run ids, node names, the words they typed): escaped,
/// so it can neither ping `@channel` nor hide a link, and bounded. The one markup kept is the
/// mention of the person answered, whose id Slack verified.
pub fn reply(user: &str, text: &str) -> String {
    let text = crate::slack::thread::escape(&crate::slack::thread::truncate(text, 3000));
    match landfall_steps::slack_target(user) {
        Ok(landfall_steps::SlackTarget::User(id)) => {
            text.replace(&format!("&lt;@{id}&gt;"), &format!("<@{id}>"))
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    /// Words echoed back cannot ping, link or flood; the answered person's mention stays.
    #[test]
    fn replies_carry_no_markup_but_the_answered_mention() {
        assert_eq!(
            super::reply(
                "U0123ABCD",
                "I don't know `x <!channel> <https://evil.example|Approve deploy>`"
            ),
            "I don't know `x &lt;!channel&gt; &lt;https://evil.example|Approve deploy&gt;`"
        );
        assert_eq!(
            super::reply("U0123ABCD", "<@U0123ABCD> approved `<@U9>`"),
            "<@U0123ABCD> approved `&lt;@U9&gt;`"
        );
        assert!(super::reply("U0123ABCD", &"x".repeat(200_000)).len() < 3200);
    }
}

//! Live run progress on stderr: an indicatif bar on a terminal, plain lines otherwise.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use landfall_engine::state::NodeStatus;
use landfall_engine::{LogLevel, Observer, RunEvent};
use landfall_steps::milestone::Milestone;

pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    known: usize,
    done: usize,
    /// Per node, the last quarter (0–4) of progress printed as a line.
    quarters: std::collections::HashMap<String, u32>,
}

impl Progress {
    pub fn new(terminal: bool, quiet: bool, steps: usize) -> Self {
        let bar = (terminal && !quiet).then(|| {
            let b = ProgressBar::new(steps as u64);
            let style = ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            b.set_style(style);
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress {
            bar,
            quiet,
            state: Mutex::new(State {
                known: steps,
                done: 0,
                quarters: Default::default(),
            }),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    fn line(&self, text: String) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Observer for Progress {
    fn on_event(&self, e: &RunEvent) {
        match e {
            RunEvent::NodeStarted { node, attempt, .. } => {
                if let Some(b) = &self.bar {
                    b.set_message(format!("{node} (attempt {attempt})"));
                }
            }
            RunEvent::NodeFinished {
                node,
                status,
                attempts,
                error,
                reason,
                ..
            } => {
                {
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.done += 1;
                    if node.contains('[') && st.done > st.known {
                        st.known = st.done;
                    }
                    if let Some(b) = &self.bar {
                        b.set_length(st.known.max(st.done) as u64);
                        b.set_position(st.done as u64);
                    }
                }
                let text = match status {
                    NodeStatus::Succeeded => format!("  ✓ {node}{}", plural_attempts(*attempts)),
                    NodeStatus::Failed => format!(
                        "  ✗ {node} failed{}: {}",
                        plural_attempts(*attempts),
                        error
                            .as_ref()
                            .map(|e| format!("[{}] {}", e.class.as_str(), e.message))
                            .unwrap_or_default()
                    ),
                    NodeStatus::Skipped => {
                        format!("  - {node} skipped: {}", reason.clone().unwrap_or_default())
                    }
                    other => format!("  · {node} {other}"),
                };
                self.line(text);
            }
            RunEvent::RunQueued {
                key,
                ahead,
                holders,
                ..
            } => self.line(format!(
                "  ⏸ queued: {key} is taken by {}{}; starts when a slot frees",
                holders.join(", "),
                if *ahead > 0 {
                    format!(" ({ahead} waiting before this run)")
                } else {
                    String::new()
                }
            )),
            RunEvent::RetryScheduled {
                node,
                attempt,
                delay_ms,
                error,
                ..
            } => self.line(format!(
                "  ↻ {node} attempt {attempt} failed ({}), retrying in {}",
                error.message,
                crate::render::duration(*delay_ms as i64)
            )),
            RunEvent::Log {
                node,
                level,
                message,
                ..
            } => {
                let mark = match level {
                    LogLevel::Info => "",
                    LogLevel::Warn => "warning: ",
                };
                self.line(format!("    {node}: {mark}{message}"));
            }
            RunEvent::Progress {
                node,
                percent,
                message,
                ..
            } => {
                let text = format!(
                    "{node} {percent:.0}% {}",
                    message.clone().unwrap_or_default()
                );
                if let Some(b) = &self.bar {
                    b.set_message(text);
                    return;
                }
                // Without a terminal: a line at each quarter, so logs show movement without
                // a line per event.
                let quarter = (*percent / 25.0).floor() as u32;
                let new = {
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    let last = st.quarters.entry(node.clone()).or_insert(0);
                    let new = quarter > *last;
                    *last = (*last).max(quarter);
                    new
                };
                if new {
                    self.line(format!("    {text}"));
                }
            }
            RunEvent::Milestone {
                node, kind, data, ..
            } => {
                let text = match Milestone::parse(kind, data) {
                    Some(Milestone::StackStarted {
                        stack,
                        account,
                        region,
                        action,
                        ..
                    }) => Some(format!("{action} {stack} in {account}/{region}")),
                    Some(Milestone::StackFinished {
                        stack,
                        account,
                        region,
                        status,
                        ..
                    }) => Some(format!("{stack} {status} in {account}/{region}")),
                    Some(Milestone::ApprovalRequested(r)) => Some(format!(
                        "waiting for approval: {} (digest {})",
                        r.title,
                        r.short_digest()
                    )),
                    Some(Milestone::ApprovalDecided {
                        decision,
                        actor,
                        standing,
                        ..
                    }) => Some(if standing.is_empty() {
                        format!("{} by {actor}", decision.past())
                    } else {
                        format!("{} by {actor}: {standing}", decision.past())
                    }),
                    Some(Milestone::ApprovalIgnored { actor, why, .. }) => {
                        Some(format!("decision by {actor} ignored: {why}"))
                    }
                    Some(Milestone::RollbackStarted {
                        stack,
                        status,
                        action,
                    }) => Some(format!("rolling back {stack} ({status}): {action}")),
                    // Said by the node's own lines, or in Slack only.
                    Some(
                        Milestone::AccountCreated { .. }
                        | Milestone::PolicyAttached { .. }
                        | Milestone::PackagePublished { .. }
                        | Milestone::Rollback(_)
                        | Milestone::Notification { .. },
                    )
                    | None => None,
                };
                if let Some(t) = text {
                    self.line(format!("    {node}: {t}"));
                }
            }
            RunEvent::BreakerChanged { key, from, to } => {
                self.line(format!("  ! circuit `{key}`: {from} → {to}"))
            }
            _ => {}
        }
    }
}

fn plural_attempts(n: u32) -> String {
    if n > 1 {
        format!(" (after {n} attempts)")
    } else {
        String::new()
    }
}

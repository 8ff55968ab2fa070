//! Live run progress on stderr: an indicatif bar on a terminal, plain lines otherwise.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use landfall_engine::events::{LogLevel, Observer, RunEvent};
use landfall_engine::state::NodeStatus;

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
                let s = |k: &str| data[k].as_str().unwrap_or_default().to_string();
                let text = match kind.as_str() {
                    "stack_started" => Some(format!(
                        "{} {} in {}/{}",
                        s("action"),
                        s("stack"),
                        s("account"),
                        s("region")
                    )),
                    "stack_finished" => Some(format!(
                        "{} {} in {}/{}",
                        s("stack"),
                        s("status"),
                        s("account"),
                        s("region")
                    )),
                    "approval_requested" => {
                        let d = s("digest");
                        Some(format!(
                            "waiting for approval: {} (digest {})",
                            s("title"),
                            d.get(..12).unwrap_or(&d)
                        ))
                    }
                    "approval_decided" => Some(format!("{} by {}", s("decision"), s("actor"))),
                    "approval_ignored" => {
                        Some(format!("decision by {} ignored: {}", s("actor"), s("why")))
                    }
                    "rollback_started" => Some(format!(
                        "rolling back {} ({}): {}",
                        s("stack"),
                        s("status"),
                        s("action")
                    )),
                    _ => None,
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

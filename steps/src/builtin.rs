//! Built-in plugins that touch nothing outside the machine: `log`, `wait`, `assert`, `exec`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use landfall_engine::path::Path;
use landfall_engine::plugin::ConfigProblem;
use landfall_engine::{Step, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

/// `log`: writes a message to the run's event stream.
pub struct Log;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The message (a template).
    pub message: String,
    /// `info` (default) or `warn`.
    #[serde(default)]
    pub level: Option<LogLevelName>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevelName {
    Info,
    Warn,
}

#[async_trait]
impl Step for Log {
    const NAME: &'static str = "log";
    const SUMMARY: &'static str = "Write a message to the run's event stream";
    type Config = LogConfig;

    async fn run(&self, c: LogConfig, ctx: StepContext) -> Result<Value, StepError> {
        match c.level {
            Some(LogLevelName::Warn) => ctx.warn(c.message.clone()),
            _ => ctx.log(c.message.clone()),
        }
        Ok(json!({ "message": c.message }))
    }
}

/// `wait`: sleeps, and stops early when the run is cancelled.
pub struct Wait;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitConfig {
    /// How long, e.g. `30s`, `5m`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub duration: Duration,
}

#[async_trait]
impl Step for Wait {
    const NAME: &'static str = "wait";
    const SUMMARY: &'static str = "Wait for a duration (cancellable)";
    type Config = WaitConfig;

    async fn run(&self, c: WaitConfig, ctx: StepContext) -> Result<Value, StepError> {
        tokio::select! {
            _ = tokio::time::sleep(c.duration) => Ok(json!({ "waited_ms": c.duration.as_millis() as u64 })),
            _ = ctx.cancel.cancelled() => Err(StepError::transient("wait was cancelled")),
        }
    }
}

/// `assert`: fails the step, permanently, when a condition is false.
pub struct Assert;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssertConfig {
    /// The condition, usually one expression: `"{{ steps.org.outputs.accounts | length == 2 }}"`.
    pub that: bool,
    /// Said when the condition is false.
    pub message: String,
}

#[async_trait]
impl Step for Assert {
    const NAME: &'static str = "assert";
    const SUMMARY: &'static str = "Fail permanently with a message when a condition is false";
    type Config = AssertConfig;

    async fn run(&self, c: AssertConfig, _ctx: StepContext) -> Result<Value, StepError> {
        if c.that {
            Ok(json!({ "passed": true }))
        } else {
            Err(StepError::permanent(format!(
                "assertion failed: {}",
                c.message
            )))
        }
    }
}

/// `exec`: runs a program (never through a shell).
pub struct Exec;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments, e.g. `["aws", "sts", "get-caller-identity"]`. No shell is
    /// involved: quoting, globs and `$VARS` are not interpreted.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: Landfall's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Time limit; a program still running then is killed and the attempt is a transient
    /// failure.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
}

/// The exit code meaning "try again later" (sysexits' EX_TEMPFAIL).
pub const EX_TEMPFAIL: i32 = 75;
const STDERR_TAIL: usize = 2000;

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[async_trait]
impl Step for Exec {
    const NAME: &'static str = "exec";
    const SUMMARY: &'static str =
        "Run a program; JSON-object stdout becomes the outputs; exit 75 or a time-out retries";
    type Config = ExecConfig;

    fn validate(c: &ExecConfig) -> Vec<ConfigProblem> {
        if c.argv.is_empty() || c.argv[0].is_empty() {
            return vec![ConfigProblem {
                path: Path::root().key("argv"),
                message: "argv needs at least the program to run".into(),
            }];
        }
        Vec::new()
    }

    async fn run(&self, c: ExecConfig, ctx: StepContext) -> Result<Value, StepError> {
        let mut cmd = tokio::process::Command::new(&c.argv[0]);
        cmd.args(&c.argv[1..])
            .envs(&c.env)
            .env("LANDFALL_RUN_ID", &*ctx.run_id)
            .env("LANDFALL_NODE_ID", &*ctx.node_id)
            .env("LANDFALL_ATTEMPT", ctx.attempt.to_string())
            .env("LANDFALL_IDEMPOTENCY_KEY", ctx.idempotency_key())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &c.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| {
            let class = if e.kind() == std::io::ErrorKind::NotFound {
                format!("cannot run `{}`: program not found", c.argv[0])
            } else {
                format!("cannot run `{}`: {e}", c.argv[0])
            };
            StepError::permanent(class)
        })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut buf).await;
            }
            buf
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut buf).await;
            }
            buf
        };
        let work = async {
            let (out, err, status) = tokio::join!(read_out, read_err, child.wait());
            (out, err, status)
        };
        let limit = c.timeout.unwrap_or(Duration::MAX);
        let (out, err, status) = tokio::select! {
            r = tokio::time::timeout(limit, work) => match r {
                Ok(x) => x,
                Err(_) => {
                    return Err(StepError::transient(format!(
                        "`{}` did not finish within {}",
                        c.argv[0],
                        humantime::format_duration(limit)
                    )))
                }
            },
            _ = ctx.cancel.cancelled() => return Err(StepError::transient("cancelled")),
        };
        let status = status.map_err(|e| {
            StepError::transient(format!("waiting for `{}` failed: {e}", c.argv[0]))
        })?;
        let stdout = String::from_utf8_lossy(&out);
        let stderr = String::from_utf8_lossy(&err);
        match status.code() {
            Some(0) => Ok(match serde_json::from_str::<Value>(stdout.trim()) {
                Ok(v @ Value::Object(_)) => v,
                _ => json!({ "stdout": stdout }),
            }),
            Some(EX_TEMPFAIL) => Err(StepError::transient(format!(
                "`{}` asked to be retried (exit 75): {}",
                c.argv[0],
                tail(stderr.trim(), STDERR_TAIL)
            ))),
            code => Err(StepError::permanent(format!(
                "`{}` failed ({}): {}",
                c.argv[0],
                code.map_or("killed by a signal".to_string(), |c| format!("exit {c}")),
                tail(stderr.trim(), STDERR_TAIL)
            ))
            .with_context(json!({ "exit_code": code }))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_engine::ErrorClass;

    fn exec(argv: &[&str]) -> ExecConfig {
        ExecConfig {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
            timeout: None,
        }
    }

    #[tokio::test]
    async fn exec_json_stdout_becomes_outputs() {
        let out = Exec
            .run(
                exec(&["sh", "-c", "echo '{\"a\": 1}'"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap();
        assert_eq!(out, json!({"a": 1}));
        let out = Exec
            .run(exec(&["echo", "hi"]), StepContext::detached("x"))
            .await
            .unwrap();
        assert_eq!(out, json!({"stdout": "hi\n"}));
    }

    #[tokio::test]
    async fn exec_exit_codes_map_to_classes() {
        let e = Exec
            .run(
                exec(&["sh", "-c", "echo busy >&2; exit 75"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
        let e = Exec
            .run(
                exec(&["sh", "-c", "echo boom >&2; exit 3"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(
            e.message.contains("exit 3") && e.message.contains("boom"),
            "{}",
            e.message
        );
        let e = Exec
            .run(
                exec(&["no-such-program-landfall"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
    }

    #[tokio::test]
    async fn exec_time_out_is_transient() {
        let mut c = exec(&["sleep", "5"]);
        c.timeout = Some(Duration::from_millis(100));
        let e = Exec.run(c, StepContext::detached("x")).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
    }

    #[tokio::test]
    async fn exec_never_uses_a_shell() {
        let out = Exec
            .run(
                exec(&["echo", "$HOME;", "`id`"]),
                StepContext::detached("x"),
            )
            .await
            .unwrap();
        assert_eq!(out, json!({"stdout": "$HOME; `id`\n"}));
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }

    #[tokio::test]
    async fn assert_false_is_permanent() {
        let e = Assert
            .run(
                AssertConfig {
                    that: false,
                    message: "two accounts".into(),
                },
                StepContext::detached("x"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(e.message.contains("two accounts"));
    }
}

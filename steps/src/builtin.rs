//! Built-in plugins that touch nothing outside the engine: `log`, `wait`, `assert`.

use std::time::Duration;

use async_trait::async_trait;
use landfall_engine::{PlanOutcome, Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// `log`: writes a message to the run's event stream.
pub(crate) struct Log;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// The message (a template).
    pub message: String,
    /// `info` (default) or `warn`.
    #[serde(default)]
    pub level: Option<LogLevelName>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogLevelName {
    Info,
    Warn,
}

#[async_trait]
impl Plugin for Log {
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

    async fn plan(
        &self,
        c: LogConfig,
        _ctx: StepContext,
    ) -> Result<Option<PlanOutcome>, StepError> {
        Ok(Some(PlanOutcome::reads_only(
            json!({ "message": c.message }),
        )))
    }
}

/// `wait`: sleeps, and stops early when the run is cancelled.
pub(crate) struct Wait;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitConfig {
    /// How long, e.g. `30s`, `5m`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub duration: Duration,
}

#[async_trait]
impl Plugin for Wait {
    const NAME: &'static str = "wait";
    const SUMMARY: &'static str = "Wait for a duration (cancellable)";
    type Config = WaitConfig;

    async fn run(&self, c: WaitConfig, ctx: StepContext) -> Result<Value, StepError> {
        tokio::select! {
            _ = tokio::time::sleep(c.duration) => Ok(json!({ "waited_ms": c.duration.as_millis() as u64 })),
            _ = ctx.cancel.cancelled() => Err(StepError::transient("wait was cancelled")),
        }
    }

    async fn plan(
        &self,
        c: WaitConfig,
        _ctx: StepContext,
    ) -> Result<Option<PlanOutcome>, StepError> {
        Ok(Some(PlanOutcome {
            summary: format!(
                "no changes (waits {})",
                humantime::format_duration(c.duration)
            ),
            changes: Vec::new(),
            outputs: json!({ "waited_ms": c.duration.as_millis() as u64 }),
        }))
    }
}

/// `assert`: fails the step, permanently, when a condition is false.
pub(crate) struct Assert;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssertConfig {
    /// The condition, usually one expression: `"{{ steps.org.outputs.accounts | length == 2 }}"`.
    pub that: bool,
    /// Said when the condition is false.
    pub message: String,
}

#[async_trait]
impl Plugin for Assert {
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

    async fn plan(
        &self,
        c: AssertConfig,
        ctx: StepContext,
    ) -> Result<Option<PlanOutcome>, StepError> {
        self.run(c, ctx)
            .await
            .map(|o| Some(PlanOutcome::reads_only(o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_engine::ErrorClass;

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

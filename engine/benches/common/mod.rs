//! What the run benches share: a step that waits, and a 5-step chain of it.

use std::time::Duration;

use async_trait::async_trait;
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// `pause`: waits `ms` (none for 0), as a step waiting on a remote operation does.
pub(crate) struct Pause;

#[derive(Deserialize, JsonSchema)]
pub(crate) struct PauseConfig {
    ms: u64,
}

#[async_trait]
impl Plugin for Pause {
    const NAME: &'static str = "pause";
    const SUMMARY: &'static str = "waits";
    type Config = PauseConfig;
    async fn run(&self, c: PauseConfig, _ctx: StepContext) -> Result<Value, StepError> {
        if c.ms > 0 {
            tokio::time::sleep(Duration::from_millis(c.ms)).await;
        }
        Ok(json!({}))
    }
}

/// A workflow of five `pause` steps of `ms` each, one after the other.
pub(crate) fn chain(ms: u64) -> String {
    let mut y = String::from("name: chain\nsteps:\n");
    for i in 0..5 {
        y.push_str(&format!(
            "  - id: s{i}\n    uses: pause\n    with: {{ ms: {ms} }}\n"
        ));
        if i > 0 {
            y.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    y
}

//! `notify`: a message from `templates/messages/<template>.txt.j2` to the run's event stream
//! (the console), addressed to stakeholders. The Slack backend comes with the Slack front door.

use std::path::PathBuf;

use async_trait::async_trait;
use landfall_engine::{Step, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::templates::TemplateSet;

pub struct Notify {
    pub templates_dir: PathBuf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Message template under `templates/messages/`, without `.txt.j2`.
    pub template: String,
    /// Stakeholders (Slack channels or user ids) the message is for.
    #[serde(default)]
    pub to: Vec<String>,
    /// What the template may use.
    #[serde(default)]
    pub data: Value,
}

#[async_trait]
impl Step for Notify {
    const NAME: &'static str = "notify";
    const SUMMARY: &'static str =
        "Send a message rendered from templates/messages/ to stakeholders";
    type Config = NotifyConfig;

    async fn run(&self, c: NotifyConfig, ctx: StepContext) -> Result<Value, StepError> {
        let set = TemplateSet::load(&self.templates_dir.join("messages"))
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let file = format!("{}.txt.j2", c.template);
        if !set.names().contains(&file) {
            return Err(StepError::permanent(format!(
                "no message template `{}` in {}",
                c.template,
                set.dir().display()
            )));
        }
        let text = set
            .render(&file, &c.data)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let text = text.trim_end().to_string();
        ctx.milestone(
            "notification",
            json!({ "template": c.template, "to": c.to, "text": text }),
        );
        let to = if c.to.is_empty() {
            "(no stakeholders)".to_string()
        } else {
            c.to.join(", ")
        };
        ctx.log(format!("to {to}: {text}"));
        Ok(json!({ "template": c.template, "to": c.to, "text": text, "backend": "console" }))
    }
}

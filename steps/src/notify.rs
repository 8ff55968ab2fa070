//! `notify`: a message from `templates/messages/<template>.txt.j2` (and, when there is one,
//! Block Kit from `<template>.blocks.json.j2`) to the run's event stream, addressed to
//! stakeholders. The Slack front door turns it into a reply in the run's thread; without Slack
//! it is printed. Delivery is not this step's business: a Slack outage never fails a run.
//!
//! Block Kit is kept within Slack's limits here: at most 50 blocks (the last says how many
//! were left out) and 3,000 characters per text (cut, with a note).

use crate::milestone::Milestone;
use std::path::PathBuf;

use async_trait::async_trait;
use landfall_engine::{Plugin, StepContext, StepError};
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

/// Slack's most blocks per message.
pub(crate) const MAX_BLOCKS: usize = 50;
/// Slack's most characters in one text object.
pub(crate) const MAX_TEXT: usize = 3000;

/// Keeps Block Kit within Slack's limits, saying what was left out.
pub(crate) fn fit_blocks(v: Value) -> Value {
    let mut blocks = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    if blocks.len() > MAX_BLOCKS {
        let dropped = blocks.len() - (MAX_BLOCKS - 1);
        blocks.truncate(MAX_BLOCKS - 1);
        blocks.push(json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": format!("… {dropped} more blocks left out; `landfall status` has everything") }],
        }));
    }
    for b in &mut blocks {
        cut_texts(b);
    }
    Value::Array(blocks)
}

fn cut_texts(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if k == "text" && s.chars().count() > MAX_TEXT => {
                        let keep: String = s.chars().take(MAX_TEXT - 40).collect();
                        *s = format!("{keep}… (cut; `landfall status` has all)");
                    }
                    _ => cut_texts(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(cut_texts),
        _ => {}
    }
}

#[async_trait]
impl Plugin for Notify {
    const NAME: &'static str = "notify";
    const SUMMARY: &'static str =
        "Send a message rendered from templates/messages/ to stakeholders";
    type Config = NotifyConfig;

    fn validate(c: &NotifyConfig) -> Vec<landfall_engine::ConfigProblem> {
        crate::stakeholder::config_problems(&c.to)
    }

    async fn run(&self, c: NotifyConfig, ctx: StepContext) -> Result<Value, StepError> {
        crate::stakeholder::check(&c.to)?;
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
        let blocks_file = format!("{}.blocks.json.j2", c.template);
        let blocks = if set.names().contains(&blocks_file) {
            let rendered = set
                .render(&blocks_file, &c.data)
                .map_err(|e| StepError::permanent(e.to_string()))?;
            let v: Value = serde_json::from_str(&rendered).map_err(|e| {
                StepError::permanent(format!("{blocks_file} did not render to JSON: {e}"))
            })?;
            Some(fit_blocks(v))
        } else {
            None
        };
        Milestone::Notification {
            template: c.template.clone(),
            to: c.to.clone(),
            text: text.clone(),
            blocks: blocks.clone(),
        }
        .emit(&ctx);
        let to = if c.to.is_empty() {
            "(no stakeholders)".to_string()
        } else {
            c.to.join(", ")
        };
        ctx.log(format!("to {to}: {text}"));
        Ok(json!({ "template": c.template, "to": c.to, "text": text, "blocks": blocks }))
    }

    /// Changes nothing in AWS; what it says is rendered at apply.
    async fn plan(
        &self,
        c: NotifyConfig,
        _ctx: StepContext,
    ) -> Result<Option<landfall_engine::PlanOutcome>, StepError> {
        Ok(Some(landfall_engine::PlanOutcome {
            summary: format!("no changes (sends `{}` at apply)", c.template),
            changes: Vec::new(),
            outputs: Value::String(landfall_engine::PLAN_UNKNOWN.into()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_kept_within_slacks_limits() {
        let many: Vec<Value> = (0..60)
            .map(|i| json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("b{i}") } }))
            .collect();
        let out = fit_blocks(Value::Array(many));
        let a = out.as_array().unwrap();
        assert_eq!(a.len(), MAX_BLOCKS);
        assert!(a[49].to_string().contains("11 more blocks left out"));
        let long = fit_blocks(
            json!([{ "type": "section", "text": { "type": "mrkdwn", "text": "x".repeat(5000) } }]),
        );
        let t = long[0]["text"]["text"].as_str().unwrap();
        assert!(t.chars().count() <= MAX_TEXT && t.ends_with("has all)"));
    }
}

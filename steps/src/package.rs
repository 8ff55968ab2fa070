//! `package`: publish a package to, or fetch one from, the run's state file.

use crate::milestone::Milestone;
use std::collections::BTreeMap;

use async_trait::async_trait;
use landfall_engine::ConfigProblem;
use landfall_engine::Path;
use landfall_engine::{valid_package_id, PackageContent, PackageRef};
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) struct PackageStep;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum PackageConfig {
    /// Publish `files` and `manifest` as a new version of `id` (identical content returns the
    /// existing version).
    Publish {
        /// Package id: lowercase letters, digits, `-` (e.g. `acme-baseline`).
        id: String,
        /// Plain data describing the package (stacks, order, parameters).
        #[serde(default)]
        manifest: Value,
        /// Path → text of each file.
        files: BTreeMap<String, String>,
    },
    /// Fetch `id@version` or `id@latest`, digest verified.
    Fetch {
        /// `id@3` or `id@latest`.
        #[serde(rename = "ref")]
        reference: String,
    },
}

#[async_trait]
impl Plugin for PackageStep {
    const NAME: &'static str = "package";
    const SUMMARY: &'static str =
        "Publish a versioned, content-addressed package, or fetch one with its digest verified";
    type Config = PackageConfig;

    fn validate(c: &PackageConfig) -> Vec<ConfigProblem> {
        match c {
            PackageConfig::Publish { id, files, .. } => {
                let mut out = Vec::new();
                if !valid_package_id(id) {
                    out.push(ConfigProblem {
                        path: Path::root().key("id"),
                        message: format!(
                            "`{id}` is not a package id (lowercase letters, digits and `-`)"
                        ),
                    });
                }
                if files.is_empty() {
                    out.push(ConfigProblem {
                        path: Path::root().key("files"),
                        message: "a package needs at least one file".into(),
                    });
                }
                out
            }
            PackageConfig::Fetch { reference } => match reference.parse::<PackageRef>() {
                Ok(_) => Vec::new(),
                Err(message) => vec![ConfigProblem {
                    path: Path::root().key("ref"),
                    message,
                }],
            },
        }
    }

    async fn run(&self, c: PackageConfig, ctx: StepContext) -> Result<Value, StepError> {
        match c {
            PackageConfig::Publish {
                id,
                manifest,
                files,
            } => {
                // A durable commit: off the runtime's threads (an attempt's first poll runs on
                // the scheduler's).
                let store = ctx.clone();
                let p = tokio::task::spawn_blocking(move || {
                    store.publish_package(&id, &PackageContent { manifest, files })
                })
                .await
                .map_err(|e| StepError::transient(format!("publishing failed: {e}")))??;
                if p.new {
                    Milestone::PackagePublished {
                        id: p.id.clone(),
                        version: p.version,
                        digest: p.digest.clone(),
                    }
                    .emit(&ctx);
                } else {
                    ctx.log(format!("{}@{} already holds this content", p.id, p.version));
                }
                Ok(json!({
                    "id": p.id,
                    "version": p.version,
                    "digest": p.digest,
                    "new": p.new,
                    "ref": format!("{}@{}", p.id, p.version),
                }))
            }
            PackageConfig::Fetch { reference } => {
                let r: PackageRef = reference.parse().map_err(StepError::permanent)?;
                let store = ctx.clone();
                let p = tokio::task::spawn_blocking(move || store.fetch_package(&r))
                    .await
                    .map_err(|e| StepError::transient(format!("fetching failed: {e}")))??;
                Ok(json!({
                    "id": p.id,
                    "version": p.version,
                    "digest": p.digest,
                    "manifest": p.content.manifest,
                    "files": p.content.files,
                }))
            }
        }
    }

    /// Fetching reads; publishing is planned as the version it would make (none when the
    /// latest version already holds this content).
    async fn plan(
        &self,
        c: PackageConfig,
        ctx: StepContext,
    ) -> Result<Option<landfall_engine::PlanOutcome>, StepError> {
        match c {
            PackageConfig::Fetch { .. } => self
                .run(c, ctx)
                .await
                .map(|o| Some(landfall_engine::PlanOutcome::reads_only(o))),
            PackageConfig::Publish {
                id,
                manifest,
                files,
            } => {
                let digest = PackageContent { manifest, files }.digest();
                let latest = PackageRef {
                    id: id.clone(),
                    version: None,
                };
                let current = ctx.fetch_package(&latest).ok();
                if let Some(p) = current.as_ref().filter(|p| p.digest == digest) {
                    return Ok(Some(landfall_engine::PlanOutcome::reads_only(json!({
                        "id": p.id, "version": p.version, "digest": p.digest, "new": false,
                        "ref": format!("{}@{}", p.id, p.version),
                    }))));
                }
                let version = current.map_or(1, |p| p.version + 1);
                Ok(Some(landfall_engine::PlanOutcome {
                    summary: format!("publish {id}@{version}"),
                    changes: vec![
                        json!({ "action": "publish", "package": id, "version": version, "digest": digest }),
                    ],
                    outputs: json!({
                        "id": id, "version": version, "digest": digest, "new": true,
                        "ref": format!("{id}@{version}"),
                    }),
                }))
            }
        }
    }
}

//! Rendering the project's templates (SCPs, CloudFormation, messages) with minijinja.
//!
//! Values are *escaped, never spliced*: `.json.j2` and `.yaml.j2` templates auto-escape every
//! `{{ value }}` as JSON (a string gets its quotes and escapes, a list becomes a JSON array),
//! and JSON is valid YAML. So a display name like `O'Brien: "Ops" & Co` cannot break the
//! document. Undefined variables are errors.

use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TemplateError {
    #[error("cannot read templates in {dir}: {message}")]
    Read { dir: String, message: String },
    #[error("template {name}: {message}")]
    Render { name: String, message: String },
}

/// The templates of one directory (e.g. `templates/scp`), by file name.
pub(crate) struct TemplateSet {
    env: Environment<'static>,
    names: Vec<String>,
    dir: PathBuf,
}

fn escape_for(name: &str) -> AutoEscape {
    if name.ends_with(".json.j2") || name.ends_with(".yaml.j2") || name.ends_with(".yml.j2") {
        AutoEscape::Json
    } else {
        AutoEscape::None
    }
}

impl TemplateSet {
    /// Loads every `*.j2` file of `dir`, sorted by name.
    pub(crate) fn load(dir: &Path) -> Result<TemplateSet, TemplateError> {
        let read_err = |e: std::io::Error| TemplateError::Read {
            dir: dir.display().to_string(),
            message: e.to_string(),
        };
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(escape_for);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
                continue;
            };
            if !name.ends_with(".j2") {
                continue;
            }
            let source = std::fs::read_to_string(&path).map_err(read_err)?;
            landfall_engine::catching_template_panics(|| {
                env.add_template_owned(name.clone(), source)
            })
            .map_err(panicked)
            .and_then(|added| added.map_err(|e| e.to_string()))
            .map_err(|message| TemplateError::Render {
                name: name.clone(),
                message,
            })?;
            names.push(name);
        }
        names.sort();
        Ok(TemplateSet {
            env,
            names,
            dir: dir.to_path_buf(),
        })
    }

    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn render<C: Serialize>(
        &self,
        name: &str,
        ctx: &C,
    ) -> Result<String, TemplateError> {
        let t = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::Render {
                name: name.into(),
                message: e.to_string(),
            })?;
        let ctx = minijinja::Value::from(minijinja::value::Serde(ctx));
        landfall_engine::catching_template_panics(|| t.render(ctx))
            .map_err(panicked)
            .and_then(|rendered| {
                rendered.map_err(|e| {
                    let mut message = e.to_string();
                    if let Some(line) = e.line() {
                        message.push_str(&format!(" (line {line})"));
                    }
                    message
                })
            })
            .map_err(|message| TemplateError::Render {
                name: name.into(),
                message,
            })
    }
}

/// Operator templates are the project's own files, but a person wrote them: a panic in the
/// template engine is reported as the template's error, the node fails, and no backtrace is
/// printed.
fn panicked(why: String) -> String {
    format!("the template engine failed ({why}); rewrite the template")
}

/// A file name without its `.json.j2` / `.yaml.j2` / `.j2` ending.
pub(crate) fn stem(name: &str) -> &str {
    for ext in [".json.j2", ".yaml.j2", ".yml.j2", ".j2"] {
        if let Some(s) = name.strip_suffix(ext) {
            return s;
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// minijinja 3.1 panics on this (found by fuzzing expressions): in an operator template it
    /// is the template's error, never a panic through the plugin.
    #[test]
    fn a_panic_in_the_template_engine_is_the_templates_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.j2"), "{{ \"%(\u{e9}\" | format(1) }}").unwrap();
        let set = TemplateSet::load(dir.path()).unwrap();
        let e = set.render("t.j2", &serde_json::json!({})).unwrap_err();
        let TemplateError::Render { name, message } = e else {
            panic!("{e}");
        };
        assert_eq!(name, "t.j2");
        assert!(message.contains("template engine failed"), "{message}");
    }

    #[test]
    fn values_are_escaped_not_spliced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t.json.j2"),
            "{\"name\": {{ name }}, \"list\": {{ items }}}",
        )
        .unwrap();
        std::fs::write(dir.path().join("t.yaml.j2"), "Description: {{ name }}\n").unwrap();
        let set = TemplateSet::load(dir.path()).unwrap();
        let ctx = serde_json::json!({ "name": "O'Brien: \"Ops\" & Co\n", "items": ["a", "b"] });
        let json = set.render("t.json.j2", &ctx).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["name"], "O'Brien: \"Ops\" & Co\n");
        assert_eq!(v["list"], serde_json::json!(["a", "b"]));
        let yaml = set.render("t.yaml.j2", &ctx).unwrap();
        let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["Description"], "O'Brien: \"Ops\" & Co\n");
    }

    #[test]
    fn undefined_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.json.j2"), "{{ nope }}").unwrap();
        let set = TemplateSet::load(dir.path()).unwrap();
        assert!(set.render("t.json.j2", &serde_json::json!({})).is_err());
    }

    #[test]
    fn stems() {
        assert_eq!(stem("region-guard.json.j2"), "region-guard");
        assert_eq!(stem("network.yaml.j2"), "network");
    }
}

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
            env.add_template_owned(name.clone(), source)
                .map_err(|e| TemplateError::Render {
                    name: name.clone(),
                    message: e.to_string(),
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
        t.render(minijinja::Value::from(minijinja::value::Serde(ctx)))
            .map_err(|e| {
                let mut message = e.to_string();
                if let Some(line) = e.line() {
                    message.push_str(&format!(" (line {line})"));
                }
                TemplateError::Render {
                    name: name.into(),
                    message,
                }
            })
    }
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

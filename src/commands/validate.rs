//! `validate`, `graph`: a workflow file checked or drawn, nothing run.

use std::path::{Path, PathBuf};

use landfall_engine::compile;
use landfall_engine::diag::{codes, Diagnostic, Report};
use landfall_engine::Source;
use serde_json::Value;

use super::{print_json, read_source, App, Res, EXIT_INVALID, EXIT_OK};
use crate::cli::GraphFormat;
use crate::render;

impl App {
    pub(super) fn validate(&self, files: &[PathBuf], json: bool) -> Res<i32> {
        let mut code = EXIT_OK;
        let mut reports = Vec::new();
        for f in files {
            let report = match read_source(f) {
                Ok(source) => compile(&source, &self.registry).report,
                Err(e) => Report::new(
                    Source::new(f.display().to_string(), ""),
                    None,
                    vec![Diagnostic::error(codes::IO, e.message)],
                ),
            };
            if report.has_errors() {
                code = EXIT_INVALID;
            }
            if json {
                reports.push(report.to_json());
            } else if !report.diagnostics.is_empty() {
                eprint!("{}", render::report(&report, render::stderr_color()));
            } else if !self.quiet() {
                eprintln!("{}: ok", report.source.name);
            }
        }
        if json {
            print_json(&Value::Array(reports));
        }
        Ok(code)
    }

    pub(super) fn graph(&self, file: &Path, format: GraphFormat) -> Res<i32> {
        let wf = self.load_workflow(file)?;
        let text = match format {
            GraphFormat::Dot => wf.to_dot(),
            GraphFormat::Mermaid => wf.to_mermaid(),
        };
        print!("{text}");
        Ok(EXIT_OK)
    }
}

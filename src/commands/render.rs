//! `render`: a customer's requirements rendered into the package and SCPs a provisioning
//! would use, validated, without touching AWS.

use std::path::Path;

use landfall_engine::diag::Report;
use landfall_engine::parse_document;
use landfall_engine::Package;
use serde_json::json;

use super::packages::export_package;
use super::{read_source, App, Failure, Res, EXIT_FAILED, EXIT_OK};
use crate::render as show;

impl App {
    pub(super) fn render(&self, requirements: &Path, out: &Path) -> Res<i32> {
        use landfall_steps::Requirements;
        let source = read_source(requirements)?;
        let doc = match parse_document(&source) {
            Ok((doc, _)) => doc,
            Err(d) => {
                let r = Report::new(source, None, vec![d]);
                eprint!("{}", show::report(&r, show::stderr_color()));
                return Err(Failure::invalid(""));
            }
        };
        let map = doc.value.as_object().cloned().ok_or_else(|| {
            Failure::invalid(format!("{}: requirements must be a mapping", source.name))
        })?;
        let templates = &self.loaded.config.templates_dir;
        let req =
            Requirements::from_inputs(&map, Some(&templates.join("rules"))).map_err(|errs| {
                eprint!(
                    "{}",
                    show::input_problems(Some(&doc), &errs, show::stderr_color())
                );
                Failure::invalid(format!(
                    "{} problem(s) in {}; nothing rendered",
                    errs.len(),
                    source.name
                ))
            })?;
        let built = landfall_steps::build_package(templates, &req, None, None)
            .map_err(|e| Failure::invalid(e.message))?;
        let scps = landfall_steps::render_scps(
            templates,
            &serde_json::from_value(json!({
                "customer": req.customer,
                "target_id": "(the customer's OU)",
                "regions": req.regions,
            }))
            .map_err(|e| Failure::invalid(e.to_string()))?,
        )
        .map_err(|e| Failure::invalid(e.message))?;
        let packs: Vec<std::path::PathBuf> = req
            .compliance
            .iter()
            .map(|p| templates.join("rules").join(p))
            .collect();
        let findings = landfall_steps::check_package(&built.files, &built.manifest, &packs);
        let mut files = built.files.clone();
        for s in &scps {
            let pretty = serde_json::to_string_pretty(&s.document).unwrap_or_default();
            files.insert(format!("scp/{}.json", s.name), pretty + "\n");
        }
        let pkg = Package {
            id: built.package_id.clone(),
            version: 0,
            digest: String::new(),
            created_at: chrono::Utc::now(),
            run_id: None,
            content: landfall_engine::PackageContent {
                manifest: built.manifest.clone(),
                files,
            },
        };
        export_package(&pkg, out)?;
        if !self.quiet() {
            eprintln!(
                "rendered {} ({} stacks, {} SCPs) into {}",
                built.package_id,
                built.files.len(),
                scps.len(),
                out.display()
            );
        }
        for f in &findings {
            eprintln!(
                "{}: {} in {}{}: {}\n  fix: {}",
                match f.severity {
                    landfall_steps::Severity::Error => "error",
                    landfall_steps::Severity::Warning => "warning",
                },
                f.rule,
                f.stack,
                f.resource
                    .as_deref()
                    .map(|r| format!("/{r}"))
                    .unwrap_or_default(),
                f.message,
                f.fix
            );
        }
        let errors = findings
            .iter()
            .filter(|f| f.severity == landfall_steps::Severity::Error)
            .count();
        if errors > 0 {
            eprintln!("the package has {errors} error finding(s): it would be rejected");
            return Ok(EXIT_FAILED);
        }
        if !self.quiet() {
            eprintln!(
                "validation passed (structure, parameters, limits, rule packs: {})",
                req.compliance.join(", ")
            );
        }
        Ok(EXIT_OK)
    }
}

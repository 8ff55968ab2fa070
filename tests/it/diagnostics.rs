//! The corpus of broken files: each file is a case named `<code>-<case>`, its snapshot is
//! exactly what the user sees, and it must show its code. Workflows live in
//! `tests/fixtures/invalid/`, a run's inputs (for `workflows/onboarding.yaml`) in
//! `tests/fixtures/invalid-inputs/`, configuration files in `tests/fixtures/invalid-config/`.
//! Every diagnostic code has at least one case. Adding a case is adding a file.

use std::collections::BTreeSet;
use std::path::Path;

use landfall::render;
use landfall_engine::compile;
use landfall_engine::diag::codes;
use landfall_engine::{parse_document, Source};

/// The code a case's file name announces (`LF0105-cycle.yaml` → `LF0105`).
fn announced(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let code = name.split('-').next().unwrap_or_default().to_string();
    assert!(
        codes::ALL.contains(&code.as_str()),
        "{name}: a case is named `<code>-<case>` after a code of `landfall_engine::diag::codes`"
    );
    code
}

fn cases(dir: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut out: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

#[test]
fn every_broken_workflow_gets_a_located_report() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = landfall_steps::registry(&Default::default());
    insta::glob!("../fixtures/invalid", "*.*", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.strip_prefix(root).unwrap().display().to_string();
        let compiled = compile(&Source::new(name.clone(), text), &registry);
        assert!(
            compiled.report.has_errors(),
            "{name} is in the broken corpus but compiles"
        );
        assert!(compiled.workflow.is_none());
        for d in &compiled.report.diagnostics {
            assert!(d.span.is_some(), "{name}: `{}` has no location", d.message);
            assert!(d.help.is_some(), "{name}: `{}` has no help", d.message);
        }
        let code = announced(path);
        assert!(
            compiled.report.diagnostics.iter().any(|d| d.code == code),
            "{name} is the case of {code} but does not show it"
        );
        insta::assert_snapshot!(render::report(&compiled.report, false));
    });
}

#[test]
fn every_broken_inputs_file_gets_every_problem_named() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = landfall_steps::registry(&landfall_steps::Settings {
        templates_dir: root.join("templates"),
        ..landfall_steps::Settings::default()
    });
    let wf_text = std::fs::read_to_string(root.join("workflows/onboarding.yaml")).unwrap();
    let wf = compile(&Source::new("onboarding.yaml", wf_text), &registry)
        .workflow
        .unwrap();
    insta::glob!("../fixtures/invalid-inputs", "*.*", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let (doc, _) = parse_document(&Source::new("inputs.yaml", text)).unwrap();
        let provided = doc.value.as_object().cloned().unwrap();
        let errs = landfall_engine::resolve_and_check(&wf, &registry, provided, &[])
            .expect_err("a broken inputs file was accepted");
        let code = announced(path);
        assert!(
            errs.iter().any(|e| e.code == code),
            "{} does not show {code}: {errs:#?}",
            path.display()
        );
        // Ten mistakes of different kinds: ten reports, each at its file:line:column.
        if path.ends_with("LF0201-ten-mistakes.yaml") {
            assert_eq!(errs.len(), 10, "{errs:#?}");
        }
        insta::assert_snapshot!(render::input_problems(Some(&doc), &errs, false));
    });
}

#[test]
fn every_broken_configuration_gets_a_located_report() {
    insta::glob!("../fixtures/invalid-config", "*.toml", |path| {
        let code = announced(path);
        match landfall::config::load(Some(path), None, Default::default()) {
            Err(landfall::config::ConfigError::File(r)) => {
                assert!(r.diagnostics.iter().all(|d| d.span.is_some()));
                assert!(r.diagnostics.iter().any(|d| d.code == code));
                // The file's own name would hold this machine's path.
                let mut r = *r;
                r.source.name = path.file_name().unwrap().to_string_lossy().to_string();
                insta::assert_snapshot!(render::report(&r, false));
            }
            Err(e) => panic!("{}: not located: {e}", path.display()),
            Ok(_) => panic!("{} was accepted", path.display()),
        }
    });
}

/// Every code can be met and looked up: each has a case in one of the corpora, except
/// `LF0003` (a file that cannot be read has no content to keep; `tests/it/cli.rs` reads a
/// missing file).
#[test]
fn every_diagnostic_code_has_a_case() {
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for dir in ["invalid", "invalid-inputs", "invalid-config"] {
        for p in cases(dir) {
            covered.insert(announced(&p));
        }
    }
    let missing: Vec<&str> = codes::ALL
        .iter()
        .copied()
        .filter(|c| *c != codes::IO && !covered.contains(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "codes without a case in tests/fixtures/invalid*/ (add `<code>-<case>.yaml`): {missing:?}"
    );
}

#[test]
fn the_shipped_workflows_and_examples_are_valid() {
    // The binary's plugins: the steps' and `workflow` (child runs).
    let registry =
        landfall::commands::registry_with_children(landfall_steps::registry(&Default::default()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in ["examples", "workflows"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let is_workflow = p.extension().is_some_and(|x| x == "yaml" || x == "toml")
                && !p.file_name().unwrap().to_string_lossy().contains("input");
            if !is_workflow {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let c = compile(&Source::new(p.display().to_string(), text), &registry);
            assert!(
                c.report.diagnostics.is_empty(),
                "{}",
                render::report(&c.report, false)
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no workflow found to check");
}

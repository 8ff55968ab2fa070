//! The corpus of broken workflow files: each file is a case, its snapshot is exactly what the
//! user sees. Adding a case is adding a file under `tests/fixtures/invalid/`.

use landfall::render;
use landfall_engine::compile::compile;
use landfall_engine::source::Source;

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
        insta::assert_snapshot!(render::report(&compiled.report, false));
    });
}

#[test]
fn the_shipped_workflows_and_examples_are_valid() {
    let registry = landfall_steps::registry(&Default::default());
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

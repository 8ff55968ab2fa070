//! Snapshots of what Landfall generates for the example customers: review changes with
//! `cargo insta review`.

use landfall_engine::source::{parse, Source};
use landfall_steps::aws::policy::{render, PolicyConfig};

#[test]
fn scps_for_the_example_customers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    insta::glob!("../../examples/customers", "*.*", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let (doc, _) = parse(&Source::new(path.display().to_string(), text)).unwrap();
        let cfg: PolicyConfig = serde_json::from_value(serde_json::json!({
            "customer": doc.value["customer"],
            "target_id": "ou-example",
            "regions": doc.value["regions"],
        }))
        .unwrap();
        let scps = render(&root.join("templates"), &cfg).unwrap();
        let docs: Vec<_> = scps
            .iter()
            .map(|s| serde_json::json!({ "name": s.name, "characters": s.content.chars().count(), "document": s.document }))
            .collect();
        insta::assert_json_snapshot!(docs);
    });
}

fn requirements(path: &std::path::Path) -> landfall_steps::requirements::Requirements {
    let text = std::fs::read_to_string(path).unwrap();
    let (doc, _) = parse(&Source::new(path.display().to_string(), text)).unwrap();
    landfall_steps::requirements::Requirements::from_inputs(doc.value.as_object().unwrap(), None)
        .unwrap()
}

#[test]
fn packages_for_the_example_customers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    insta::glob!("../../examples/customers", "*.*", |path| {
        let req = requirements(path);
        let built =
            landfall_steps::cfn::build::build(&root.join("templates"), &req, None, None).unwrap();
        insta::assert_json_snapshot!("manifest", built.manifest);
        for (file, text) in &built.files {
            insta::assert_snapshot!(file.replace('/', "__"), text);
            // Values are escaped: the display name survives any quoting.
            let doc: serde_json::Value = serde_yaml::from_str(text).unwrap();
            assert!(doc["Description"]
                .as_str()
                .unwrap()
                .ends_with(req.display_name.as_str()));
        }
    });
}

/// cfn-lint, an oracle nobody here wrote, finds no error in any generated template.
#[test]
fn cfn_lint_accepts_every_generated_template() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let lint = root.join(".venv/bin/cfn-lint");
    assert!(
        lint.exists(),
        "cfn-lint is not installed: run `scripts/aws-emulator.sh setup` (scripts/test.sh does)"
    );
    let out = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for e in std::fs::read_dir(root.join("examples/customers"))
        .unwrap()
        .flatten()
    {
        let req = requirements(&e.path());
        let built =
            landfall_steps::cfn::build::build(&root.join("templates"), &req, None, None).unwrap();
        for (file, text) in built.files {
            let p = out
                .path()
                .join(format!("{}-{}", req.customer, file.replace('/', "-")));
            std::fs::write(&p, text).unwrap();
            files.push(p);
        }
    }
    assert_eq!(files.len(), 9);
    let result = std::process::Command::new(&lint)
        .args(&files)
        .output()
        .unwrap();
    let code = result.status.code().unwrap_or(-1);
    // cfn-lint's exit code is a bit mask: 2 = errors, 4 = warnings, 8 = informational.
    assert!(
        code & 2 == 0 && code >= 0,
        "cfn-lint found errors:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Every message template rendered with its fixture (`tests/fixtures/messages/`), text and
/// Block Kit, through the real `notify` step.
#[tokio::test]
async fn messages_render_as_people_will_read_them() {
    use landfall_engine::{Step, StepContext};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let step = landfall_steps::notify::Notify {
        templates_dir: root.join("templates"),
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("tests/fixtures/messages")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let data: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let cfg = serde_json::from_value(serde_json::json!({
            "template": name, "to": ["#acme-onboarding", "U0123ABCD"], "data": data,
        }))
        .unwrap();
        let out = step
            .run(cfg, StepContext::detached("notify"))
            .await
            .unwrap();
        if let Some(blocks) = out["blocks"].as_array() {
            assert!(blocks.len() <= 50, "{name}");
            // Block Kit that Slack would refuse is a bug: every block has a type, every text fits.
            assert!(blocks.iter().all(|b| b["type"].is_string()), "{name}");
        }
        insta::assert_snapshot!(
            format!("message@{name}"),
            format!(
                "{}\n--- blocks ---\n{}",
                out["text"].as_str().unwrap(),
                serde_json::to_string_pretty(&out["blocks"]).unwrap()
            )
        );
        seen += 1;
    }
    let templates = std::fs::read_dir(root.join("templates/messages"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".txt.j2")
        })
        .count();
    assert_eq!(seen, templates, "every message template has a fixture");
}

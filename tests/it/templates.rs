//! Snapshots of what Landfall generates for the example customers: review changes with
//! `cargo insta review`.

use landfall_engine::{parse_document, Source};
use landfall_steps::{render_scps, PolicyConfig};

#[test]
fn scps_for_the_example_customers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    insta::glob!("../../examples/customers", "*.*", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let (doc, _) = parse_document(&Source::new(path.display().to_string(), text)).unwrap();
        let cfg: PolicyConfig = serde_json::from_value(serde_json::json!({
            "customer": doc.value["customer"],
            "target_id": "ou-example",
            "regions": doc.value["regions"],
        }))
        .unwrap();
        let scps = render_scps(&root.join("templates"), &cfg).unwrap();
        let docs: Vec<_> = scps
            .iter()
            .map(|s| serde_json::json!({ "name": s.name, "characters": s.content.chars().count(), "document": s.document }))
            .collect();
        insta::assert_json_snapshot!(docs);
    });
}

fn requirements(path: &std::path::Path) -> landfall_steps::Requirements {
    let text = std::fs::read_to_string(path).unwrap();
    let (doc, _) = parse_document(&Source::new(path.display().to_string(), text)).unwrap();
    landfall_steps::Requirements::from_inputs(doc.value.as_object().unwrap(), None).unwrap()
}

#[test]
fn packages_for_the_example_customers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    insta::glob!("../../examples/customers", "*.*", |path| {
        let req = requirements(path);
        let built =
            landfall_steps::build_package(&root.join("templates"), &req, None, None).unwrap();
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
            landfall_steps::build_package(&root.join("templates"), &req, None, None).unwrap();
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
    // cfn-lint's exit code (cfnlint/runner/cli.py): 1 when it could not run (configuration
    // error, an exception), else a bit mask of what it found: 2 errors, 4 warnings, 8
    // informational. Only "ran, no error" passes.
    assert!(
        matches!(code, 0 | 4 | 8 | 12),
        "cfn-lint {} (exit {code}):\n{}{}",
        if code == 1 || !(0..=14).contains(&code) {
            "did not run"
        } else {
            "found errors"
        },
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    // The oracle works: a template with an error is found out.
    let bad = out.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "Resources:\n  Topic:\n    Type: AWS::SNS::Topic\n    Properties: { NoSuchProperty: 1 }\n",
    )
    .unwrap();
    let result = std::process::Command::new(&lint)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        result.status.code().map(|c| c & 3),
        Some(2),
        "cfn-lint did not find a plain error: {}",
        String::from_utf8_lossy(&result.stdout)
    );
}

/// Every message template rendered with its fixture (`tests/fixtures/messages/`), text and
/// Block Kit, through the real `notify` step.
#[tokio::test]
async fn messages_render_as_people_will_read_them() {
    use landfall_engine::{Plugin, StepContext};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let step = landfall_steps::Notify {
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
            // Block Kit that Slack would refuse is a bug: every block is of a known type and
            // within Slack's documented limits.
            let problems: Vec<String> = blocks.iter().flat_map(block_kit_problems).collect();
            assert!(problems.is_empty(), "{name}: {problems:#?}");
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

/// What Slack would refuse in one block, by the limits of its Block Kit reference (block,
/// header, section, context, actions and button element pages).
fn block_kit_problems(b: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let over = |what: &str, v: &serde_json::Value, max: usize| {
        let n = v.as_str().map_or(0, |s| s.chars().count());
        (n > max).then(|| format!("{what} has {n} characters, more than {max}"))
    };
    out.extend(over("block_id", &b["block_id"], 255));
    let kind = b["type"].as_str().unwrap_or_default().to_string();
    match kind.as_str() {
        "header" => {
            out.extend(over("header text", &b["text"]["text"], 150));
            if b["text"]["type"] != "plain_text" {
                out.push("a header's text must be plain_text".into());
            }
        }
        "section" => {
            out.extend(over("section text", &b["text"]["text"], 3000));
            let fields = b["fields"].as_array().map_or(&[][..], Vec::as_slice);
            for f in fields {
                out.extend(over("section field", &f["text"], 2000));
            }
            if fields.len() > 10 {
                out.push(format!("{} section fields, more than 10", fields.len()));
            }
            if b["text"].is_null() && fields.is_empty() {
                out.push("a section needs text or fields".into());
            }
        }
        "context" => {
            let n = b["elements"].as_array().map_or(0, Vec::len);
            if !(1..=10).contains(&n) {
                out.push(format!("{n} context elements, not 1 to 10"));
            }
            for e in b["elements"].as_array().into_iter().flatten() {
                out.extend(over("context text", &e["text"], 3000));
            }
        }
        "actions" => {
            let elements = b["elements"].as_array().map_or(&[][..], Vec::as_slice);
            if !(1..=25).contains(&elements.len()) {
                out.push(format!("{} action elements, not 1 to 25", elements.len()));
            }
            for e in elements {
                out.extend(over("button text", &e["text"]["text"], 75));
                out.extend(over("button value", &e["value"], 2000));
                out.extend(over("action_id", &e["action_id"], 255));
                out.extend(over("button url", &e["url"], 3000));
            }
        }
        "divider" => {}
        other => out.push(format!("unknown block type {other:?}")),
    }
    out
}

#[test]
fn the_block_kit_check_finds_what_slack_refuses() {
    use serde_json::json;
    let long = "x".repeat(3001);
    assert!(block_kit_problems(
        &json!({ "type": "section", "text": { "type": "mrkdwn", "text": "ok" } })
    )
    .is_empty());
    for bad in [
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": long } }),
        json!({ "type": "header", "text": { "type": "plain_text", "text": "h".repeat(151) } }),
        json!({ "type": "header", "text": { "type": "mrkdwn", "text": "h" } }),
        json!({ "type": "actions", "elements": [{ "type": "button", "text": { "type": "plain_text", "text": "b".repeat(76) }, "action_id": "a" }] }),
        json!({ "type": "context", "elements": [] }),
        json!({ "type": "sectoin", "text": { "type": "mrkdwn", "text": "typo" } }),
    ] {
        assert_eq!(block_kit_problems(&bad).len(), 1, "{bad}");
    }
}

/// Rule files of AWS's Guard Rules Registry (copied with their licence) on the example
/// customers' packages: every file is evaluated or reported as a rule-file problem naming it,
/// and each finding names the resource that fails (no private subnet blamed for public IPs).
#[test]
fn guard_rules_registry_findings_on_the_example_customers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let pack = root.join("tests/fixtures/guard-rules-registry/rules");
    insta::glob!("../../examples/customers", "*.*", |path| {
        let req = requirements(path);
        let built =
            landfall_steps::build_package(&root.join("templates"), &req, None, None).unwrap();
        let found = landfall_steps::check_package(
            &built.files,
            &built.manifest,
            std::slice::from_ref(&pack),
        );
        let lines: Vec<String> = found
            .iter()
            .map(|f| {
                let at = match &f.resource {
                    Some(r) => format!("{}/{r}", f.stack),
                    None => f.stack.clone(),
                };
                let message = f.message.replace(&*pack.display().to_string(), "registry");
                format!("{:?} {} in {at}: {message}", f.severity, f.rule)
            })
            .collect();
        assert!(
            !lines.iter().any(|l| l.contains("could not be read")),
            "{lines:#?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("SUBNET_AUTO_ASSIGN_PUBLIC_IP_DISABLED")),
            "no subnet of the package assigns public IPs: {lines:#?}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("alb_waf_enabled.guard holds no rules"))
                .count(),
            1,
            "{lines:#?}"
        );
        insta::assert_snapshot!(lines.join("\n"));
    });
}

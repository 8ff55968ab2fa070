//! The `package` plugin and `landfall packages` end to end.

use serde_json::json;

use crate::support::*;

const PUBLISH: &str = r#"
name: publish
inputs:
  body: { type: string }
steps:
  - id: publish
    uses: package
    with:
      action: publish
      id: acme-baseline
      manifest: { stacks: [network], customer: acme }
      files:
        stacks/network.yaml: "{{ inputs.body }}"
"#;

const FETCH: &str = r#"
name: fetch
steps:
  - { id: fetch, uses: package, with: { action: fetch, ref: "acme-baseline@latest" } }
"#;

fn publish(sb: &Sandbox, body: &str) -> serde_json::Value {
    let out = sb.run(&[
        "run",
        "publish.yaml",
        "--set",
        &format!("body={body}"),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    node(&doc, "publish")["outputs"].clone()
}

#[test]
fn versions_only_go_up_identical_content_is_not_republished_and_tampering_is_caught() {
    let sb = Sandbox::new();
    sb.write("publish.yaml", PUBLISH);
    sb.write("fetch.yaml", FETCH);

    let v1 = publish(&sb, "Resources: {}");
    assert_eq!(
        (v1["version"].clone(), v1["new"].clone()),
        (json!(1), json!(true))
    );
    let again = publish(&sb, "Resources: {}");
    assert_eq!(
        (again["version"].clone(), again["new"].clone()),
        (json!(1), json!(false))
    );
    assert_eq!(again["digest"], v1["digest"]);
    let v2 = publish(&sb, "Resources: { Vpc: {} }");
    assert_eq!(v2["version"], 2);

    let list = sb.json(&["packages", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let shown = sb.json(&["packages", "show", "acme-baseline@1", "--json"]);
    assert_eq!(
        shown["content"]["files"]["stacks/network.yaml"],
        "Resources: {}"
    );

    let diff = sb.run(&["packages", "diff", "acme-baseline@1", "acme-baseline@2"]);
    assert_eq!(diff.status.code(), Some(1));
    let text = stdout(&diff);
    assert!(
        text.contains("--- acme-baseline@1/stacks/network.yaml"),
        "{text}"
    );
    assert!(text.contains("+Resources: { Vpc: {} }"), "{text}");
    let same = sb.run(&[
        "packages",
        "diff",
        "acme-baseline@2",
        "acme-baseline@latest",
    ]);
    assert_eq!(same.status.code(), Some(0));

    let export = sb.run(&["packages", "export", "acme-baseline@2", "out"]);
    assert_eq!(export.status.code(), Some(0), "{}", stderr(&export));
    assert_eq!(
        std::fs::read_to_string(sb.path("out/stacks/network.yaml")).unwrap(),
        "Resources: { Vpc: {} }"
    );
    assert!(sb.path("out/manifest.json").exists());

    let fetched = sb.run(&["run", "fetch.yaml", "--json"]);
    assert_eq!(fetched.status.code(), Some(0), "{}", stderr(&fetched));
    let doc: serde_json::Value = serde_json::from_slice(&fetched.stdout).unwrap();
    assert_eq!(node(&doc, "fetch")["outputs"]["version"], 2);

    {
        use landfall_engine::store::{RedbStore, Store};
        let store = RedbStore::open(&sb.path(".landfall/state.redb")).unwrap();
        let mut p = store.package("acme-baseline", Some(2)).unwrap().unwrap();
        p.content.files.insert(
            "stacks/network.yaml".into(),
            "Resources: { Backdoor: {} }".into(),
        );
        store.tamper_package(&p).unwrap();
    }
    let fetched = sb.run(&["run", "fetch.yaml", "--json"]);
    assert_eq!(fetched.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&fetched.stdout).unwrap();
    assert_eq!(node(&doc, "fetch")["error"]["class"], "critical");
    assert!(node(&doc, "fetch")["error"]["message"]
        .as_str()
        .unwrap()
        .contains("integrity"));
    let show = sb.run(&["packages", "show", "acme-baseline@2"]);
    assert_eq!(show.status.code(), Some(3));
    assert!(stderr(&show).contains("corrupt"), "{}", stderr(&show));
}

#[test]
fn bad_package_ids_and_refs_are_caught_by_validate() {
    let sb = Sandbox::new();
    sb.write(
        "bad.yaml",
        r#"
name: bad
steps:
  - { id: a, uses: package, with: { action: publish, id: "Acme Baseline", files: { a.yaml: x } } }
  - { id: b, uses: package, with: { action: fetch, ref: "acme@zero" } }
  - { id: c, uses: package, with: { action: burn } }
"#,
    );
    let out = sb.run(&["validate", "bad.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let msgs: Vec<String> = doc[0]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(msgs[0].contains("not a package id"), "{msgs:?}");
    assert!(msgs[1].contains("not a version"), "{msgs:?}");
    assert!(msgs[2].contains("burn"), "{msgs:?}");
}

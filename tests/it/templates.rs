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

//! `steps`: every plugin of this build and the fields of its `with:` block.

use serde_json::Value;

use super::{print_json, App, Res, EXIT_OK};

impl App {
    pub(super) fn steps(&self, json: bool) -> Res<i32> {
        let infos = self.registry.infos();
        if json {
            print_json(&serde_json::to_value(&infos).unwrap_or_default());
            return Ok(EXIT_OK);
        }
        let mut out = String::new();
        for info in infos {
            out.push_str(&format!("{}\n    {}\n", info.name, info.summary));
            // A plugin whose `with` has variants (`action: publish | fetch`) lists each.
            let variants: Vec<&Value> = match info.schema["oneOf"].as_array() {
                Some(v) => v.iter().collect(),
                None => vec![&info.schema],
            };
            for variant in variants {
                let required: Vec<&str> = variant["required"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if info.schema["oneOf"].is_array() {
                    if let Some(doc) = variant["description"].as_str() {
                        out.push_str(&format!("    — {}\n", doc.replace('\n', " ")));
                    }
                }
                for (name, p) in variant["properties"].as_object().into_iter().flatten() {
                    let ty = match p["const"].as_str().or_else(|| p["enum"][0].as_str()) {
                        Some(c) => format!("{c:?}"),
                        None => schema_type(&info.schema, p),
                    };
                    let req = if required.contains(&name.as_str()) {
                        " (required)"
                    } else {
                        ""
                    };
                    let desc = p["description"].as_str().unwrap_or("").replace('\n', " ");
                    out.push_str(&format!("    with.{name}: {ty}{req}  {desc}\n"));
                }
            }
            out.push('\n');
        }
        print!("{out}");
        Ok(EXIT_OK)
    }
}

fn schema_type(root: &Value, p: &Value) -> String {
    if let Some(t) = p["type"].as_str() {
        if t == "array" {
            return format!("list of {}", schema_type(root, &p["items"]));
        }
        return t.to_string();
    }
    if let Some(ts) = p["type"].as_array() {
        let names: Vec<&str> = ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect();
        return names.join("|");
    }
    if let Some(r) = p["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        let target = &root["$defs"][name];
        if let Some(e) = target["enum"].as_array() {
            return e
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("|");
        }
        if let Some(one) = target["oneOf"].as_array() {
            let names: Vec<String> = one
                .iter()
                .filter_map(|x| {
                    x["const"]
                        .as_str()
                        .or_else(|| x["enum"][0].as_str())
                        .map(str::to_string)
                })
                .collect();
            if !names.is_empty() {
                return names.join("|");
            }
        }
        return name.to_string();
    }
    if let Some(any) = p["anyOf"].as_array() {
        let names: Vec<String> = any
            .iter()
            .filter(|x| x["type"].as_str() != Some("null"))
            .map(|x| schema_type(root, x))
            .collect();
        return names.join("|");
    }
    "any".into()
}

//! `packages list|show|export|diff`: the versioned deployment packages in the state file.

use std::path::Path;

use landfall_engine::store::Store;
use landfall_engine::{Package, PackageRef};
use serde_json::{json, Value};

use super::{print_json, App, Failure, Res, EXIT_FAILED, EXIT_OK};
use crate::cli::PackagesCommand;

impl App {
    pub(super) fn package(&self, store: &dyn Store, reference: &str) -> Res<Package> {
        let r: PackageRef = reference.parse().map_err(Failure::invalid)?;
        match store.package(&r.id, r.version) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(Failure::invalid(format!("no package {r}"))),
            // A corrupt package is the state file's problem, not the user's input.
            Err(e) => Err(Failure::env(e.to_string())),
        }
    }
}

impl App {
    pub(super) fn packages(&self, command: PackagesCommand) -> Res<i32> {
        let Some(store) = self.readable_store()? else {
            if let PackagesCommand::List { json } = command {
                return Ok(self.empty_listing("packages", json));
            }
            return Err(self.no_state("package"));
        };
        match command {
            PackagesCommand::List { json } => {
                let mut all = store.packages()?;
                all.sort_by(|a, b| {
                    b.created_at
                        .cmp(&a.created_at)
                        .then(b.version.cmp(&a.version))
                });
                let rows: Vec<Value> = all
                    .iter()
                    .map(|p| {
                        json!({
                            "id": p.id, "version": p.version, "digest": p.digest,
                            "created_at": p.created_at, "run_id": p.run_id,
                            "files": p.content.files.len(),
                        })
                    })
                    .collect();
                if json {
                    print_json(&Value::Array(rows));
                } else if all.is_empty() {
                    eprintln!("no packages yet in {}", self.db_shown());
                } else {
                    let mut out = format!(
                        "{:<32} {:>7}  {:<14} {:<20} {}\n",
                        "PACKAGE", "VERSION", "DIGEST", "CREATED", "FILES"
                    );
                    for p in &all {
                        out.push_str(&format!(
                            "{:<32} {:>7}  {:<14} {:<20} {}\n",
                            p.id,
                            p.version,
                            &p.digest[..12.min(p.digest.len())],
                            p.created_at.format("%Y-%m-%d %H:%M:%S"),
                            p.content.files.len()
                        ));
                    }
                    print!("{out}");
                }
                Ok(EXIT_OK)
            }
            PackagesCommand::Show { reference, json } => {
                let p = self.package(store.as_ref(), &reference)?;
                if json {
                    print_json(&serde_json::to_value(&p).unwrap_or_default());
                } else {
                    let mut out = format!(
                        "{}@{}  digest {}  created {}\n\nmanifest:\n{}\n",
                        p.id,
                        p.version,
                        p.digest,
                        p.created_at,
                        serde_json::to_string_pretty(&p.content.manifest).unwrap_or_default()
                    );
                    for (path, text) in &p.content.files {
                        out.push_str(&format!("\n--- {path} ({} bytes)\n", text.len()));
                    }
                    print!("{out}");
                }
                Ok(EXIT_OK)
            }
            PackagesCommand::Export { reference, dir } => {
                let p = self.package(store.as_ref(), &reference)?;
                export_package(&p, &dir)?;
                if !self.quiet() {
                    eprintln!(
                        "wrote {} files and manifest.json to {}",
                        p.content.files.len(),
                        dir.display()
                    );
                }
                Ok(EXIT_OK)
            }
            PackagesCommand::Diff { a, b } => {
                let pa = self.package(store.as_ref(), &a)?;
                let pb = self.package(store.as_ref(), &b)?;
                let text = diff_packages(&pa, &pb);
                print!("{text}");
                Ok(if text.is_empty() {
                    EXIT_OK
                } else {
                    EXIT_FAILED
                })
            }
        }
    }
}

/// Writes a package's files under `dir`, refusing any path that would leave it.
pub(super) fn export_package(p: &Package, dir: &Path) -> Res<()> {
    use std::path::Component;
    for path in p.content.files.keys() {
        let rel = Path::new(path);
        if path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(Failure::env(format!(
                "package {}@{} names a file outside its directory: {path:?}",
                p.id, p.version
            )));
        }
    }
    let io = |e: std::io::Error| Failure::env(format!("cannot write to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    for (path, text) in &p.content.files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&target, text).map_err(io)?;
    }
    let manifest = serde_json::to_string_pretty(&p.content.manifest).unwrap_or_default();
    std::fs::write(dir.join("manifest.json"), manifest + "\n").map_err(io)?;
    Ok(())
}

/// A unified diff of the manifests and of every file; empty when identical.
pub fn diff_packages(a: &Package, b: &Package) -> String {
    let name = |p: &Package, f: &str| format!("{}@{}/{f}", p.id, p.version);
    let mut out = String::new();
    let mut one = |path: &str, x: &str, y: &str| {
        if x != y {
            let d = similar::TextDiff::from_lines(x, y);
            out.push_str(
                &d.unified_diff()
                    .context_radius(3)
                    .header(&name(a, path), &name(b, path))
                    .to_string(),
            );
        }
    };
    let ma = serde_json::to_string_pretty(&a.content.manifest).unwrap_or_default() + "\n";
    let mb = serde_json::to_string_pretty(&b.content.manifest).unwrap_or_default() + "\n";
    one("manifest.json", &ma, &mb);
    let paths: std::collections::BTreeSet<&String> = a
        .content
        .files
        .keys()
        .chain(b.content.files.keys())
        .collect();
    for p in paths {
        let x = a.content.files.get(p).map(String::as_str).unwrap_or("");
        let y = b.content.files.get(p).map(String::as_str).unwrap_or("");
        one(p, x, y);
    }
    out
}

//! House rules checked by a test (rust-analyzer's `tidy`): every source file says what it is
//! for, and nothing unfinished is left in.

use std::path::{Path, PathBuf};

fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = ["engine/src", "steps/src", "src", "engine/benches"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    assert!(out.len() > 20, "found only {} source files", out.len());
    out
}

#[test]
fn every_source_file_has_a_module_doc() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().starts_with("//!"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:#?}"
    );
}

#[test]
fn nothing_unfinished_is_left_in() {
    let banned = ["todo!(", "dbg!(", "unimplemented!(", "#[ignore]"];
    let mut found = Vec::new();
    for p in sources() {
        for (i, line) in std::fs::read_to_string(&p).unwrap().lines().enumerate() {
            for b in banned {
                if line.contains(b) {
                    found.push(format!("{}:{}: {b}", p.display(), i + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// The layering of the binary's crate: the Slack front door and everything the commands use
/// sit below the commands and never reach back up into them.
#[test]
fn nothing_below_the_commands_imports_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for p in sources() {
        let Ok(rel) = p.strip_prefix(&root) else {
            continue;
        };
        if rel.starts_with("commands") || rel == Path::new("main.rs") || rel == Path::new("lib.rs")
        {
            continue;
        }
        for (i, line) in std::fs::read_to_string(&p).unwrap().lines().enumerate() {
            if ["crate::commands", "crate::app", "landfall::commands"]
                .iter()
                .any(|b| line.contains(b))
            {
                found.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "imports of the command layer from below it (move the shared piece down, e.g. into \
         landfall_steps or src/slack/setup.rs): {found:#?}"
    );
}

/// Files of the binary's crate stay readable: one with over 500 lines of code (its unit tests
/// not counted) says why at its top (a line `//! Long because …`), or is split.
#[test]
fn long_files_say_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for p in sources().into_iter().filter(|p| p.starts_with(&root)) {
        let text = std::fs::read_to_string(&p).unwrap();
        let lines = text
            .lines()
            .take_while(|l| !l.starts_with("#[cfg(test)]"))
            .count();
        let says_why = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .any(|l| l.contains("Long because"));
        if lines > 500 && !says_why {
            found.push(format!("{}: {lines} lines", p.display()));
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// `landfall steps` teaches every field: each property of every plugin's `with:` schema (and
/// of each variant) has a description.
#[test]
fn every_plugin_field_has_a_description() {
    let registry = landfall::commands::registry_with_children(landfall_steps::registry(
        &landfall_steps::Settings::default(),
    ));
    let mut missing = Vec::new();
    let mut fields = 0;
    for info in registry.infos() {
        let variants: Vec<&serde_json::Value> = match info.schema["oneOf"].as_array() {
            Some(v) => v.iter().collect(),
            None => vec![&info.schema],
        };
        for v in variants {
            for (name, p) in v["properties"].as_object().into_iter().flatten() {
                fields += 1;
                let described = p["description"].as_str().is_some_and(|d| !d.trim().is_empty())
                    // A variant's tag (`action: publish`) is described by the variant.
                    || p.get("const").is_some()
                    || p["enum"].as_array().is_some_and(|e| e.len() == 1);
                if !described {
                    missing.push(format!("{}: with.{name}", info.name));
                }
            }
        }
    }
    assert!(fields > 50, "found only {fields} fields");
    assert!(
        missing.is_empty(),
        "fields without a description (a `///` doc comment on the config field): {missing:#?}"
    );
}

/// Finding where a node's state changes takes one file: only `scheduler/transitions.rs`
/// assigns a node record's status (the run's own status is set by the run loop).
#[test]
fn only_the_transitions_file_changes_a_nodes_status() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/src/scheduler");
    let mut found = Vec::new();
    let mut in_transitions = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        let text = std::fs::read_to_string(&p).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let assigns = code.contains(".status =") && !code.contains(".status ==");
            if !assigns || code.contains("self.run.status") {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "transitions.rs") {
                in_transitions += 1;
            } else {
                found.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        in_transitions > 0,
        "the transitions file assigns no status: is the check stale?"
    );
    assert!(
        found.is_empty(),
        "node status assigned outside transitions.rs: {found:#?}"
    );
}

/// A library's public modules are its vocabularies (named, with the reason, at its root); the
/// rest of its layout is private and reached through the root's `pub use` list, so moving code
/// between its modules never breaks a caller.
#[test]
fn library_roots_publish_only_their_vocabularies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (lib, allowed) in [
        ("engine/src/lib.rs", &["diag", "state", "store"][..]),
        ("steps/src/lib.rs", &["approval", "milestone"][..]),
    ] {
        let text = std::fs::read_to_string(root.join(lib)).unwrap();
        let public: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod "))
            .map(|m| m.trim_end_matches(';'))
            .collect();
        assert_eq!(
            public, allowed,
            "{lib}: a new public module is a new vocabulary; re-export its items instead, or add it here with its reason at the root"
        );
    }
}

/// The project speaks only of itself: no file (fixtures, binary state files and snapshots
/// included) carries a home or work directory of the machine it was made on. A fixture written
/// by a real build records the paths it was given; make it from a neutral directory.
#[test]
fn no_file_names_a_directory_of_the_machine_it_was_made_on() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Spelled in pieces so this file does not find itself.
    let needles: Vec<Vec<u8>> = ["home", "work", "Users", "root"]
        .iter()
        .map(|d| format!("{}{d}/", '/').into_bytes())
        .collect();
    let skipped = ["target", ".git", ".venv", ".landfall", "node_modules"];
    let mut dirs = vec![root.to_path_buf()];
    let (mut found, mut read) = (Vec::new(), 0usize);
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !skipped.contains(&name.as_str()) {
                    dirs.push(p);
                }
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            read += 1;
            for n in &needles {
                if let Some(at) = bytes.windows(n.len()).position(|w| w == n.as_slice()) {
                    let end = (at + 60).min(bytes.len());
                    found.push(format!(
                        "{}: {}",
                        p.strip_prefix(root).unwrap_or(&p).display(),
                        String::from_utf8_lossy(&bytes[at..end])
                    ));
                }
            }
        }
    }
    assert!(read > 100, "read only {read} files");
    assert!(found.is_empty(), "{found:#?}");
}

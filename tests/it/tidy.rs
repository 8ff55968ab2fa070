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

//! Fuzzing harnesses of Landfall's input surfaces, on stable Rust: workflow files (YAML and
//! TOML), expressions, requirements, Slack's form and JSON payloads, and request signatures.
//!
//! Each target is a function of bytes that must not panic (errors are fine: they are answers).
//! The driver mutates a committed seed corpus (`fuzz/corpus/<target>/`) with byte-level and
//! token-level mutations (flip, insert, delete, duplicate, splice with another seed, insert a
//! token of the format such as `&a`, `*a`, `{{`, `%}`), runs each input under
//! `catch_unwind`, and keeps any input that panicked in `fuzz/crashes/<target>/`.
//!
//! Why not `cargo fuzz`: libFuzzer's coverage guidance needs a nightly toolchain, and the
//! project builds and tests on stable alone. This driver is not coverage-guided; its
//! mutations start from real files of each format, which is where the parsers' edge cases
//! are. `scripts/fuzz.sh TARGET MINUTES` runs one target long; `cargo test` runs each briefly.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The targets, by name.
pub const TARGETS: [&str; 7] = [
    "workflow-yaml",
    "workflow-toml",
    "expression",
    "requirements",
    "slack-form",
    "slack-json",
    "signature",
];

/// The largest input the mutator builds (the loaders' own limits are tested elsewhere).
const MAX_INPUT: usize = 64 * 1024;

/// Tokens of the formats, inserted whole: a byte flip rarely makes `{{` or `*a`.
const TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a",
    "{{ ",
    " }}",
    "{% ",
    " %}",
    "{% for x in y %}",
    "{% endfor %}",
    "[",
    "]",
    "{",
    "}",
    ":",
    "- ",
    "\n",
    "\"",
    "'",
    "\\",
    "|",
    ">",
    "#",
    "%",
    "=",
    "&",
    "+",
    "~",
    "!",
    ",",
    "---\n",
    "...",
    "null",
    "true",
    "1e999",
    "-0",
    "0x",
    "[[",
    "]]",
    "\"\"\"",
    "\u{0}",
    "\u{feff}",
    "é",
    "𝕏",
    "inputs.",
    "steps.",
    "item",
    "needs:",
    "uses:",
    "with:",
    "for_each:",
    "when:",
    "v0=",
    "payload=",
    "%7B",
    "%22",
    "<@U",
    "<!channel>",
    "<http://x|y>",
    "&lt;",
    "&gt;",
    "&amp;",
];

/// A target's verdict on one input: fine (whatever it answered) or it panicked.
pub type Target = fn(&[u8]);

/// The function of a target name.
pub fn target(name: &str) -> Option<Target> {
    Some(match name {
        "workflow-yaml" => workflow_yaml,
        "workflow-toml" => workflow_toml,
        "expression" => expression,
        "requirements" => requirements,
        "slack-form" => slack_form,
        "slack-json" => slack_json,
        "signature" => signature,
        _ => return None,
    })
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn registry() -> &'static landfall_engine::Registry {
    static R: OnceLock<landfall_engine::Registry> = OnceLock::new();
    R.get_or_init(|| {
        landfall_steps::registry(&landfall_steps::Settings {
            templates_dir: repo().join("templates"),
            ..landfall_steps::Settings::default()
        })
    })
}

/// The repository's root (the fuzz crate's parent).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn compile_as(name: &str, data: &[u8]) {
    let source = landfall_engine::Source::new(name, text(data));
    let compiled = landfall_engine::compile(&source, registry());
    // Rendering the report is part of what a user sees: it must not panic either.
    let _ = landfall::render::report(&compiled.report, false);
}

fn workflow_yaml(data: &[u8]) {
    compile_as("fuzz.yaml", data);
}

fn workflow_toml(data: &[u8]) {
    compile_as("fuzz.toml", data);
}

fn expression(data: &[u8]) {
    let ctx = landfall_engine::ctx_value(serde_json::json!({
        "inputs": { "customer": "acme", "regions": ["us-east-1", "eu-west-1"], "n": 3 },
        "steps": { "org": { "status": "succeeded", "outputs": { "id": "123", "list": [1, 2, 3] } } },
        "item": { "account": "111111111111", "region": "us-east-1" },
        "index": 0,
    }));
    let _ = landfall_engine::render_str(&text(data), &ctx);
}

fn requirements(data: &[u8]) {
    let source = landfall_engine::Source::new("requirements.yaml", text(data));
    if let Ok((doc, _)) = landfall_engine::parse_document(&source) {
        if let Some(map) = doc.value.as_object() {
            let errs = match landfall_steps::Requirements::from_inputs(map, None) {
                Ok(_) => return,
                Err(e) => e,
            };
            let _ = landfall::render::input_problems(Some(&doc), &errs, false);
        }
    }
}

fn routes() -> &'static [landfall::route::Route] {
    static R: OnceLock<Vec<landfall::route::Route>> = OnceLock::new();
    R.get_or_init(|| {
        let mut wfs = Vec::new();
        for f in ["workflows/onboarding.yaml", "workflows/provisioning.yaml"] {
            let path = repo().join(f);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let source = landfall_engine::Source::new(f, text);
            if let Some(wf) = landfall_engine::compile(&source, registry()).workflow {
                wfs.push((path, wf));
            }
        }
        landfall::route::routes(&wfs).unwrap_or_default()
    })
}

/// A slash command's form, as `/slack/commands` reads it: routed, and the answer escaped.
fn slack_form(data: &[u8]) {
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_bytes(data).unwrap_or_default();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let intent = landfall::route::classify(get("text"), routes());
    let echoed = format!("{intent:?} {}", landfall::route::normalize(get("text")));
    let _ = landfall::slack::server::reply(get("user_id"), &echoed);
    let _ = landfall_steps::slack_target(get("channel_id"));
}

/// An interaction (`payload=` JSON) or an Events API body, read as Socket Mode reads them.
fn slack_json(data: &[u8]) {
    use slack_morphism::prelude::*;
    let body = match serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) {
        Ok(pairs) => pairs
            .into_iter()
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_bytes())
            .unwrap_or_else(|| data.to_vec()),
        Err(_) => data.to_vec(),
    };
    let _ = serde_json::from_slice::<SlackInteractionEvent>(&body);
    let _ = serde_json::from_slice::<SlackPushEventCallback>(&body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
        let text = v["event"]["text"].as_str().unwrap_or_default();
        let _ = landfall::route::classify(text, routes());
    }
}

/// Signature headers and body: `v0` verification never panics, whatever the clock says.
fn signature(data: &[u8]) {
    let s = text(data);
    let mut parts = s.splitn(3, '\n');
    let ts = parts.next();
    let sig = parts.next();
    let body = parts.next().unwrap_or_default();
    for now in [0, 1_700_000_000, i64::MAX, i64::MIN] {
        let _ = landfall::slack::signature::verify("secret", ts, sig, body.as_bytes(), now);
    }
}

/// One mutation of `input` (using `other` for splices).
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    match rng.random_range(0..8u8) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = rng.random();
        }
        2 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len.min(a + 64));
            input.drain(a..b);
        }
        3 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len.min(a + 256));
            let copy = input[a..b].to_vec();
            let at = rng.random_range(0..=input.len());
            input.splice(at..at, copy);
        }
        4 if !other.is_empty() => {
            let a = rng.random_range(0..other.len());
            let b = rng.random_range(a..=other.len().min(a + 512));
            let at = rng.random_range(0..=len);
            input.splice(at..at, other[a..b].iter().copied());
        }
        5 if len > 0 => {
            // Truncation: the end of a file is where parsers meet unfinished structures.
            input.truncate(rng.random_range(0..len));
        }
        _ => {
            let t = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
            let at = rng.random_range(0..=len);
            input.splice(at..at, t.iter().copied());
        }
    }
    input.truncate(MAX_INPUT);
}

/// The seeds of a target: every file of its corpus directory.
pub fn corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut seeds: Vec<Vec<u8>> = files.iter().filter_map(|f| std::fs::read(f).ok()).collect();
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    seeds
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub executions: u64,
    /// Inputs that panicked, as saved (or as would be saved when no crash directory is given).
    pub panics: Vec<PathBuf>,
    /// Peak resident memory of the process, in KiB (Linux: `VmHWM`), when known.
    pub peak_kib: Option<u64>,
}

/// Runs `target` on mutations of `seeds` for `budget`, from `seed` (the run is reproducible
/// given the same seed and the same number of executions). Inputs that panic are written to
/// `crashes` when given.
pub fn run(
    target: Target,
    seeds: &[Vec<u8>],
    budget: Duration,
    seed: u64,
    crashes: Option<&Path>,
) -> Outcome {
    // The harness's own panics are the finding; their messages would flood the terminal.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut executions = 0u64;
    let mut panics = Vec::new();
    // Each seed as it is, first.
    let mut queue: Vec<Vec<u8>> = seeds.to_vec();
    while start.elapsed() < budget {
        let input = match queue.pop() {
            Some(i) => i,
            None => {
                let mut i = seeds[rng.random_range(0..seeds.len())].clone();
                let other = &seeds[rng.random_range(0..seeds.len())];
                for _ in 0..rng.random_range(1..=8) {
                    mutate(&mut rng, &mut i, other);
                }
                i
            }
        };
        executions += 1;
        let ok = std::panic::catch_unwind(|| target(&input)).is_ok();
        if !ok {
            let name = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&input));
            let path = crashes.map_or_else(|| PathBuf::from(&name), |d| d.join(&name));
            if let Some(d) = crashes {
                let _ = std::fs::create_dir_all(d);
                let _ = std::fs::write(&path, &input);
            }
            if !panics.contains(&path) {
                panics.push(path);
            }
        }
    }
    std::panic::set_hook(quiet);
    Outcome {
        executions,
        panics,
        peak_kib: peak_kib(),
    }
}

fn peak_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target, briefly (`FUZZ_SECONDS`, default 2 s each), from its committed corpus:
    /// no input may panic. Long runs: `scripts/fuzz.sh TARGET MINUTES`.
    #[test]
    fn every_target_survives_a_brief_run() {
        let secs: u64 = std::env::var("FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        let mut failures = Vec::new();
        for name in TARGETS {
            let dir = repo().join("fuzz/corpus").join(name);
            let seeds = corpus(&dir);
            assert!(
                seeds.len() > 1,
                "{name}: the corpus {} is empty",
                dir.display()
            );
            let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
            let out = run(t, &seeds, Duration::from_secs(secs), 42, None);
            assert!(out.executions > seeds.len() as u64, "{name}: {out:?}");
            if !out.panics.is_empty() {
                failures.push(format!("{name}: {:?}", out.panics));
            }
        }
        assert!(failures.is_empty(), "inputs panicked: {failures:#?}");
    }

    /// A target that panics on some input is caught, and the input named: the driver can fail.
    #[test]
    fn a_panicking_target_is_reported() {
        fn fragile(data: &[u8]) {
            assert!(!data.contains(&b'!'), "bang");
        }
        let out = run(
            fragile,
            &[b"hello".to_vec(), b"x!".to_vec()],
            Duration::from_millis(200),
            1,
            None,
        );
        assert!(!out.panics.is_empty());
    }
}

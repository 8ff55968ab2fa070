//! What the engine admits from files and templates: file sizes, YAML expansion, `for_each`
//! fan-out, template evaluation. The defaults are far above any real workflow and far below
//! what would exhaust memory; `[limits]` in `landfall.toml` changes them.
//!
//! Why process-wide (set once at start-up, read anywhere): the limits apply where files are
//! parsed and templates rendered, which happens from many places (the CLI, `serve`, plugins,
//! plans) that have no other shared context; threading a value through all of them would add
//! a parameter to every parse for a setting that never changes while the process lives.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The limits; every field has a default (see [`Limits::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest workflow, inputs or requirements file, in bytes.
    pub max_file_bytes: u64,
    /// The most values one YAML document may hold once its aliases are expanded (a "billion
    /// laughs" file of 1 KB names 10⁹; the 10,000-step benchmark workflow holds ~70,000).
    pub max_yaml_nodes: usize,
    /// The deepest nesting of a YAML document.
    pub max_yaml_depth: usize,
    /// The most instances one `for_each` may make.
    pub max_fan_out: usize,
    /// Evaluation steps one template or expression may take (minijinja's fuel): stops
    /// `range(10**9)` loops, never a real template.
    pub template_fuel: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 16 * 1024 * 1024,
            max_yaml_nodes: 400_000,
            max_yaml_depth: 128,
            max_fan_out: 10_000,
            template_fuel: 1_000_000,
        }
    }
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

/// Sets the process's limits; only the first call counts (before any file is read). Returns
/// whether this call set them.
pub fn set(l: Limits) -> bool {
    LIMITS.set(l).is_ok()
}

/// The process's limits (the defaults unless [`set`] was called).
pub fn get() -> Limits {
    LIMITS.get().copied().unwrap_or_default()
}

//! Landfall's step plugins. The engine knows none of them by name; [`registry`] is the one
//! place that registers them.

pub mod builtin;

use landfall_engine::Registry;

/// Every plugin of this build, by the name steps `use`.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(builtin::Log)
        .register(builtin::Wait)
        .register(builtin::Assert)
        .register(builtin::Exec);
    r
}

//! The `landfall` binary's library half: the CLI, configuration and everything that renders
//! output. Kept as a library so integration tests can render reports exactly as users see
//! them.

mod child;
pub mod cli;
pub mod commands;
pub mod config;
pub mod progress;
pub mod render;
pub mod route;
pub mod slack;

//! The Slack front door: the server (HTTP and Socket Mode), request signatures, the run
//! threads, the Web API client and the installed tokens.

mod approval_message;
pub mod install;
pub mod listen;
pub mod refusals;
pub mod server;
pub mod setup;
pub mod signature;
pub mod socket;
pub mod thread;
pub mod tokens;
pub mod web;

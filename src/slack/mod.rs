//! The Slack front door: request signatures (and, to come, the server, the run threads and
//! the Web API client).

pub mod server;
pub mod signature;
pub mod thread;
pub mod tokens;
pub mod web;

//! CloudFormation stacks in the customer's accounts: what to deploy where (`plan`), following
//! an operation (`monitor`), and the `deploy`, `verify` and `rollback` plugins.

pub mod deploy;
pub mod monitor;
pub mod plan;
pub mod rollback;
pub mod verify;

#[cfg(test)]
mod props;
#[cfg(test)]
mod replay;

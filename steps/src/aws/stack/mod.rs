//! CloudFormation stacks in the customer's accounts: what to deploy where (`plan`), following
//! an operation (`monitor`), what a deploy would change (`preview`), and the `deploy`, `verify`
//! and `rollback` plugins.

pub(crate) mod apply;
pub(crate) mod deploy;
pub(crate) mod monitor;
pub(crate) mod plan;
pub(crate) mod preview;
pub(crate) mod rollback;
pub(crate) mod verify;

#[cfg(test)]
mod props;
#[cfg(test)]
mod replay;

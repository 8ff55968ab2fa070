//! CloudFormation packages: building them from requirements, and validating them.

pub(crate) mod build;
pub(crate) mod validate;

#[cfg(test)]
mod props;

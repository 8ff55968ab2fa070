//! CloudFormation packages: building them from requirements, and validating them.

pub mod build;
pub mod validate;

#[cfg(test)]
mod props;

//! CloudFormation packages: building them from requirements (and, next, validating them).

pub mod build;

//! Landfall's integration tests: one binary (faster to build), one module per area.

mod aws_org;
mod cli;
mod diagnostics;
mod packages;
mod props_aws;
mod props_provisioning;
mod props_slack;
mod provisioning;
mod serve;
mod slack_api;
mod support;
mod templates;
mod tidy;

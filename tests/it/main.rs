//! Landfall's integration tests: one binary (faster to build), one module per area.

mod aws_org;
mod change_control;
mod cli;
mod diagnostics;
mod fleet;
mod guard_rails;
mod packages;
mod postgres;
mod props_aws;
mod props_provisioning;
mod props_slack;
mod provisioning;
mod serve;
mod serve_acks;
mod serve_limits;
mod serve_payloads;
mod slack_api;
mod strict_aws;
mod support;
mod templates;
mod tidy;
mod torture;

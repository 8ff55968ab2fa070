//! Landfall's step plugins. The engine knows none of them by name; [`registry`] is the one
//! place that registers them (and the named input checks workflows refer to).

// Two modules stay public because they are contracts other crates speak, not machinery:
// `approval` (the request a step emits and the decision that answers it) and `milestone` (what
// progress, the Slack thread and the console render). The rest is private; what of it the binary
// and the tests use is re-exported below.
pub mod approval;
pub mod milestone;

mod aws;
mod builtin;
mod cfn;
mod exec;
mod notify;
mod package;
mod requirements;
mod stakeholder;
mod templates;

pub use aws::errors::step_error;
pub use aws::org::{Org, OrgConfig};
pub use aws::policy::{render as render_scps, Policy, PolicyConfig};
pub use aws::{call_retries, Aws};
pub use cfn::build::build as build_package;
pub use cfn::validate::{check_package, Severity};
pub use notify::Notify;
pub use requirements::Requirements;
pub use stakeholder::{slack_target, SlackTarget};

use std::path::PathBuf;
use std::sync::Arc;

use landfall_engine::Registry;

/// What plugins need from the project's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where `cfn/`, `scp/`, `rules/` and `messages/` templates live.
    pub templates_dir: PathBuf,
    /// The operators' approval policies (`[[approval.policies]]` in `landfall.toml`).
    pub approval_policies: Vec<approval::policy::ApprovalPolicy>,
    /// Requests per second per AWS service and account × region (`[aws.rate_limits]`).
    pub rate_limits: std::collections::BTreeMap<String, u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            templates_dir: PathBuf::from("templates"),
            approval_policies: Vec::new(),
            rate_limits: Default::default(),
        }
    }
}

/// Every plugin and input check of this build.
pub fn registry(settings: &Settings) -> Registry {
    let aws = aws::Aws::with_rate_limits(&settings.rate_limits);
    let policies = Arc::new(settings.approval_policies.clone());
    let mut r = Registry::new();
    r.register(builtin::Log)
        .register(builtin::Wait)
        .register(builtin::Assert)
        .register(exec::Exec)
        .register(package::PackageStep)
        .register(approval::Approval {
            policies: Arc::clone(&policies),
            ..approval::Approval::default()
        })
        .register(notify::Notify {
            templates_dir: settings.templates_dir.clone(),
        })
        .register(cfn::build::CfnBuild {
            templates_dir: settings.templates_dir.clone(),
        })
        .register(cfn::validate::CfnValidate {
            templates_dir: settings.templates_dir.clone(),
        })
        .register(aws::org::Org::new(aws.clone()))
        .register(aws::iam::IamRoles {
            aws: aws.clone(),
            policies: Arc::clone(&policies),
        })
        .register(aws::targets::Targets { aws: aws.clone() })
        .register(aws::stack::deploy::Deploy {
            aws: aws.clone(),
            policies: Arc::clone(&policies),
        })
        .register(aws::stack::verify::Verify { aws: aws.clone() })
        .register(aws::stack::rollback::Rollback { aws: aws.clone() })
        .register(aws::policy::Policy {
            aws: aws.clone(),
            templates_dir: settings.templates_dir.clone(),
            policies: Arc::clone(&policies),
        });
    let rules = settings.templates_dir.join("rules");
    r.register_input_check(
        "customer_requirements",
        Arc::new(move |inputs| {
            match requirements::Requirements::from_inputs(inputs, Some(&rules)) {
                Ok(_) => Vec::new(),
                Err(problems) => problems,
            }
        }),
    );
    r
}

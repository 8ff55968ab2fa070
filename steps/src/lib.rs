//! Landfall's step plugins. The engine knows none of them by name; [`registry`] is the one
//! place that registers them (and the named input checks workflows refer to).

pub mod approval;
pub mod aws;
pub mod builtin;
pub mod cfn;
pub mod exec;
pub mod milestone;
pub mod notify;
pub mod package;
pub mod requirements;
pub mod templates;

use std::path::PathBuf;
use std::sync::Arc;

use landfall_engine::Registry;

/// What plugins need from the project's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where `cfn/`, `scp/`, `rules/` and `messages/` templates live.
    pub templates_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            templates_dir: PathBuf::from("templates"),
        }
    }
}

/// Every plugin and input check of this build.
pub fn registry(settings: &Settings) -> Registry {
    let aws = aws::Aws::default();
    let mut r = Registry::new();
    r.register(builtin::Log)
        .register(builtin::Wait)
        .register(builtin::Assert)
        .register(exec::Exec)
        .register(package::PackageStep)
        .register(approval::Approval::default())
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
        .register(aws::iam::IamRoles { aws: aws.clone() })
        .register(aws::targets::Targets { aws: aws.clone() })
        .register(aws::stack::deploy::Deploy { aws: aws.clone() })
        .register(aws::stack::verify::Verify { aws: aws.clone() })
        .register(aws::stack::rollback::Rollback { aws: aws.clone() })
        .register(aws::policy::Policy {
            aws: aws.clone(),
            templates_dir: settings.templates_dir.clone(),
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

//! AWS access for plugins: SDK configuration from the standard chain, and the one place that
//! maps SDK errors to the engine's error classes.
//!
//! Retries: the SDK's own retries are switched off (`RetryConfig::disabled`). The engine
//! retries transient failures by the step's policy, visibly (audited, breaker-aware), so
//! attempts are never multiplied (SDK 3 × engine 4 = 12 calls). Plugins that poll (account
//! creation, stack status) back off inside their own loop and treat throttling there as "wait
//! longer", not as a failure.

pub mod errors;
pub mod org;
pub mod policy;

use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use tokio::sync::OnceCell;

/// SDK configuration, loaded once on first use (profiles, environment, SSO, `AWS_PROFILE`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL` work as users expect).
#[derive(Debug, Default, Clone)]
pub struct Aws {
    config: Arc<OnceCell<SdkConfig>>,
}

impl Aws {
    pub async fn config(&self) -> &SdkConfig {
        self.config
            .get_or_init(|| async {
                aws_config::defaults(BehaviorVersion::latest())
                    .retry_config(RetryConfig::disabled())
                    .load()
                    .await
            })
            .await
    }

    pub async fn organizations(&self) -> aws_sdk_organizations::Client {
        aws_sdk_organizations::Client::new(self.config().await)
    }
}

//! AWS access for plugins: SDK configuration from the standard chain, and the one place that
//! maps SDK errors to the engine's error classes.
//!
//! Retries: the SDK's own retries are switched off (`RetryConfig::disabled`). The engine
//! retries transient failures by the step's policy, visibly (audited, breaker-aware), so
//! attempts are never multiplied (SDK 3 × engine 4 = 12 calls). Plugins that poll (account
//! creation, stack status) back off inside their own loop and treat throttling there as "wait
//! longer", not as a failure.

pub mod errors;
pub mod iam;
pub mod org;
pub mod policy;
pub mod stack;
pub mod targets;

use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use landfall_engine::{ErrorClass, StepError};
use tokio::sync::OnceCell;

/// SDK configuration, loaded once on first use (profiles, environment, SSO, `AWS_PROFILE`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL` work as users expect).
#[derive(Debug, Default, Clone)]
pub struct Aws {
    config: Arc<OnceCell<SdkConfig>>,
}

impl Aws {
    /// Uses an explicit configuration instead of the standard chain (tests, embedding).
    pub fn from_config(config: SdkConfig) -> Self {
        let cell = OnceCell::new();
        // A fresh cell cannot be full; `set` only fails then.
        let _ = cell.set(config);
        Aws {
            config: Arc::new(cell),
        }
    }

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

    /// An IAM client acting inside a member account, through `role_name` there (assumed from
    /// the management account). `session` names the session in CloudTrail.
    pub async fn iam_in(
        &self,
        account_id: &str,
        role_name: &str,
        session: &str,
    ) -> Result<aws_sdk_iam::Client, StepError> {
        let (conf, creds) = self.assume(account_id, role_name, session).await?;
        let c = aws_sdk_iam::config::Builder::from(conf)
            .credentials_provider(creds)
            .build();
        Ok(aws_sdk_iam::Client::from_conf(c))
    }

    /// A CloudFormation client in `region` of a member account, through `role_name` there.
    pub async fn cloudformation_in(
        &self,
        account_id: &str,
        role_name: &str,
        region: &str,
        session: &str,
    ) -> Result<aws_sdk_cloudformation::Client, StepError> {
        let (conf, creds) = self.assume(account_id, role_name, session).await?;
        let c = aws_sdk_cloudformation::config::Builder::from(conf)
            .credentials_provider(creds)
            .region(aws_config::Region::new(region.to_string()))
            .build();
        Ok(aws_sdk_cloudformation::Client::from_conf(c))
    }

    /// Like [`Self::cloudformation_in`], trying each role in turn: the next is tried only when
    /// the previous one may not be assumed (access denied), never on a transient failure.
    pub async fn cloudformation_via(
        &self,
        account_id: &str,
        roles: &[String],
        region: &str,
        session: &str,
    ) -> Result<(aws_sdk_cloudformation::Client, String), StepError> {
        let mut last = StepError::permanent("no role to assume was given");
        for role in roles {
            match self
                .cloudformation_in(account_id, role, region, session)
                .await
            {
                Ok(c) => return Ok((c, role.clone())),
                Err(e) if e.class == ErrorClass::Permanent => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Temporary credentials for `role_name` in `account_id`.
    async fn assume(
        &self,
        account_id: &str,
        role_name: &str,
        session: &str,
    ) -> Result<(&SdkConfig, aws_credential_types::Credentials), StepError> {
        let conf = self.config().await;
        let arn = format!("arn:aws:iam::{account_id}:role/{role_name}");
        let session: String = format!("landfall-{}", session.chars().take(32).collect::<String>());
        let out = aws_sdk_sts::Client::new(conf)
            .assume_role()
            .role_arn(&arn)
            .role_session_name(session)
            .send()
            .await
            .map_err(|e| errors::step_error("AssumeRole", e))?;
        let c = out.credentials().ok_or_else(|| {
            StepError::transient(format!("AssumeRole {arn} returned no credentials"))
        })?;
        let creds = aws_credential_types::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            std::time::SystemTime::try_from(*c.expiration()).ok(),
            "landfall-assume-role",
        );
        Ok((conf, creds))
    }
}

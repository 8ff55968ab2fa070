//! Request rates per API, as data: `[aws.rate_limits]` in `landfall.toml` gives requests per
//! second per service (`organizations = 5`), and every client of that service for one account
//! × region (the key of its retry partition) draws from one token bucket, shared by every run
//! of the process. A call waits for its token before it is sent (never fails for it); the
//! SDK's adaptive retries still slow a client down further when AWS throttles it. Services
//! without a limit are not held back.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpClient, HttpConnector, HttpConnectorFuture, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The token buckets of one process, created on first use per service × account × region.
#[derive(Default)]
pub(crate) struct Buckets {
    per_second: BTreeMap<String, NonZeroU32>,
    made: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buckets")
            .field("per_second", &self.per_second)
            .finish()
    }
}

impl Buckets {
    /// Limits by service (requests per second); a 0 means no limit.
    pub(crate) fn new(limits: &BTreeMap<String, u32>) -> Self {
        Buckets {
            per_second: limits
                .iter()
                .filter_map(|(s, n)| NonZeroU32::new(*n).map(|n| (s.clone(), n)))
                .collect(),
            made: Mutex::default(),
        }
    }

    /// The bucket of `service` in `account` × `region`, if the service has a limit.
    fn bucket(
        &self,
        service: &str,
        account: &str,
        region: &str,
    ) -> Option<Arc<DefaultDirectRateLimiter>> {
        let rate = *self.per_second.get(service)?;
        let key = format!("{service}/{account}/{region}");
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        Some(Arc::clone(made.entry(key).or_insert_with(|| {
            // A burst of one second's worth, then the rate.
            Arc::new(RateLimiter::direct(Quota::per_second(rate)))
        })))
    }

    /// `inner` with every request waiting for its token first, or `None` when the service
    /// is not limited (the client keeps its own HTTP client).
    pub(crate) fn limited(
        &self,
        inner: Option<SharedHttpClient>,
        service: &str,
        account: &str,
        region: &str,
    ) -> Option<SharedHttpClient> {
        let bucket = self.bucket(service, account, region)?;
        let inner = inner?;
        Some(http_client_fn(move |settings, components| {
            SharedHttpConnector::new(Limited {
                inner: inner.http_connector(settings, components),
                bucket: Arc::clone(&bucket),
            })
        }))
    }
}

struct Limited {
    inner: SharedHttpConnector,
    bucket: Arc<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limited")
    }
}

impl HttpConnector for Limited {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (inner, bucket) = (self.inner.clone(), Arc::clone(&self.bucket));
        HttpConnectorFuture::new(async move {
            bucket.until_ready().await;
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_http_client::test_util::infallible_client_fn;
    use aws_smithy_runtime_api::client::http::HttpConnectorSettings;
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponentsBuilder;
    use std::time::Instant;

    fn connector(client: &SharedHttpClient) -> SharedHttpConnector {
        let components = RuntimeComponentsBuilder::for_tests()
            .build()
            .expect("test components");
        client.http_connector(&HttpConnectorSettings::default(), &components)
    }

    fn request() -> HttpRequest {
        HttpRequest::get("http://127.0.0.1/").expect("a request")
    }

    #[tokio::test]
    async fn a_limited_service_waits_for_tokens_per_account_and_region() {
        let inner =
            infallible_client_fn(|_req| http::Response::builder().status(200).body("").unwrap());
        let buckets = Buckets::new(&[("organizations".to_string(), 20)].into());
        assert!(
            buckets
                .limited(Some(inner.clone()), "iam", "1", "global")
                .is_none(),
            "a service without a limit keeps its client"
        );
        let limited = buckets
            .limited(
                Some(inner.clone()),
                "organizations",
                "management",
                "us-east-1",
            )
            .expect("limited");
        let c = connector(&limited);
        // A second's burst (20) goes at once; the next 10 take half a second more.
        let start = Instant::now();
        for _ in 0..30 {
            c.call(request()).await.expect("answer");
        }
        let took = start.elapsed().as_secs_f64();
        assert!(took >= 0.4, "30 calls at 20/s took {took:.2} s");
        // Another client of the same service, account and region shares the bucket (it is
        // empty now); another account's has its own.
        let same = connector(
            &buckets
                .limited(
                    Some(inner.clone()),
                    "organizations",
                    "management",
                    "us-east-1",
                )
                .expect("limited"),
        );
        let other = connector(
            &buckets
                .limited(Some(inner), "organizations", "111122223333", "us-east-1")
                .expect("limited"),
        );
        let start = Instant::now();
        for _ in 0..10 {
            other.call(request()).await.expect("answer");
        }
        assert!(
            start.elapsed().as_secs_f64() < 0.3,
            "a full bucket of its own"
        );
        let start = Instant::now();
        same.call(request()).await.expect("answer");
        same.call(request()).await.expect("answer");
        assert!(
            start.elapsed().as_secs_f64() >= 0.04,
            "the shared bucket was drained"
        );
    }
}

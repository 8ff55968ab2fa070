//! SDK errors → [`ErrorClass`], in one place, each case unit-tested.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use landfall_engine::{ErrorClass, StepError};
use serde_json::json;

/// What kind of failure the SDK reported, independent of the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request could not even be built (a bug or bad input).
    Construction,
    /// No answer in time.
    Timeout,
    /// The connection failed (DNS, refused, TLS).
    Dispatch,
    /// An answer that could not be understood.
    Response,
    /// The service answered with an error code.
    Service,
}

/// Codes that mean "slow down": transient, and a poller waits longer instead of failing.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
];

/// The other codes that mean "try again later" (busy or briefly broken, not slow down).
const OTHER_TRANSIENT_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ConcurrentModificationException",
    "CONCURRENT_ACCOUNT_MODIFICATION",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "ServiceException",
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "INTERNAL_FAILURE",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "PENDING_BUSINESS_VALIDATION",
];

/// Whether a classified error is throttling (a poller waits longer instead of failing).
pub fn is_throttling(e: &StepError) -> bool {
    e.context
        .get("code")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|c| THROTTLING_CODES.contains(&c))
        || e.context
            .get("http_status")
            .and_then(serde_json::Value::as_u64)
            == Some(429)
}

/// Error codes that make continuing anything unsafe or pointless for the whole run.
const CRITICAL_CODES: &[&str] = &[
    "ACCOUNT_LIMIT_EXCEEDED",
    "ACCOUNT_NUMBER_LIMIT_EXCEEDED",
    "AccountLimitExceeded",
    "LimitExceededException",
];

/// The class of a failure from its kind, service error code and HTTP status.
pub fn classify(kind: Kind, code: Option<&str>, status: Option<u16>) -> ErrorClass {
    match kind {
        Kind::Timeout | Kind::Dispatch => return ErrorClass::Transient,
        Kind::Construction => return ErrorClass::Permanent,
        Kind::Response | Kind::Service => {}
    }
    if let Some(code) = code {
        if CRITICAL_CODES.contains(&code) {
            return ErrorClass::Critical;
        }
        if THROTTLING_CODES.contains(&code) || OTHER_TRANSIENT_CODES.contains(&code) {
            return ErrorClass::Transient;
        }
    }
    match status {
        Some(429) => ErrorClass::Transient,
        Some(s) if s >= 500 => ErrorClass::Transient,
        // An unreadable answer without a status is most likely a cut connection.
        None if kind == Kind::Response => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// The class of an Organizations `CreateAccountStatus.FailureReason`.
pub fn classify_failure_reason(reason: &str) -> ErrorClass {
    classify(Kind::Service, Some(reason), None)
}

/// Turns any SDK error into a classified [`StepError`] naming the operation, the code and
/// the request id.
pub fn step_error<E>(operation: &str, err: SdkError<E, HttpResponse>) -> StepError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match &err {
        SdkError::ConstructionFailure(_) => Kind::Construction,
        SdkError::TimeoutError(_) => Kind::Timeout,
        SdkError::DispatchFailure(_) => Kind::Dispatch,
        SdkError::ResponseError(_) => Kind::Response,
        SdkError::ServiceError(_) => Kind::Service,
        _ => Kind::Response,
    };
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let message = err.message().map(str::to_string);
    let class = classify(kind, code.as_deref(), status);
    let text = match (&code, &message) {
        (Some(c), Some(m)) => format!("{operation}: {c}: {m}"),
        (Some(c), None) => format!("{operation}: {c}"),
        // A service answer without an error code (e.g. an HTML error page): the status says
        // enough; the raw response would flood logs and messages.
        (None, _) if kind == Kind::Service || kind == Kind::Response => match status {
            Some(s) => format!("{operation}: HTTP {s} with an unreadable error response"),
            None => format!("{operation}: unreadable response"),
        },
        (None, _) => {
            let mut text = format!(
                "{operation}: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&err)
            );
            if text.len() > 300 {
                let mut cut = 300;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            text
        }
    };
    StepError::new(class, text).with_context(json!({
        "operation": operation,
        "code": code,
        "http_status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::*;

    #[test]
    fn throttling_5xx_and_timeouts_are_transient() {
        for code in [
            "Throttling",
            "ThrottlingException",
            "TooManyRequestsException",
            "ConcurrentModificationException",
            "CONCURRENT_ACCOUNT_MODIFICATION",
            "ServiceUnavailable",
        ] {
            assert_eq!(
                classify(Kind::Service, Some(code), Some(400)),
                Transient,
                "{code}"
            );
        }
        assert_eq!(
            classify(Kind::Service, Some("Whatever"), Some(503)),
            Transient
        );
        assert_eq!(classify(Kind::Service, None, Some(429)), Transient);
        assert_eq!(classify(Kind::Timeout, None, None), Transient);
        assert_eq!(classify(Kind::Dispatch, None, None), Transient);
        assert_eq!(classify(Kind::Response, None, None), Transient);
    }

    #[test]
    fn validation_access_and_duplicates_are_permanent() {
        for code in [
            "ValidationException",
            "AccessDenied",
            "AccessDeniedException",
            "EMAIL_ALREADY_EXISTS",
            "InvalidInputException",
            "MalformedPolicyDocument",
            "DuplicatePolicyException",
        ] {
            assert_eq!(
                classify(Kind::Service, Some(code), Some(400)),
                Permanent,
                "{code}"
            );
        }
        assert_eq!(classify(Kind::Construction, None, None), Permanent);
    }

    #[test]
    fn throttling_is_recognised_from_the_context() {
        let e = StepError::transient("x")
            .with_context(json!({ "code": "Throttling", "http_status": 400 }));
        assert!(is_throttling(&e));
        let e = StepError::transient("x").with_context(json!({ "code": null, "http_status": 429 }));
        assert!(is_throttling(&e));
        let e = StepError::transient("x")
            .with_context(json!({ "code": "InternalFailure", "http_status": 500 }));
        assert!(!is_throttling(&e));
    }

    #[test]
    fn account_limits_are_critical() {
        assert_eq!(
            classify(Kind::Service, Some("ACCOUNT_LIMIT_EXCEEDED"), None),
            Critical
        );
        assert_eq!(classify_failure_reason("ACCOUNT_LIMIT_EXCEEDED"), Critical);
        assert_eq!(
            classify(Kind::Service, Some("LimitExceededException"), Some(400)),
            Critical
        );
    }

    #[test]
    fn create_account_failure_reasons() {
        assert_eq!(classify_failure_reason("EMAIL_ALREADY_EXISTS"), Permanent);
        assert_eq!(classify_failure_reason("INVALID_EMAIL"), Permanent);
        assert_eq!(
            classify_failure_reason("CONCURRENT_ACCOUNT_MODIFICATION"),
            Transient
        );
        assert_eq!(classify_failure_reason("INTERNAL_FAILURE"), Transient);
        assert_eq!(
            classify_failure_reason("MISSING_PAYMENT_INSTRUMENT"),
            Permanent
        );
    }
}

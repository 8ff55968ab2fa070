//! SDK errors → [`ErrorClass`], in one place, each case unit-tested; and the answers that
//! mean "it is already so" ([`Outcome`]), so plugins adopt instead of failing and never match
//! error codes themselves.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use landfall_engine::{ErrorClass, StepError};
use serde_json::json;

/// What kind of failure the SDK reported, independent of the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
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
pub(crate) fn is_throttling(e: &StepError) -> bool {
    e.context
        .get("code")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|c| THROTTLING_CODES.contains(&c))
        || e.context
            .get("http_status")
            .and_then(serde_json::Value::as_u64)
            == Some(429)
}

/// Codes AWS documents as "try again later" that the SDK's retry classifiers do not retry;
/// [`super::TransientCodes`] retries them at the call.
pub(crate) const CALL_RETRY_CODES: &[&str] = &[
    "ConcurrentModificationException",
    "FinalizingOrganizationException",
    "PolicyChangesInProgressException",
];

/// `ConstraintViolationException` reasons (and `CreateAccountStatus.FailureReason`s) that are
/// "not now": the same call later may succeed.
const TRANSIENT_REASONS: &[&str] = &[
    "CONCURRENT_ACCOUNT_MODIFICATION",
    "INTERNAL_FAILURE",
    "PENDING_BUSINESS_VALIDATION",
    "WAIT_PERIOD_ACTIVE",
];

/// The class of a failure from its kind, service error code, `Reason` and HTTP status.
///
/// No AWS answer is critical: a quota (`LimitExceededException`, `ConstraintViolationException`
/// with any limit reason) fails the node permanently, so the run's failure branch (rollback,
/// notification) still runs. Critical is kept for what makes touching anything unsafe (a
/// package whose digest does not match), which AWS never tells us.
pub(crate) fn classify(
    kind: Kind,
    code: Option<&str>,
    reason: Option<&str>,
    status: Option<u16>,
) -> ErrorClass {
    match kind {
        Kind::Timeout | Kind::Dispatch => return ErrorClass::Transient,
        Kind::Construction => return ErrorClass::Permanent,
        Kind::Response | Kind::Service => {}
    }
    if let Some(reason) = reason {
        return if TRANSIENT_REASONS.contains(&reason) {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
    }
    if let Some(code) = code {
        if THROTTLING_CODES.contains(&code)
            || OTHER_TRANSIENT_CODES.contains(&code)
            || CALL_RETRY_CODES.contains(&code)
        {
            return ErrorClass::Transient;
        }
    }
    match status {
        Some(429) => ErrorClass::Transient,
        Some(s) if s >= 500 => ErrorClass::Transient,
        // An answer we could not read (a proxy's error page, a cut body) says nothing about
        // the request: look again later.
        _ if kind == Kind::Response => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// The class of an Organizations `CreateAccountStatus.FailureReason`.
pub(crate) fn classify_failure_reason(reason: &str) -> ErrorClass {
    classify(Kind::Service, None, Some(reason), None)
}

/// Codes that mean "the thing you act on is not ready yet" (not a fault, not a refusal):
/// plugins wait them out like a pending operation.
const NOT_READY_CODES: &[&str] = &["FinalizingOrganizationException"];

/// Whether a classified error says "not ready yet, wait" (see [`NOT_READY_CODES`]).
pub(crate) fn is_not_ready(e: &StepError) -> bool {
    e.context
        .get("code")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|c| NOT_READY_CODES.contains(&c))
}

/// What an error answer says about the thing the call meant to create or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It exists already (another run made it, or this call's answer was lost): read it again
    /// and adopt it.
    AlreadyExists,
    /// The change is in place already (attached, enabled): nothing to do.
    AlreadyDone,
    /// What was to be removed is not there: nothing to do.
    AlreadyGone,
    /// Anything else: a failure, classified by [`step_error`].
    Failed,
}

const ALREADY_EXISTS_CODES: &[&str] = &[
    "AlreadyInOrganizationException",
    "DuplicateOrganizationalUnitException",
    "DuplicatePolicyException",
    "EntityAlreadyExists",
    "AlreadyExistsException",
];
const ALREADY_DONE_CODES: &[&str] = &[
    "DuplicatePolicyAttachmentException",
    "PolicyTypeAlreadyEnabledException",
    "DuplicateAccountException",
];
const ALREADY_GONE_CODES: &[&str] = &["PolicyNotAttachedException", "NoSuchEntity"];

/// The [`Outcome`] of an error code.
pub(crate) fn outcome_of_code(code: Option<&str>) -> Outcome {
    match code {
        Some(c) if ALREADY_EXISTS_CODES.contains(&c) => Outcome::AlreadyExists,
        Some(c) if ALREADY_DONE_CODES.contains(&c) => Outcome::AlreadyDone,
        Some(c) if ALREADY_GONE_CODES.contains(&c) => Outcome::AlreadyGone,
        _ => Outcome::Failed,
    }
}

/// The [`Outcome`] of an SDK error.
pub(crate) fn outcome<E>(err: &SdkError<E, HttpResponse>) -> Outcome
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(_) => outcome_of_code(err.code()),
        _ => Outcome::Failed,
    }
}

/// The error code in a raw error answer: JSON's `__type` (its last `#` part) or Query XML's
/// `<Code>`; for retry classification, which sees only the HTTP response.
pub(crate) fn code_in_body(body: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let t = v.get("__type").or_else(|| v.get("code"))?.as_str()?;
        return t.rsplit('#').next().map(str::to_string);
    }
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].trim().to_string())
}

/// `ConstraintViolationException`'s `Reason` (and other services' `Reason` fields) from the raw
/// JSON answer: the SDK types it per operation, so reading the body is the one generic way.
fn reason_in_body(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("Reason")?.as_str().map(str::to_string)
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
    let reason = err
        .raw_response()
        .and_then(|r| r.body().bytes())
        .and_then(reason_in_body);
    let class = classify(kind, code.as_deref(), reason.as_deref(), status);
    let text = match (&code, &message) {
        (Some(c), Some(m)) if reason.is_some() => {
            format!(
                "{operation}: {c} ({}): {m}",
                reason.as_deref().unwrap_or_default()
            )
        }
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
        "reason": reason,
        "http_status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::*;

    /// A service answer with `code` as the SDK hands it over; and one that never got an answer.
    fn answered(
        code: &str,
    ) -> SdkError<aws_sdk_organizations::operation::tag_resource::TagResourceError, HttpResponse>
    {
        use aws_sdk_organizations::operation::tag_resource::TagResourceError;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;
        let status = aws_smithy_runtime_api::http::StatusCode::try_from(400).expect("a status");
        SdkError::service_error(
            TagResourceError::generic(ErrorMetadata::builder().code(code).build()),
            HttpResponse::new(status, SdkBody::empty()),
        )
    }

    /// Each kind of SDK failure is named as it is: a request that could not be built is
    /// permanent, a time-out or a lost connection says what happened (not "unreadable
    /// response"), a service answer keeps its code, message and `Reason`.
    #[test]
    fn step_errors_say_what_happened() {
        use aws_sdk_organizations::operation::tag_resource::TagResourceError;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;
        type E = SdkError<TagResourceError, HttpResponse>;
        let service = |code: &str, body: &str| -> E {
            let status = aws_smithy_runtime_api::http::StatusCode::try_from(400).expect("a status");
            SdkError::service_error(
                TagResourceError::generic(ErrorMetadata::builder().code(code).message("m").build()),
                HttpResponse::new(status, SdkBody::from(body.to_string())),
            )
        };
        let e = step_error("TagResource", service("AccessDeniedException", "{}"));
        assert_eq!(
            (e.class, e.message.as_str()),
            (Permanent, "TagResource: AccessDeniedException: m")
        );
        let e = step_error(
            "CreateAccount",
            service(
                "ConstraintViolationException",
                r#"{"Reason":"ACCOUNT_NUMBER_LIMIT_EXCEEDED"}"#,
            ),
        );
        assert_eq!(
            e.message,
            "CreateAccount: ConstraintViolationException (ACCOUNT_NUMBER_LIMIT_EXCEEDED): m"
        );
        assert_eq!(e.context["reason"], "ACCOUNT_NUMBER_LIMIT_EXCEEDED");
        let built: E = SdkError::construction_failure("a required field is missing");
        let e = step_error("TagResource", built);
        assert_eq!(e.class, Permanent);
        assert!(
            e.message.contains("a required field is missing"),
            "{}",
            e.message
        );
        let slow: E = SdkError::timeout_error("operation timed out after 30s");
        let e = step_error("TagResource", slow);
        assert_eq!(e.class, Transient);
        assert!(e.message.contains("timed out after 30s"), "{}", e.message);
        let lost: E =
            SdkError::dispatch_failure(ConnectorError::io("connection reset by peer".into()));
        let e = step_error("TagResource", lost);
        assert_eq!(e.class, Transient);
        assert!(
            e.message.contains("connection reset by peer"),
            "{}",
            e.message
        );
        // A long description is cut at 300 bytes, on a character boundary.
        let long: E = SdkError::dispatch_failure(ConnectorError::io("é".repeat(400).into()));
        let e = step_error("TagResource", long);
        let kept = e.message.strip_suffix('…').expect("marked as cut");
        assert!(kept.len() <= 300 && kept.len() >= 298, "{}", kept.len());
        assert!(kept.ends_with('é'));
        let garbled: E = SdkError::response_error(
            "not XML",
            HttpResponse::new(
                aws_smithy_runtime_api::http::StatusCode::try_from(502).expect("a status"),
                SdkBody::from("<html>"),
            ),
        );
        let e = step_error("TagResource", garbled);
        assert_eq!(
            (e.class, e.message.as_str()),
            (
                Transient,
                "TagResource: HTTP 502 with an unreadable error response"
            )
        );
    }

    /// "Already so" is read from a service's answer only: a call that got no answer (a
    /// time-out) says nothing about the thing, whatever its error looks like.
    #[test]
    fn outcomes_come_from_service_answers() {
        assert_eq!(
            outcome(&answered("DuplicateOrganizationalUnitException")),
            Outcome::AlreadyExists
        );
        assert_eq!(
            outcome(&answered("PolicyTypeAlreadyEnabledException")),
            Outcome::AlreadyDone
        );
        assert_eq!(
            outcome(&answered("PolicyNotAttachedException")),
            Outcome::AlreadyGone
        );
        assert_eq!(outcome(&answered("AccessDeniedException")), Outcome::Failed);
        let timed_out: SdkError<
            aws_sdk_organizations::operation::tag_resource::TagResourceError,
            HttpResponse,
        > = SdkError::timeout_error("no answer");
        assert_eq!(outcome(&timed_out), Outcome::Failed);
    }

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
                classify(Kind::Service, Some(code), None, Some(400)),
                Transient,
                "{code}"
            );
        }
        assert_eq!(
            classify(Kind::Service, Some("Whatever"), None, Some(503)),
            Transient
        );
        assert_eq!(classify(Kind::Service, None, None, Some(429)), Transient);
        assert_eq!(classify(Kind::Timeout, None, None, None), Transient);
        assert_eq!(classify(Kind::Dispatch, None, None, None), Transient);
        assert_eq!(classify(Kind::Response, None, None, None), Transient);
        // An unreadable answer is transient whatever its status.
        assert_eq!(classify(Kind::Response, None, None, Some(400)), Transient);
        for code in [
            "FinalizingOrganizationException",
            "PolicyChangesInProgressException",
        ] {
            assert_eq!(
                classify(Kind::Service, Some(code), None, Some(400)),
                Transient,
                "{code}"
            );
        }
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
                classify(Kind::Service, Some(code), None, Some(400)),
                Permanent,
                "{code}"
            );
        }
        assert_eq!(classify(Kind::Construction, None, None, None), Permanent);
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
    fn quotas_are_permanent_so_failure_branches_still_run() {
        assert_eq!(classify_failure_reason("ACCOUNT_LIMIT_EXCEEDED"), Permanent);
        assert_eq!(
            classify(
                Kind::Service,
                Some("LimitExceededException"),
                None,
                Some(400)
            ),
            Permanent
        );
        for reason in [
            "ACCOUNT_NUMBER_LIMIT_EXCEEDED",
            "ACCOUNT_CREATION_RATE_LIMIT_EXCEEDED",
            "POLICY_NUMBER_LIMIT_EXCEEDED",
            "MAX_POLICY_TYPE_ATTACHMENT_LIMIT_EXCEEDED",
            "POLICY_CONTENT_LIMIT_EXCEEDED",
        ] {
            assert_eq!(
                classify(
                    Kind::Service,
                    Some("ConstraintViolationException"),
                    Some(reason),
                    Some(400)
                ),
                Permanent,
                "{reason}"
            );
        }
    }

    #[test]
    fn the_reason_decides_over_the_code() {
        // A constraint that is "not now" is worth another try; the code alone says nothing.
        assert_eq!(
            classify(
                Kind::Service,
                Some("ConstraintViolationException"),
                Some("WAIT_PERIOD_ACTIVE"),
                Some(400)
            ),
            Transient
        );
        assert_eq!(
            reason_in_body(br#"{"__type":"ConstraintViolationException","Message":"m","Reason":"ACCOUNT_NUMBER_LIMIT_EXCEEDED"}"#).as_deref(),
            Some("ACCOUNT_NUMBER_LIMIT_EXCEEDED")
        );
        assert_eq!(reason_in_body(b"<xml/>"), None);
    }

    #[test]
    fn codes_are_read_from_raw_answers_of_both_protocols() {
        assert_eq!(
            code_in_body(br#"{"__type":"com.amazonaws.organizations#ConcurrentModificationException","Message":"x"}"#).as_deref(),
            Some("ConcurrentModificationException")
        );
        assert_eq!(
            code_in_body(b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code></Error></ErrorResponse>").as_deref(),
            Some("Throttling")
        );
        assert_eq!(code_in_body(b"<html>bad gateway</html>"), None);
    }

    #[test]
    fn a_finalizing_organization_is_not_ready_rather_than_failed() {
        let e = StepError::transient("x")
            .with_context(json!({ "code": "FinalizingOrganizationException" }));
        assert!(is_not_ready(&e));
        let e = StepError::transient("x").with_context(json!({ "code": "Throttling" }));
        assert!(!is_not_ready(&e));
    }

    #[test]
    fn already_so_answers_are_outcomes_not_failures() {
        use Outcome::*;
        for (code, want) in [
            ("AlreadyInOrganizationException", AlreadyExists),
            ("DuplicateOrganizationalUnitException", AlreadyExists),
            ("DuplicatePolicyException", AlreadyExists),
            ("EntityAlreadyExists", AlreadyExists),
            ("AlreadyExistsException", AlreadyExists),
            ("DuplicatePolicyAttachmentException", AlreadyDone),
            ("PolicyTypeAlreadyEnabledException", AlreadyDone),
            ("PolicyNotAttachedException", AlreadyGone),
            ("AccessDenied", Failed),
        ] {
            assert_eq!(outcome_of_code(Some(code)), want, "{code}");
        }
        assert_eq!(outcome_of_code(None), Failed);
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

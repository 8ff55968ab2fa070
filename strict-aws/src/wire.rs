//! What a request to AWS says (service, operation, parameters) and how AWS answers an error,
//! for the two protocols the SDK speaks to the services Landfall uses: JSON (Organizations:
//! `X-Amz-Target`, `__type` errors) and Query (IAM, STS, CloudFormation: `Action=` forms,
//! `<ErrorResponse>` XML errors).

use bytes::Bytes;
use hyper::header::HeaderMap;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Query,
}

/// One API call as the layer sees it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The signing name from the `Authorization` header (`organizations`, `iam`, `sts`, …).
    pub service: String,
    /// `CreateAccount`, `AssumeRole`, …
    pub operation: String,
    pub protocol: Protocol,
    /// JSON body, or the Query form as a JSON object of strings.
    pub params: Value,
}

impl Call {
    /// Reads a call from its headers and body; `None` for anything that is not an AWS API call
    /// (the emulator's own `/moto-api`, health checks).
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Option<Call> {
        let service = signing_service(headers)?;
        if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
            let operation = target.rsplit('.').next()?.to_string();
            let params = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(body).ok()?
            };
            return Some(Call {
                service,
                operation,
                protocol: Protocol::Json,
                params,
            });
        }
        let mut params = serde_json::Map::new();
        for (k, v) in form_urlencoded::parse(body) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
        let operation = params.get("Action")?.as_str()?.to_string();
        Some(Call {
            service,
            operation,
            protocol: Protocol::Query,
            params: Value::Object(params),
        })
    }

    /// A string parameter (`Email`, `RoleArn`, …).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(Value::as_str)
    }

    /// Writes to the organization (anything but a read), for the concurrent-modification rule.
    pub fn is_organizations_write(&self) -> bool {
        self.service == "organizations"
            && !["Describe", "List"]
                .iter()
                .any(|p| self.operation.starts_with(p))
    }
}

/// `Credential=AKID/20261130/us-east-1/organizations/aws4_request` → `organizations`.
fn signing_service(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    let scope = cred.split([',', ' ']).next()?;
    scope.split('/').nth(3).map(str::to_string)
}

/// An error answer as AWS gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Organizations' `ConstraintViolationException` names the limit here.
    pub reason: Option<String>,
}

impl AwsError {
    pub fn new(status: u16, code: &str, message: &str) -> Self {
        AwsError {
            status,
            code: code.into(),
            message: message.into(),
            reason: None,
        }
    }

    pub fn with_reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// (content type, body) in the call's protocol.
    pub fn render(&self, protocol: Protocol) -> (&'static str, Bytes) {
        match protocol {
            Protocol::Json => {
                let mut body = json!({ "__type": self.code, "Message": self.message });
                if let Some(r) = &self.reason {
                    body["Reason"] = Value::String(r.clone());
                }
                ("application/x-amz-json-1.1", Bytes::from(body.to_string()))
            }
            Protocol::Query => {
                let kind = if self.status >= 500 {
                    "Receiver"
                } else {
                    "Sender"
                };
                let body = format!(
                    "<ErrorResponse><Error><Type>{kind}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>strict-aws</RequestId></ErrorResponse>",
                    xml_escape(&self.code),
                    xml_escape(&self.message)
                );
                ("text/xml", Bytes::from(body))
            }
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The text of the first `<tag>…</tag>` in an XML answer (moto's IAM/STS answers are small and
/// regular; this reads an ARN, not arbitrary XML).
pub fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(&xml[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const AUTH_ORG: &str = "AWS4-HMAC-SHA256 Credential=testing/20261130/us-east-1/organizations/aws4_request, SignedHeaders=host, Signature=abc";

    #[test]
    fn json_calls_are_read_from_the_target_header() {
        let h = headers(&[
            ("authorization", AUTH_ORG),
            ("x-amz-target", "AWSOrganizationsV20161128.CreateAccount"),
        ]);
        let c = Call::parse(&h, br#"{"Email":"a@b.c","AccountName":"x"}"#).unwrap();
        assert_eq!(c.service, "organizations");
        assert_eq!(c.operation, "CreateAccount");
        assert_eq!(c.protocol, Protocol::Json);
        assert_eq!(c.param("Email"), Some("a@b.c"));
        assert!(c.is_organizations_write());
    }

    #[test]
    fn query_calls_are_read_from_the_form() {
        let h = headers(&[(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIA/20261130/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=abc",
        )]);
        let c = Call::parse(
            &h,
            b"Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx",
        )
        .unwrap();
        assert_eq!(
            (c.service.as_str(), c.operation.as_str()),
            ("sts", "AssumeRole")
        );
        assert_eq!(c.param("RoleArn"), Some("arn:aws:iam::1:role/x"));
        assert!(!c.is_organizations_write());
    }

    #[test]
    fn unsigned_requests_are_not_calls() {
        assert!(Call::parse(&HeaderMap::new(), b"Action=X").is_none());
    }

    #[test]
    fn reads_are_not_writes() {
        let h = headers(&[
            ("authorization", AUTH_ORG),
            ("x-amz-target", "AWSOrganizationsV20161128.ListAccounts"),
        ]);
        assert!(!Call::parse(&h, b"{}").unwrap().is_organizations_write());
    }

    #[test]
    fn errors_render_as_each_protocol_expects() {
        let e = AwsError::new(400, "ConstraintViolationException", "too many")
            .with_reason("MAX_POLICY_TYPE_ATTACHMENT_LIMIT_EXCEEDED");
        let (_, body) = e.render(Protocol::Json);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["__type"], "ConstraintViolationException");
        assert_eq!(v["Reason"], "MAX_POLICY_TYPE_ATTACHMENT_LIMIT_EXCEEDED");
        let (_, body) = AwsError::new(403, "AccessDenied", "no <way>").render(Protocol::Query);
        let text = std::str::from_utf8(&body).unwrap();
        assert_eq!(xml_text(text, "Code"), Some("AccessDenied"));
        assert_eq!(xml_text(text, "Message"), Some("no &lt;way&gt;"));
        assert_eq!(xml_text(text, "Type"), Some("Sender"));
    }
}

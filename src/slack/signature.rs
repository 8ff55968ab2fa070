//! Slack's request signatures (`v0`): HMAC-SHA256 over `v0:{timestamp}:{body}` with the app's
//! signing secret, compared in constant time, within a five-minute window.
//!
//! slack-morphism's `SlackEventSignatureVerifier` does the same but reads the system clock
//! itself, so neither its window nor Slack's published example (a 2018 timestamp) can be
//! tested through it; this is the same composition of RustCrypto's `hmac` and `sha2` with the
//! clock passed in.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Slack's replay window.
pub const WINDOW_SECS: i64 = 5 * 60;

/// Why a request was refused (401; audited, never acted on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the {0} header is missing")]
    Missing(&'static str),
    #[error("the request timestamp is not a number")]
    BadTimestamp,
    #[error("the request is {0} s away from now (more than 5 minutes): a replay or a wrong clock")]
    OutsideWindow(i64),
    #[error("the signature does not match")]
    BadSignature,
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
}

impl Refusal {
    /// The refusal without its numbers, to tally refusals by (`the request is 600 s away`
    /// and `… 601 s away` are one reason).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing(_) => "a signature header is missing",
            Refusal::BadTimestamp => "the request timestamp is not a number",
            Refusal::OutsideWindow(_) => "the request timestamp is too old or in the future",
            Refusal::BadSignature => "the signature does not match",
            Refusal::TooLarge(_) => "body over the limit",
        }
    }
}

/// Checks one request. `now` is Unix seconds.
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), Refusal> {
    let ts = timestamp.ok_or(Refusal::Missing("X-Slack-Request-Timestamp"))?;
    let sig = signature.ok_or(Refusal::Missing("X-Slack-Signature"))?;
    let t: i64 = ts.trim().parse().map_err(|_| Refusal::BadTimestamp)?;
    // Checked: a timestamp near `i64::MIN` or `MAX` would wrap (release) or panic (debug).
    let skew = now.saturating_sub(t);
    if skew.unsigned_abs() > WINDOW_SECS.unsigned_abs() {
        return Err(Refusal::OutsideWindow(skew));
    }
    let given = sig
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Refusal::BadSignature)?;
    // `verify_slice` compares in constant time.
    mac(secret, ts, body)
        .verify_slice(&given)
        .map_err(|_| Refusal::BadSignature)
}

/// The `X-Slack-Signature` value for a request (what Slack sends; tests sign with it).
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(b"v0:");
    m.update(timestamp.as_bytes());
    m.update(b":");
    m.update(body);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slack's published example (api.slack.com/authentication/verifying-requests-from-slack).
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slacks_published_example_verifies() {
        assert_eq!(sign(SECRET, TS, BODY.as_bytes()), SIG);
        assert_eq!(
            verify(
                SECRET,
                Some(TS),
                Some(SIG),
                BODY.as_bytes(),
                1531420618 + 10
            ),
            Ok(())
        );
    }

    #[test]
    fn everything_else_is_refused() {
        let now = 1531420618;
        let b = BODY.as_bytes();
        assert_eq!(
            verify("other-secret", Some(TS), Some(SIG), b, now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some(SIG), b"token=changed", now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some("v0=zz"), b, now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some("a2114d57"), b, now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some(SIG), b, now + 301),
            Err(Refusal::OutsideWindow(301))
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some(SIG), b, now - 400),
            Err(Refusal::OutsideWindow(-400))
        );
        assert_eq!(
            verify(SECRET, None, Some(SIG), b, now),
            Err(Refusal::Missing("X-Slack-Request-Timestamp"))
        );
        assert_eq!(
            verify(SECRET, Some(TS), None, b, now),
            Err(Refusal::Missing("X-Slack-Signature"))
        );
        assert_eq!(
            verify(SECRET, Some("soon"), Some(SIG), b, now),
            Err(Refusal::BadTimestamp)
        );
        // Absurd timestamps are outside the window, never an overflow.
        for absurd in [i64::MIN, i64::MIN + 1, i64::MAX, -1] {
            assert!(matches!(
                verify(SECRET, Some(&absurd.to_string()), Some(SIG), b, now),
                Err(Refusal::OutsideWindow(_))
            ));
        }
        assert!(matches!(
            verify(SECRET, Some(TS), Some(SIG), b, i64::MIN),
            Err(Refusal::OutsideWindow(_))
        ));
    }
}

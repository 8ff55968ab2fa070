//! Content digests over a canonical form, so equal data always hashes the same.

use serde::Serialize;
use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// RFC 8785 canonical JSON: object keys sorted, numbers and strings in one spelling. Used for
/// every digest so that map ordering (which some dependencies change globally) never matters.
pub(crate) fn canonical_json<T: Serialize + ?Sized>(value: &T) -> String {
    // serde_jcs fails only for values JSON cannot hold (non-string map keys); our records
    // have none, and an empty string still yields a stable digest.
    serde_jcs::to_string(value).unwrap_or_default()
}

pub fn digest_of<T: Serialize + ?Sized>(value: &T) -> String {
    sha256_hex(canonical_json(value).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_does_not_change_the_digest() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":[1,{"y":2,"x":1}]}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":[1,{"x":1,"y":2}],"b":1}"#).unwrap();
        assert_eq!(digest_of(&a), digest_of(&b));
        assert_eq!(canonical_json(&a), r#"{"a":[1,{"x":1,"y":2}],"b":1}"#);
    }
}

//! Secrets at rest: XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) under a data key
//! from `LANDFALL_DATA_KEY` or a key file, never from the state file itself.
//!
//! A sealed value is `1 ‖ nonce (24 bytes, random) ‖ ciphertext ‖ tag (16 bytes)`. The
//! associated data names what the value is (e.g. `slack-token:T0123`), so a ciphertext moved
//! to another name does not open. Any change to any byte is rejected.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::Rng;

const VERSION: u8 = 1;
const NONCE: usize = 24;
const TAG: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the data key must be 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`")]
    BadKey,
    #[error("the sealed value is too short or of an unknown format")]
    Malformed,
    /// Wrong key, wrong name, or the bytes were changed.
    #[error("the sealed value does not open with this key and name (tampered, or another key)")]
    Rejected,
}

/// The key that seals secrets. Not `Debug`, not `Display`: it is never printed.
#[derive(Clone)]
pub struct DataKey(XChaCha20Poly1305, [u8; 32]);

impl DataKey {
    /// From 64 hex digits (surrounding whitespace ignored, so a key file may end in a newline).
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::BadKey)?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let aead = XChaCha20Poly1305::new_from_slice(bytes).map_err(|_| CryptoError::BadKey)?;
        // A separate key for fingerprints, so a MAC never uses the sealing key itself.
        let mac_key: [u8; 32] = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(b"landfall fingerprint key\0");
            h.update(bytes);
            h.finalize().into()
        };
        Ok(DataKey(aead, mac_key))
    }

    /// A keyed fingerprint (HMAC-SHA256, hex) of `data` under the name `aad`: equal values give
    /// equal fingerprints under one key, and without the key a fingerprint says nothing about
    /// a low-entropy value (a plain hash of a password can be guessed offline).
    pub fn fingerprint(&self, aad: &[u8], data: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.1)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(aad);
        m.update(&[0]);
        m.update(data);
        hex::encode(m.finalize().into_bytes())
    }

    /// Seals `plain` under the name `aad`.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::rng().fill(&mut nonce[..]);
        // Encryption fails only for messages beyond ~256 GiB; nothing we store comes close.
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed under the name `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 1 + NONCE + TAG || sealed[0] != VERSION {
            return Err(CryptoError::Malformed);
        }
        let (nonce, body) = sealed[1..].split_at(NONCE);
        self.0
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| CryptoError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> DataKey {
        DataKey::from_bytes(&[b; 32]).unwrap()
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert!(DataKey::from_hex(&"ab".repeat(32)).is_ok());
        assert!(DataKey::from_hex(&format!("{}\n", "0f".repeat(32))).is_ok());
        assert_eq!(DataKey::from_hex("abcd").err(), Some(CryptoError::BadKey));
        assert_eq!(
            DataKey::from_hex(&"zz".repeat(32)).err(),
            Some(CryptoError::BadKey)
        );
    }

    #[test]
    fn the_same_secret_seals_differently_each_time() {
        let k = key(1);
        assert_ne!(k.seal(b"xoxb-1", b"n"), k.seal(b"xoxb-1", b"n"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Feature: agent-onboarding-provisioning, Property 19: Data Encryption Round Trip.
        /// Sealing then opening gives the plaintext back; flipping any bit of the sealed
        /// value, or opening under another name or key, is rejected.
        #[test]
        fn round_trip_and_any_tampering_is_rejected(
            plain in prop::collection::vec(any::<u8>(), 0..512),
            aad in prop::collection::vec(any::<u8>(), 0..32),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            k in any::<u8>(),
        ) {
            let key1 = key(k);
            let sealed = key1.seal(&plain, &aad);
            prop_assert_eq!(key1.open(&sealed, &aad).unwrap(), plain.clone());
            let mut bad = sealed.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(key1.open(&bad, &aad).is_err(), "flipped byte {}", i);
            let mut other = aad.clone();
            other.push(0);
            prop_assert_eq!(key1.open(&sealed, &other), Err(CryptoError::Rejected));
            prop_assert_eq!(key(k.wrapping_add(1)).open(&sealed, &aad), Err(CryptoError::Rejected));
            prop_assert_eq!(key1.open(&sealed[..sealed.len() - 1], &aad).is_err(), true);
        }
    }
}

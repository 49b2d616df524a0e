//! Authenticated encryption for what the sidecar hands out or puts away:
//! login cookies (under keys derived from `session.cookie_secret`) and
//! session records (under a key derived from each session's own secret).
//! AES-256-GCM with a random nonce (aws-lc-rs, the audited library rustls
//! already uses here), keys from HKDF-SHA256.
//!
//! A sealed value is `version (1 byte) | nonce (12) | ciphertext | tag
//! (16)`. The associated data names what the value is for (a cookie's
//! name, a record's store key), so one value cannot be replayed as another.
//! Anything that fails to open, or carries another version, is simply
//! nothing: the caller treats it as absent.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};

/// The format version, first byte of every sealed value.
const VERSION: u8 = 1;
const SALT: &[u8] = b"emp-sidecar seal v1";

/// One AES-256-GCM key.
pub struct SealKey(RandomizedNonceKey);

impl SealKey {
    /// The key for `purpose` derived from `secret` (HKDF-SHA256).
    pub fn derive(secret: &[u8], purpose: &[u8]) -> Option<SealKey> {
        let mut bytes = [0u8; 32];
        let info = [purpose];
        Salt::new(HKDF_SHA256, SALT)
            .extract(secret)
            .expand(&info, &AES_256_GCM)
            .ok()?
            .fill(&mut bytes)
            .ok()?;
        RandomizedNonceKey::new(&AES_256_GCM, &bytes)
            .ok()
            .map(SealKey)
    }

    /// `plaintext` sealed, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        let mut in_out = plaintext.to_vec();
        let nonce = self
            .0
            .seal_in_place_append_tag(Aad::from(aad), &mut in_out)
            .ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        out.push(VERSION);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&in_out);
        Some(out)
    }

    /// The plaintext of a value this key sealed for `aad`, or `None`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let key = SealKey::derive(b"a secret of enough length.......", b"login").unwrap();
        let sealed = key.seal(b"name-a", b"hello").unwrap();
        assert_eq!(sealed[0], VERSION);
        assert_eq!(key.open(b"name-a", &sealed).unwrap(), b"hello");
        // Another name, another purpose, another secret: nothing.
        assert!(key.open(b"name-b", &sealed).is_none());
        let other = SealKey::derive(b"a secret of enough length.......", b"record").unwrap();
        assert!(other.open(b"name-a", &sealed).is_none());
        let other = SealKey::derive(b"another secret of enough length.", b"login").unwrap();
        assert!(other.open(b"name-a", &sealed).is_none());
        // Any flipped bit, a truncation, another version: nothing.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(key.open(b"name-a", &bad).is_none(), "bit flip at {i}");
        }
        assert!(key.open(b"name-a", &sealed[..sealed.len() - 1]).is_none());
        assert!(key.open(b"name-a", &[]).is_none());
        // Random nonces: the same plaintext seals differently each time.
        assert_ne!(key.seal(b"n", b"x").unwrap(), key.seal(b"n", b"x").unwrap());
    }
}

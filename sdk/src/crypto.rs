//! Digests, HMACs and randomness, computed by the host.
//!
//! ```
//! use adc_sdk::crypto::{hmac, Algorithm};
//! let tag = hmac(Algorithm::Sha256, b"key", b"member=web-1");
//! assert_eq!(tag.len(), 32);
//! ```

use crate::sys;

/// A hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// SHA-1, for interoperability only.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

/// The digest of `data`.
pub fn hash(algorithm: Algorithm, data: &[u8]) -> Vec<u8> {
    sys::hash(algorithm, data)
}

/// The HMAC of `data` under `key`.
pub fn hmac(algorithm: Algorithm, key: &[u8], data: &[u8]) -> Vec<u8> {
    sys::hmac(algorithm, key, data)
}

/// Compare in time that does not depend on where `a` and `b` differ; use it
/// to check signatures.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    sys::constant_time_eq(a, b)
}

/// A random 64-bit number from the host's secure generator.
pub fn random_u64() -> u64 {
    sys::random_u64()
}

/// `len` random bytes (at most 4096).
pub fn random_bytes(len: u32) -> Vec<u8> {
    sys::random_bytes(len)
}

/// Lowercase hexadecimal of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

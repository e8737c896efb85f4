//! The shared table (the iRules `table`): one per policy, seen by every
//! worker and instance, with a time to live per entry.
//!
//! ```
//! use std::time::Duration;
//! # let _host = adc_sdk::testing::TestHost::new();
//! let hits = adc_sdk::kv::incr("hits:10.0.0.1", 1, Some(Duration::from_secs(60))).unwrap();
//! assert_eq!(hits, 1);
//! ```

use std::time::Duration;

use crate::sys;

/// Why a table operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvError {
    /// `incr` on a value that is not a decimal integer.
    NotANumber,
    /// Key or value over the host's size limit.
    TooLarge,
    /// The policy's table is full.
    Full,
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvError::NotANumber => "value is not a number",
            KvError::TooLarge => "key or value too large",
            KvError::Full => "table full",
        })
    }
}

impl std::error::Error for KvError {}

pub(crate) fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
}

/// The value of `key`, unless absent or expired.
pub fn get(key: &str) -> Option<Vec<u8>> {
    sys::kv_get(key)
}

/// The value of `key` as text (invalid UTF-8 is replaced).
pub fn get_string(key: &str) -> Option<String> {
    get(key).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Set `key`; `ttl` `None` keeps it until deleted.
///
/// # Errors
///
/// [`KvError::TooLarge`], [`KvError::Full`].
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), KvError> {
    sys::kv_set(key, value.as_ref(), ttl_ms(ttl))
}

/// Set `key` only when absent; true when this call set it.
///
/// # Errors
///
/// [`KvError::TooLarge`], [`KvError::Full`].
pub fn add(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<bool, KvError> {
    sys::kv_add(key, value.as_ref(), ttl_ms(ttl))
}

/// Remove `key`; true when it was present.
pub fn delete(key: &str) -> bool {
    sys::kv_delete(key)
}

/// Add `delta` atomically and return the new value. An absent key starts
/// at 0 with `ttl`; a present one keeps its expiry.
///
/// # Errors
///
/// [`KvError::NotANumber`], [`KvError::Full`].
pub fn incr(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
    sys::kv_incr(key, delta, ttl_ms(ttl))
}

/// Time left before `key` expires; `None` when absent or without expiry.
pub fn ttl(key: &str) -> Option<Duration> {
    sys::kv_ttl(key).map(Duration::from_millis)
}

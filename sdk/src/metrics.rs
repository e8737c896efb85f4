//! Metrics a policy defines. They appear on the metrics endpoint as
//! `adc_policy_<name>` with a `policy` label naming the policy.
//!
//! ```
//! # let _host = adc_sdk::testing::TestHost::new();
//! adc_sdk::metrics::counter_add("blocked_total", 1, &[("rule", "sqli")]).unwrap();
//! ```

use crate::sys;

/// Why a metric was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricError {
    /// Not `[a-z_][a-z0-9_]*`, or a name the host reserves.
    InvalidName,
    /// A label name that is not `[a-z_][a-z0-9_]*`, or `policy`.
    InvalidLabel,
    /// The policy has reached its limit of distinct series.
    TooManySeries,
}

impl std::fmt::Display for MetricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MetricError::InvalidName => "invalid metric name",
            MetricError::InvalidLabel => "invalid label name",
            MetricError::TooManySeries => "too many series",
        })
    }
}

impl std::error::Error for MetricError {}

/// Add to a counter. End counter names in `_total`.
///
/// # Errors
///
/// [`MetricError`] when a name is refused.
pub fn counter_add(name: &str, value: u64, labels: &[(&str, &str)]) -> Result<(), MetricError> {
    sys::counter_add(name, value, labels)
}

/// Set a gauge.
///
/// # Errors
///
/// [`MetricError`] when a name is refused.
pub fn gauge_set(name: &str, value: f64, labels: &[(&str, &str)]) -> Result<(), MetricError> {
    sys::gauge_set(name, value, labels)
}

/// Record a value in a histogram. Use base units: seconds, bytes.
///
/// # Errors
///
/// [`MetricError`] when a name is refused.
pub fn histogram_record(
    name: &str,
    value: f64,
    labels: &[(&str, &str)],
) -> Result<(), MetricError> {
    sys::histogram_record(name, value, labels)
}

/// Whether a metric or label name is acceptable: `[a-z_][a-z0-9_]*`, at
/// most 64 bytes. The host and the mock host apply the same rule.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && name.len() <= 64
}

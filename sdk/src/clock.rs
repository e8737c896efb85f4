//! The host's clocks (the mock host's, under [`crate::testing`]).

use crate::sys;

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    sys::now_ms()
}

/// A monotonic clock in nanoseconds, for measuring intervals.
pub fn monotonic_ns() -> u64 {
    sys::monotonic_ns()
}

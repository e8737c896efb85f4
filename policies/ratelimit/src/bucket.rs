//! A token bucket in the shared table, as one number per bucket: the
//! theoretical arrival time (TAT) of the generic cell rate algorithm.
//!
//! A bucket holds `burst` tokens and gains one every `interval`. Its entry
//! is the instant, in microseconds, at which it will be full again; an
//! absent entry is a full bucket. Taking a token moves that instant one
//! interval later; a request is allowed while the instant stays within
//! `burst` intervals of now.
//!
//! The table offers atomic operations one at a time, not a compare-and-set,
//! so a request takes its token with one atomic `incr` and corrects after:
//!
//! - while the bucket is not full, `incr` alone decides, atomically: many
//!   workers taking tokens at once never let more through than the bucket
//!   allows;
//! - a request refused gives its token back with a second `incr`;
//! - when the entry is absent or in the past (the bucket is full), the
//!   request sets it to `now + interval`. Requests racing through that same
//!   moment may overwrite each other's tokens, so a full bucket can let a
//!   few more than `burst` requests through when they arrive on several
//!   workers in the same instant;
//! - an entry lives until its bucket is full again; a bucket kept busy past
//!   its entry's time to live is written again with a longer one (a `set`,
//!   which may likewise drop a token taken at that instant).
//!
//! The approximation errs on the side of letting a request through, never
//! of refusing one the limit allows.

use std::time::Duration;

use adc_sdk::kv::{self, KvError};

/// A limit: `burst` tokens, one more every `interval_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    pub interval_us: u64,
    pub burst: u32,
}

impl Limit {
    /// `rate` requests per `per` seconds, in bursts of up to `burst`.
    pub fn new(rate: u32, per: u64, burst: u32) -> Result<Limit, String> {
        if rate == 0 || per == 0 || burst == 0 {
            return Err("`rate`, `per` and `burst` must be at least 1".to_owned());
        }
        let period_us = per.checked_mul(1_000_000).ok_or("`per` is too long")?;
        let interval_us = (period_us / u64::from(rate)).max(1);
        interval_us
            .checked_mul(u64::from(burst))
            .ok_or("`burst` is too large for `per`")?;
        Ok(Limit { interval_us, burst })
    }

    fn capacity_us(&self) -> i64 {
        i64::try_from(self.interval_us * u64::from(self.burst)).unwrap_or(i64::MAX)
    }
}

/// What taking a token found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// Refused; a token is due in this many seconds (at least 1).
    Limited {
        retry_after_secs: u64,
    },
}

fn micros(d: i64) -> Duration {
    Duration::from_micros(u64::try_from(d).unwrap_or(0))
}

/// Take a token from the bucket `key` at `now_us` (wall-clock microseconds).
///
/// # Errors
///
/// A table error; the caller decides whether to let the request through.
pub(crate) fn take(key: &str, limit: Limit, now_us: i64) -> Result<Verdict, KvError> {
    let interval = i64::try_from(limit.interval_us).unwrap_or(i64::MAX);
    let capacity = limit.capacity_us();
    // Past this, an untouched bucket is full and its entry can go.
    let keep = micros(capacity.saturating_add(1_000_000));

    let tat = kv::incr(key, interval, Some(keep))?;
    if tat < now_us.saturating_add(interval) {
        // Absent or in the past: the bucket was full.
        kv::set(key, now_us.saturating_add(interval).to_string(), Some(keep))?;
        return Ok(Verdict::Allowed);
    }

    let ahead = tat - now_us;
    if ahead <= capacity {
        // `incr` keeps the entry's first expiry; once the bucket is more
        // than a token short, make sure the entry outlives its refill.
        if ahead > interval && kv::ttl(key).is_none_or(|left| left < micros(ahead)) {
            kv::set(
                key,
                tat.to_string(),
                Some(micros(ahead.saturating_add(capacity))),
            )?;
        }
        return Ok(Verdict::Allowed);
    }

    kv::incr(key, -interval, None)?;
    let wait_us = u64::try_from(ahead - capacity).unwrap_or(0);
    Ok(Verdict::Limited {
        retry_after_secs: wait_us.div_ceil(1_000_000).max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use adc_sdk::testing::TestHost;

    const NOW: i64 = 1_700_000_000_000_000;

    #[test]
    fn a_limit_divides_its_period_into_intervals() {
        assert_eq!(
            Limit::new(10, 1, 20),
            Ok(Limit {
                interval_us: 100_000,
                burst: 20
            })
        );
        assert_eq!(Limit::new(60, 60, 1).map(|l| l.interval_us), Ok(1_000_000));
        assert_eq!(Limit::new(3_000_000, 1, 1).map(|l| l.interval_us), Ok(1));
        assert!(Limit::new(0, 1, 1).is_err());
        assert!(Limit::new(1, 0, 1).is_err());
        assert!(Limit::new(1, 1, 0).is_err());
        assert!(Limit::new(1, u64::MAX, 1).is_err());
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_refuses() {
        let _host = TestHost::new();
        let limit = Limit::new(1, 1, 3).expect("valid");
        for _ in 0..3 {
            assert_eq!(take("k", limit, NOW), Ok(Verdict::Allowed));
        }
        assert_eq!(
            take("k", limit, NOW),
            Ok(Verdict::Limited {
                retry_after_secs: 1
            })
        );
    }

    #[test]
    fn tokens_come_back_one_interval_at_a_time() {
        let _host = TestHost::new();
        let limit = Limit::new(2, 1, 2).expect("valid");
        take("k", limit, NOW).expect("table");
        take("k", limit, NOW).expect("table");
        assert!(matches!(
            take("k", limit, NOW + 499_999),
            Ok(Verdict::Limited { .. })
        ));
        assert_eq!(take("k", limit, NOW + 500_000), Ok(Verdict::Allowed));
        assert!(matches!(
            take("k", limit, NOW + 500_000),
            Ok(Verdict::Limited { .. })
        ));
    }

    #[test]
    fn a_refused_request_takes_no_token() {
        let _host = TestHost::new();
        let limit = Limit::new(1, 10, 1).expect("valid");
        take("k", limit, NOW).expect("table");
        for _ in 0..50 {
            assert_eq!(
                take("k", limit, NOW + 1),
                Ok(Verdict::Limited {
                    retry_after_secs: 10
                })
            );
        }
        assert_eq!(take("k", limit, NOW + 10_000_000), Ok(Verdict::Allowed));
    }

    #[test]
    fn retry_after_rounds_the_wait_up_to_whole_seconds() {
        let _host = TestHost::new();
        let limit = Limit::new(1, 60, 1).expect("valid");
        take("k", limit, NOW).expect("table");
        assert_eq!(
            take("k", limit, NOW + 30_500_000),
            Ok(Verdict::Limited {
                retry_after_secs: 30
            })
        );
    }
}

//! The SDK over the host's imports.

use crate::__private::bindings::adc::policy as wit;
use crate::crypto::Algorithm;
use crate::kv::KvError;
use crate::log::Level;
use crate::metrics::MetricError;
use crate::pools::Member;
use crate::EditError;

pub(crate) use wit::http::{Request, Response};

pub(crate) fn edit_error(e: wit::types::EditError) -> EditError {
    use wit::types::EditError as W;
    match e {
        W::InvalidName => EditError::InvalidName,
        W::InvalidValue => EditError::InvalidValue,
        W::ForbiddenHeader => EditError::ForbiddenHeader,
        W::InvalidTarget => EditError::InvalidTarget,
        W::InvalidStatus => EditError::InvalidStatus,
        W::BodyUnavailable => EditError::BodyUnavailable,
    }
}

pub(crate) fn level(level: Level) -> wit::types::Level {
    match level {
        Level::Trace => wit::types::Level::Trace,
        Level::Debug => wit::types::Level::Debug,
        Level::Info => wit::types::Level::Info,
        Level::Warn => wit::types::Level::Warn,
        Level::Error => wit::types::Level::Error,
    }
}

pub(crate) fn log_write(l: Level, message: &str) {
    wit::log::write(level(l), message);
}

pub(crate) fn log_enabled(l: Level) -> bool {
    wit::log::enabled(level(l))
}

fn kv_error(e: wit::kv::KvError) -> KvError {
    match e {
        wit::kv::KvError::NotANumber => KvError::NotANumber,
        wit::kv::KvError::TooLarge => KvError::TooLarge,
        wit::kv::KvError::Full => KvError::Full,
    }
}

pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
    wit::kv::get(key)
}

pub(crate) fn kv_set(key: &str, value: &[u8], ttl: Option<u64>) -> Result<(), KvError> {
    wit::kv::set(key, value, ttl).map_err(kv_error)
}

pub(crate) fn kv_add(key: &str, value: &[u8], ttl: Option<u64>) -> Result<bool, KvError> {
    wit::kv::add(key, value, ttl).map_err(kv_error)
}

pub(crate) fn kv_delete(key: &str) -> bool {
    wit::kv::delete(key)
}

pub(crate) fn kv_incr(key: &str, delta: i64, ttl: Option<u64>) -> Result<i64, KvError> {
    wit::kv::incr(key, delta, ttl).map_err(kv_error)
}

pub(crate) fn kv_ttl(key: &str) -> Option<u64> {
    wit::kv::ttl(key)
}

fn metric_error(e: wit::metrics::MetricError) -> MetricError {
    match e {
        wit::metrics::MetricError::InvalidName => MetricError::InvalidName,
        wit::metrics::MetricError::InvalidLabel => MetricError::InvalidLabel,
        wit::metrics::MetricError::TooManySeries => MetricError::TooManySeries,
    }
}

fn labels(labels: &[(&str, &str)]) -> Vec<wit::types::Header> {
    labels
        .iter()
        .map(|(name, value)| wit::types::Header {
            name: (*name).into(),
            value: (*value).into(),
        })
        .collect()
}

pub(crate) fn counter_add(name: &str, v: u64, l: &[(&str, &str)]) -> Result<(), MetricError> {
    wit::metrics::counter_add(name, v, &labels(l)).map_err(metric_error)
}

pub(crate) fn gauge_set(name: &str, v: f64, l: &[(&str, &str)]) -> Result<(), MetricError> {
    wit::metrics::gauge_set(name, v, &labels(l)).map_err(metric_error)
}

pub(crate) fn histogram_record(name: &str, v: f64, l: &[(&str, &str)]) -> Result<(), MetricError> {
    wit::metrics::histogram_record(name, v, &labels(l)).map_err(metric_error)
}

pub(crate) fn now_ms() -> u64 {
    wit::clock::now_ms()
}

pub(crate) fn monotonic_ns() -> u64 {
    wit::clock::monotonic_ns()
}

fn algorithm(a: Algorithm) -> wit::crypto::HashAlgorithm {
    match a {
        Algorithm::Sha1 => wit::crypto::HashAlgorithm::Sha1,
        Algorithm::Sha256 => wit::crypto::HashAlgorithm::Sha256,
        Algorithm::Sha512 => wit::crypto::HashAlgorithm::Sha512,
    }
}

pub(crate) fn hash(a: Algorithm, data: &[u8]) -> Vec<u8> {
    wit::crypto::hash(algorithm(a), data)
}

pub(crate) fn hmac(a: Algorithm, key: &[u8], data: &[u8]) -> Vec<u8> {
    wit::crypto::hmac(algorithm(a), key, data)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    wit::crypto::constant_time_eq(a, b)
}

pub(crate) fn random_u64() -> u64 {
    wit::random::next_u64()
}

pub(crate) fn random_bytes(len: u32) -> Vec<u8> {
    wit::random::bytes(len)
}

pub(crate) fn pool_names() -> Vec<String> {
    wit::pools::names()
}

pub(crate) fn pool_members(pool: &str) -> Option<Vec<Member>> {
    wit::pools::members(pool).map(|members| {
        members
            .into_iter()
            .map(|m| Member {
                name: m.name,
                address: m.address,
                weight: m.weight,
                healthy: m.healthy,
                enabled: m.enabled,
                active: m.active,
            })
            .collect()
    })
}

pub(crate) fn pool_available(pool: &str) -> bool {
    wit::pools::available(pool)
}

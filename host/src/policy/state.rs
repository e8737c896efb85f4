//! What a policy instance's store holds, and the host functions it imports.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hmac::{Mac, SimpleHmac};
use rand::Rng;
use sha2::Digest;
use wasmtime::component::Resource;

use super::bindings::adc::policy::{
    clock, crypto, http as whttp, kv as wkv, log, metrics as wmetrics, pools, random, types,
};
use super::budget::Budget;
use super::exchange::{self, BodyStream, Exchange};
use super::kv::{KvError, Table};
use super::streaming_bindings::exports::adc::policy::streaming::Guest as StreamingGuest;
use super::{PoolDirectory, RequestRef, ResponseRef};

/// Shared by every instance of one policy version.
#[derive(Debug)]
pub struct Shared {
    pub name: Arc<str>,
    pub table: Arc<Table>,
    pub pools: Arc<dyn PoolDirectory>,
    pub series: Mutex<HashSet<u64>>,
    pub series_limit: usize,
    pub hasher: RandomState,
}

/// The store data of one instance.
pub struct StoreState {
    pub shared: Arc<Shared>,
    pub exchange: Option<Box<Exchange>>,
    pub limiter: Limiter,
    /// The CPU budget of the call running now.
    pub budget: Budget,
    pub started: Instant,
    /// The instance's `streaming` export, when its component has one.
    pub streaming: Option<StreamingGuest>,
    /// Whether the component has a hook for streamed bodies (in `hooks`,
    /// or the `streaming` export), so that `stream-body` may be granted.
    pub streams: bool,
}

/// Memory cap of an instance; remembers when it refused to grow, so a trap
/// that follows is reported as the cap it is.
pub struct Limiter {
    pub memory_cap: usize,
    pub memory_denied: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_cap;
        self.memory_denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl StoreState {
    fn exchange(&self) -> Option<&Exchange> {
        self.exchange.as_deref()
    }

    fn exchange_mut(&mut self) -> Option<&mut Exchange> {
        self.exchange.as_deref_mut()
    }

    fn response(&self) -> Option<&http::response::Parts> {
        self.exchange().and_then(|e| e.response.as_ref())
    }

    /// The response to edit: none once its head is sent (a streaming body).
    fn response_mut(&mut self) -> Option<&mut http::response::Parts> {
        self.exchange_mut()
            .filter(|e| e.body_stream != BodyStream::Streaming)
            .and_then(|e| e.response.as_mut())
    }
}

impl types::Host for StoreState {}

fn level(l: types::Level) -> tracing::Level {
    match l {
        types::Level::Trace => tracing::Level::TRACE,
        types::Level::Debug => tracing::Level::DEBUG,
        types::Level::Info => tracing::Level::INFO,
        types::Level::Warn => tracing::Level::WARN,
        types::Level::Error => tracing::Level::ERROR,
    }
}

impl log::Host for StoreState {
    fn write(&mut self, l: types::Level, message: String) {
        let policy = &*self.shared.name;
        match level(l) {
            tracing::Level::TRACE => tracing::trace!(target: "adc::policy", policy, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "adc::policy", policy, "{message}"),
            tracing::Level::INFO => tracing::info!(target: "adc::policy", policy, "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "adc::policy", policy, "{message}"),
            _ => tracing::error!(target: "adc::policy", policy, "{message}"),
        }
    }

    fn enabled(&mut self, l: types::Level) -> bool {
        match level(l) {
            tracing::Level::TRACE => {
                tracing::enabled!(target: "adc::policy", tracing::Level::TRACE)
            }
            tracing::Level::DEBUG => {
                tracing::enabled!(target: "adc::policy", tracing::Level::DEBUG)
            }
            tracing::Level::INFO => tracing::enabled!(target: "adc::policy", tracing::Level::INFO),
            tracing::Level::WARN => tracing::enabled!(target: "adc::policy", tracing::Level::WARN),
            _ => tracing::enabled!(target: "adc::policy", tracing::Level::ERROR),
        }
    }
}

fn kv_error(e: KvError) -> wkv::KvError {
    match e {
        KvError::NotANumber => wkv::KvError::NotANumber,
        KvError::TooLarge => wkv::KvError::TooLarge,
        KvError::Full => wkv::KvError::Full,
    }
}

impl wkv::Host for StoreState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.shared.table.get(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl: Option<u64>) -> Result<(), wkv::KvError> {
        self.shared.table.set(&key, value, ttl).map_err(kv_error)
    }

    fn add(&mut self, key: String, value: Vec<u8>, ttl: Option<u64>) -> Result<bool, wkv::KvError> {
        self.shared.table.add(&key, value, ttl).map_err(kv_error)
    }

    fn delete(&mut self, key: String) -> bool {
        self.shared.table.delete(&key)
    }

    fn incr(&mut self, key: String, delta: i64, ttl: Option<u64>) -> Result<i64, wkv::KvError> {
        self.shared.table.incr(&key, delta, ttl).map_err(kv_error)
    }

    fn ttl(&mut self, key: String) -> Option<u64> {
        self.shared.table.ttl(&key)
    }
}

impl StoreState {
    /// Check a policy metric and its labels, and admit its series under the
    /// policy's series limit.
    fn metric(
        &mut self,
        name: &str,
        labels: &[types::Header],
    ) -> Result<(String, Vec<metrics::Label>), wmetrics::MetricError> {
        // A host metric's name would let a policy forge the host's counts
        // of it (its hook calls, its faults) or clash with their type.
        if !adc_sdk::metrics::valid_name(name)
            || crate::telemetry::RESERVED_POLICY_METRICS.contains(&name)
        {
            return Err(wmetrics::MetricError::InvalidName);
        }
        let mut out = Vec::with_capacity(labels.len() + 1);
        out.push(metrics::Label::new("policy", self.shared.name.to_string()));
        for l in labels {
            if !adc_sdk::metrics::valid_name(&l.name) || l.name == "policy" {
                return Err(wmetrics::MetricError::InvalidLabel);
            }
            out.push(metrics::Label::new(l.name.clone(), l.value.clone()));
        }
        let key = self.shared.hasher.hash_one((
            name,
            labels
                .iter()
                .map(|l| (&l.name, &l.value))
                .collect::<Vec<_>>(),
        ));
        let mut series = self.shared.series.lock().unwrap_or_else(|p| p.into_inner());
        if !series.contains(&key) {
            if series.len() >= self.shared.series_limit {
                return Err(wmetrics::MetricError::TooManySeries);
            }
            series.insert(key);
            metrics::describe_counter!(
                format!("adc_policy_{name}"),
                // Several policies may record one name: each series names
                // its own in the `policy` label.
                "Recorded by policies (the policy label names which)"
            );
        }
        Ok((format!("adc_policy_{name}"), out))
    }
}

impl wmetrics::Host for StoreState {
    fn counter_add(
        &mut self,
        name: String,
        value: u64,
        labels: Vec<types::Header>,
    ) -> Result<(), wmetrics::MetricError> {
        let (name, labels) = self.metric(&name, &labels)?;
        metrics::counter!(name, labels).increment(value);
        Ok(())
    }

    fn gauge_set(
        &mut self,
        name: String,
        value: f64,
        labels: Vec<types::Header>,
    ) -> Result<(), wmetrics::MetricError> {
        let (name, labels) = self.metric(&name, &labels)?;
        metrics::gauge!(name, labels).set(value);
        Ok(())
    }

    fn histogram_record(
        &mut self,
        name: String,
        value: f64,
        labels: Vec<types::Header>,
    ) -> Result<(), wmetrics::MetricError> {
        let (name, labels) = self.metric(&name, &labels)?;
        metrics::histogram!(name, labels).record(value);
        Ok(())
    }
}

impl clock::Host for StoreState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&mut self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl random::Host for StoreState {
    fn next_u64(&mut self) -> u64 {
        rand::rng().random()
    }

    fn bytes(&mut self, len: u32) -> Vec<u8> {
        let mut out = vec![0; len.min(4096) as usize];
        rand::rng().fill(&mut out[..]);
        out
    }
}

fn hmac_with<D>(key: &[u8], data: &[u8]) -> Vec<u8>
where
    D: Digest + sha2::digest::core_api::BlockSizeUser,
{
    let mut mac = SimpleHmac::<D>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

impl crypto::Host for StoreState {
    fn hash(&mut self, algorithm: crypto::HashAlgorithm, data: Vec<u8>) -> Vec<u8> {
        match algorithm {
            crypto::HashAlgorithm::Sha1 => sha1::Sha1::digest(&data).to_vec(),
            crypto::HashAlgorithm::Sha256 => sha2::Sha256::digest(&data).to_vec(),
            crypto::HashAlgorithm::Sha512 => sha2::Sha512::digest(&data).to_vec(),
        }
    }

    fn hmac(&mut self, algorithm: crypto::HashAlgorithm, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        match algorithm {
            crypto::HashAlgorithm::Sha1 => hmac_with::<sha1::Sha1>(&key, &data),
            crypto::HashAlgorithm::Sha256 => hmac_with::<sha2::Sha256>(&key, &data),
            crypto::HashAlgorithm::Sha512 => hmac_with::<sha2::Sha512>(&key, &data),
        }
    }

    fn constant_time_eq(&mut self, a: Vec<u8>, b: Vec<u8>) -> bool {
        a.len() == b.len() && a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl pools::Host for StoreState {
    fn names(&mut self) -> Vec<String> {
        self.shared.pools.names()
    }

    fn members(&mut self, pool: String) -> Option<Vec<pools::MemberStatus>> {
        self.shared.pools.members(&pool)
    }

    fn available(&mut self, pool: String) -> bool {
        self.shared.pools.available(&pool)
    }
}

/// Like the handles passed to `handler`'s hooks, these stand for the
/// exchange in the store whenever they are used; the guest keeps them.
impl whttp::Host for StoreState {
    fn current_request(&mut self) -> Resource<RequestRef> {
        Resource::new_own(0)
    }

    fn current_response(&mut self) -> Resource<ResponseRef> {
        Resource::new_own(1)
    }
}

/// The request a hook receives is always the exchange in the store: there
/// is one per call, so the handle's number carries nothing.
impl whttp::HostRequest for StoreState {
    fn method(&mut self, _: Resource<RequestRef>) -> String {
        self.exchange()
            .map(|e| e.request.method.to_string())
            .unwrap_or_default()
    }

    fn set_method(
        &mut self,
        _: Resource<RequestRef>,
        method: String,
    ) -> Result<(), types::EditError> {
        self.exchange_mut()
            .ok_or(types::EditError::InvalidTarget)?
            .set_method(&method)
    }

    fn uri(&mut self, _: Resource<RequestRef>) -> String {
        self.exchange()
            .and_then(|e| {
                e.request
                    .uri
                    .path_and_query()
                    .map(|pq| pq.as_str().to_owned())
            })
            .unwrap_or_else(|| "/".to_owned())
    }

    fn original_uri(&mut self, _: Resource<RequestRef>) -> String {
        self.exchange()
            .map_or_else(|| "/".to_owned(), |e| e.original_uri.clone())
    }

    fn set_uri(&mut self, _: Resource<RequestRef>, uri: String) -> Result<(), types::EditError> {
        self.exchange_mut()
            .ok_or(types::EditError::InvalidTarget)?
            .set_uri(&uri)
    }

    fn path(&mut self, _: Resource<RequestRef>) -> String {
        self.exchange()
            .map(|e| adc_sdk::text::normalize_path(e.request.uri.path()))
            .unwrap_or_else(|| "/".to_owned())
    }

    fn query(&mut self, _: Resource<RequestRef>) -> Option<String> {
        self.exchange()
            .and_then(|e| e.request.uri.query().map(str::to_owned))
    }

    fn query_param(&mut self, _: Resource<RequestRef>, name: String) -> Option<String> {
        let query = self.exchange()?.request.uri.query()?;
        adc_sdk::text::query_param(query, &name)
    }

    fn host(&mut self, _: Resource<RequestRef>) -> Option<String> {
        self.exchange().and_then(Exchange::host)
    }

    fn scheme(&mut self, _: Resource<RequestRef>) -> String {
        let tls = self.exchange().is_some_and(|e| e.tls);
        if tls { "https" } else { "http" }.to_owned()
    }

    fn version(&mut self, _: Resource<RequestRef>) -> String {
        let version = self.exchange().map(|e| e.request.version);
        match version {
            Some(http::Version::HTTP_10) => "HTTP/1.0",
            Some(http::Version::HTTP_2) => "HTTP/2",
            Some(http::Version::HTTP_3) => "HTTP/3",
            _ => "HTTP/1.1",
        }
        .to_owned()
    }

    fn client_ip(&mut self, _: Resource<RequestRef>) -> String {
        self.exchange()
            .map(|e| e.client_ip.to_string())
            .unwrap_or_default()
    }

    fn client_certificate(&mut self, _: Resource<RequestRef>) -> Option<String> {
        self.exchange()?
            .client_certificate
            .as_ref()
            .map(|c| c.subject.clone())
    }

    fn client_certificate_sans(&mut self, _: Resource<RequestRef>) -> Vec<String> {
        self.exchange()
            .and_then(|e| e.client_certificate.as_ref())
            .map(|c| c.sans.clone())
            .unwrap_or_default()
    }

    fn header(&mut self, _: Resource<RequestRef>, name: String) -> Option<String> {
        exchange::header(&self.exchange()?.request.headers, &name)
    }

    fn header_values(&mut self, _: Resource<RequestRef>, name: String) -> Vec<String> {
        self.exchange()
            .map(|e| exchange::header_values(&e.request.headers, &name))
            .unwrap_or_default()
    }

    fn header_names(&mut self, _: Resource<RequestRef>) -> Vec<String> {
        self.exchange()
            .map(|e| exchange::header_names(&e.request.headers))
            .unwrap_or_default()
    }

    fn header_block(&mut self, _: Resource<RequestRef>) -> Vec<u8> {
        self.exchange()
            .map(|e| exchange::header_block(&e.request.headers))
            .unwrap_or_default()
    }

    fn set_header(
        &mut self,
        _: Resource<RequestRef>,
        name: String,
        value: String,
    ) -> Result<(), types::EditError> {
        let e = self
            .exchange_mut()
            .ok_or(types::EditError::ForbiddenHeader)?;
        exchange::set_header(&mut e.request.headers, &name, &value)
    }

    fn append_header(
        &mut self,
        _: Resource<RequestRef>,
        name: String,
        value: String,
    ) -> Result<(), types::EditError> {
        let e = self
            .exchange_mut()
            .ok_or(types::EditError::ForbiddenHeader)?;
        exchange::append_header(&mut e.request.headers, &name, &value)
    }

    fn remove_header(&mut self, _: Resource<RequestRef>, name: String) -> bool {
        self.exchange_mut()
            .is_some_and(|e| exchange::remove_header(&mut e.request.headers, &name))
    }

    fn cookie(&mut self, _: Resource<RequestRef>, name: String) -> Option<String> {
        exchange::cookies(&self.exchange()?.request.headers)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    fn cookies(&mut self, _: Resource<RequestRef>) -> Vec<(String, String)> {
        self.exchange()
            .map(|e| exchange::cookies(&e.request.headers))
            .unwrap_or_default()
    }

    fn body(&mut self, _: Resource<RequestRef>) -> Option<Vec<u8>> {
        self.exchange()?.request_body.as_ref().map(|b| b.to_vec())
    }

    fn set_body(&mut self, _: Resource<RequestRef>, body: Vec<u8>) -> Result<(), types::EditError> {
        match self.exchange_mut().and_then(|e| e.request_body.as_mut()) {
            Some(slot) => {
                *slot = body.into();
                Ok(())
            }
            None => Err(types::EditError::BodyUnavailable),
        }
    }

    fn var(&mut self, _: Resource<RequestRef>, name: String) -> Option<String> {
        self.exchange()?.var(&name)
    }

    fn set_var(&mut self, _: Resource<RequestRef>, name: String, value: String) {
        if let Some(e) = self.exchange_mut() {
            e.set_var(name, value);
        }
    }

    fn drop(&mut self, _: Resource<RequestRef>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl whttp::HostResponse for StoreState {
    fn status(&mut self, _: Resource<ResponseRef>) -> u16 {
        self.response().map_or(0, |r| r.status.as_u16())
    }

    fn set_status(
        &mut self,
        _: Resource<ResponseRef>,
        status: u16,
    ) -> Result<(), types::EditError> {
        // Only a final status: an interim one (1xx) would need a final
        // response after it, which this one is.
        let status = http::StatusCode::from_u16(status)
            .ok()
            .filter(|s| !s.is_informational())
            .ok_or(types::EditError::InvalidStatus)?;
        self.response_mut()
            .ok_or(types::EditError::InvalidStatus)?
            .status = status;
        Ok(())
    }

    fn header(&mut self, _: Resource<ResponseRef>, name: String) -> Option<String> {
        exchange::header(&self.response()?.headers, &name)
    }

    fn header_values(&mut self, _: Resource<ResponseRef>, name: String) -> Vec<String> {
        self.response()
            .map(|r| exchange::header_values(&r.headers, &name))
            .unwrap_or_default()
    }

    fn header_names(&mut self, _: Resource<ResponseRef>) -> Vec<String> {
        self.response()
            .map(|r| exchange::header_names(&r.headers))
            .unwrap_or_default()
    }

    fn header_block(&mut self, _: Resource<ResponseRef>) -> Vec<u8> {
        self.response()
            .map(|r| exchange::header_block(&r.headers))
            .unwrap_or_default()
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseRef>,
        name: String,
        value: String,
    ) -> Result<(), types::EditError> {
        let r = self
            .response_mut()
            .ok_or(types::EditError::ForbiddenHeader)?;
        exchange::set_header(&mut r.headers, &name, &value)
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseRef>,
        name: String,
        value: String,
    ) -> Result<(), types::EditError> {
        let r = self
            .response_mut()
            .ok_or(types::EditError::ForbiddenHeader)?;
        exchange::append_header(&mut r.headers, &name, &value)
    }

    fn remove_header(&mut self, _: Resource<ResponseRef>, name: String) -> bool {
        self.response_mut()
            .is_some_and(|r| exchange::remove_header(&mut r.headers, &name))
    }

    fn body(&mut self, _: Resource<ResponseRef>) -> Option<Vec<u8>> {
        self.exchange()?.response_body.as_ref().map(|b| b.to_vec())
    }

    fn set_body(
        &mut self,
        _: Resource<ResponseRef>,
        body: Vec<u8>,
    ) -> Result<(), types::EditError> {
        match self.exchange_mut().and_then(|e| e.response_body.as_mut()) {
            Some(slot) => {
                *slot = body.into();
                Ok(())
            }
            None => Err(types::EditError::BodyUnavailable),
        }
    }

    fn stream_body(&mut self, _: Resource<ResponseRef>) -> Result<(), types::EditError> {
        let exports = self.streams;
        match self.exchange_mut() {
            Some(e) if exports && matches!(e.body_stream, BodyStream::Open | BodyStream::Asked) => {
                e.body_stream = BodyStream::Asked;
                Ok(())
            }
            _ => Err(types::EditError::BodyUnavailable),
        }
    }

    fn drop(&mut self, _: Resource<ResponseRef>) -> wasmtime::Result<()> {
        Ok(())
    }
}

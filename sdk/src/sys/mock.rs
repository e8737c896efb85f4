//! The SDK over the mock host of [`crate::testing`].

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use crate::crypto::Algorithm;
use crate::kv::KvError;
use crate::log::Level;
use crate::metrics::{valid_name, MetricError};
use crate::pools::Member;
use crate::EditError;

pub(crate) use crate::testing::{MockRequest as Request, MockResponse as Response};

/// Everything the mock host remembers, per test thread.
#[derive(Default)]
pub(crate) struct State {
    pub kv: HashMap<String, (Vec<u8>, Option<u64>)>,
    pub now_ms: u64,
    pub mono_ns: u64,
    pub logs: Vec<(Level, String)>,
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, f64>,
    pub histograms: BTreeMap<String, Vec<f64>>,
    pub pools: BTreeMap<String, Vec<Member>>,
    pub rng: u64,
}

thread_local! {
    pub(crate) static STATE: RefCell<State> = RefCell::new(State::fresh());
}

impl State {
    pub(crate) fn fresh() -> State {
        State {
            now_ms: 1_700_000_000_000,
            rng: 0x9e37_79b9_7f4a_7c15,
            ..State::default()
        }
    }

    fn live(&mut self, key: &str) -> Option<&mut (Vec<u8>, Option<u64>)> {
        let now = self.now_ms;
        if matches!(self.kv.get(key), Some((_, Some(at))) if *at <= now) {
            self.kv.remove(key);
        }
        self.kv.get_mut(key)
    }
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

pub(crate) fn edit_error(e: EditError) -> EditError {
    e
}

pub(crate) fn log_write(level: Level, message: &str) {
    with(|s| s.logs.push((level, message.to_owned())));
}

pub(crate) fn log_enabled(_level: Level) -> bool {
    true
}

const MAX_KEY: usize = 1024;
const MAX_VALUE: usize = 64 * 1024;

pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
    with(|s| s.live(key).map(|(v, _)| v.clone()))
}

pub(crate) fn kv_set(key: &str, value: &[u8], ttl: Option<u64>) -> Result<(), KvError> {
    if key.len() > MAX_KEY || value.len() > MAX_VALUE {
        return Err(KvError::TooLarge);
    }
    with(|s| {
        let expires = ttl.map(|t| s.now_ms.saturating_add(t));
        s.kv.insert(key.to_owned(), (value.to_vec(), expires));
    });
    Ok(())
}

pub(crate) fn kv_add(key: &str, value: &[u8], ttl: Option<u64>) -> Result<bool, KvError> {
    if kv_get(key).is_some() {
        return Ok(false);
    }
    kv_set(key, value, ttl).map(|()| true)
}

pub(crate) fn kv_delete(key: &str) -> bool {
    with(|s| s.live(key).is_some() && s.kv.remove(key).is_some())
}

pub(crate) fn kv_incr(key: &str, delta: i64, ttl: Option<u64>) -> Result<i64, KvError> {
    with(|s| {
        let now = s.now_ms;
        match s.live(key) {
            Some((value, _)) => {
                let n: i64 = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or(KvError::NotANumber)?;
                let n = n.saturating_add(delta);
                *value = n.to_string().into_bytes();
                Ok(n)
            }
            None => {
                let expires = ttl.map(|t| now.saturating_add(t));
                s.kv.insert(key.to_owned(), (delta.to_string().into_bytes(), expires));
                Ok(delta)
            }
        }
    })
}

pub(crate) fn kv_ttl(key: &str) -> Option<u64> {
    with(|s| {
        let now = s.now_ms;
        s.live(key)
            .and_then(|(_, at)| at.map(|at| at.saturating_sub(now)))
    })
}

/// The series key the mock host files a metric under:
/// `name{label="value",...}` in the order given.
pub(crate) fn series(name: &str, labels: &[(&str, &str)]) -> Result<String, MetricError> {
    if !valid_name(name) {
        return Err(MetricError::InvalidName);
    }
    let mut key = name.to_owned();
    if !labels.is_empty() {
        key.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if !valid_name(label) || *label == "policy" {
                return Err(MetricError::InvalidLabel);
            }
            if i > 0 {
                key.push(',');
            }
            key.push_str(&format!("{label}=\"{value}\""));
        }
        key.push('}');
    }
    Ok(key)
}

pub(crate) fn counter_add(name: &str, v: u64, l: &[(&str, &str)]) -> Result<(), MetricError> {
    let key = series(name, l)?;
    with(|s| *s.counters.entry(key).or_default() += v);
    Ok(())
}

pub(crate) fn gauge_set(name: &str, v: f64, l: &[(&str, &str)]) -> Result<(), MetricError> {
    let key = series(name, l)?;
    with(|s| s.gauges.insert(key, v));
    Ok(())
}

pub(crate) fn histogram_record(name: &str, v: f64, l: &[(&str, &str)]) -> Result<(), MetricError> {
    let key = series(name, l)?;
    with(|s| s.histograms.entry(key).or_default().push(v));
    Ok(())
}

pub(crate) fn now_ms() -> u64 {
    with(|s| s.now_ms)
}

pub(crate) fn monotonic_ns() -> u64 {
    with(|s| s.mono_ns)
}

pub(crate) fn hash(a: Algorithm, data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    match a {
        Algorithm::Sha1 => sha1::Sha1::digest(data).to_vec(),
        Algorithm::Sha256 => sha2::Sha256::digest(data).to_vec(),
        Algorithm::Sha512 => sha2::Sha512::digest(data).to_vec(),
    }
}

pub(crate) fn hmac(a: Algorithm, key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{Mac, SimpleHmac};
    fn run<D: sha2::Digest + sha2::digest::core_api::BlockSizeUser>(
        key: &[u8],
        data: &[u8],
    ) -> Vec<u8> {
        let mut mac = SimpleHmac::<D>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
    match a {
        Algorithm::Sha1 => run::<sha1::Sha1>(key, data),
        Algorithm::Sha256 => run::<sha2::Sha256>(key, data),
        Algorithm::Sha512 => run::<sha2::Sha512>(key, data),
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a == b
}

pub(crate) fn random_u64() -> u64 {
    with(|s| {
        s.rng ^= s.rng << 13;
        s.rng ^= s.rng >> 7;
        s.rng ^= s.rng << 17;
        s.rng
    })
}

pub(crate) fn random_bytes(len: u32) -> Vec<u8> {
    let len = len.min(4096) as usize;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&random_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn pool_names() -> Vec<String> {
    with(|s| s.pools.keys().cloned().collect())
}

pub(crate) fn pool_members(pool: &str) -> Option<Vec<Member>> {
    with(|s| s.pools.get(pool).cloned())
}

pub(crate) fn pool_available(pool: &str) -> bool {
    with(|s| {
        s.pools
            .get(pool)
            .is_some_and(|m| m.iter().any(Member::available))
    })
}

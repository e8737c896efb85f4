//! `adc_requests_total`, counted without building its key on every request.
//!
//! `metrics::counter!` with five labels allocates each label and looks the
//! series up in the shared registry. Each worker thread keeps the handles
//! it has used instead, found by the label values borrowed from the
//! request; the registry is asked once per thread and series.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashMap};

/// The labels of one series, owned by the cache.
#[derive(PartialEq, Eq)]
struct Labels {
    listener: Box<str>,
    route: Box<str>,
    pool: Box<str>,
    member: Box<str>,
    class: &'static str,
}

/// The same labels, borrowed from the request that is being counted.
struct LabelsRef<'a> {
    listener: &'a str,
    route: &'a str,
    pool: &'a str,
    member: &'a str,
    class: &'static str,
}

// Both kinds hash the same fields the same way, so that a borrowed key
// finds an owned one.
impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        LabelsRef {
            listener: &self.listener,
            route: &self.route,
            pool: &self.pool,
            member: &self.member,
            class: self.class,
        }
        .hash(state);
    }
}

impl Hash for LabelsRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.listener.hash(state);
        self.route.hash(state);
        self.pool.hash(state);
        self.member.hash(state);
        self.class.hash(state);
    }
}

impl Equivalent<Labels> for LabelsRef<'_> {
    fn equivalent(&self, key: &Labels) -> bool {
        self.class == key.class
            && self.member == &*key.member
            && self.pool == &*key.pool
            && self.route == &*key.route
            && self.listener == &*key.listener
    }
}

/// Past this many series a thread starts its cache afresh, so that series
/// of pools and routes long gone by reloads do not pile up.
const MAX_CACHED: usize = 4096;

thread_local! {
    static COUNTERS: RefCell<HashMap<Labels, metrics::Counter>> = RefCell::new(HashMap::new());
}

/// Count one answered request.
pub fn count(listener: &str, route: &str, pool: &str, member: &str, status: u16) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let key = LabelsRef {
        listener,
        route,
        pool,
        member,
        class,
    };
    COUNTERS.with(|cell| {
        let mut counters = cell.borrow_mut();
        if let Some(counter) = counters.get(&key) {
            counter.increment(1);
            return;
        }
        if counters.len() >= MAX_CACHED {
            counters.clear();
        }
        let counter = metrics::counter!(
            "adc_requests_total",
            "listener" => listener.to_owned(),
            "route" => route.to_owned(),
            "pool" => pool.to_owned(),
            "member" => member.to_owned(),
            "class" => class,
        );
        counter.increment(1);
        counters.insert(
            Labels {
                listener: listener.into(),
                route: route.into(),
                pool: pool.into(),
                member: member.into(),
                class,
            },
            counter,
        );
    });
}

//! Pools of backend members and how a member is chosen.
//!
//! Member state (health, drain, ejection, requests in flight) is atomics:
//! choosing a member takes no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{self, Method};

/// One backend server of a pool.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// Taking new requests (operators drain a member by clearing it).
    pub enabled: AtomicBool,
    /// Passing active health checks (true when the pool has none).
    pub healthy: AtomicBool,
    /// Ejected by passive checks until this instant (ms since pool start).
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Requests in flight.
    pub active: AtomicU32,
    pub selected: metrics::Counter,
}

impl Member {
    /// Up and taking requests: enabled, healthy and not ejected. A member
    /// of weight 0 is available to a policy that names it (persistence),
    /// though the load-balancing method never picks it.
    pub fn available(&self, now_ms: u64) -> bool {
        self.enabled.load(Ordering::Relaxed)
            && self.healthy.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now_ms
    }
}

/// Which request value a consistent-hash pool hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub method: Method,
    pub hash_key: Option<HashKey>,
    pub members: Vec<Arc<Member>>,
    pub health: Option<config::Health>,
    passive: config::Passive,
    /// How connections to the members are made.
    pub upstream: Upstream,
    /// Weighted round robin: member indices, each repeated by weight and
    /// interleaved.
    schedule: Vec<usize>,
    /// Consistent hash: (point, member index), sorted by point.
    ring: Vec<(u64, usize)>,
    cursor: AtomicUsize,
    epoch: Instant,
    /// `adc_upstream_duration_seconds` of this pool.
    pub upstream_duration: metrics::Histogram,
}

/// How a pool's members are reached.
#[derive(Debug, Default)]
pub struct Upstream {
    /// TLS to the members, with the server name to send (else the
    /// request's host).
    pub tls: Option<(Arc<rustls::ClientConfig>, Option<String>)>,
    /// HTTP/2 to the members (h2c, or h2 when TLS ALPN agrees).
    pub http2: bool,
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
    pub source: Option<std::net::IpAddr>,
}

/// Virtual nodes per unit of weight on the hash ring.
const RING_POINTS: u32 = 160;

fn hash64(bytes: &[u8]) -> u64 {
    // FNV-1a then a finalising mix: stable across runs and processes, which
    // a consistent hash needs (the standard hasher is seeded per process).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

impl Pool {
    pub fn new(name: &str, c: config::Pool) -> anyhow::Result<Pool> {
        let members: Vec<Arc<Member>> = c
            .members
            .iter()
            .map(|m| {
                let member_name = m.display_name();
                Arc::new(Member {
                    selected: metrics::counter!("adc_lb_selections_total", "pool" => name.to_owned(), "member" => member_name.clone()),
                    name: member_name,
                    address: m.address,
                    weight: m.weight,
                    enabled: AtomicBool::new(m.enabled),
                    healthy: AtomicBool::new(true),
                    ejected_until: AtomicU64::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    active: AtomicU32::new(0),
                })
            })
            .collect();

        // Interleave by weight: at each step pick every member whose share
        // so far is behind its weight (smooth weighted round robin, unrolled).
        let total: u32 = members.iter().map(|m| m.weight).sum();
        let mut schedule = Vec::with_capacity(total as usize);
        let mut current: Vec<i64> = vec![0; members.len()];
        for _ in 0..total {
            for (i, m) in members.iter().enumerate() {
                current[i] += i64::from(m.weight);
            }
            if let Some((best, _)) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, usize::MAX - i))
            {
                current[best] -= i64::from(total);
                schedule.push(best);
            }
        }

        // A member of weight 0 has no point on the ring: its keys belong to
        // the others, as they would if it were gone.
        let mut ring = Vec::new();
        for (i, m) in members.iter().enumerate() {
            for v in 0..RING_POINTS * m.weight {
                ring.push((hash64(format!("{}#{v}", m.name).as_bytes()), i));
            }
        }
        ring.sort_unstable();

        let hash_key = c.hash_on.as_ref().map(|h| {
            let h = h.get_ref();
            if let Some(name) = h.strip_prefix("header:") {
                HashKey::Header(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap_or(http::header::HOST),
                )
            } else if let Some(name) = h.strip_prefix("cookie:") {
                HashKey::Cookie(name.to_owned())
            } else {
                HashKey::ClientIp
            }
        });

        let alpn: &[&[u8]] = if c.http2 {
            &[b"h2", b"http/1.1"]
        } else {
            &[b"http/1.1"]
        };
        let tls = match &c.tls {
            Some(t) => {
                let config = crate::tls::client_config(t, alpn)
                    .map_err(|e| anyhow::anyhow!("pool {name:?}: {e}"))?;
                Some((Arc::new(config), t.sni.clone()))
            }
            None => None,
        };
        let upstream = Upstream {
            tls,
            http2: c.http2,
            proxy_protocol: c.proxy_protocol.map(|v| match v {
                config::ProxyProtocol::V1 => crate::proxy_protocol::Version::V1,
                config::ProxyProtocol::V2 => crate::proxy_protocol::Version::V2,
            }),
            source: c.source,
        };

        Ok(Pool {
            name: name.to_owned(),
            method: c.method,
            hash_key,
            members,
            health: c.health,
            passive: c.passive,
            upstream,
            schedule,
            ring,
            cursor: AtomicUsize::new(0),
            epoch: Instant::now(),
            upstream_duration: metrics::histogram!("adc_upstream_duration_seconds", "pool" => name.to_owned()),
        })
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Take over what `before`, the same pool in the configuration being
    /// replaced, knew of its members: an operator's drain (by member
    /// name), and for a member still at the same address, a failed health
    /// check (while this pool still checks health), an ejection's
    /// remaining cool-down and its failures in a row. A reload changes the
    /// configuration, not what is known of the backends.
    pub fn carry_over(&self, before: &Pool) {
        let (now, then) = (self.now_ms(), before.now_ms());
        for member in &self.members {
            let Some(prev) = before.member(&member.name) else {
                continue;
            };
            if !prev.enabled.load(Ordering::Relaxed) {
                member.enabled.store(false, Ordering::Relaxed);
            }
            if prev.address != member.address {
                continue;
            }
            if self.health.is_some() && before.health.is_some() {
                member
                    .healthy
                    .store(prev.healthy.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let left = prev
                .ejected_until
                .load(Ordering::Relaxed)
                .saturating_sub(then);
            if left > 0 {
                member.ejected_until.store(now + left, Ordering::Relaxed);
            }
            member.consecutive_failures.store(
                prev.consecutive_failures.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
    }

    pub fn member(&self, name: &str) -> Option<&Arc<Member>> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Whether the load-balancing method has a member to pick: one that is
    /// available and of weight above 0 (what `pools.available` tells a
    /// policy).
    pub fn any_available(&self) -> bool {
        let now = self.now_ms();
        self.members
            .iter()
            .any(|m| m.weight > 0 && m.available(now))
    }

    /// Whether members are up but all of weight 0: the method picks none
    /// of them, though a policy may send requests to one by name.
    /// Whether the pool has members and the operator drained them all.
    pub fn all_drained(&self) -> bool {
        !self.members.is_empty()
            && self
                .members
                .iter()
                .all(|m| !m.enabled.load(Ordering::Relaxed))
    }

    pub fn only_weight_zero_available(&self) -> bool {
        let now = self.now_ms();
        !self.any_available() && self.members.iter().any(|m| m.available(now))
    }

    /// Choose a member, skipping `exclude` (members already tried).
    /// `hash` is the request's hash key value, for consistent hashing.
    /// Every method passes over members of weight 0: they take only the
    /// requests a policy sends them by name.
    pub fn select(&self, hash: Option<&[u8]>, exclude: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let ok = |i: usize| {
            let m = &self.members[i];
            m.weight > 0 && m.available(now) && !exclude.contains(&i)
        };
        let n = self.members.len();
        let chosen = match self.method {
            Method::RoundRobin => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
            }
            Method::Weighted => {
                // Empty when every weight is 0.
                let len = self.schedule.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| self.schedule[(start + k) % len])
                    .find(|&i| ok(i))
            }
            Method::LeastConnections => {
                // Ties go round robin, so an idle pool still spreads load.
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| {
                        let m = &self.members[i];
                        // Requests in flight per unit of weight, scaled to
                        // stay an integer.
                        u64::from(m.active.load(Ordering::Relaxed)) * 1_000_000
                            / u64::from(m.weight.max(1))
                    })
            }
            Method::PowerOfTwo => {
                let candidates: Vec<usize> = (0..n).filter(|&i| ok(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let a = candidates[rand::random_range(0..len)];
                        let mut b = candidates[rand::random_range(0..len - 1)];
                        if b == a {
                            b = candidates[len - 1];
                        }
                        let load = |i: usize| self.members[i].active.load(Ordering::Relaxed);
                        Some(if load(b) < load(a) { b } else { a })
                    }
                }
            }
            Method::ConsistentHash => match hash {
                Some(key) if !self.ring.is_empty() => {
                    let point = hash64(key);
                    let start = self.ring.partition_point(|(p, _)| *p < point);
                    (0..self.ring.len())
                        .map(|k| self.ring[(start + k) % self.ring.len()].1)
                        .find(|&i| ok(i))
                }
                _ => {
                    let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
                }
            },
        };
        if let Some(i) = chosen {
            self.members[i].selected.increment(1);
        }
        chosen
    }

    /// A request to member `i` succeeded.
    pub fn record_success(&self, i: usize) {
        self.members[i]
            .consecutive_failures
            .store(0, Ordering::Relaxed);
    }

    /// A request to member `i` failed (connect error, timeout, or a 5xx when
    /// counted) for the reason `why`: eject it after enough failures in a
    /// row, saying why the last one failed.
    pub fn record_failure(&self, i: usize, why: &dyn std::fmt::Display) {
        let m = &self.members[i];
        metrics::counter!("adc_member_failures_total", "pool" => self.name.clone(), "member" => m.name.clone())
            .increment(1);
        let failures = m.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.passive.consecutive_failures > 0 && failures >= self.passive.consecutive_failures {
            let now = self.now_ms();
            let others_up = self
                .members
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && o.weight > 0 && o.available(now));
            if !others_up {
                // Ejecting the last member up would turn every request
                // away for the whole cool-down, however soon the member
                // recovers: it stays, and its requests say how it does.
                tracing::warn!(pool = %self.name, member = %m.name, failures, last = %why, "member failing but not ejected: no other member is up");
                m.consecutive_failures.store(0, Ordering::Relaxed);
                return;
            }
            // Said before it takes effect: whoever sees the ejection can
            // find why in the log.
            tracing::warn!(pool = %self.name, member = %m.name, failures, last = %why, cooldown = ?self.passive.cooldown, "member ejected after consecutive failures");
            metrics::counter!("adc_member_ejections_total", "pool" => self.name.clone(), "member" => m.name.clone()).increment(1);
            let until = now + u64::try_from(self.passive.cooldown.as_millis()).unwrap_or(u64::MAX);
            m.ejected_until.store(until, Ordering::Relaxed);
            m.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    pub fn counts_5xx(&self) -> bool {
        self.passive.count_5xx
    }

    pub fn ejected(&self, i: usize) -> bool {
        self.members[i].ejected_until.load(Ordering::Relaxed) > self.now_ms()
    }

    pub fn ejection_left(&self, i: usize) -> Option<Duration> {
        let until = self.members[i].ejected_until.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(method: &str, weights: &[u32]) -> Pool {
        let members: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{{ name = \"m{i}\", address = \"127.0.0.1:{}\", weight = {w} }}",
                    9000 + i
                )
            })
            .collect();
        let text = format!("method = \"{method}\"\nmembers = [{}]", members.join(", "));
        Pool::new("p", toml::from_str(&text).unwrap()).unwrap()
    }

    fn checked_pool(addresses: &[u16]) -> Pool {
        let members: Vec<String> = addresses
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{{ name = \"m{i}\", address = \"127.0.0.1:{port}\" }}"))
            .collect();
        let text = format!(
            "method = \"round_robin\"\nmembers = [{}]\nhealth = {{ kind = \"tcp\" }}\npassive = {{ consecutive_failures = 2, cooldown = \"30s\" }}",
            members.join(", ")
        );
        Pool::new("p", toml::from_str(&text).unwrap()).unwrap()
    }

    /// Passive ejection never takes out the last member up: that would
    /// answer every request with 503 for the whole cool-down, however
    /// soon the member recovers (found by a fresh-user review).
    #[test]
    fn the_last_member_up_is_not_ejected() {
        let p = checked_pool(&[9000, 9001]);
        p.record_failure(0, &"refused");
        p.record_failure(0, &"refused");
        assert!(
            !p.members[0].available(p.now_ms()),
            "ejected: another is up"
        );
        for _ in 0..5 {
            p.record_failure(1, &"refused");
        }
        assert!(p.members[1].available(p.now_ms()), "the last one up stays");
        let single = checked_pool(&[9000]);
        single.record_failure(0, &"refused");
        single.record_failure(0, &"refused");
        assert!(single.members[0].available(single.now_ms()));
    }

    /// A reload builds new pools: what was known of the members before
    /// (down, ejected, failing, drained) must not be forgotten, or a
    /// failed member takes traffic again until it fails anew.
    #[test]
    fn a_reloaded_pool_keeps_what_was_known_of_its_members() {
        let before = checked_pool(&[9000, 9001, 9002]);
        before.members[0].healthy.store(false, Ordering::Relaxed);
        before.record_failure(1, &"refused");
        before.record_failure(1, &"refused");
        before.record_failure(2, &"refused");
        before.members[0].enabled.store(false, Ordering::Relaxed);
        assert!(!before.members[1].available(before.now_ms()));

        let after = checked_pool(&[9000, 9001, 9002]);
        after.carry_over(&before);
        let now = after.now_ms();
        assert!(
            !after.members[0].healthy.load(Ordering::Relaxed),
            "down stays down"
        );
        assert!(!after.members[1].available(now), "ejected stays ejected");
        assert!(
            after.members[1].ejected_until.load(Ordering::Relaxed) >= now + 29_000,
            "with the rest of its cool-down"
        );
        assert!(
            !after.members[0].enabled.load(Ordering::Relaxed),
            "drained stays drained"
        );
        assert!(after.members[2].available(now));
        assert_eq!(
            after.members[2]
                .consecutive_failures
                .load(Ordering::Relaxed),
            1,
            "its failure in a row is still counted"
        );

        // A member now at another address is another backend: it starts
        // fresh, but an operator's drain (by name) holds.
        let moved = checked_pool(&[9100, 9101, 9102]);
        moved.carry_over(&before);
        assert!(moved.members[0].healthy.load(Ordering::Relaxed));
        assert!(!moved.members[0].enabled.load(Ordering::Relaxed));
        assert!(moved.members[1].available(moved.now_ms()));
    }

    #[test]
    fn weighted_round_robin_honours_weights_and_interleaves() {
        let p = pool("weighted", &[3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| p.select(None, &[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        assert_ne!(
            picks[..3],
            [0, 0, 0],
            "weights are interleaved, not batched: {picks:?}"
        );
    }

    const METHODS: [&str; 5] = [
        "round_robin",
        "weighted",
        "least_connections",
        "consistent_hash",
        "power_of_two",
    ];

    #[test]
    fn no_method_picks_a_member_of_weight_zero() {
        for method in METHODS {
            let p = pool(method, &[1, 0, 2]);
            for k in 0..300 {
                let key = format!("client-{k}");
                let picked = p.select(Some(key.as_bytes()), &[]);
                assert!(matches!(picked, Some(0 | 2)), "{method} picked {picked:?}");
                // Nor when the others are excluded (tried already).
                assert_eq!(p.select(Some(key.as_bytes()), &[0, 2]), None, "{method}");
            }
        }
    }

    #[test]
    fn a_pool_whose_weights_are_all_zero_picks_no_member() {
        for method in METHODS {
            let p = pool(method, &[0, 0]);
            assert_eq!(p.select(Some(b"key"), &[]), None, "{method}");
            assert_eq!(p.select(None, &[]), None, "{method}");
        }
    }

    #[test]
    fn a_weight_of_zero_keeps_the_member_available_to_a_policy_naming_it() {
        let p = pool("round_robin", &[1, 0]);
        assert!(p.members[1].available(p.now_ms()));
        assert!(p.any_available());
    }

    /// A pool whose only available members have weight 0 answers a
    /// load-balanced request with 503, so policies (the maintenance page)
    /// must see it as down.
    #[test]
    fn a_pool_of_weight_zero_members_is_not_available() {
        for method in METHODS {
            assert!(!pool(method, &[0, 0]).any_available(), "{method}");
        }
    }

    #[test]
    fn a_pool_knows_when_only_members_of_weight_zero_are_up() {
        let p = pool("round_robin", &[0, 1]);
        assert!(!p.only_weight_zero_available());
        p.members[1].enabled.store(false, Ordering::Relaxed);
        assert!(p.only_weight_zero_available());
        p.members[0].healthy.store(false, Ordering::Relaxed);
        assert!(!p.only_weight_zero_available(), "nothing is up");
    }

    #[test]
    fn least_connections_picks_the_idlest_member() {
        let p = pool("least_connections", &[1, 1, 1]);
        p.members[0].active.store(5, Ordering::Relaxed);
        p.members[2].active.store(1, Ordering::Relaxed);
        assert_eq!(p.select(None, &[]), Some(1));
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_little_when_a_member_leaves() {
        let p = pool("consistent_hash", &[1, 1, 1, 1]);
        let keys: Vec<String> = (0..1000).map(|i| format!("client-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| p.select(Some(k.as_bytes()), &[]).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| p.select(Some(k.as_bytes()), &[]).unwrap())
            .collect();
        assert_eq!(before, again);
        p.members[3].enabled.store(false, Ordering::Relaxed);
        let after: Vec<usize> = keys
            .iter()
            .map(|k| p.select(Some(k.as_bytes()), &[]).unwrap())
            .collect();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let on_removed = before.iter().filter(|&&b| b == 3).count();
        assert_eq!(moved, on_removed, "only keys of the removed member move");
        assert!(
            (150..350).contains(&on_removed),
            "spread is even: {on_removed}"
        );
    }

    #[test]
    fn ejection_follows_consecutive_failures_and_success_resets_the_count() {
        let p = pool("round_robin", &[1, 1]);
        for _ in 0..4 {
            p.record_failure(0, &"test");
        }
        p.record_success(0);
        for _ in 0..4 {
            p.record_failure(0, &"test");
        }
        assert!(!p.ejected(0));
        p.record_failure(0, &"test");
        assert!(p.ejected(0));
        assert_eq!(p.select(None, &[]), Some(1));
        assert_eq!(p.select(None, &[]), Some(1));
    }
}

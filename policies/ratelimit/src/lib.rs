//! Rate limits per client: a token bucket per client address (IPv6 clients
//! per prefix), kept in the shared table so that every worker counts into
//! the same bucket. Routes by path prefix may have limits and buckets of
//! their own, and a header (an API key, say) may split a client's bucket
//! further. A refused request is answered `429 Too Many Requests` with
//! `Retry-After`. Addresses on the allow-list are never limited.
//!
//! See `bucket.rs` for the algorithm and how far it is exact.

mod bucket;
mod net;

use std::cell::Cell;

use adc_sdk::crypto::{self, Algorithm};
use adc_sdk::{clock, log, metrics, policy, text};
use adc_sdk::{Config, Decision, Error, Policy, Reply, Request};
use serde::Deserialize;

use bucket::{Limit, Verdict};
use net::Cidr;

const DEFAULT_V6_PREFIX: u8 = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Requests per `per` seconds for requests no route matches; none: such
    /// requests are not limited.
    rate: Option<u32>,
    per: Option<u64>,
    burst: Option<u32>,
    #[serde(default)]
    routes: Vec<RouteSettings>,
    key_header: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    ipv6_prefix: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSettings {
    prefix: String,
    rate: u32,
    per: Option<u64>,
    burst: Option<u32>,
}

fn limit(rate: u32, per: Option<u64>, burst: Option<u32>) -> Result<Limit, String> {
    Limit::new(rate, per.unwrap_or(1), burst.unwrap_or(rate))
}

#[derive(Debug)]
struct Route {
    prefix: String,
    limit: Limit,
}

/// The ratelimit policy.
pub struct RateLimit {
    routes: Vec<Route>,
    default: Option<Limit>,
    key_header: Option<String>,
    allow: Vec<Cidr>,
    v6_prefix: u8,
    table_warned: Cell<bool>,
}

impl RateLimit {
    /// The route a path falls under (its prefix, `default` for none) and
    /// its limit; `None` when the path is not limited.
    fn route_for(&self, path: &str) -> Option<(&str, Limit)> {
        match self
            .routes
            .iter()
            .find(|r| path.starts_with(r.prefix.as_str()))
        {
            Some(route) => Some((&route.prefix, route.limit)),
            None => self.default.map(|l| ("default", l)),
        }
    }

    /// The bucket's table key: route, client network, and a digest of the
    /// key header's value (digested so that keys stay short and the table
    /// holds no credentials).
    fn bucket_key(&self, req: &Request, route: &str, client: &str) -> String {
        let header = match &self.key_header {
            Some(name) => match req.header(name) {
                Some(value) => {
                    let digest = crypto::hash(Algorithm::Sha256, value.as_bytes());
                    crypto::to_hex(&digest[..16])
                }
                None => "-".to_owned(),
            },
            None => String::new(),
        };
        format!("{route}|{client}|{header}")
    }
}

fn too_many_requests(retry_after_secs: u64) -> Decision {
    Reply::new(429)
        .header("retry-after", retry_after_secs.to_string())
        .header("content-type", "text/plain; charset=utf-8")
        .body("too many requests\n")
        .into()
}

#[policy]
impl Policy for RateLimit {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;

        let default = match s.rate {
            Some(rate) => Some(limit(rate, s.per, s.burst).map_err(Error::new)?),
            None if s.per.is_some() || s.burst.is_some() => {
                return Err(Error::new("`per` and `burst` need a `rate`"))
            }
            None => None,
        };
        let mut routes = Vec::with_capacity(s.routes.len());
        for r in s.routes {
            if !r.prefix.starts_with('/') {
                return Err(Error::new(format!(
                    "route prefix {:?} must start with '/'",
                    r.prefix
                )));
            }
            let limit = limit(r.rate, r.per, r.burst)
                .map_err(|e| Error::new(format!("route {:?}: {e}", r.prefix)))?;
            routes.push(Route {
                prefix: text::normalize_path(&r.prefix),
                limit,
            });
        }
        if default.is_none() && routes.is_empty() {
            return Err(Error::new("no `rate` and no `routes`: nothing to limit"));
        }

        if let Some(name) = &s.key_header {
            if !text::valid_header_name(name) {
                return Err(Error::new(format!(
                    "key_header {name:?} is not a header name"
                )));
            }
        }
        let allow = s
            .allow
            .iter()
            .map(|a| Cidr::parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        let v6_prefix = s.ipv6_prefix.unwrap_or(DEFAULT_V6_PREFIX);
        if v6_prefix == 0 || v6_prefix > 128 {
            return Err(Error::new(format!(
                "ipv6_prefix {v6_prefix} is not from 1 to 128"
            )));
        }

        Ok(RateLimit {
            routes,
            default,
            key_header: s.key_header,
            allow,
            v6_prefix,
            table_warned: Cell::new(false),
        })
    }

    fn on_request_headers(&self, req: &Request) -> Decision {
        let client_ip = req.client_ip();
        let ip = net::parse_ip(&client_ip);
        if ip.is_some_and(|ip| self.allow.iter().any(|block| block.contains(ip))) {
            let _ = metrics::counter_add("ratelimit_exempt_total", 1, &[]);
            return Decision::Continue;
        }
        let path = req.path();
        let Some((route, limit)) = self.route_for(&path) else {
            return Decision::Continue;
        };

        let client = ip.map_or(client_ip, |ip| net::client_key(ip, self.v6_prefix));
        let key = self.bucket_key(req, route, &client);
        let now_us = i64::try_from(clock::now_ms().saturating_mul(1000)).unwrap_or(i64::MAX);
        let verdict = match bucket::take(&key, limit, now_us) {
            Ok(verdict) => verdict,
            Err(e) => {
                // Fail open: a full table must not turn into an outage.
                let _ = metrics::counter_add("ratelimit_table_errors_total", 1, &[]);
                if !self.table_warned.replace(true) {
                    log::warn(&format!(
                        "ratelimit: shared table refused a bucket ({e}); letting requests through"
                    ));
                }
                return Decision::Continue;
            }
        };

        match verdict {
            Verdict::Allowed => {
                let _ = metrics::counter_add(
                    "ratelimit_requests_total",
                    1,
                    &[("route", route), ("outcome", "allowed")],
                );
                Decision::Continue
            }
            Verdict::Limited { retry_after_secs } => {
                let _ = metrics::counter_add(
                    "ratelimit_requests_total",
                    1,
                    &[("route", route), ("outcome", "limited")],
                );
                too_many_requests(retry_after_secs)
            }
        }
    }
}

#[cfg(test)]
mod tests;

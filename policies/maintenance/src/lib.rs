//! Two things every site needs in front of it:
//!
//! - **HTTPS redirect**: a request that came over plain HTTP is answered
//!   with a redirect to the same host and target over HTTPS, except for
//!   paths that must stay reachable over HTTP (ACME challenges).
//! - **Sorry page**: a configured page, `503` with `Retry-After` by default,
//!   answered to every request while maintenance is switched on, while a
//!   configured pool has no available member, and when reaching a backend
//!   fails (the iRules `LB_FAILED` idiom).

use std::cell::Cell;

use adc_sdk::{log, metrics, policy, pools};
use adc_sdk::{Backend, Config, Decision, Error, Policy, Reply, Request};
use serde::Deserialize;

const DEFAULT_PAGE: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Down for maintenance</title></head>\n<body><h1>Down for maintenance</h1><p>We will be back shortly. Please try again in a few minutes.</p></body></html>\n";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    redirect: Option<RedirectSettings>,
    sorry: Option<SorrySettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedirectSettings {
    #[serde(default = "default_redirect_status")]
    status: u16,
    /// Path prefixes served over plain HTTP as they are.
    #[serde(default)]
    exclude: Vec<String>,
    /// HTTPS port, when not 443.
    port: Option<u16>,
    /// Host to redirect to instead of the one the client asked for.
    host: Option<String>,
}

fn default_redirect_status() -> u16 {
    301
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SorrySettings {
    /// Maintenance switched on: every request gets the page.
    #[serde(default)]
    enabled: bool,
    /// Answer the page while this pool has no available member.
    pool: Option<String>,
    /// Answer the page when reaching a backend fails.
    #[serde(default = "yes")]
    on_backend_failure: bool,
    #[serde(default = "default_sorry_status")]
    status: u16,
    /// Seconds for `Retry-After`; 0 leaves the header out.
    #[serde(default = "default_retry_after")]
    retry_after: u64,
    #[serde(default = "default_content_type")]
    content_type: String,
    page: Option<String>,
    /// Path prefixes passed to the backend even in maintenance.
    #[serde(default)]
    exclude: Vec<String>,
}

fn yes() -> bool {
    true
}

fn default_sorry_status() -> u16 {
    503
}

fn default_retry_after() -> u64 {
    120
}

fn default_content_type() -> String {
    "text/html; charset=utf-8".to_owned()
}

struct Redirect {
    status: u16,
    exclude: Vec<String>,
    /// `:port`, or empty for 443.
    port: String,
    host: Option<String>,
}

struct Sorry {
    enabled: bool,
    pool: Option<String>,
    on_backend_failure: bool,
    reply: Reply,
    exclude: Vec<String>,
}

/// The maintenance policy.
pub struct Maintenance {
    redirect: Option<Redirect>,
    sorry: Option<Sorry>,
    unknown_pool_warned: Cell<bool>,
}

fn check_prefixes(what: &str, prefixes: &[String]) -> Result<(), Error> {
    match prefixes.iter().find(|p| !p.starts_with('/')) {
        Some(p) => Err(Error::new(format!(
            "{what}.exclude entry {p:?} must start with '/'"
        ))),
        None => Ok(()),
    }
}

fn excluded(prefixes: &[String], path: &str) -> bool {
    prefixes.iter().any(|p| path.starts_with(p.as_str()))
}

/// Whether `host` can go into a `Location` as it is: a DNS name or an
/// address, IPv6 in brackets. Anything else (a `Host` with `/`, `@` or
/// spaces) is refused rather than copied into a redirect.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl Redirect {
    fn compile(s: RedirectSettings) -> Result<Redirect, Error> {
        if !matches!(s.status, 301 | 302 | 303 | 307 | 308) {
            return Err(Error::new(format!(
                "redirect.status {} is not 301, 302, 303, 307 or 308",
                s.status
            )));
        }
        check_prefixes("redirect", &s.exclude)?;
        if let Some(host) = &s.host {
            if !valid_host(host) {
                return Err(Error::new(format!(
                    "redirect.host {host:?} is not a host name"
                )));
            }
        }
        let port = match s.port {
            None | Some(443) => String::new(),
            Some(0) => return Err(Error::new("redirect.port 0 is not a port")),
            Some(p) => format!(":{p}"),
        };
        Ok(Redirect {
            status: s.status,
            exclude: s.exclude,
            port,
            host: s.host.map(|h| h.to_ascii_lowercase()),
        })
    }

    /// The redirect a plain-HTTP request gets, if any.
    fn decide(&self, req: &Request, path: &str) -> Option<Decision> {
        if req.scheme() != "http" || excluded(&self.exclude, path) {
            return None;
        }
        let host = match &self.host {
            Some(host) => host.clone(),
            None => match req.host() {
                Some(host) if valid_host(&host) => host,
                _ => {
                    let _ = metrics::counter_add("maintenance_bad_host_total", 1, &[]);
                    return Some(Decision::respond(
                        400,
                        "bad request: missing or invalid host\n",
                    ));
                }
            },
        };
        let _ = metrics::counter_add("maintenance_redirects_total", 1, &[]);
        Some(Decision::redirect(
            self.status,
            format!("https://{host}{}{}", self.port, req.uri()),
        ))
    }
}

impl Sorry {
    fn compile(s: SorrySettings) -> Result<Sorry, Error> {
        if !(200..=599).contains(&s.status) {
            return Err(Error::new(format!(
                "sorry.status {} is not from 200 to 599",
                s.status
            )));
        }
        if s.pool.as_deref() == Some("") {
            return Err(Error::new("sorry.pool is empty"));
        }
        if !s.enabled && s.pool.is_none() && !s.on_backend_failure {
            return Err(Error::new(
                "sorry: not enabled, no pool and not on_backend_failure: it would never show",
            ));
        }
        check_prefixes("sorry", &s.exclude)?;
        if !adc_sdk::text::valid_header_value(&s.content_type) {
            return Err(Error::new("sorry.content_type is not a valid header value"));
        }

        let mut reply = Reply::new(s.status)
            .header("content-type", s.content_type)
            .header("cache-control", "no-store");
        if s.retry_after > 0 {
            reply = reply.header("retry-after", s.retry_after.to_string());
        }
        let reply = reply.body(s.page.unwrap_or_else(|| DEFAULT_PAGE.to_owned()));
        Ok(Sorry {
            enabled: s.enabled,
            pool: s.pool,
            on_backend_failure: s.on_backend_failure,
            reply,
            exclude: s.exclude,
        })
    }

    fn page(&self, reason: &str) -> Decision {
        let _ = metrics::counter_add("maintenance_pages_total", 1, &[("reason", reason)]);
        Decision::Respond(self.reply.clone())
    }
}

impl Maintenance {
    /// Whether `pool` has no member to take the request. An unknown pool
    /// is a configuration mistake, not an outage: it is logged once and
    /// requests go on.
    fn pool_down(&self, pool: &str) -> bool {
        if pools::available(pool) {
            return false;
        }
        if pools::members(pool).is_none() {
            if !self.unknown_pool_warned.replace(true) {
                log::warn(&format!(
                    "maintenance: sorry.pool {pool:?} is not a configured pool"
                ));
            }
            return false;
        }
        true
    }
}

#[policy]
impl Policy for Maintenance {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        if s.redirect.is_none() && s.sorry.is_none() {
            return Err(Error::new(
                "neither `redirect` nor `sorry` is set: nothing to do",
            ));
        }
        Ok(Maintenance {
            redirect: s.redirect.map(Redirect::compile).transpose()?,
            sorry: s.sorry.map(Sorry::compile).transpose()?,
            unknown_pool_warned: Cell::new(false),
        })
    }

    fn on_request_headers(&self, req: &Request) -> Decision {
        let path = req.path();
        if let Some(decision) = self.redirect.as_ref().and_then(|r| r.decide(req, &path)) {
            return decision;
        }

        let Some(sorry) = &self.sorry else {
            return Decision::Continue;
        };
        if excluded(&sorry.exclude, &path) {
            return Decision::Continue;
        }
        if sorry.enabled {
            return sorry.page("switched_on");
        }
        match &sorry.pool {
            Some(pool) if self.pool_down(pool) => sorry.page("pool_unavailable"),
            _ => Decision::Continue,
        }
    }

    fn on_backend_failed(&self, _req: &Request, backend: &Backend, reason: &str) -> Decision {
        let Some(sorry) = self.sorry.as_ref().filter(|s| s.on_backend_failure) else {
            return Decision::Continue;
        };
        if sorry.pool.as_ref().is_some_and(|p| *p != backend.pool) {
            return Decision::Continue;
        }
        log::debug(&format!(
            "maintenance: {}/{} failed ({reason}); answering the sorry page",
            backend.pool, backend.member
        ));
        sorry.page("backend_failed")
    }
}

#[cfg(test)]
mod tests;

//! Cookie persistence: send a client back to the member that served it.
//!
//! - `insert` mode gives the client a cookie of the policy's own naming the
//!   member, signed with HMAC-SHA256 and optionally carrying an expiry inside
//!   the signed value. A valid cookie routes the request to its member while
//!   that member is available; a missing, forged, expired or unusable one is
//!   ignored, the pool picks, and the response pins the client anew.
//! - `learn` mode watches the application's own session cookie (such as
//!   `JSESSIONID`) in the backend's `Set-Cookie`, remembers which member
//!   issued it in the shared table, and routes later requests carrying it to
//!   that member while it is available.
//!
//! The member chosen for a transaction is kept in a transaction variable
//! between hooks, never in the instance, which serves many clients in turn.

mod cookie;

use std::cell::Cell;
use std::time::Duration;

use adc_sdk::{clock, kv, log, metrics, policy, pools};
use adc_sdk::{Backend, Config, Decision, Error, Policy, Request, Response};
use serde::Deserialize;

use cookie::{parse_set_cookie, session_key, Attributes, Pinned, SameSite, Signer};

/// The variable the `router` policy sets to the pool it chose.
const ROUTER_POOL_VAR: &str = "router.pool";
const DEFAULT_COOKIE: &str = "adc_sticky";
const DEFAULT_TTL: u64 = 3600;
const MIN_SECRET_BYTES: usize = 16;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    #[default]
    Insert,
    Learn,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    pool: String,
    #[serde(default)]
    mode: ModeName,
    cookie: Option<String>,
    // insert mode
    secret: Option<String>,
    #[serde(default)]
    previous_secrets: Vec<String>,
    max_age: Option<u64>,
    path: Option<String>,
    domain: Option<String>,
    secure: Option<bool>,
    http_only: Option<bool>,
    same_site: Option<SameSite>,
    // learn mode
    ttl: Option<u64>,
}

/// What insert mode needs.
struct Insert {
    signer: Signer,
    /// Seconds; `None` for a browser-session cookie.
    max_age: Option<u64>,
    attributes: Attributes,
}

enum Mode {
    Insert(Insert),
    Learn { ttl: Duration },
}

/// Transaction variables, named after the pool so that two instances of
/// the policy for two pools do not mix their state.
struct Vars {
    /// The member the host chose in this pool.
    member: String,
    /// What the request's cookie proved: `expiry:current:member` in insert
    /// mode, the member routed to in learn mode.
    presented: String,
    /// The table key of the request's session (learn mode).
    session: String,
}

/// The sticky policy.
pub struct Sticky {
    pool: String,
    cookie: String,
    mode: Mode,
    vars: Vars,
    table_warned: Cell<bool>,
}

fn insert_mode(s: &mut Settings) -> Result<Mode, Error> {
    if s.ttl.is_some() {
        return Err(Error::new(
            "`ttl` applies to mode = \"learn\"; insert mode uses `max_age`",
        ));
    }
    let secret = s
        .secret
        .take()
        .ok_or("mode = \"insert\" needs a `secret`")?;
    for (what, key) in std::iter::once(("secret", &secret)).chain(
        s.previous_secrets
            .iter()
            .map(|k| ("previous_secrets entry", k)),
    ) {
        if key.len() < MIN_SECRET_BYTES {
            return Err(Error::new(format!(
                "{what} is shorter than {MIN_SECRET_BYTES} bytes"
            )));
        }
    }
    if s.max_age == Some(0) {
        return Err(Error::new(
            "`max_age` must be at least 1 second; leave it out for a session cookie",
        ));
    }

    let same_site = s.same_site.unwrap_or_default();
    // Browsers drop a `SameSite=None` cookie that is not `Secure`.
    let secure = match (same_site, s.secure) {
        (SameSite::None, Some(false)) => {
            return Err(Error::new("same_site = \"None\" needs secure = true"))
        }
        (SameSite::None, None) => Some(true),
        (_, secure) => secure,
    };
    let attributes = Attributes {
        path: s.path.take().unwrap_or_else(|| "/".to_owned()),
        domain: s.domain.take(),
        secure,
        http_only: s.http_only.unwrap_or(true),
        same_site,
    };
    attributes.validate()?;

    let previous = std::mem::take(&mut s.previous_secrets);
    let signer = Signer::new(
        &s.pool,
        secret.into_bytes(),
        previous.into_iter().map(String::into_bytes).collect(),
    );
    Ok(Mode::Insert(Insert {
        signer,
        max_age: s.max_age,
        attributes,
    }))
}

fn learn_mode(s: &Settings) -> Result<Mode, Error> {
    let insert_only = [
        ("secret", s.secret.is_some()),
        ("previous_secrets", !s.previous_secrets.is_empty()),
        ("max_age", s.max_age.is_some()),
        ("path", s.path.is_some()),
        ("domain", s.domain.is_some()),
        ("secure", s.secure.is_some()),
        ("http_only", s.http_only.is_some()),
        ("same_site", s.same_site.is_some()),
    ];
    if let Some((key, _)) = insert_only.iter().find(|(_, set)| *set) {
        return Err(Error::new(format!(
            "`{key}` applies to mode = \"insert\"; learn mode uses the application's cookie as it is"
        )));
    }
    if s.cookie.is_none() {
        return Err(Error::new(
            "mode = \"learn\" needs `cookie`, the application's session cookie",
        ));
    }
    match s.ttl.unwrap_or(DEFAULT_TTL) {
        0 => Err(Error::new("`ttl` must be at least 1 second")),
        ttl => Ok(Mode::Learn {
            ttl: Duration::from_secs(ttl),
        }),
    }
}

/// Whether `member` of `pool` takes new requests now.
fn available(pool: &str, member: &str) -> bool {
    pools::members(pool).is_some_and(|ms| ms.iter().any(|m| m.name == member && m.available()))
}

fn count(outcome: &str) {
    let _ = metrics::counter_add("sticky_requests_total", 1, &[("outcome", outcome)]);
}

fn now_secs() -> u64 {
    clock::now_ms() / 1000
}

impl Sticky {
    fn table_error(&self, what: &str, e: kv::KvError) {
        let _ = metrics::counter_add("sticky_table_errors_total", 1, &[]);
        if !self.table_warned.replace(true) {
            log::warn(&format!(
                "sticky: {what} in the shared table failed: {e}; persistence is partial"
            ));
        }
    }

    fn remember(&self, key: &str, member: &str, ttl: Duration) -> bool {
        match kv::set(key, member, Some(ttl)) {
            Ok(()) => true,
            Err(e) => {
                self.table_error("saving a session", e);
                false
            }
        }
    }

    fn insert_request(&self, req: &Request, signer: &Signer) -> Decision {
        let Some(value) = req.cookie(&self.cookie) else {
            count("absent");
            return Decision::Continue;
        };
        let pinned = match signer.open(&value, now_secs()) {
            Ok(pinned) => pinned,
            Err(refusal) => {
                count(refusal.outcome());
                log::debug(&format!(
                    "sticky: cookie {:?} refused: {}",
                    self.cookie,
                    refusal.outcome()
                ));
                return Decision::Continue;
            }
        };
        if !available(&self.pool, &pinned.member) {
            count("unavailable");
            return Decision::Continue;
        }
        count("pinned");
        req.set_var(&self.vars.presented, &pinned.to_var());
        Decision::route_to_member(&self.pool, pinned.member)
    }

    fn learn_request(&self, req: &Request, ttl: Duration) -> Decision {
        let Some(value) = req.cookie(&self.cookie) else {
            count("absent");
            return Decision::Continue;
        };
        let key = session_key(&value);
        let Some(member) = kv::get_string(&key) else {
            count("unknown");
            return Decision::Continue;
        };
        req.set_var(&self.vars.session, &key);
        if !available(&self.pool, &member) {
            count("unavailable");
            return Decision::Continue;
        }

        // Keep an active session's entry alive, writing at most twice per ttl.
        if kv::ttl(&key).is_none_or(|left| left < ttl / 2) {
            self.remember(&key, &member, ttl);
        }
        count("pinned");
        req.set_var(&self.vars.presented, &member);
        Decision::route_to_member(&self.pool, member)
    }

    fn insert_response(&self, req: &Request, resp: &Response, member: &str, insert: &Insert) {
        let Insert {
            signer,
            max_age,
            attributes,
        } = insert;
        let now = now_secs();
        let presented = req
            .var(&self.vars.presented)
            .and_then(|v| Pinned::from_var(&v));
        let fresh = presented.is_some_and(|p| {
            p.member == member
                && p.current_key
                && max_age.is_none_or(|age| p.expiry.saturating_sub(now) >= age / 2)
        });
        if fresh {
            return;
        }

        let expiry = max_age.map_or(0, |age| now + age);
        let value = signer.seal(member, expiry);
        let secure = attributes.secure.unwrap_or_else(|| req.scheme() == "https");
        let line = attributes.set_cookie(&self.cookie, &value, *max_age, secure);
        match resp.append_header("set-cookie", &line) {
            Ok(()) => {
                let _ = metrics::counter_add("sticky_cookies_issued_total", 1, &[]);
            }
            Err(e) => log::warn(&format!("sticky: Set-Cookie refused: {e}")),
        }
    }

    fn learn_response(&self, req: &Request, resp: &Response, member: &str, ttl: Duration) {
        let mut learned = false;
        let mut ended = false;
        for line in resp.header_values("set-cookie") {
            let Some(set) = parse_set_cookie(&line, &self.cookie) else {
                continue;
            };
            if set.removal {
                // A deleting line seldom names the session it ends
                // (`JSESSIONID=; Max-Age=0`, PHP's `PHPSESSID=deleted`): the
                // session ended is the one the request presented, and the
                // one the line names when it names one.
                ended = true;
                let mut keys: Vec<String> = req
                    .cookie(&self.cookie)
                    .filter(|v| !v.is_empty())
                    .map(|v| session_key(&v))
                    .into_iter()
                    .collect();
                if !set.value.is_empty() {
                    let named = session_key(&set.value);
                    if !keys.contains(&named) {
                        keys.push(named);
                    }
                }
                for key in keys {
                    if kv::delete(&key) {
                        let _ = metrics::counter_add("sticky_sessions_forgotten_total", 1, &[]);
                    }
                }
            } else if self.remember(&session_key(&set.value), member, ttl) {
                let _ = metrics::counter_add(
                    "sticky_sessions_learned_total",
                    1,
                    &[("source", "set_cookie")],
                );
                learned = true;
            }
        }

        // A known session whose member could not serve it now belongs to the
        // member that did. Unknown sessions are never learned from requests:
        // a client could fill the table with made-up ones.
        if !learned && !ended && req.var(&self.vars.presented).as_deref() != Some(member) {
            if let Some(key) = req.var(&self.vars.session) {
                if self.remember(&key, member, ttl) {
                    let _ = metrics::counter_add(
                        "sticky_sessions_learned_total",
                        1,
                        &[("source", "repin")],
                    );
                }
            }
        }
    }
}

#[policy]
impl Policy for Sticky {
    fn init(config: Config) -> Result<Self, Error> {
        let mut s: Settings = config.parse()?;
        if s.pool.is_empty() {
            return Err(Error::new("`pool` is empty"));
        }
        let mode = match s.mode {
            ModeName::Insert => insert_mode(&mut s)?,
            ModeName::Learn => learn_mode(&s)?,
        };
        let cookie = s.cookie.take().unwrap_or_else(|| DEFAULT_COOKIE.to_owned());
        if !adc_sdk::text::valid_header_name(&cookie) {
            return Err(Error::new(format!("cookie name {cookie:?} is not a token")));
        }

        let vars = Vars {
            member: format!("sticky.{}.member", s.pool),
            presented: format!("sticky.{}.presented", s.pool),
            session: format!("sticky.{}.session", s.pool),
        };
        Ok(Sticky {
            pool: s.pool,
            cookie,
            mode,
            vars,
            table_warned: Cell::new(false),
        })
    }

    fn on_request_headers(&self, req: &Request) -> Decision {
        // A request the router sent to another pool is not ours to pin.
        if req.var(ROUTER_POOL_VAR).is_some_and(|p| p != self.pool) {
            return Decision::Continue;
        }
        match &self.mode {
            Mode::Insert(insert) => self.insert_request(req, &insert.signer),
            Mode::Learn { ttl } => self.learn_request(req, *ttl),
        }
    }

    fn on_backend_selected(&self, req: &Request, backend: &Backend) -> Decision {
        if backend.pool == self.pool {
            req.set_var(&self.vars.member, &backend.member);
        }
        Decision::Continue
    }

    fn on_response_headers(&self, req: &Request, resp: &Response) -> Decision {
        let Some(member) = req.var(&self.vars.member) else {
            return Decision::Continue;
        };
        match &self.mode {
            Mode::Insert(insert) => self.insert_response(req, resp, &member, insert),
            Mode::Learn { ttl } => self.learn_response(req, resp, &member, *ttl),
        }
        Decision::Continue
    }
}

#[cfg(test)]
mod tests;

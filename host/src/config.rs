//! The configuration file: one TOML document, parsed strictly (unknown keys
//! are errors) and validated in full before anything uses it. Every error
//! names the file, the line and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    #[serde(default)]
    pub policies: BTreeMap<String, PolicySection>,
    /// Demo backends adc starts itself (for the quickstart).
    pub demo: Option<Demo>,
    /// Worker threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// The management address, apart from every listener.
    #[serde(default = "default_admin")]
    pub listen: Spanned<SocketAddr>,
    /// Bearer token required on every admin request but liveness.
    pub token: Option<String>,
    /// Allow a non-loopback admin address without a token.
    #[serde(default)]
    pub allow_public_without_token: bool,
}

fn default_admin() -> Spanned<SocketAddr> {
    Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 9900)))
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: default_admin(),
            token: None,
            allow_public_without_token: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// The watched folder policy files are named in; relative to the
    /// config file.
    pub policy_dir: Option<PathBuf>,
    /// Where compiled policies are cached across restarts.
    pub cache_dir: Option<PathBuf>,
    /// Watch `policy_dir` and load changed files live (default true).
    pub watch: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "d_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "d_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// How long a backend may take to send its response headers.
    #[serde(default = "d_header_timeout", deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// How long a kept-alive connection (client or backend) may sit idle.
    #[serde(default = "d_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Idle connections kept per backend member and worker.
    #[serde(default = "d_pool_idle")]
    pub max_idle_per_member: usize,
    /// How many proxies in front of adc to trust in X-Forwarded-For.
    #[serde(default)]
    pub trusted_hops: usize,
    /// Tries for an idempotent request whose connection failed.
    #[serde(default = "d_retries")]
    pub retries: usize,
    /// How long SIGTERM waits for in-flight requests.
    #[serde(default = "d_drain", deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

fn d_max_header_bytes() -> usize {
    64 * 1024
}
fn d_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn d_header_timeout() -> Duration {
    Duration::from_secs(30)
}
fn d_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn d_pool_idle() -> usize {
    64
}
fn d_retries() -> usize {
    2
}
fn d_drain() -> Duration {
    Duration::from_secs(10)
}

impl Default for Limits {
    fn default() -> Self {
        toml::from_str("").expect("every limit has a default")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
}

/// A route: which requests (host, path prefix) get which policy chain and
/// default pool. The first matching route wins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Option<String>,
    /// Exact host, or `*.example.com` for any subdomain.
    pub host: Option<String>,
    #[serde(default = "d_prefix")]
    pub path_prefix: String,
    pub pool: Spanned<String>,
    #[serde(default)]
    pub policies: Vec<Spanned<String>>,
}

fn d_prefix() -> String {
    "/".to_owned()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    RoundRobin,
    Weighted,
    LeastConnections,
    ConsistentHash,
    PowerOfTwo,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    #[serde(default)]
    pub method: Method,
    /// For consistent_hash: `client_ip`, `header:<name>` or `cookie:<name>`.
    pub hash_on: Option<Spanned<String>>,
    pub members: Vec<Member>,
    pub health: Option<Health>,
    #[serde(default)]
    pub passive: Passive,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub name: Option<String>,
    pub address: SocketAddr,
    #[serde(default = "d_weight")]
    pub weight: u32,
    #[serde(default = "d_true")]
    pub enabled: bool,
}

fn d_weight() -> u32 {
    1
}
fn d_true() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    Tcp,
    Http,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub kind: HealthKind,
    #[serde(default = "d_interval", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "d_check_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Passing probes in a row that bring a member up.
    #[serde(default = "d_rise")]
    pub rise: u32,
    /// Failing probes in a row that take a member down.
    #[serde(default = "d_fall")]
    pub fall: u32,
    #[serde(default = "d_get")]
    pub method: String,
    #[serde(default = "d_prefix")]
    pub path: String,
    pub host: Option<String>,
    /// Accepted statuses, such as "200-399" or "200".
    #[serde(default = "d_expect", deserialize_with = "status_range")]
    pub expect_status: (u16, u16),
    /// A text the body must contain.
    pub expect_body: Option<String>,
}

fn d_interval() -> Duration {
    Duration::from_secs(2)
}
fn d_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn d_rise() -> u32 {
    2
}
fn d_fall() -> u32 {
    3
}
fn d_get() -> String {
    "GET".to_owned()
}
fn d_expect() -> (u16, u16) {
    (200, 399)
}

/// Passive ejection: a member that fails this many times in a row (connect
/// errors, timeouts, 5xx) takes no requests for the cool-down.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Passive {
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    #[serde(default = "d_cooldown", deserialize_with = "duration")]
    pub cooldown: Duration,
    /// Count 5xx answers as failures.
    #[serde(default = "d_true")]
    pub count_5xx: bool,
}

fn d_consecutive() -> u32 {
    5
}
fn d_cooldown() -> Duration {
    Duration::from_secs(10)
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            consecutive_failures: d_consecutive(),
            cooldown: d_cooldown(),
            count_5xx: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// The component file, relative to `engine.policy_dir`.
    pub file: Spanned<PathBuf>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default = "d_budget", deserialize_with = "duration")]
    pub cpu_budget: Duration,
    #[serde(default = "d_memory", deserialize_with = "size")]
    pub memory_cap: usize,
    /// The policy's own settings, passed to its `init` as JSON.
    #[serde(default)]
    pub settings: toml::Table,
}

fn d_budget() -> Duration {
    Duration::from_millis(10)
}
fn d_memory() -> usize {
    16 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    /// Addresses of demo HTTP backends adc starts itself.
    pub backends: Vec<SocketAddr>,
}

/// A configuration error with where it stands.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?}: use a number with ms, s, m or h"
        ))
    })
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let text = String::deserialize(d)?;
    parse_size(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid size {text:?}: use a number with KiB, MiB or GiB"
        ))
    })
}

pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: usize = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn status_range<'de, D: Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    let text = String::deserialize(d)?;
    let bad = || {
        serde::de::Error::custom(format!(
            "invalid status range {text:?}: use \"200\" or \"200-399\""
        ))
    };
    let (lo, hi) = text.split_once('-').unwrap_or((&text, &text));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(lo..=599).contains(&hi) {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.span().map_or(0, |s| line_of(s.start)),
            message: e.message().to_owned(),
        })?;
        config.validate().map_err(|(offset, message)| ConfigError {
            file: file.to_owned(),
            line: offset.map_or(0, line_of),
            message,
        })?;
        Ok(config)
    }

    /// Checks across sections; an error carries the byte offset of what it
    /// is about, when known.
    fn validate(&self) -> Result<(), (Option<usize>, String)> {
        let mut names = std::collections::HashSet::new();
        for l in &self.listeners {
            if !names.insert(&l.name) {
                return Err((None, format!("listener {:?} is defined twice", l.name)));
            }
            if l.listen.port() != 0 && l.listen == *self.admin.listen.get_ref() {
                return Err((
                    Some(self.admin.listen.span().start),
                    format!(
                        "admin address {} is also listener {:?}: keep management apart",
                        l.listen, l.name
                    ),
                ));
            }
            if l.routes.is_empty() {
                return Err((None, format!("listener {:?} has no route", l.name)));
            }
            for r in &l.routes {
                if !self.pools.contains_key(r.pool.get_ref()) {
                    return Err((
                        Some(r.pool.span().start),
                        format!(
                            "route names pool {:?}, which is not defined",
                            r.pool.get_ref()
                        ),
                    ));
                }
                for p in &r.policies {
                    if !self.policies.contains_key(p.get_ref()) {
                        return Err((
                            Some(p.span().start),
                            format!("route names policy {:?}, which is not defined", p.get_ref()),
                        ));
                    }
                }
                if !r.path_prefix.starts_with('/') {
                    return Err((
                        None,
                        format!("path_prefix {:?} must start with '/'", r.path_prefix),
                    ));
                }
            }
        }
        for (name, pool) in &self.pools {
            if pool.members.is_empty() {
                return Err((None, format!("pool {name:?} has no members")));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, m) in pool.members.iter().enumerate() {
                if !seen.insert(m.name.clone().unwrap_or_else(|| m.address.to_string())) {
                    return Err((
                        None,
                        format!("pool {name:?}: member {i} repeats a name or address"),
                    ));
                }
            }
            if let Some(h) = &pool.hash_on {
                let ok = h.get_ref() == "client_ip"
                    || h.get_ref()
                        .strip_prefix("header:")
                        .is_some_and(|n| !n.is_empty())
                    || h.get_ref()
                        .strip_prefix("cookie:")
                        .is_some_and(|n| !n.is_empty());
                if !ok {
                    return Err((
                        Some(h.span().start),
                        format!(
                            "hash_on {:?}: use client_ip, header:<name> or cookie:<name>",
                            h.get_ref()
                        ),
                    ));
                }
            }
            if let Some(h) = &pool.health {
                if h.rise == 0 || h.fall == 0 {
                    return Err((
                        None,
                        format!("pool {name:?}: health rise and fall must be at least 1"),
                    ));
                }
            }
        }
        let loopback = self.admin.listen.get_ref().ip().is_loopback();
        if !loopback && self.admin.token.is_none() && !self.admin.allow_public_without_token {
            return Err((Some(self.admin.listen.span().start), format!(
                "admin address {} is not loopback and has no token: set admin.token, or allow_public_without_token = true",
                self.admin.listen.get_ref()
            )));
        }
        Ok(())
    }

    /// The folder policy files are named in.
    pub fn policy_dir(&self, config_path: &Path) -> PathBuf {
        let base = config_path.parent().unwrap_or(Path::new("."));
        match &self.engine.policy_dir {
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => base.join(dir),
            None => base.to_path_buf(),
        }
    }

    pub fn cache_dir(&self, config_path: &Path) -> Option<PathBuf> {
        let base = config_path.parent().unwrap_or(Path::new("."));
        self.engine.cache_dir.as_ref().map(|d| {
            if d.is_absolute() {
                d.clone()
            } else {
                base.join(d)
            }
        })
    }
}

impl Member {
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.address.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[listener]]
name = "web"
listen = "127.0.0.1:8080"
[[listener.route]]
pool = "app"

[pools.app]
members = [{ address = "127.0.0.1:9001" }]
"#;

    #[test]
    fn a_minimal_config_parses_with_defaults() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.limits.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.pools["app"].method, Method::RoundRobin);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let bad = GOOD.replace("members =", "membres =");
        let e = Config::parse(&bad, "t.toml").unwrap_err();
        assert_eq!(e.line, 9, "{e}");
        assert!(e.to_string().contains("membres"), "{e}");
    }

    #[test]
    fn a_route_to_an_unknown_pool_names_its_line() {
        let bad = GOOD.replace("pool = \"app\"", "pool = \"nope\"");
        let e = Config::parse(&bad, "t.toml").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("\"nope\""), "{e}");
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("lots"), None);
    }
}

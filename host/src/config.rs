//! The configuration file: one TOML document, parsed strictly (unknown keys
//! are errors) and validated in full before anything uses it. Every error
//! names the file, the line and the key.

mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// More worker threads than this is a mistake, not a configuration: each
/// holds a socket per listener and its own policy instances.
pub const MAX_WORKERS: usize = 1024;

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
    /// Worker threads; 0 means one per core; at most [`MAX_WORKERS`].
    #[serde(default)]
    pub workers: usize,
    /// The text parsed, for the line of a refusal found later (a policy
    /// file that does not load).
    #[serde(skip)]
    text: String,
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
    /// UDP flows (client addresses with a socket to a member) each UDP
    /// listener keeps at once; a datagram that would start one more is
    /// dropped.
    #[serde(default = "d_max_udp_flows")]
    pub max_udp_flows: usize,
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
fn d_max_udp_flows() -> usize {
    10_000
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
    /// `http` (HTTP/1.1 and h2c), `https` (TLS, HTTP/1.1 and HTTP/2), `tcp`
    /// or `udp` (L4 balancing).
    #[serde(default)]
    pub protocol: Protocol,
    pub tls: Option<Tls>,
    /// Also serve HTTP/3 over QUIC on the same port (UDP), advertised with
    /// `Alt-Svc`; `https` listeners only.
    #[serde(default)]
    pub http3: bool,
    /// Policies whose `on-connect` hook runs for every client connection.
    #[serde(default)]
    pub policies: Vec<Spanned<String>>,
    /// The pool of an L4 listener.
    pub pool: Option<Spanned<String>>,
    /// Sources trusted to send a PROXY protocol header (v1 or v2), as
    /// addresses or CIDR blocks. A connection from elsewhere is served as
    /// is; one from a trusted source must start with the header.
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http,
    Https,
    Tcp,
    Udp,
}

/// TLS termination on a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificates chosen by SNI; the first is the default.
    pub certificates: Vec<Certificate>,
    /// CA bundle for client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: require a client certificate (true, the default),
    /// or verify one only when offered (false). Refused without
    /// `client_ca`: there would be nothing to verify with.
    pub client_auth_required: Option<Spanned<bool>>,
    /// Lowest TLS version: "1.2" (default) or "1.3".
    #[serde(default = "d_tls12")]
    pub min_version: Spanned<String>,
}

fn d_tls12() -> Spanned<String> {
    Spanned::new(0..0, "1.2".to_owned())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM chain, leaf first. Reloaded when the file changes.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Server names this certificate answers for; by default the names in
    /// the certificate (subjectAltName DNS entries). `*.example.com` matches
    /// one label.
    pub names: Option<Vec<String>>,
}

/// TLS towards the members of a pool (re-encryption).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name to send; by default the request's host.
    pub sni: Option<String>,
    /// CA bundle to verify members with; by default the public web roots.
    pub ca: Option<PathBuf>,
    /// Verify the member's certificate (default true).
    #[serde(default = "d_true")]
    pub verify: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    V1,
    V2,
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

impl Method {
    /// The name as the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::RoundRobin => "round_robin",
            Method::Weighted => "weighted",
            Method::LeastConnections => "least_connections",
            Method::ConsistentHash => "consistent_hash",
            Method::PowerOfTwo => "power_of_two",
        }
    }
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
    /// TLS to the members.
    pub tls: Option<UpstreamTls>,
    /// Speak HTTP/2 to the members: h2c in cleartext, or h2 over TLS when the
    /// member agrees by ALPN (a member choosing http/1.1 gets HTTP/1.1).
    #[serde(default)]
    pub http2: bool,
    /// Send a PROXY protocol header (v1 or v2) on each new connection.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Source address for connections to the members.
    pub source: Option<std::net::IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub name: Option<String>,
    pub address: SocketAddr,
    /// The member's share of load-balanced requests, 0 to 256; 0 takes
    /// only requests a policy sends to the member by name.
    #[serde(default = "d_weight", deserialize_with = "weight")]
    pub weight: u32,
    #[serde(default = "d_true")]
    pub enabled: bool,
}

fn d_weight() -> u32 {
    1
}

/// The largest weight (HAProxy's too): the hash ring holds 160 points per
/// unit of weight, and weighted round robin a schedule as long as the sum.
const MAX_WEIGHT: u32 = 256;

fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let w = u32::deserialize(d)?;
    if w > MAX_WEIGHT {
        return Err(serde::de::Error::custom(format!(
            "weight {w}: use 0 to {MAX_WEIGHT} (0: only requests a policy sends to this member by name)"
        )));
    }
    Ok(w)
}

fn d_true() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP request gets an expected status (and body).
    Http,
    /// A datagram (`send`) gets a reply (containing `expect`).
    Udp,
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
    /// UDP: the datagram to send, as text.
    pub send: Option<String>,
    /// UDP: a text the reply must contain; any reply passes without it.
    pub expect: Option<String>,
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
    /// Largest number of entries in the policy's shared table.
    #[serde(default = "d_table_entries")]
    pub table_entries: usize,
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
fn d_table_entries() -> usize {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    /// Addresses of demo HTTP backends adc starts itself.
    pub backends: Vec<SocketAddr>,
}

/// The line of byte `offset` of `text`, counted from 1.
fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
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
    // Refuses what no Duration holds (too large, negative, NaN) rather than
    // panicking on it.
    Duration::try_from_secs_f64(secs).ok()
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
        let mut config = Config::parse(&text, &file)?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Make file paths relative to the config file absolute.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for l in &mut self.listeners {
            if let Some(tls) = &mut l.tls {
                for c in &mut tls.certificates {
                    fix(&mut c.cert);
                    fix(&mut c.key);
                }
                if let Some(ca) = &mut tls.client_ca {
                    fix(ca);
                }
            }
        }
        for pool in self.pools.values_mut() {
            if let Some(ca) = pool.tls.as_mut().and_then(|t| t.ca.as_mut()) {
                fix(ca);
            }
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let line_of = |offset: usize| line_at(text, offset);
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.span().map_or(0, |s| line_of(s.start)),
            message: e.message().to_owned(),
        })?;
        config.validate().map_err(|(at, message)| ConfigError {
            file: file.to_owned(),
            line: at.offset(text).map_or(0, line_of),
            message,
        })?;
        config.text = text.to_owned();
        Ok(config)
    }

    /// The line `value` was read from.
    pub fn line_of<T>(&self, value: &Spanned<T>) -> usize {
        line_at(&self.text, value.span().start)
    }

    /// The line of listener `listener`'s TLS setting `key` (`client_ca`),
    /// or of its `[listener.tls]` section when the key is not written.
    pub fn tls_line(&self, listener: usize, key: &str) -> usize {
        self.line_of_key(validate::At::Key(vec![
            "listener".into(),
            listener.into(),
            "tls".into(),
            key.into(),
        ]))
    }

    /// The line of certificate entry `index` of listener `listener`.
    pub fn certificate_line(&self, listener: usize, index: usize) -> usize {
        self.line_of_key(validate::At::Key(vec![
            "listener".into(),
            listener.into(),
            "tls".into(),
            "certificates".into(),
            index.into(),
        ]))
    }

    fn line_of_key(&self, at: validate::At) -> usize {
        at.offset(&self.text)
            .map_or(0, |offset| line_at(&self.text, offset))
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

    /// A valid configuration; tests change it or add to it.
    pub(super) const GOOD: &str = r#"
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
    fn the_udp_flow_limit_defaults_to_ten_thousand_and_zero_is_refused() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.limits.max_udp_flows, 10_000);
        let set = format!("[limits]\nmax_udp_flows = 3\n{GOOD}");
        assert_eq!(
            Config::parse(&set, "t.toml").unwrap().limits.max_udp_flows,
            3
        );
        let zero = format!("[limits]\nmax_udp_flows = 0\n{GOOD}");
        let e = Config::parse(&zero, "t.toml").unwrap_err();
        assert!(e.to_string().contains("max_udp_flows"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let bad = GOOD.replace("members =", "membres =");
        let e = Config::parse(&bad, "t.toml").unwrap_err();
        assert_eq!(e.line, 9, "{e}");
        assert!(e.to_string().contains("membres"), "{e}");
    }

    #[test]
    fn a_weight_over_256_is_refused_with_its_line_and_zero_is_taken() {
        let zero = GOOD.replace("{ address", "{ weight = 0, address");
        assert_eq!(
            Config::parse(&zero, "t.toml").unwrap().pools["app"].members[0].weight,
            0
        );
        let big = GOOD.replace("{ address", "{ weight = 257, address");
        let e = Config::parse(&big, "t.toml").unwrap_err();
        assert_eq!(e.line, 9, "{e}");
        assert!(e.message.contains("weight 257"), "{e}");
    }

    #[test]
    fn a_route_to_an_unknown_pool_names_its_line() {
        let bad = GOOD.replace("pool = \"app\"", "pool = \"nope\"");
        let e = Config::parse(&bad, "t.toml").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("\"nope\""), "{e}");
    }

    const UDP: &str = r#"
[[listener]]
name = "dns"
listen = "127.0.0.1:5353"
protocol = "udp"
pool = "dns"

[pools.dns]
members = [{ address = "127.0.0.1:53" }]

[pools.dns.health]
kind = "udp"
send = "ping"
"#;

    #[test]
    fn a_udp_listener_with_udp_health_checks_parses() {
        let c = Config::parse(UDP, "t.toml").unwrap();
        let h = c.pools["dns"].health.as_ref().unwrap();
        assert_eq!((h.kind, h.send.as_deref()), (HealthKind::Udp, Some("ping")));
    }

    #[test]
    fn udp_health_checks_need_a_datagram_and_a_udp_pool() {
        let e = Config::parse(&UDP.replace("send = \"ping\"\n", ""), "t.toml").unwrap_err();
        assert!(e.message.contains("needs send"), "{e}");

        let tcp = UDP
            .replace("protocol = \"udp\"", "protocol = \"tcp\"")
            .replace("kind = \"udp\"", "kind = \"tcp\"");
        let e = Config::parse(&tcp, "t.toml").unwrap_err();
        assert!(e.message.contains("need kind = \"udp\""), "{e}");

        let e = Config::parse(
            &UDP.replace("kind = \"udp\"\nsend = \"ping\"", "kind = \"tcp\""),
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("must be \"udp\""), "{e}");
    }

    #[test]
    fn a_udp_listener_refuses_proxy_protocol_settings() {
        let from = UDP.replace(
            "pool = \"dns\"\n",
            "pool = \"dns\"\nproxy_protocol_from = [\"10.0.0.0/8\"]\n",
        );
        let e = Config::parse(&from, "t.toml").unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        let to = UDP.replace("[pools.dns]\n", "[pools.dns]\nproxy_protocol = \"v2\"\n");
        let e = Config::parse(&to, "t.toml").unwrap_err();
        assert!(e.message.contains("PROXY"), "{e}");
    }

    #[test]
    fn durations_too_large_for_any_clock_are_refused_not_panicked_on() {
        for text in ["99999999999999999999h", "18446744073709551616s", "1e30s"] {
            assert_eq!(parse_duration(text), None, "{text}");
        }
        let e = Config::parse(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\nidle_timeout = \"18446744073709551616s\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
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

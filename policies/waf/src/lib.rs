//! A web application firewall. Every value an application reads from a
//! request (the path, query names and values, chosen headers, cookies, and
//! the values of a buffered body) is normalised (see `normalize.rs`), then
//! checked by four rule sets:
//!
//! - `sqli`: SQL injection (`sqli.rs`);
//! - `xss`: cross-site scripting (`xss.rs`);
//! - `traversal`: path traversal (`traversal.rs`);
//! - `protocol`: method and content-type allow-lists, `Host` and framing
//!   anomalies, NUL bytes, encodings nested past the decoding bound.
//!
//! Each set blocks (`403` with the rule's code, never the input), only logs
//! and counts, or is off. Every match is counted per rule and action.

mod body;
mod normalize;
mod sqli;
mod traversal;
mod xss;

use adc_sdk::{log, metrics, policy, text};
use adc_sdk::{BodyLimits, Config, Decision, Error, Policy, Reply, Request};
use serde::Deserialize;

const DEFAULT_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const DEFAULT_CONTENT_TYPES: [&str; 4] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "application/json",
    "text/plain",
];
const DEFAULT_HEADERS: [&str; 3] = ["cookie", "referer", "user-agent"];
const DEFAULT_MAX_BODY: u32 = 1024 * 1024;
/// The body bytes inspected: about 4 ms of the default 10 ms CPU budget in
/// the worst case measured (see the README).
const DEFAULT_INSPECT_BODY: u32 = 64 * 1024;
/// What a value counts against `inspect_body` at the least: looking at a
/// value costs about as much as a few dozen bytes of it, whatever its size.
const MIN_VALUE_COST: usize = 32;
const DEFAULT_ROUNDS: u8 = 3;
const MAX_ROUNDS: u8 = 8;

/// Every rule of the protocol set.
const PROTOCOL_RULES: &[&str] = &[
    "method-not-allowed",
    "content-type-not-allowed",
    "missing-host",
    "multiple-host",
    "framing-conflict",
    "content-length-invalid",
    "null-byte",
    "encoding-too-deep",
    "body-over-inspection-limit",
];

/// Set once the content type was checked, so that the body hook does not
/// check it again.
const CONTENT_TYPE_CHECKED: &str = "waf.content_type_checked";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Block,
    Log,
    Off,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSet {
    #[serde(default)]
    mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    sqli: RuleSet,
    #[serde(default)]
    xss: RuleSet,
    #[serde(default)]
    traversal: RuleSet,
    #[serde(default)]
    protocol: RuleSet,
    methods: Option<Vec<String>>,
    content_types: Option<Vec<String>>,
    inspect_headers: Option<Vec<String>>,
    max_body: Option<u32>,
    inspect_body: Option<u32>,
    decode_rounds: Option<u8>,
    #[serde(default)]
    exclude_paths: Vec<String>,
    #[serde(default)]
    disable: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Set {
    Sqli,
    Xss,
    Traversal,
    Protocol,
}

enum Headers {
    All,
    Listed(Vec<String>),
}

/// The waf policy.
pub struct Waf {
    /// Indexed by `Set as usize`.
    modes: [Mode; 4],
    /// Empty: any method.
    methods: Vec<String>,
    /// Empty: any content type.
    content_types: Vec<String>,
    headers: Headers,
    max_body: u32,
    inspect_body: usize,
    rounds: u8,
    exclude: Vec<String>,
    disabled: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Finding {
    set: Set,
    rule: &'static str,
    /// Where: `path`, `query`, `header`, `cookie`, `body`, `request`.
    at: &'static str,
}

/// A rule set's check of one normalised value: the first rule it meets.
type Detector = fn(&normalize::Normalized) -> Option<&'static str>;

/// The findings of one hook.
struct Scan<'w> {
    waf: &'w Waf,
    findings: Vec<Finding>,
}

impl Scan<'_> {
    fn add(&mut self, set: Set, rule: &'static str, at: &'static str) {
        let on = self.waf.modes[set as usize] != Mode::Off;
        if on
            && !self.waf.disabled.iter().any(|d| d == rule)
            && !self.findings.iter().any(|f| f.rule == rule)
        {
            self.findings.push(Finding { set, rule, at });
        }
    }

    /// Normalise one value and run every rule set on it.
    fn value(&mut self, raw: &[u8], form: bool, at: &'static str) {
        // Letters, digits, `-` and `_` alone can meet no rule.
        if raw
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return;
        }
        let n = normalize::normalize(raw, form, self.waf.rounds);
        if n.null_byte {
            self.add(Set::Protocol, "null-byte", at);
        }
        if n.too_deep {
            self.add(Set::Protocol, "encoding-too-deep", at);
        }
        let detectors: [(Set, Detector); 3] = [
            (Set::Sqli, sqli::detect),
            (Set::Xss, xss::detect),
            (Set::Traversal, traversal::detect),
        ];
        for (set, detect) in detectors {
            if self.waf.modes[set as usize] != Mode::Off {
                if let Some(rule) = detect(&n) {
                    self.add(set, rule, at);
                }
            }
        }
    }
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether `path` is `prefix` or a path below it: `/health` covers
/// `/health` and `/health/live`, not `/healthz` nor `/health;/x`. A prefix
/// ending in `/` covers what starts with it.
fn within(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'))
}

fn known_rule(rule: &str) -> bool {
    [sqli::RULES, xss::RULES, traversal::RULES, PROTOCOL_RULES]
        .iter()
        .any(|rules| rules.contains(&rule))
}

impl Waf {
    /// Whether the normalised `path` is one of `exclude_paths` or below
    /// one, at a segment boundary. A path with a dot segment in disguise
    /// (`..;x`, `.;x`: Java servers drop the `;` part and climb up, so
    /// `/health/..;/admin` is `/admin` to them) is never excluded.
    fn excluded(&self, path: &str) -> bool {
        // A path that some backend reads as leaving the excluded prefix:
        // `..;` (Tomcat, Spring), or an encoded slash or backslash, which
        // many frameworks decode before routing (`/health/..%2fadmin`).
        // Asked only of a path under an excluded prefix: most requests,
        // and every one without `exclude_paths`, stop at the first test.
        let disguised = || {
            path.as_bytes().windows(3).any(|w| {
                w[0] == b'%'
                    && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
            }) || path.contains('\\')
                || path.split('/').any(|segment| {
                    segment
                        .split_once(';')
                        .is_some_and(|(name, _)| name == "." || name == "..")
                })
        };
        self.exclude.iter().any(|p| within(path, p)) && !disguised()
    }

    fn check_content_type(&self, req: &Request, scan: &mut Scan) {
        req.set_var(CONTENT_TYPE_CHECKED, "1");
        if self.content_types.is_empty() {
            return;
        }
        let media = req
            .header("content-type")
            .map(|ct| media_type(&ct))
            .unwrap_or_default();
        if !self.content_types.contains(&media) {
            scan.add(Set::Protocol, "content-type-not-allowed", "request");
        }
    }

    /// The request-level anomalies: method, `Host`, framing, content type.
    fn protocol(&self, req: &Request, scan: &mut Scan) {
        if !self.methods.is_empty() && !self.methods.contains(&req.method()) {
            scan.add(Set::Protocol, "method-not-allowed", "request");
        }

        let hosts = req.header_values("host");
        if hosts.len() > 1 {
            scan.add(Set::Protocol, "multiple-host", "request");
        } else if hosts.is_empty() && req.version() == "HTTP/1.1" {
            scan.add(Set::Protocol, "missing-host", "request");
        }

        // The host strips hop-by-hop headers and frames bodies itself; these
        // checks see only what reaches policies.
        let lengths = req.header_values("content-length");
        let chunked = req.header("transfer-encoding").is_some();
        if chunked && !lengths.is_empty() {
            scan.add(Set::Protocol, "framing-conflict", "request");
        }
        let length = lengths.first().map(|l| l.trim().parse::<u64>());
        if matches!(length, Some(Err(_))) || lengths.iter().any(|l| l.trim() != lengths[0].trim()) {
            scan.add(Set::Protocol, "content-length-invalid", "request");
        }
        if chunked || matches!(length, Some(Ok(n)) if n > 0) {
            self.check_content_type(req, scan);
        }
    }

    fn headers(&self, req: &Request, scan: &mut Scan) {
        let names = match &self.headers {
            Headers::All => req.header_names(),
            Headers::Listed(names) => names.clone(),
        };
        for name in names {
            if name == "cookie" {
                for line in req.header_values("cookie") {
                    for (_, value) in text::parse_cookies(&line) {
                        scan.value(value.as_bytes(), false, "cookie");
                    }
                }
            } else {
                for value in req.header_values(&name) {
                    scan.value(value.as_bytes(), false, "header");
                }
            }
        }
    }

    /// Inspect the values of a body up to `inspect_body` bytes, each value
    /// counting at least [`MIN_VALUE_COST`]; false when some of it was left
    /// uninspected. A form, JSON or text body is read only that far; a
    /// multipart body is read whole, for only its text parts count.
    fn inspect(&self, kind: body::Kind, bytes: &[u8], content_type: &str, scan: &mut Scan) -> bool {
        let whole = kind == body::Kind::Multipart || bytes.len() <= self.inspect_body;
        let readable = if whole {
            bytes
        } else {
            &bytes[..self.inspect_body]
        };
        let mut left = self.inspect_body;
        for v in body::values(kind, readable, content_type) {
            if left == 0 {
                return false;
            }
            let seen = v.bytes.len().min(left);
            scan.value(&v.bytes[..seen], v.form, "body");
            if seen < v.bytes.len() {
                return false;
            }
            left -= v.bytes.len().max(MIN_VALUE_COST).min(left);
        }
        whole
    }

    /// Count and log what was found, and block on the first finding of a
    /// blocking set.
    fn verdict(&self, findings: &[Finding]) -> Decision {
        let mut blocked = None;
        for f in findings {
            let block = self.modes[f.set as usize] == Mode::Block;
            let action = if block { "block" } else { "log" };
            let _ = metrics::counter_add(
                "waf_matches_total",
                1,
                &[("rule", f.rule), ("action", action)],
            );
            if block {
                blocked = blocked.or(Some(f));
            } else {
                log::info(&format!("waf: {} matched in {} (log mode)", f.rule, f.at));
            }
        }
        let Some(f) = blocked else {
            return Decision::Continue;
        };
        log::debug(&format!("waf: blocked by {} in {}", f.rule, f.at));
        Reply::new(403)
            .header("content-type", "text/plain; charset=utf-8")
            .header("cache-control", "no-store")
            .body(format!("request blocked: {}\n", f.rule))
            .into()
    }
}

fn lowercase_list(list: Option<Vec<String>>, default: &[&str]) -> Vec<String> {
    list.unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect())
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

#[policy]
impl Policy for Waf {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let modes = [s.sqli.mode, s.xss.mode, s.traversal.mode, s.protocol.mode];
        if modes.iter().all(|m| *m == Mode::Off) {
            return Err(Error::new("every rule set is off: nothing to do"));
        }

        let methods: Vec<String> = s
            .methods
            .unwrap_or_else(|| DEFAULT_METHODS.iter().map(|m| (*m).to_owned()).collect())
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        if let Some(bad) = methods.iter().find(|m| !text::valid_header_name(m)) {
            return Err(Error::new(format!("method {bad:?} is not a method token")));
        }
        let content_types = lowercase_list(s.content_types, &DEFAULT_CONTENT_TYPES);
        if let Some(bad) = content_types
            .iter()
            .find(|t| !t.contains('/') || t.contains(';'))
        {
            return Err(Error::new(format!(
                "content type {bad:?} is not a media type without parameters"
            )));
        }
        let names = lowercase_list(s.inspect_headers, &DEFAULT_HEADERS);
        let headers = if names.iter().any(|n| n == "*") {
            Headers::All
        } else if let Some(bad) = names.iter().find(|n| !text::valid_header_name(n)) {
            return Err(Error::new(format!(
                "inspect_headers entry {bad:?} is not a header name"
            )));
        } else {
            Headers::Listed(names)
        };

        let max_body = s.max_body.unwrap_or(DEFAULT_MAX_BODY);
        if max_body == 0 {
            return Err(Error::new(
                "max_body must be at least 1 (it is also the largest body accepted)",
            ));
        }
        let inspect_body = s.inspect_body.unwrap_or(DEFAULT_INSPECT_BODY);
        if inspect_body == 0 {
            return Err(Error::new("inspect_body must be at least 1"));
        }
        let rounds = s.decode_rounds.unwrap_or(DEFAULT_ROUNDS);
        if !(1..=MAX_ROUNDS).contains(&rounds) {
            return Err(Error::new(format!(
                "decode_rounds {rounds} is not from 1 to {MAX_ROUNDS}"
            )));
        }
        if let Some(bad) = s.exclude_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(Error::new(format!(
                "exclude_paths entry {bad:?} must start with '/'"
            )));
        }
        if let Some(bad) = s.disable.iter().find(|r| !known_rule(r)) {
            return Err(Error::new(format!("disable: no rule is called {bad:?}")));
        }

        Ok(Waf {
            modes,
            methods,
            content_types,
            headers,
            max_body,
            inspect_body: inspect_body as usize,
            rounds,
            exclude: s
                .exclude_paths
                .iter()
                .map(|p| text::normalize_path(p))
                .collect(),
            disabled: s.disable,
        })
    }

    fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            request: self.max_body,
            response: 0,
        }
    }

    fn on_request_headers(&self, req: &Request) -> Decision {
        if self.excluded(&req.path()) {
            return Decision::Continue;
        }
        let mut scan = Scan {
            waf: self,
            findings: Vec::new(),
        };
        if self.modes[Set::Protocol as usize] != Mode::Off {
            self.protocol(req, &mut scan);
        }

        // The target as the client sent it: the host forwards (and `uri`
        // returns) the normalised path, in which `..` and `%2e%2e` are gone.
        let uri = req.original_uri();
        let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
        scan.value(path.as_bytes(), false, "path");
        for v in body::form_values(query.as_bytes()) {
            scan.value(&v.bytes, true, "query");
        }
        self.headers(req, &mut scan);
        self.verdict(&scan.findings)
    }

    fn on_request_body(&self, req: &Request) -> Decision {
        if self.excluded(&req.path()) {
            return Decision::Continue;
        }
        let Some(bytes) = req.body().filter(|b| !b.is_empty()) else {
            return Decision::Continue;
        };
        let mut scan = Scan {
            waf: self,
            findings: Vec::new(),
        };
        if req.var(CONTENT_TYPE_CHECKED).is_none()
            && self.modes[Set::Protocol as usize] != Mode::Off
        {
            // A body without Content-Length (chunked) is first seen here.
            self.check_content_type(req, &mut scan);
        }

        let content_type = req.header("content-type").unwrap_or_default();
        let kind = body::kind(&media_type(&content_type));
        if !self.inspect(kind, &bytes, &content_type, &mut scan) {
            scan.add(Set::Protocol, "body-over-inspection-limit", "body");
        }
        self.verdict(&scan.findings)
    }
}

#[cfg(test)]
mod tests;

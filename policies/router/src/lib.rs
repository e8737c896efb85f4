//! Content switching: an ordered list of rules, each naming a pool (and
//! optionally a member of it) and the conditions a request must meet to go
//! there. The first rule whose conditions all hold routes the request; when
//! none does, the `default` pool takes it, or the request goes on unrouted.
//!
//! Paths are matched against the host's normalised path (`Request::path`),
//! so `/%61pi/x` and `/static/../api/x` both meet `path_prefix = "/api/"`.
//! The matched rule and pool are left in the transaction variables
//! `router.rule` and `router.pool` for later policies of the chain.

use std::cell::OnceCell;

use adc_sdk::{metrics, policy, text, Config, Decision, Error, Policy, Request};
use serde::Deserialize;

/// Variable naming the rule that routed the request.
pub const RULE_VAR: &str = "router.rule";
/// Variable naming the pool the request was routed to.
pub const POOL_VAR: &str = "router.pool";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    rules: Vec<RuleSettings>,
    /// Pool for requests no rule matches.
    default: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSettings {
    name: String,
    pool: String,
    member: Option<String>,
    host: Option<String>,
    path_prefix: Option<String>,
    path: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<ValueSettings>,
    #[serde(default)]
    cookies: Vec<ValueSettings>,
    #[serde(default)]
    query: Vec<ValueSettings>,
}

/// A named value (header, cookie, query parameter) that must be present,
/// equal to `equals`, or start with `prefix`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueSettings {
    name: String,
    equals: Option<String>,
    prefix: Option<String>,
}

#[derive(Debug, PartialEq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    fn parse(pattern: &str) -> Result<HostPattern, String> {
        let pattern = pattern.to_ascii_lowercase();
        let (suffix, name) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        let name_ok = !name.is_empty()
            && !name.contains('*')
            && (name.starts_with('[') || !name.contains(':'))
            && name.bytes().all(|b| b.is_ascii_graphic());
        if !name_ok {
            return Err(format!(
                "host {pattern:?}: expected a host name or `*.suffix`, without port"
            ));
        }
        Ok(if suffix {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

#[derive(Debug)]
enum ValueTest {
    Present,
    Equals(String),
    Prefix(String),
}

#[derive(Debug)]
struct ValueCondition {
    name: String,
    test: ValueTest,
}

impl ValueCondition {
    fn parse(kind: &str, v: ValueSettings) -> Result<ValueCondition, String> {
        if v.name.is_empty() {
            return Err(format!("{kind} condition with an empty name"));
        }
        let test = match (v.equals, v.prefix) {
            (None, None) => ValueTest::Present,
            (Some(e), None) => ValueTest::Equals(e),
            (None, Some(p)) => ValueTest::Prefix(p),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{kind} {:?}: set `equals` or `prefix`, not both",
                    v.name
                ))
            }
        };
        Ok(ValueCondition { name: v.name, test })
    }

    fn accepts(&self, value: &str) -> bool {
        match &self.test {
            ValueTest::Present => true,
            ValueTest::Equals(e) => value == e,
            ValueTest::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug)]
enum Condition {
    Host(HostPattern),
    PathPrefix(String),
    PathGlob(String),
    Methods(Vec<String>),
    Header(ValueCondition),
    Cookie(ValueCondition),
    Query(ValueCondition),
}

/// What a rule reads from the request, each fetched from the host at most
/// once however many rules ask.
struct Facts<'r, 'a> {
    req: &'r Request<'a>,
    path: OnceCell<String>,
    host: OnceCell<Option<String>>,
    method: OnceCell<String>,
}

impl<'r, 'a> Facts<'r, 'a> {
    fn new(req: &'r Request<'a>) -> Self {
        Facts {
            req,
            path: OnceCell::new(),
            host: OnceCell::new(),
            method: OnceCell::new(),
        }
    }

    fn path(&self) -> &str {
        self.path.get_or_init(|| self.req.path())
    }

    fn host(&self) -> Option<&str> {
        self.host.get_or_init(|| self.req.host()).as_deref()
    }

    fn method(&self) -> &str {
        self.method.get_or_init(|| self.req.method())
    }
}

impl Condition {
    fn holds(&self, facts: &Facts) -> bool {
        match self {
            Condition::Host(pattern) => facts.host().is_some_and(|h| pattern.matches(h)),
            Condition::PathPrefix(prefix) => facts.path().starts_with(prefix.as_str()),
            Condition::PathGlob(pattern) => glob_match(pattern, facts.path()),
            Condition::Methods(methods) => methods.iter().any(|m| m == facts.method()),
            Condition::Header(c) => facts
                .req
                .header_values(&c.name)
                .iter()
                .any(|v| c.accepts(v)),
            Condition::Cookie(c) => facts.req.cookie(&c.name).is_some_and(|v| c.accepts(&v)),
            Condition::Query(c) => facts
                .req
                .query_param(&c.name)
                .is_some_and(|v| c.accepts(&v)),
        }
    }
}

/// Whether `text` matches `pattern` as a whole, where `*` stands for any run
/// of characters, `/` included.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was seen and how much text it has taken so far:
    // on a mismatch, that star takes one more byte and matching resumes.
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star, taken)) = backtrack {
            pi = star + 1;
            ti = taken + 1;
            backtrack = Some((star, taken + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

fn path_pattern(what: &str, pattern: &str) -> Result<String, String> {
    if !pattern.starts_with('/') {
        return Err(format!("{what} {pattern:?} must start with '/'"));
    }
    // Patterns are written as paths; normalise them as the host normalises
    // request paths so that both sides spell escapes alike.
    Ok(text::normalize_path(pattern))
}

#[derive(Debug)]
struct Rule {
    name: String,
    pool: String,
    member: Option<String>,
    conditions: Vec<Condition>,
}

impl Rule {
    fn compile(s: RuleSettings) -> Result<Rule, Error> {
        let name = s.name;
        let fail = |e: String| Error::new(format!("rule {name:?}: {e}"));
        if s.pool.is_empty() {
            return Err(fail("`pool` is empty".to_owned()));
        }

        let mut conditions = Vec::new();
        if let Some(host) = &s.host {
            conditions.push(Condition::Host(HostPattern::parse(host).map_err(fail)?));
        }
        if let Some(prefix) = &s.path_prefix {
            conditions.push(Condition::PathPrefix(
                path_pattern("path_prefix", prefix).map_err(fail)?,
            ));
        }
        if let Some(glob) = &s.path {
            conditions.push(Condition::PathGlob(
                path_pattern("path", glob).map_err(fail)?,
            ));
        }
        if !s.methods.is_empty() {
            if let Some(bad) = s.methods.iter().find(|m| !text::valid_header_name(m)) {
                return Err(fail(format!("method {bad:?} is not a method token")));
            }
            conditions.push(Condition::Methods(
                s.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            ));
        }
        for h in s.headers {
            conditions.push(Condition::Header(
                ValueCondition::parse("header", h).map_err(fail)?,
            ));
        }
        for c in s.cookies {
            conditions.push(Condition::Cookie(
                ValueCondition::parse("cookie", c).map_err(fail)?,
            ));
        }
        for q in s.query {
            conditions.push(Condition::Query(
                ValueCondition::parse("query", q).map_err(fail)?,
            ));
        }
        if conditions.is_empty() {
            return Err(fail(
                "no condition; use `default` for a catch-all pool".to_owned(),
            ));
        }

        Ok(Rule {
            name,
            pool: s.pool,
            member: s.member,
            conditions,
        })
    }

    fn decision(&self) -> Decision {
        match &self.member {
            Some(member) => Decision::route_to_member(&self.pool, member),
            None => Decision::route(&self.pool),
        }
    }
}

/// Refuse a rule (or `default`) naming a pool the configuration lacks, or a
/// member its pool lacks: every request it matched would fail.
fn check_pools(rules: &[Rule], default: Option<&str>) -> Result<(), Error> {
    let names = adc_sdk::pools::names();
    let missing = |pool: &str| !names.iter().any(|n| n == pool);
    for rule in rules {
        if missing(&rule.pool) {
            return Err(Error::new(format!(
                "rule {:?}: pool {:?} is not configured",
                rule.name, rule.pool
            )));
        }
        if let Some(member) = &rule.member {
            let members = adc_sdk::pools::members(&rule.pool).unwrap_or_default();
            if !members.iter().any(|m| &m.name == member) {
                return Err(Error::new(format!(
                    "rule {:?}: pool {:?} has no member {member:?}",
                    rule.name, rule.pool
                )));
            }
        }
    }
    match default {
        Some(pool) if missing(pool) => Err(Error::new(format!(
            "`default`: pool {pool:?} is not configured"
        ))),
        _ => Ok(()),
    }
}

/// The router policy.
pub struct Router {
    rules: Vec<Rule>,
    default: Option<String>,
}

#[policy]
impl Policy for Router {
    fn init(config: Config) -> Result<Self, Error> {
        let settings: Settings = config.parse()?;
        let mut rules: Vec<Rule> = Vec::with_capacity(settings.rules.len());
        for s in settings.rules {
            if s.name.is_empty() {
                return Err(Error::new("a rule has an empty `name`"));
            }
            if rules.iter().any(|r| r.name == s.name) {
                return Err(Error::new(format!("rule name {:?} is used twice", s.name)));
            }
            rules.push(Rule::compile(s)?);
        }
        if settings.default.as_deref() == Some("") {
            return Err(Error::new("`default` is empty"));
        }
        if rules.is_empty() && settings.default.is_none() {
            return Err(Error::new("no rules and no `default`: nothing to route"));
        }
        check_pools(&rules, settings.default.as_deref())?;
        Ok(Router {
            rules,
            default: settings.default,
        })
    }

    fn on_request_headers(&self, req: &Request) -> Decision {
        let facts = Facts::new(req);
        if let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.conditions.iter().all(|c| c.holds(&facts)))
        {
            let _ = metrics::counter_add("route_matches_total", 1, &[("rule", &rule.name)]);
            req.set_var(RULE_VAR, &rule.name);
            req.set_var(POOL_VAR, &rule.pool);
            return rule.decision();
        }

        match &self.default {
            Some(pool) => {
                let _ = metrics::counter_add("route_default_total", 1, &[]);
                req.set_var(POOL_VAR, pool);
                Decision::route(pool)
            }
            None => {
                let _ = metrics::counter_add("route_unmatched_total", 1, &[]);
                Decision::Continue
            }
        }
    }
}

#[cfg(test)]
mod tests;

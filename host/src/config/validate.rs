//! Checks across sections, right after parsing. Every refusal points at the
//! key it is about: a value parsed with its place (`toml::Spanned`), or a
//! key named by its path, found again in the text when the error is
//! reported.

use std::collections::HashSet;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{Config, HealthKind, Listener, Method, Protocol};

/// Where in the file a refusal points.
#[derive(Debug)]
pub(super) enum At {
    /// The byte offset of a value parsed with its place.
    Offset(usize),
    /// A key by its path from the top of the document, such as
    /// `listener`, 1, `listen`.
    Key(Vec<Step>),
}

#[derive(Debug)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

impl From<&str> for Step {
    fn from(key: &str) -> Step {
        Step::Key(key.to_owned())
    }
}

impl From<&String> for Step {
    fn from(key: &String) -> Step {
        Step::Key(key.clone())
    }
}

impl From<usize> for Step {
    fn from(index: usize) -> Step {
        Step::Index(index)
    }
}

impl<T> From<&Spanned<T>> for At {
    fn from(value: &Spanned<T>) -> At {
        At::Offset(value.span().start)
    }
}

/// The key at `path` (listener 0's `name`: `key(["listener".into(),
/// 0.into(), "name".into()])`).
fn key<const N: usize>(path: [Step; N]) -> At {
    At::Key(path.into())
}

/// A refusal: where, and why.
pub(super) type Invalid = (At, String);

impl At {
    /// The byte offset in `text` this points at. A key the file does not
    /// have (its default was taken) gives the closest of its sections that
    /// it has.
    pub(super) fn offset(&self, text: &str) -> Option<usize> {
        let path = match self {
            At::Offset(offset) => return Some(*offset),
            At::Key(path) => path,
        };
        let document = DeTable::parse(text).ok()?;
        let mut table: Option<&DeTable> = Some(document.get_ref());
        let mut array: Option<&[Spanned<DeValue>]> = None;
        let mut found = None;
        for step in path {
            let (start, value) = match (step, table, array) {
                (Step::Key(k), Some(t), _) => match t.get_key_value(k.as_str()) {
                    Some((key, value)) => (key.span().start, value),
                    None => break,
                },
                (Step::Index(i), _, Some(a)) => match a.get(*i) {
                    Some(value) => (value.span().start, value),
                    None => break,
                },
                _ => break,
            };
            found = Some(start);
            (table, array) = match value.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        found
    }
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.workers > super::MAX_WORKERS {
            return Err((
                key(["workers".into()]),
                format!(
                    "workers = {}: at most {} (0, the default, means one per core)",
                    self.workers,
                    super::MAX_WORKERS
                ),
            ));
        }
        for (name, p) in &self.policies {
            // Each entry holds a key and value of the policy's choosing.
            const MOST: usize = 10_000_000;
            if p.table_entries == 0 || p.table_entries > MOST {
                return Err((
                    key(["policies".into(), name.into(), "table_entries".into()]),
                    format!(
                        "policy {name:?}: table_entries = {} must be from 1 to {MOST}",
                        p.table_entries
                    ),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |k: &str| key(["listener".into(), i.into(), k.into()]);
            if l.name.trim().is_empty() {
                return Err((
                    at("name"),
                    "a listener's name is empty: name it (logs, metrics and /status use it)"
                        .to_owned(),
                ));
            }
            if !names.insert(&l.name) {
                return Err((
                    at("name"),
                    format!("listener {:?} is defined twice", l.name),
                ));
            }
            let admin = self.admin.listen.get_ref();
            let overlaps = l.listen.port() == admin.port()
                && (l.listen.ip() == admin.ip()
                    || l.listen.ip().is_unspecified()
                    || admin.ip().is_unspecified());
            if l.listen.port() != 0 && l.protocol != Protocol::Udp && overlaps {
                // The admin address may be the default, written nowhere.
                let place = if self.admin.listen.span().is_empty() {
                    at("listen")
                } else {
                    At::from(&self.admin.listen)
                };
                return Err((
                    place,
                    format!(
                        "admin address {admin} overlaps listener {:?} at {}: keep management apart",
                        l.name, l.listen
                    ),
                ));
            }
            match l.protocol {
                Protocol::Http | Protocol::Https => {
                    if l.routes.is_empty() {
                        return Err((at("name"), format!("listener {:?} has no route", l.name)));
                    }
                    if let Some(p) = &l.pool {
                        return Err((
                            p.into(),
                            format!(
                                "listener {:?}: an HTTP listener takes its pools from routes",
                                l.name
                            ),
                        ));
                    }
                }
                Protocol::Tcp | Protocol::Udp => {
                    let Some(pool) = &l.pool else {
                        return Err((
                            at("protocol"),
                            format!("listener {:?}: an L4 listener needs a pool", l.name),
                        ));
                    };
                    if !self.pools.contains_key(pool.get_ref()) {
                        return Err((
                            pool.into(),
                            format!(
                                "listener names pool {:?}, which is not defined",
                                pool.get_ref()
                            ),
                        ));
                    }
                    if !l.routes.is_empty() {
                        return Err((
                            key(["listener".into(), i.into(), "route".into(), 0.into()]),
                            format!("listener {:?}: an L4 listener has no routes", l.name),
                        ));
                    }
                    self.health_speaks(pool, l.protocol == Protocol::Udp)?;
                    if l.protocol == Protocol::Udp {
                        self.no_proxy_protocol_over_udp(l, pool)?;
                    }
                }
            }
            match (l.protocol, &l.tls) {
                (Protocol::Https, None) => {
                    return Err((
                        at("protocol"),
                        format!(
                            "listener {:?}: https needs a [listener.tls] section",
                            l.name
                        ),
                    ))
                }
                (Protocol::Https, Some(t)) => {
                    if t.certificates.is_empty() {
                        return Err((
                            key([
                                "listener".into(),
                                i.into(),
                                "tls".into(),
                                "certificates".into(),
                            ]),
                            format!("listener {:?}: tls needs at least one certificate", l.name),
                        ));
                    }
                    let mut named = HashSet::new();
                    for (c, cert) in t.certificates.iter().enumerate() {
                        for name in cert.names.iter().flatten() {
                            let at = key([
                                "listener".into(),
                                i.into(),
                                "tls".into(),
                                "certificates".into(),
                                c.into(),
                                "names".into(),
                            ]);
                            let lower = name.to_ascii_lowercase();
                            if name.starts_with('[') || !valid_route_host(name) {
                                return Err((
                                    at,
                                    format!(
                                        "listener {:?}: certificate name {name:?} can never be \
                                         asked for: write a host name, or *. and a name for \
                                         its subdomains",
                                        l.name
                                    ),
                                ));
                            }
                            if !named.insert(lower) {
                                return Err((
                                    at,
                                    format!(
                                        "listener {:?}: certificate name {name:?} is given to \
                                         two certificates; only the first would ever answer",
                                        l.name
                                    ),
                                ));
                            }
                        }
                    }
                    if let (Some(required), None) = (&t.client_auth_required, &t.client_ca) {
                        return Err((
                            required.into(),
                            format!(
                                "listener {:?}: client_auth_required needs client_ca, the CA \
                                 that client certificates are verified with (without it no \
                                 client certificate is asked for)",
                                l.name
                            ),
                        ));
                    }
                    if !["1.2", "1.3"].contains(&t.min_version.get_ref().as_str()) {
                        return Err((
                            (&t.min_version).into(),
                            format!(
                                "min_version {:?}: use \"1.2\" or \"1.3\"",
                                t.min_version.get_ref()
                            ),
                        ));
                    }
                }
                (_, Some(_)) => {
                    return Err((
                        at("tls"),
                        format!("listener {:?}: tls needs protocol = \"https\"", l.name),
                    ))
                }
                (_, None) => {}
            }
            if l.http3 && l.protocol != Protocol::Https {
                return Err((
                    at("http3"),
                    format!("listener {:?}: http3 needs protocol = \"https\"", l.name),
                ));
            }
            for p in &l.policies {
                if !self.policies.contains_key(p.get_ref()) {
                    return Err((
                        p.into(),
                        format!(
                            "listener names policy {:?}, which is not defined",
                            p.get_ref()
                        ),
                    ));
                }
            }
            for cidr in &l.proxy_protocol_from {
                if crate::net::Cidr::parse(cidr.get_ref()).is_none() {
                    return Err((
                        cidr.into(),
                        format!(
                            "proxy_protocol_from {:?}: not an address or CIDR block",
                            cidr.get_ref()
                        ),
                    ));
                }
            }
            for (j, r) in l.routes.iter().enumerate() {
                let at_route = |k: &str| {
                    key([
                        "listener".into(),
                        i.into(),
                        "route".into(),
                        j.into(),
                        k.into(),
                    ])
                };
                if !self.pools.contains_key(r.pool.get_ref()) {
                    return Err((
                        (&r.pool).into(),
                        format!(
                            "route names pool {:?}, which is not defined",
                            r.pool.get_ref()
                        ),
                    ));
                }
                self.health_speaks(&r.pool, false)?;
                if self
                    .pools
                    .get(r.pool.get_ref())
                    .is_some_and(|p| p.proxy_protocol.is_some())
                {
                    return Err(((&r.pool).into(), format!(
                        "pool {:?} sends PROXY headers, which only TCP listeners write; HTTP routes carry the client in X-Forwarded-For",
                        r.pool.get_ref()
                    )));
                }
                for p in &r.policies {
                    if !self.policies.contains_key(p.get_ref()) {
                        return Err((
                            p.into(),
                            format!("route names policy {:?}, which is not defined", p.get_ref()),
                        ));
                    }
                }
                if let Some(host) = r.host.as_deref().filter(|h| !valid_route_host(h)) {
                    return Err((
                        at_route("host"),
                        format!(
                            "route host {host:?} is not a host name: write a name such as \
                             \"api.example.com\", \"*.example.com\" for any subdomain, or an \
                             IP address, without port or final dot"
                        ),
                    ));
                }
                if !r.path_prefix.starts_with('/') {
                    return Err((
                        at_route("path_prefix"),
                        format!("path_prefix {:?} must start with '/'", r.path_prefix),
                    ));
                }
            }
        }
        for (name, pool) in &self.pools {
            let at = |k: &str| key(["pools".into(), name.into(), k.into()]);
            if pool.members.is_empty() {
                return Err((at("members"), format!("pool {name:?} has no members")));
            }
            let mut seen = HashSet::new();
            for (i, m) in pool.members.iter().enumerate() {
                if m.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                    return Err((
                        key(["pools".into(), name.into(), "members".into(), i.into()]),
                        format!(
                            "pool {name:?}: member {i} has an empty name: name it or leave the \
                             name out (the address stands in)"
                        ),
                    ));
                }
                if !seen.insert(m.display_name()) {
                    return Err((
                        key(["pools".into(), name.into(), "members".into(), i.into()]),
                        format!("pool {name:?}: member {i} repeats a name or address"),
                    ));
                }
            }
            if let Some(h) = &pool.hash_on {
                if pool.method != Method::ConsistentHash {
                    return Err((
                        h.into(),
                        format!(
                            "pool {name:?}: hash_on needs method = \"consistent_hash\" (the method is {:?})",
                            pool.method.name()
                        ),
                    ));
                }
                let ok = h.get_ref() == "client_ip"
                    || h.get_ref().strip_prefix("header:").is_some_and(|n| {
                        !n.is_empty() && http::HeaderName::from_bytes(n.as_bytes()).is_ok()
                    })
                    || h.get_ref()
                        .strip_prefix("cookie:")
                        .is_some_and(valid_cookie_name);
                if !ok {
                    return Err((
                        h.into(),
                        format!(
                            "hash_on {:?}: use client_ip, header:<name> or cookie:<name>, \
                             with a valid header or cookie name",
                            h.get_ref()
                        ),
                    ));
                }
            }
            if let Some(h) = &pool.health {
                let at = |k: &str| key(["pools".into(), name.into(), "health".into(), k.into()]);
                // Probes more often than this flood the member and flap its
                // state without telling anything more.
                const SHORTEST: Duration = Duration::from_millis(10);
                let short_interval = h.interval < SHORTEST;
                if short_interval || h.timeout < Duration::from_millis(1) {
                    return Err((
                        at(if short_interval {
                            "interval"
                        } else {
                            "timeout"
                        }),
                        format!(
                            "pool {name:?}: health interval must be at least 10ms and timeout \
                             at least 1ms (interval {:?}, timeout {:?})",
                            h.interval, h.timeout
                        ),
                    ));
                }
                if !h.path.starts_with('/') {
                    return Err((
                        at("path"),
                        format!(
                            "pool {name:?}: health path {:?} must start with '/'",
                            h.path
                        ),
                    ));
                }
                if h.path.parse::<http::uri::PathAndQuery>().is_err() || h.path.contains(' ') {
                    return Err((
                        at("path"),
                        format!(
                            "pool {name:?}: health path {:?} is not a valid request target \
                             (spaces and other characters must be percent-encoded)",
                            h.path
                        ),
                    ));
                }
                if http::Method::from_bytes(h.method.as_bytes()).is_err() {
                    return Err((
                        at("method"),
                        format!(
                            "pool {name:?}: health method {:?} is not a method token",
                            h.method
                        ),
                    ));
                }
                if h.rise == 0 || h.fall == 0 {
                    return Err((
                        at(if h.rise == 0 { "rise" } else { "fall" }),
                        format!("pool {name:?}: health rise and fall must be at least 1"),
                    ));
                }
                match (h.kind, &h.send, &h.expect) {
                    (HealthKind::Udp, None, _) => {
                        return Err((
                            at("kind"),
                            format!("pool {name:?}: health kind \"udp\" needs send"),
                        ))
                    }
                    (HealthKind::Tcp | HealthKind::Http, send, expect)
                        if send.is_some() || expect.is_some() =>
                    {
                        return Err((
                            at(if send.is_some() { "send" } else { "expect" }),
                            format!("pool {name:?}: health send and expect need kind = \"udp\""),
                        ))
                    }
                    _ => {}
                }
                if h.kind != HealthKind::Http {
                    // What only an HTTP probe sends or checks, set for one
                    // that is not: the operator meant another kind.
                    let http_only = [
                        ("path", h.path != "/"),
                        ("method", h.method != "GET"),
                        ("expect_status", h.expect_status != (200, 399)),
                        ("expect_body", h.expect_body.is_some()),
                        ("host", h.host.is_some()),
                    ];
                    if let Some((k, _)) = http_only.iter().find(|(_, set)| *set) {
                        return Err((
                            at(k),
                            format!("pool {name:?}: health {k} needs kind = \"http\""),
                        ));
                    }
                }
            }
        }
        let mut bound = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let udp = l.protocol == Protocol::Udp;
            if l.listen.port() != 0 && !bound.insert((l.listen, udp)) {
                return Err((
                    key(["listener".into(), i.into(), "listen".into()]),
                    format!(
                        "listener {:?}: address {} is used by another listener",
                        l.name, l.listen
                    ),
                ));
            }
        }
        if self.limits.max_header_bytes < 1024 {
            return Err((
                key(["limits".into(), "max_header_bytes".into()]),
                format!(
                    "limits.max_header_bytes = {}: use at least 1024",
                    self.limits.max_header_bytes
                ),
            ));
        }
        for (k, value) in [
            ("connect_timeout", self.limits.connect_timeout),
            ("header_timeout", self.limits.header_timeout),
            ("idle_timeout", self.limits.idle_timeout),
        ] {
            if value.is_zero() {
                return Err((
                    key(["limits".into(), k.into()]),
                    format!("limits.{k} = 0s: use at least 1ms (0 would give up at once)"),
                ));
            }
        }
        if self.limits.retries > MAX_RETRIES {
            return Err((
                key(["limits".into(), "retries".into()]),
                format!(
                    "limits.retries = {}: at most {MAX_RETRIES} (each is another member tried \
                     for one request)",
                    self.limits.retries
                ),
            ));
        }
        if self.limits.max_udp_flows == 0 {
            return Err((
                key(["limits".into(), "max_udp_flows".into()]),
                "limits.max_udp_flows = 0: use at least 1 (a UDP listener without flows relays nothing)"
                    .to_owned(),
            ));
        }
        if self
            .admin
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err((
                key(["admin".into(), "token".into()]),
                "admin.token is empty: set a token or remove the key".to_owned(),
            ));
        }
        let loopback = self.admin.listen.get_ref().ip().is_loopback();
        if !loopback && self.admin.token.is_none() && !self.admin.allow_public_without_token {
            return Err(((&self.admin.listen).into(), format!(
                "admin address {} is not loopback and has no token: set admin.token, or allow_public_without_token = true",
                self.admin.listen.get_ref()
            )));
        }
        Ok(())
    }

    /// A pool's health checks must speak what its users send: UDP probes
    /// for a UDP listener's pool, TCP or HTTP probes for the others.
    fn health_speaks(&self, pool: &Spanned<String>, udp: bool) -> Result<(), Invalid> {
        let kind = self
            .pools
            .get(pool.get_ref())
            .and_then(|p| p.health.as_ref())
            .map(|h| h.kind);
        match kind {
            Some(k) if (k == HealthKind::Udp) != udp => Err((
                pool.into(),
                format!(
                    "pool {:?} is used over {}: its health kind must {}be \"udp\"",
                    pool.get_ref(),
                    if udp { "UDP" } else { "TCP" },
                    if udp { "" } else { "not " }
                ),
            )),
            _ => Ok(()),
        }
    }

    /// PROXY headers are read and written on TCP only: a UDP listener that
    /// names them would silently go without.
    fn no_proxy_protocol_over_udp(
        &self,
        l: &Listener,
        pool: &Spanned<String>,
    ) -> Result<(), Invalid> {
        if let Some(first) = l.proxy_protocol_from.first() {
            return Err((
                first.into(),
                format!(
                    "listener {:?}: proxy_protocol_from needs a TCP listener, not udp",
                    l.name
                ),
            ));
        }
        if self.pools[pool.get_ref()].proxy_protocol.is_some() {
            return Err((
                pool.into(),
                format!(
                    "pool {:?} sends PROXY headers, which a udp listener cannot",
                    pool.get_ref()
                ),
            ));
        }
        Ok(())
    }
}

/// A cookie name: a token (RFC 6265), not empty.
/// More tries than this for one request only multiply a failure's load.
const MAX_RETRIES: usize = 16;

/// A route's host: a DNS name (labels of letters, digits, '-' and '_'),
/// `*.` and such a name for any subdomain of it, an IPv4 address, or an
/// IPv6 address in brackets. Hosts match without regard to case.
fn valid_route_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use crate::config::tests::GOOD;
    use crate::config::Config;

    /// The line and message of the refusal of `text`.
    fn refused(text: &str) -> (usize, String) {
        let e = Config::parse(text, "t.toml").expect_err("refused");
        (e.line, e.message)
    }

    #[test]
    fn every_refusal_names_the_line_of_its_key() {
        // GOOD is 9 lines long: what is added starts on line 10.
        let listener = |more: &str| {
            format!("{GOOD}\n[[listener]]\nname = \"more\"\nlisten = \"127.0.0.1:8081\"\n{more}")
        };
        let members = "members = [{ address = \"127.0.0.1:9001\" }]";
        let cases = [
            // Two sections: the second listener's name, and its address.
            (listener("[[listener.route]]\npool = \"app\"\n").replace("\"more\"", "\"web\""), 12, "defined twice"),
            (listener("[[listener.route]]\npool = \"app\"\n").replace("8081", "8080"), 13, "used by another listener"),
            // The default admin address, written nowhere: the listener's.
            (GOOD.replace("8080", "9900"), 4, "keep management apart"),
            (listener("protocol = \"tcp\"\n"), 14, "needs a pool"),
            (listener("protocol = \"https\"\n[[listener.route]]\npool = \"app\"\n"), 14, "[listener.tls]"),
            (listener("http3 = true\n[[listener.route]]\npool = \"app\"\n"), 14, "http3 needs"),
            (listener(""), 12, "has no route"),
            (listener("[[listener.route]]\npool = \"app\"\npath_prefix = \"api\"\n"), 16, "must start with '/'"),
            (listener("protocol = \"tcp\"\npool = \"app\"\n[[listener.route]]\npool = \"app\"\n"), 16, "has no routes"),
            (
                GOOD.replace(members, "members = [\n  { address = \"127.0.0.1:9001\" },\n  { address = \"127.0.0.1:9001\" },\n]"),
                11,
                "repeats",
            ),
            (GOOD.replace(members, "members = []"), 9, "no members"),
            (GOOD.to_owned() + "[pools.app.health]\nkind = \"tcp\"\nrise = 2\nfall = 0\n", 13, "rise and fall"),
            (GOOD.to_owned() + "[pools.app.health]\nkind = \"tcp\"\ntimeout = \"0ms\"\n", 12, "at least 1ms"),
            (GOOD.to_owned() + "[pools.app.health]\nkind = \"tcp\"\nexpect = \"pong\"\n", 12, "need kind"),
            (GOOD.to_owned() + "[pools.app.health]\nkind = \"tcp\"\npath = \"/health\"\n", 12, "path needs kind = \"http\""),
            (GOOD.to_owned() + "[policies.p]\nfile = \"p.wasm\"\ntable_entries = 0\n", 12, "table_entries = 0 must be from 1"),
            (GOOD.to_owned() + "[pools.app.health]\nkind = \"tcp\"\nexpect_body = \"ok\"\n", 12, "expect_body needs kind"),
            (GOOD.to_owned() + "[pools.app.health]\nkind = \"tcp\"\nexpect_status = \"200\"\n", 12, "expect_status needs kind"),
            (GOOD.to_owned() + "[limits]\nmax_header_bytes = 100\n", 11, "max_header_bytes"),
            (GOOD.to_owned() + "[limits]\nmax_udp_flows = 0\n", 11, "max_udp_flows"),
            ("[admin]\ntoken = \" \"\n".to_owned() + GOOD, 2, "token is empty"),
            (GOOD.replace("name = \"web\"", "name = \"\""), 3, "name is empty"),
            (GOOD.replace("{ address", "{ name = \"\", address"), 9, "empty name"),
            (GOOD.replace("[pools.app]\n", "[pools.app]\nhash_on = \"client_ip\"\n"), 9, "needs method = \"consistent_hash\""),
            (GOOD.replace("[pools.app]\n", "[pools.app]\nmethod = \"consistent_hash\"\nhash_on = \"header:x y\"\n"), 10, "valid header"),
            (GOOD.replace("[pools.app]\n", "[pools.app]\nmethod = \"consistent_hash\"\nhash_on = \"cookie:a;b\"\n"), 10, "cookie name"),
            (GOOD.to_owned() + "[pools.app.health]\nkind = \"http\"\npath = \"health\"\n", 12, "must start with '/'"),
            (GOOD.to_owned() + "[limits]\nconnect_timeout = \"0s\"\n", 11, "connect_timeout = 0s"),
            (GOOD.to_owned() + "[limits]\nretries = 100000\n", 11, "limits.retries = 100000"),
            (GOOD.to_owned() + "[limits]\nidle_timeout = \"0ms\"\n", 11, "idle_timeout = 0s"),
            (GOOD.to_owned() + "[limits]\nheader_timeout = \"0s\"\n", 11, "header_timeout = 0s"),
            (listener("[[listener.route]]\npool = \"app\"\nhost = \"a b\"\n"), 16, "not a host name"),
            (listener("[[listener.route]]\npool = \"app\"\nhost = \"*.*.example.com\"\n"), 16, "not a host name"),
            (listener("[[listener.route]]\npool = \"app\"\nhost = \"example.com:80\"\n"), 16, "not a host name"),
            (listener("[[listener.route]]\npool = \"app\"\nhost = \"example.com.\"\n"), 16, "not a host name"),
            ("workers = 5000\n".to_owned() + GOOD, 1, "workers"),
            (
                listener("protocol = \"https\"\n[listener.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]\nclient_auth_required = true\n[[listener.route]]\npool = \"app\"\n"),
                17,
                "client_auth_required needs client_ca",
            ),
            (GOOD.to_owned() + "[pools.app.health]\nkind = \"http\"\npath = \"/a b\"\n", 12, "not a valid request target"),
            (
                listener("protocol = \"https\"\n[listener.tls]\ncertificates = [\n  { cert = \"a.pem\", key = \"a.key\", names = [\"*.*.test\"] },\n]\n[[listener.route]]\npool = \"app\"\n"),
                17,
                "can never be asked for",
            ),
            (
                listener("protocol = \"https\"\n[listener.tls]\ncertificates = [\n  { cert = \"a.pem\", key = \"a.key\", names = [\"a.test\"] },\n  { cert = \"b.pem\", key = \"b.key\", names = [\"A.test\"] },\n]\n[[listener.route]]\npool = \"app\"\n"),
                18,
                "two certificates",
            ),
            (GOOD.to_owned() + "[pools.app.health]\nkind = \"http\"\nmethod = \"G ET\"\n", 12, "not a method token"),
        ];
        for (text, line, message) in cases {
            let (got, said) = refused(&text);
            assert!(said.contains(message), "{said:?} for:\n{text}");
            assert_eq!(got, line, "{said:?} for:\n{text}");
        }
    }

    #[test]
    fn route_hosts_that_can_match_are_accepted() {
        for host in [
            "api.example.com",
            "*.example.com",
            "API.Example.COM",
            "10.0.0.1",
            "[::1]",
            "svc_a.internal",
            "localhost",
        ] {
            assert!(super::valid_route_host(host), "{host}");
        }
    }
}

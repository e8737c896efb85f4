//! The text rules the host applies to requests, shared with policies so that
//! a policy's tests and the proxy agree: path normalisation, cookie and query
//! parsing, percent-decoding.

/// Normalise a request path the way the host forwards it.
///
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
///   decoded, so `%2e%2e` becomes `..` before dot segments are removed;
///   other escapes are kept, with their hex digits uppercased;
/// - `.` and `..` segments are removed (RFC 3986 section 5.2.4); `..` never
///   climbs above the root;
/// - runs of slashes become one (`//admin` is `/admin`: many backends read
///   it so, and a rule on `/admin` must not be dodged);
/// - an empty path becomes `/`.
///
/// ```
/// assert_eq!(adc_sdk::text::normalize_path("/a/%2e%2e/b/./c"), "/b/c");
/// assert_eq!(adc_sdk::text::normalize_path("/../../etc/passwd"), "/etc/passwd");
/// assert_eq!(adc_sdk::text::normalize_path("/a%2fb"), "/a%2Fb");
/// ```
pub fn normalize_path(path: &str) -> String {
    let decoded = decode_unreserved(path);
    remove_dot_segments(&decoded)
}

/// Whether [`normalize_path`] would leave `path` as it is, found without
/// building anything: it starts with `/` and has no `%`, no empty segment
/// and no `.` or `..` segment. It may say no for a path that normalises to
/// itself (one with a `%` escape that must stay); never yes for one that
/// changes.
///
/// ```
/// use adc_sdk::text::{normalize_path, path_is_normal};
/// assert!(path_is_normal("/api/v1/users"));
/// assert!(!path_is_normal("/api//users") && normalize_path("/api//users") == "/api/users");
/// ```
pub fn path_is_normal(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('%')
        && !path.contains("//")
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                let c = h << 4 | l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(bytes[i + 1].to_ascii_uppercase() as char);
                    out.push(bytes[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        // Paths reaching here are ASCII (the HTTP parser guarantees it); a
        // stray non-ASCII byte is kept as the char it starts.
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let trailing = path.ends_with('/')
        || path.ends_with("/.")
        || path.ends_with("/..")
        || path == "."
        || path == "..";
    for segment in path.split('/').skip(usize::from(path.starts_with('/'))) {
        match segment {
            "." | "" => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

/// The value of one hexadecimal digit, either case.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode every percent escape (and `+` as space when `plus_is_space`);
/// invalid escapes stay as written, invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
            {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of `name` in a query string, percent-decoded.
///
/// ```
/// assert_eq!(adc_sdk::text::query_param("a=1&b=x%20y", "b").as_deref(), Some("x y"));
/// ```
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k, true) == name).then(|| percent_decode(v, true))
    })
}

/// Cookies of one `Cookie` field value, as `(name, value)`, quotes removed.
///
/// ```
/// let c = adc_sdk::text::parse_cookies(r#"a=1; sid="x y"; b"#);
/// assert_eq!(c, vec![("a".into(), "1".into()), ("sid".into(), "x y".into())]);
/// ```
pub fn parse_cookies(field: &str) -> Vec<(String, String)> {
    field
        .split(';')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let name = name.trim();
            if name.is_empty() {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// A `Host` value without its port: `Example.com:80` gives `Example.com`,
/// `[::1]:8080` gives `[::1]`.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Headers a policy may not set or remove: hop-by-hop headers and the
/// message framing, which the host manages per connection.
pub const MANAGED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// Whether the host manages header `name` (see [`MANAGED_HEADERS`]).
pub fn is_managed_header(name: &str) -> bool {
    MANAGED_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether `name` is a header name token (RFC 9110 section 5.1).
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` may be sent as a header value: visible characters,
/// spaces and tabs, no line breaks or other controls.
pub fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `path_is_normal` is the shortcut the proxy takes around
    /// `normalize_path`: it must never say yes to a path that changes.
    #[test]
    fn a_path_said_to_be_normal_normalises_to_itself() {
        let pieces = ["", "/", "a", ".", "..", "%2e", "%41", "b.c", "//", "~"];
        let mut said_normal = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for path in [
                        format!("/{a}/{b}/{c}"),
                        format!("/{a}{b}/{c}"),
                        format!("{a}/{b}{c}"),
                    ] {
                        if path_is_normal(&path) {
                            said_normal += 1;
                            assert_eq!(normalize_path(&path), path);
                        }
                    }
                }
            }
        }
        assert!(said_normal > 50, "{said_normal}");
        for normal in ["/", "/a", "/a/", "/a/b.c/~"] {
            assert!(path_is_normal(normal), "{normal}");
        }
    }

    #[test]
    fn encoded_dot_segments_are_removed_after_decoding() {
        assert_eq!(normalize_path("/static/%2e%2e/%2E%2E/admin"), "/admin");
        assert_eq!(normalize_path("/a/b/.."), "/a/");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("/a//b"), "/a/b");
        assert_eq!(normalize_path("//api/users"), "/api/users");
        assert_eq!(normalize_path("/dir/"), "/dir/");
    }

    #[test]
    fn reserved_escapes_stay_encoded() {
        assert_eq!(normalize_path("/a%2fb/%3f"), "/a%2Fb/%3F");
        assert_eq!(normalize_path("/100%"), "/100%");
        assert_eq!(normalize_path("/%zz"), "/%zz");
    }

    #[test]
    fn percent_decode_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2", false), "a%2");
        assert_eq!(percent_decode("a+b%21", true), "a b!");
    }
}

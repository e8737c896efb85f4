//! What a proxy owes HTTP: hop-by-hop headers stay on their hop, the client
//! address travels in X-Forwarded-For and Forwarded, upgrades become tunnels.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, Version};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::ConnInfo;
use crate::error::ProxyError;
use crate::policy::Exchange;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that belong to one connection (RFC 9110 section 7.6.1), and
/// the proxy authentication pair (section 11.7): credentials meant for the
/// proxy a client talks to (adc) and a challenge for the client from the
/// next proxy, neither of which a backend or a client of adc should get.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Headers a client may not have removed by naming them in `Connection`:
/// the ones the proxy routes by, frames the body by, or vouches for.
const PROTECTED: [HeaderName; 5] = [
    header::HOST,
    header::CONTENT_LENGTH,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    header::FORWARDED,
];

/// A WebSocket-style upgrade: HTTP/1.1 GET with `Connection: upgrade` and an
/// `Upgrade` header. An offer of h2c is refused (RFC 9113 section 3.1
/// deprecates it): the request goes on as an ordinary one, without the
/// offer, since a tunnel to an HTTP/2 backend would carry requests that no
/// policy sees.
pub fn upgrade_requested(parts: &http::request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && parts.headers.contains_key(header::UPGRADE)
        && connection_tokens(&parts.headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && !tokens(&parts.headers, &header::UPGRADE).any(|t| {
            t.split('/')
                .next()
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("h2c"))
        })
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    tokens(headers, &header::CONNECTION)
}

/// The comma-separated tokens of every `name` line.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Check the request's transfer codings (RFC 9112 section 6.1). One
/// other than chunked is answered 501: the proxy cannot forward what it
/// cannot decode, and must not drop the coding silently; chunked applied
/// more than once is a bad request. The usual request, without
/// `Transfer-Encoding`, costs one lookup.
pub fn check_transfer_coding(headers: &HeaderMap) -> Result<(), ProxyError> {
    if !headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(());
    }
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| ProxyError::BadRequest("invalid Transfer-Encoding".into()))?;
        for coding in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(ProxyError::TransferCoding(coding.to_owned()));
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(ProxyError::BadRequest(
            "chunked applied more than once".into(),
        ));
    }
    Ok(())
}

/// Check the request's host (RFC 9112 section 3.2): one valid `Host`,
/// present on HTTP/1.1; an absolute-form target's authority wins over the
/// header. An HTTP/1.0 request without one is given the local address.
pub fn check_host(parts: &mut http::request::Parts, conn: &ConnInfo) -> Result<(), &'static str> {
    let mut values = parts.headers.get_all(header::HOST).iter();
    let host = values.next().cloned();
    if values.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Err("user information in the request target");
        }
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| "invalid authority")?;
        parts.headers.insert(header::HOST, value);
        return Ok(());
    }
    match host {
        Some(value) => {
            let text = value.to_str().map_err(|_| "invalid Host header")?;
            // A port, when there is one, is a number that fits 16 bits.
            let has_port = text.rsplit(']').next().is_some_and(|t| t.contains(':'));
            let valid = !text.is_empty()
                && !text.contains('@')
                && text
                    .parse::<http::uri::Authority>()
                    .is_ok_and(|a| a.as_str() == text && (a.port().is_some() || !has_port));
            if valid {
                Ok(())
            } else {
                Err("invalid Host header")
            }
        }
        None if parts.version == Version::HTTP_11 => Err("missing Host header"),
        None => {
            let local = HeaderValue::from_str(&conn.local.to_string())
                .map_err(|_| "invalid local address")?;
            parts.headers.insert(header::HOST, local);
            Ok(())
        }
    }
}

/// Remove hop-by-hop headers, and every header `Connection` names but the
/// [`PROTECTED`] ones. `keep_upgrade` keeps `Upgrade` for a tunnel.
fn strip(headers: &mut HeaderMap, keep_upgrade: bool) {
    // `close` and `keep-alive`, the usual tokens, name nothing to remove
    // beyond the hop-by-hop headers removed below: skip them before
    // building a name (which allocates).
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| {
            !t.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| t.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !(PROTECTED.contains(n) || keep_upgrade && *n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        if keep_upgrade && *name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
}

/// The client's address as the forwarded headers spell it, made once per
/// connection.
#[derive(Clone, Debug)]
pub struct Forwarding {
    /// `X-Forwarded-For` naming the peer alone.
    xff: HeaderValue,
    /// The `for=` node of `Forwarded` (an IPv6 address quoted, bracketed).
    node: String,
}

impl Forwarding {
    pub fn new(peer: IpAddr) -> Forwarding {
        let text = peer.to_string();
        let node = match peer {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        Forwarding {
            xff: HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                .expect("an IP address is a valid header value"),
            node,
        }
    }
}

/// Make a client request ready to forward and return the client address:
/// the peer, or with `trusted_hops` proxies in front, the address that many
/// hops from the right of X-Forwarded-For.
pub fn prepare_request(
    parts: &mut http::request::Parts,
    conn: &ConnInfo,
    trusted_hops: usize,
) -> IpAddr {
    let upgrade = upgrade_requested(parts);
    strip(&mut parts.headers, upgrade);

    let peer = conn.peer.ip();
    let forwarded: Vec<IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let client = if trusted_hops == 0 {
        peer
    } else {
        // The peer is the nearest trusted proxy; each further trusted hop
        // vouches for the entry to its left.
        forwarded
            .iter()
            .rev()
            .nth(trusted_hops - 1)
            .copied()
            .unwrap_or_else(|| forwarded.first().copied().unwrap_or(peer))
    };

    let spelled = conn.forwarding();
    let prior = parts
        .headers
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .filter(|_| trusted_hops > 0);
    let xff = match prior {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {peer}")).ok(),
        None => Some(spelled.xff.clone()),
    };
    if let Some(v) = xff {
        // `insert` replaces every line the client sent.
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    let proto = if conn.tls { "https" } else { "http" };
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if trusted_hops == 0 {
        // Like X-Forwarded-For: what an untrusted client claims is dropped.
        parts.headers.remove(header::FORWARDED);
    }
    let mut forwarded = String::with_capacity(64);
    let _ = write!(forwarded, "for={};proto={proto}", spelled.node);
    if let Some(h) = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        let _ = write!(forwarded, ";host=\"{h}\"");
    }
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        parts.headers.append(header::FORWARDED, v);
    }

    // HTTP/2 clients send :authority instead of Host; backends get a Host.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    client
}

/// Hop-by-hop headers never reach the client from a backend.
pub fn strip_response(headers: &mut HeaderMap, switching_protocols: bool) {
    strip(headers, switching_protocols);
    if switching_protocols {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Join the `Cookie` fields of a request into one, as an HTTP/1.1 hop needs
/// them (RFC 9113 section 8.2.3: HTTP/2 and HTTP/3 clients may split the
/// cookies into fields of their own). Costs one lookup when there is at
/// most one field.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(256);
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(header::COOKIE, value);
    }
}

pub fn set_content_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// Join the client's and the backend's upgraded connections into a two-way
/// tunnel, and return the 101 answer for the client.
pub fn tunnel(
    ex: &mut Exchange,
    response: &mut Response<Incoming>,
) -> Response<Empty<bytes::Bytes>> {
    let client = ex.request.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let backend = hyper::upgrade::on(&mut *response);
    tokio::spawn(async move {
        let Some(client) = client else { return };
        match tokio::try_join!(client, backend) {
            Ok((c, b)) => {
                let mut c = TokioIo::new(c);
                let mut b = TokioIo::new(b);
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                    tracing::debug!(error = %e, "tunnel closed");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut answer = Response::new(Empty::new());
    *answer.status_mut() = response.status();
    *answer.headers_mut() = response.headers().clone();
    answer
}

/// The size of a request's header list as HTTP/2 and HTTP/3 count it
/// (RFC 9113 section 6.5.2, RFC 9114 section 4.2.2): each field's name and
/// value and 32 more, the pseudo-header fields included.
pub fn header_list_size(parts: &http::request::Parts) -> usize {
    let field = |name: usize, value: usize| name + value + 32;
    let uri = &parts.uri;
    let pseudo = field(":method".len(), parts.method.as_str().len())
        + uri
            .scheme_str()
            .map_or(0, |s| field(":scheme".len(), s.len()))
        + uri
            .authority()
            .map_or(0, |a| field(":authority".len(), a.as_str().len()))
        + field(
            ":path".len(),
            uri.path_and_query().map_or(0, |p| p.as_str().len()),
        );
    pseudo
        + parts
            .headers
            .iter()
            .map(|(name, value)| field(name.as_str().len(), value.len()))
            .sum::<usize>()
}

/// The size of an HTTP/1 request head as it was sent: the request line and
/// each header line with its line end, and the empty line. hyper's own
/// bound on its read buffer is loose (a head that arrives in one read may
/// pass it by half again), so the limit proper is checked on this.
pub fn head_size(parts: &http::request::Parts) -> usize {
    let uri = &parts.uri;
    let target = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line = parts.method.as_str().len() + " ".len() + target + " HTTP/1.1\r\n".len();
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + ": \r\n".len() + value.len())
        .sum();
    line + fields + "\r\n".len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(request: http::request::Builder) -> http::request::Parts {
        request.body(()).expect("a valid request").into_parts().0
    }

    #[test]
    fn an_http1_head_is_measured_as_sent() {
        let sent = "GET /a?b HTTP/1.1\r\nhost: x\r\nx-long: abc\r\n\r\n";
        let head = parts(
            http::Request::get("/a?b")
                .header("host", "x")
                .header("x-long", "abc"),
        );
        assert_eq!(head_size(&head), sent.len());
    }

    #[test]
    fn only_chunked_once_is_a_transfer_coding_adc_forwards() {
        let te = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            check_transfer_coding(&headers).map_err(|e| e.status().as_u16())
        };
        assert_eq!(te(&[]), Ok(()));
        assert_eq!(te(&["chunked"]), Ok(()));
        assert_eq!(te(&["Chunked"]), Ok(()));
        assert_eq!(te(&["gzip, chunked"]), Err(501));
        assert_eq!(te(&["gzip", "chunked"]), Err(501));
        assert_eq!(te(&["chunked", "chunked"]), Err(400));
    }

    #[test]
    fn split_cookies_are_joined_and_a_single_field_is_left_alone() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut headers);
        assert_eq!(headers[header::COOKIE], "a=1");
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut headers);
        let all: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
    }
}

//! The PROXY protocol (versions 1 and 2): read from trusted load balancers
//! in front of adc, written to backends that want the client's address.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no PROXY protocol header from a source that must send one")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// The header for a connection from `client` to `local`.
pub fn encode(version: Version, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    // Mixed families cannot be expressed: present both as IPv6.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, local)
        }
        _ => (to_v6(client), to_v6(local)),
    };
    match version {
        Version::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut out = Vec::with_capacity(52);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY command
            match (client.ip(), local.ip()) {
                (IpAddr::V4(c), IpAddr::V4(l)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&c.octets());
                    out.extend_from_slice(&l.octets());
                }
                (IpAddr::V6(c), IpAddr::V6(l)) => {
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&c.octets());
                    out.extend_from_slice(&l.octets());
                }
                _ => unreachable!("families were made equal above"),
            }
            out.extend_from_slice(&client.port().to_be_bytes());
            out.extend_from_slice(&local.port().to_be_bytes());
            out
        }
    }
}

/// The header of a connection adc makes for itself, such as a health
/// probe: LOCAL in v2, UNKNOWN in v1. The receiver keeps the real peer.
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]); // v2 LOCAL, no address
            out
        }
    }
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

/// The addresses a PROXY header carries: the client's, and the one it
/// connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub client: SocketAddr,
    pub destination: SocketAddr,
}

/// Read a v1 or v2 header from the start of `stream`; returns the
/// addresses it carries (`None` for a LOCAL or UNKNOWN header: keep the
/// connection's own). Reads exactly the header's bytes, nothing after it.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<Carried>, Error> {
    let mut first = [0u8; 12];
    stream.read_exact(&mut first[..5]).await?;
    if &first[..5] == b"PROXY" {
        return read_v1(stream).await;
    }
    stream.read_exact(&mut first[5..]).await?;
    if first != V2_SIGNATURE {
        return Err(Error::Missing);
    }
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] >> 4 != 2 {
        return Err(Error::Malformed("version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    // Command 0 is LOCAL (the balancer's own health checks), 1 is PROXY.
    match head[0] & 0x0f {
        0 => return Ok(None),
        1 => {}
        _ => return Err(Error::Malformed("unknown command")),
    }
    match head[1] >> 4 {
        1 if len >= 12 => {
            let ip = |at: usize| IpAddr::from([body[at], body[at + 1], body[at + 2], body[at + 3]]);
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Ok(Some(Carried {
                client: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }))
        }
        2 if len >= 36 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                IpAddr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Ok(Some(Carried {
                client: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }))
        }
        // UNSPEC, and AF_UNIX, whose addresses are no IP's: the header is
        // whole, and the connection's own addresses stand.
        0 | 3 => Ok(None),
        1 | 2 => Err(Error::Malformed("addresses shorter than their family")),
        _ => Err(Error::Malformed("unsupported address family")),
    }
}

/// A v1 port: 1 to 5 decimal digits and nothing else (`u16`'s parser
/// would also take a sign).
fn v1_port(text: &str, what: &'static str) -> Result<u16, Error> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Malformed(what));
    }
    text.parse().map_err(|_| Error::Malformed(what))
}

async fn read_v1<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<Carried>, Error> {
    // At most 107 bytes in all, ending in CRLF; read byte by byte so that no
    // application data is consumed.
    let mut line = Vec::with_capacity(107);
    line.extend_from_slice(b"PROXY");
    loop {
        let b = stream.read_u8().await?;
        line.push(b);
        if line.ends_with(b"\r\n") {
            break;
        }
        if line.len() >= 107 {
            return Err(Error::Malformed("v1 header longer than 107 bytes"));
        }
    }
    let text = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| Error::Malformed("v1 header is not text"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *family == "TCP4";
            let ip: IpAddr = src
                .parse()
                .map_err(|_| Error::Malformed("bad source address"))?;
            if ip.is_ipv4() != v4 {
                return Err(Error::Malformed("source address of the other family"));
            }
            let to: IpAddr = dst
                .parse()
                .map_err(|_| Error::Malformed("bad destination address"))?;
            if to.is_ipv4() != v4 {
                return Err(Error::Malformed("destination address of the other family"));
            }
            Ok(Some(Carried {
                client: SocketAddr::new(ip, v1_port(sport, "bad source port")?),
                destination: SocketAddr::new(to, v1_port(dport, "bad destination port")?),
            }))
        }
        _ => Err(Error::Malformed("v1 header fields")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_versions_round_trip_and_leave_the_payload() {
        for version in [Version::V1, Version::V2] {
            for (c, l) in [
                ("192.0.2.7:5555", "198.51.100.1:443"),
                ("[2001:db8::7]:5555", "[2001:db8::1]:443"),
            ] {
                let client: SocketAddr = c.parse().unwrap();
                let local: SocketAddr = l.parse().unwrap();
                let mut bytes = encode(version, client, local);
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let mut reader = &bytes[..];
                let carried = read(&mut reader).await.unwrap().unwrap();
                assert_eq!((carried.client, carried.destination), (client, local));
                assert_eq!(reader, b"GET / HTTP/1.1\r\n");
            }
        }
    }

    #[tokio::test]
    async fn a_connection_without_a_header_is_refused() {
        let mut reader = &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..];
        assert!(matches!(read(&mut reader).await, Err(Error::Missing)));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        let mut reader = &long[..];
        assert!(matches!(read(&mut reader).await, Err(Error::Malformed(_))));
    }

    #[tokio::test]
    async fn a_header_that_contradicts_itself_is_refused() {
        let mut reader = &b"PROXY TCP4 2001:db8::7 192.0.2.1 5555 443\r\n"[..];
        assert!(matches!(read(&mut reader).await, Err(Error::Malformed(_))));

        // Command 2 does not exist: only LOCAL (0) and PROXY (1) do.
        let client: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let mut bytes = encode(Version::V2, client, client);
        bytes[12] = 0x22;
        let mut reader = &bytes[..];
        assert!(matches!(read(&mut reader).await, Err(Error::Malformed(_))));
    }

    /// v1 fields are checked whole: ports are digits only (Rust's integer
    /// parser also takes a sign, so "+4444" passed), and the destination
    /// is an address of the stated family (a review found both loose).
    #[tokio::test]
    async fn v1_ports_are_digits_and_the_destination_is_checked() {
        for line in [
            &b"PROXY TCP4 192.0.2.7 192.0.2.1 +4444 80\r\n"[..],
            b"PROXY TCP4 192.0.2.7 192.0.2.1 4444 -80\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 4444 123456\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 4444 \r\n",
            b"PROXY TCP4 192.0.2.7 2001:db8::1 4444 80\r\n",
            b"PROXY TCP4 192.0.2.7 nowhere 4444 80\r\n",
        ] {
            let mut reader = line;
            assert!(
                matches!(read(&mut reader).await, Err(Error::Malformed(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let mut reader = &b"PROXY TCP4 192.0.2.7 192.0.2.1 4444 80\r\n"[..];
        assert_eq!(
            read(&mut reader).await.unwrap(),
            Some(Carried {
                client: "192.0.2.7:4444".parse().unwrap(),
                destination: "192.0.2.1:80".parse().unwrap(),
            })
        );
    }

    /// A v2 header of family AF_UNIX is well formed: the connection's own
    /// addresses stand, as for UNSPEC; it used to be refused.
    #[tokio::test]
    async fn a_v2_header_of_unix_sockets_keeps_the_peer() {
        let client: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let mut bytes = encode(Version::V2, client, client);
        // Family AF_UNIX, stream; its addresses are 216 bytes.
        bytes[13] = 0x31;
        bytes.truncate(14);
        bytes.extend_from_slice(&216u16.to_be_bytes());
        bytes.extend(std::iter::repeat_n(0u8, 216));
        bytes.extend_from_slice(b"GET /");
        let mut reader = &bytes[..];
        assert_eq!(read(&mut reader).await.unwrap(), None);
        assert_eq!(reader, b"GET /");
    }

    #[tokio::test]
    async fn a_local_header_keeps_the_peer_and_leaves_the_payload() {
        for version in [Version::V1, Version::V2] {
            let mut bytes = encode_local(version);
            bytes.extend_from_slice(b"GET /");
            let mut reader = &bytes[..];
            assert_eq!(read(&mut reader).await.unwrap(), None);
            assert_eq!(reader, b"GET /");
        }
    }
}

//! Client addresses: CIDR blocks for the allow-list, and the network a
//! client's bucket is keyed by (IPv6 clients by prefix, as one host usually
//! holds a whole /64).

use std::net::{IpAddr, Ipv6Addr};

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a
/// block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cidr {
    V4 { network: u32, len: u8 },
    V6 { network: u128, len: u8 },
}

fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// An address, with IPv4-mapped IPv6 (`::ffff:10.0.0.1`) taken as the IPv4
/// address it carries.
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        v4 => Some(v4),
    }
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = |why: &str| format!("allow entry {text:?}: {why}");
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => {
                let digits =
                    !len.is_empty() && len.len() <= 3 && len.bytes().all(|b| b.is_ascii_digit());
                let len: u8 = digits
                    .then(|| len.parse().ok())
                    .flatten()
                    .ok_or_else(|| bad("bad prefix length"))?;
                (addr, Some(len))
            }
            None => (text, None),
        };
        match parse_ip(addr).ok_or_else(|| bad("not an IP address"))? {
            IpAddr::V4(v4) => {
                // A mapped address with a prefix counts the IPv6 bits.
                let len = match (len, addr.contains(':')) {
                    (None, _) => 32,
                    (Some(l), true) if (96..=128).contains(&l) => l - 96,
                    (Some(l), false) if l <= 32 => l,
                    _ => return Err(bad("prefix length out of range")),
                };
                Ok(Cidr::V4 {
                    network: u32::from(v4) & mask4(len),
                    len,
                })
            }
            IpAddr::V6(v6) => {
                let len = len.unwrap_or(128);
                if len > 128 {
                    return Err(bad("prefix length out of range"));
                }
                Ok(Cidr::V6 {
                    network: u128::from(v6) & mask6(len),
                    len,
                })
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Cidr::V4 { network, len }, IpAddr::V4(v4)) => u32::from(v4) & mask4(*len) == *network,
            (Cidr::V6 { network, len }, IpAddr::V6(v6)) => u128::from(v6) & mask6(*len) == *network,
            _ => false,
        }
    }
}

/// The part of a client address its bucket is keyed by: the whole IPv4
/// address, or the first `v6_prefix` bits of an IPv6 one.
pub(crate) fn client_key(ip: IpAddr, v6_prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let network = Ipv6Addr::from(u128::from(v6) & mask6(v6_prefix));
            format!("{network}/{v6_prefix}")
        }
    }
}

/// An address for tests.
#[cfg(test)]
pub(crate) fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        parse_ip(text).expect("an address")
    }

    #[test]
    fn ipv4_blocks_contain_their_addresses_only() {
        let block = Cidr::parse("10.1.0.0/16").expect("valid");
        assert!(block.contains(v4(10, 1, 255, 7)));
        assert!(!block.contains(v4(10, 2, 0, 1)));
        assert!(
            !block.contains(ip("::a01:1")),
            "IPv6 is never in an IPv4 block"
        );
    }

    #[test]
    fn host_bits_are_masked_and_a_bare_address_is_one_host() {
        assert_eq!(Cidr::parse("10.1.2.3/8"), Cidr::parse("10.0.0.0/8"));
        let one = Cidr::parse("192.168.1.7").expect("valid");
        assert!(one.contains(v4(192, 168, 1, 7)));
        assert!(!one.contains(v4(192, 168, 1, 8)));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("valid")
            .contains(v4(8, 8, 8, 8)));
    }

    #[test]
    fn ipv6_blocks_compare_the_prefix_bits() {
        let block = Cidr::parse("2001:db8:abcd::/48").expect("valid");
        assert!(block.contains(ip("2001:db8:abcd:12::1")));
        assert!(!block.contains(ip("2001:db8:abce::1")));
        assert!(Cidr::parse("::1").expect("valid").contains(ip("[::1]")));
        assert!(Cidr::parse("::/0").expect("valid").contains(ip("fe80::1")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        assert_eq!(ip("::ffff:10.0.0.1"), v4(10, 0, 0, 1));
        let block = Cidr::parse("::ffff:10.0.0.0/104").expect("valid");
        assert_eq!(block, Cidr::parse("10.0.0.0/8").expect("valid"));
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::1/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "x/8",
            "10.0.0.0/8/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1"), 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1"), 128),
            "2001:db8:1:2:aaaa::1/128"
        );
        assert_eq!(client_key(v4(10, 0, 0, 1), 64), "10.0.0.1");
    }
}

//! Client addresses behind load balancers (PROTOCOL.md v1.1, "Client
//! addresses and throttling"): the trusted proxies (`--trusted-proxy`), and
//! the walk of `X-Forwarded-For` that finds the client a request came from.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address block, such as `10.0.0.0/8` or `fd00::/8`. A bare address is
/// the block of that one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this block (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(v: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask128(v: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(prefix)))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let shown: String = s.chars().take(60).collect();
        let bad = || format!("{shown:?} is not an address block such as 10.0.0.0/8 or fd00::/8");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let ip = IpAddr::from_str(addr).map_err(|_| bad())?.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(format!(
                        "{shown:?} has a prefix length that is not a number from 0 to {max}"
                    ));
                }
            },
        };
        let network = match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask32(u32::from(v4), prefix).into()),
            IpAddr::V6(v6) => IpAddr::V6(mask128(u128::from(v6), prefix).into()),
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client a request from `peer` came from: `peer` itself unless it
    /// is trusted; else walk `X-Forwarded-For` (every such header, as one
    /// list in order) from the right, skipping trusted addresses. The first
    /// untrusted entry is the client; if all are trusted, the left-most; an
    /// entry that does not parse (or the end of a missing header) stops the
    /// walk at the last address reached.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<Option<IpAddr>> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|value| match value.to_str() {
                Ok(text) => text.split(',').map(parse_entry).collect::<Vec<_>>(),
                Err(_) => vec![None],
            })
            .collect();
        let mut reached = peer;
        for entry in entries.into_iter().rev() {
            let Some(ip) = entry else {
                return reached;
            };
            reached = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        reached
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    IpAddr::from_str(entry)
        .or_else(|_| SocketAddr::from_str(entry).map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|c| c.parse().unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains(ip("fdab::1")));
        assert!(!c.contains(ip("fe80::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
        assert!("::1/128".parse::<Cidr>().unwrap().contains(ip("::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(
                !e.contains('\n') && e.ends_with(|c: char| c.is_alphanumeric()),
                "{e}"
            );
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let t = proxies(&["10.0.0.0/8"]);
        let h = xff(&["203.0.113.9"]);
        assert_eq!(t.client(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        // And with no proxies configured at all.
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_walk_skips_trusted_hops_from_the_right() {
        let t = proxies(&["10.0.0.0/8", "fd00::/8"]);
        // client, then a trusted hop that appended what it saw.
        let h = xff(&["198.51.100.7, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Several headers are one list, in order.
        let h = xff(&["198.51.100.7", "203.0.113.9, fd00::5", "10.0.0.3"]);
        assert_eq!(t.client(ip("fd00::1"), &h), ip("203.0.113.9"));
        // Entries with ports, and IPv6 clients.
        let h = xff(&["[2001:db8::7]:4711, 10.0.0.3:80"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("2001:db8::7"));
    }

    #[test]
    fn all_trusted_means_the_left_most() {
        let t = proxies(&["10.0.0.0/8"]);
        let h = xff(&["10.0.0.9, 10.0.0.8", "10.0.0.7"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("10.0.0.9"));
    }

    #[test]
    fn a_missing_header_or_a_bad_entry_stops_at_the_last_address_reached() {
        let t = proxies(&["10.0.0.0/8"]);
        assert_eq!(t.client(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // "unknown" does not parse: the walk stops at the trusted 10.0.0.4,
        // never reaching the (spoofable) entry left of it.
        let h = xff(&["198.51.100.7, unknown, 10.0.0.4"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("10.0.0.4"));
        let h = xff(&["198.51.100.7", "garbage"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        // An empty entry does not parse either.
        let h = xff(&["198.51.100.7,,10.0.0.5"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("10.0.0.5"));
        // A header that is not text.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"198.51.100.7, \xff").unwrap(),
        );
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }
}

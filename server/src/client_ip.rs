//! Which address a request comes from: the socket peer, unless the peer is a trusted reverse
//! proxy, in which case the right-most untrusted hop of `X-Forwarded-For` (or `X-Real-IP`).
//!
//! Owns the `Cidr` rules (syntax and matching are the `ipnetwork` crate's) and the forwarding
//! rules. It never stores or logs the address; the caller hashes it into a visitor id and drops
//! it.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::{HeaderMap, HeaderName};
use ipnetwork::{IpNetwork, Ipv4Network};

/// An IPv4 or IPv6 network, `addr/prefix`; a bare address means a single host. Parsing and
/// matching are `ipnetwork`'s (already compiled in through `maxminddb`); this type adds the
/// dual-stack rules below and an error that names the flag's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNetwork);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CIDR {0:?}: expected an address or address/prefix, like 10.0.0.0/8 or ::1")]
pub struct InvalidCidr(String);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Length of the `::ffff:0:0/96` prefix that IPv4-mapped IPv6 addresses share.
const MAPPED_PREFIX_BITS: u8 = 96;

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let invalid = || InvalidCidr(s.to_owned());
        let network: IpNetwork = s.parse().map_err(|_| invalid())?;
        // A network written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`) is stored as the IPv4
        // network it denotes, since `contains` compares mapped addresses as IPv4.
        let network = match network {
            IpNetwork::V6(v6) if v6.prefix() >= MAPPED_PREFIX_BITS => {
                match v6.network().to_ipv4_mapped() {
                    Some(v4) => IpNetwork::V4(
                        Ipv4Network::new(v4, v6.prefix() - MAPPED_PREFIX_BITS)
                            .map_err(|_| invalid())?,
                    ),
                    None => network,
                }
            }
            _ => network,
        };
        Ok(Self(network))
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Compare IPv4-mapped IPv6 addresses as IPv4, as a dual-stack socket reports them.
        self.0.contains(ip.to_canonical())
    }
}

/// The reverse proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(cidrs: Vec<Cidr>) -> Self {
        Self(cidrs)
    }

    /// Whether `ip` (canonical: IPv4-mapped addresses as IPv4) is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }

    /// The client address of a request that arrived from `peer` with `headers`.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = peer.ip().to_canonical();
        if !self.trusts(peer_ip) {
            return peer_ip;
        }
        let forwarded = headers.get_all(&X_FORWARDED_FOR);
        // A hop list that is not text cannot be read: the proxy itself is the client.
        if forwarded.iter().any(|value| value.to_str().is_err()) {
            return peer_ip;
        }
        // From the nearest hop outwards: the last header's last entry first.
        let mut hops = forwarded
            .iter()
            .rev()
            .flat_map(|value| value.to_str().unwrap_or_default().rsplit(','))
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
            .peekable();
        if hops.peek().is_none() {
            return headers
                .get(&X_REAL_IP)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_hop)
                .unwrap_or(peer_ip);
        }
        // The first address we do not trust is the client, since anything further left could
        // have been written by the client itself.
        let mut client = peer_ip;
        for hop in hops {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// Parses one forwarding hop: an address, or an address with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn check(trusted: &[&str], peer: &str, xff: &[&str], real_ip: Option<&str>, expected: &str) {
        let proxies = TrustedProxies::new(trusted.iter().map(|c| c.parse().unwrap()).collect());
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        if let Some(ip) = real_ip {
            headers.insert("x-real-ip", HeaderValue::from_str(ip).unwrap());
        }
        let peer: SocketAddr = peer.parse().unwrap();
        let got = proxies.client_ip(peer, &headers);
        assert_eq!(
            got,
            expected.parse::<IpAddr>().unwrap(),
            "{trusted:?} {peer} {xff:?}"
        );
    }

    #[test]
    fn client_ip_follows_only_trusted_proxies() {
        // No trusted proxies: headers are ignored.
        check(&[], "10.0.0.1:1", &["1.1.1.1"], None, "10.0.0.1");
        // Trusted peer: the right-most untrusted hop wins, spoofed left entries are ignored.
        check(
            &["10.0.0.0/8"],
            "10.0.0.1:1",
            &["6.6.6.6, 1.1.1.1"],
            None,
            "1.1.1.1",
        );
        check(
            &["10.0.0.0/8"],
            "10.0.0.1:1",
            &["1.1.1.1, 10.0.0.7"],
            None,
            "1.1.1.1",
        );
        check(
            &["10.0.0.0/8"],
            "10.0.0.1:1",
            &["1.1.1.1", "10.0.0.7"],
            None,
            "1.1.1.1",
        );
        // Every hop trusted: the left-most is the client.
        check(
            &["10.0.0.0/8"],
            "10.0.0.1:1",
            &["10.0.0.9, 10.0.0.7"],
            None,
            "10.0.0.9",
        );
        // Ports and IPv6.
        check(
            &["::1"],
            "[::1]:5",
            &["[2001:db8::1]:443"],
            None,
            "2001:db8::1",
        );
        check(
            &["127.0.0.1"],
            "127.0.0.1:5",
            &["203.0.113.5:8080"],
            None,
            "203.0.113.5",
        );
        // X-Real-IP only without X-Forwarded-For.
        check(
            &["127.0.0.1"],
            "127.0.0.1:5",
            &[],
            Some("198.51.100.2"),
            "198.51.100.2",
        );
        check(
            &["127.0.0.1"],
            "127.0.0.1:5",
            &["1.1.1.1"],
            Some("2.2.2.2"),
            "1.1.1.1",
        );
        // Garbage stops the walk at the last good hop.
        check(
            &["127.0.0.1"],
            "127.0.0.1:5",
            &["nonsense"],
            None,
            "127.0.0.1",
        );
        // An IPv4-mapped peer matches an IPv4 range.
        check(
            &["127.0.0.0/8"],
            "[::ffff:127.0.0.1]:5",
            &["9.9.9.9"],
            None,
            "9.9.9.9",
        );
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net: Cidr = "192.168.0.0/16".parse().unwrap();
        assert!(net.contains("192.168.200.1".parse().unwrap()));
        assert!(!net.contains("192.169.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "host/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidr_with_host_bits_set_matches_its_whole_network() {
        let net: Cidr = "10.1.2.3/8".parse().unwrap();
        assert!(net.contains("10.200.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let net: Cidr = "2001:db8::1/32".parse().unwrap();
        assert!(net.contains("2001:db8:ffff::9".parse().unwrap()));
        assert!(!net.contains("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn cidr_accepts_an_ipv4_netmask_as_prefix() {
        // ipnetwork's syntax, which the hand-written parser refused.
        let net: Cidr = "10.0.0.0/255.255.0.0".parse().unwrap();
        assert_eq!(net, "10.0.0.0/16".parse().unwrap());
        assert!("10.0.0.0/255.0.255.0".parse::<Cidr>().is_err());
    }

    #[test]
    fn ipv4_mapped_cidr_matches_ipv4_and_mapped_peers() {
        let net: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(net, "10.0.0.0/8".parse().unwrap());
        assert!(net.contains("10.9.9.9".parse().unwrap()));
        assert!(net.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let host: Cidr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        // A prefix shorter than the mapped range stays an IPv6 network.
        let wide: Cidr = "::/8".parse().unwrap();
        assert!(wide.contains("::1".parse().unwrap()));
    }
}

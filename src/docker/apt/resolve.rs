//! Where the apt cache may connect for a testbed: the URL's host is
//! resolved by rdocker, through the system's resolver (getaddrinfo, as
//! apt would: `127.1`, `2130706433`, `0x7f000001` and `0` come out as the
//! addresses they spell), and refused if any address it gives is one of
//! this host's: loopback, unspecified, link-local (a cloud's metadata
//! service, which answers the host with its credentials), multicast or
//! broadcast, the testbeds' gateway, or an address of any of the host's
//! own interfaces. The check runs before anything connects, chained to an
//! upstream proxy or not; without one, rdocker connects to exactly the
//! addresses it checked.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a name's answer is kept. A lookup per request, as each opens
/// its own connection, met the host resolver's 5 s retry now and then: 5
/// stalls of 4.9 s in one install of 79 packages, where apt itself,
/// straight to the mirror, looks the name up once.
const KEPT_FOR: Duration = Duration::from_secs(60);
/// Names kept at most: a name per archive, but never unbounded.
const NAMES: usize = 64;

/// Why a host is not fetched from.
#[derive(Debug)]
pub enum Denied {
    /// It resolves to an address of this host's.
    Own(IpAddr),
    /// It does not resolve.
    Lookup(String),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Own(ip) => write!(
                f,
                "it resolves to {ip}, an address of this host's, which the apt cache does \
                 not fetch from for a testbed"
            ),
            Denied::Lookup(e) => write!(f, "cannot resolve it: {e}"),
        }
    }
}

/// A name's addresses, and when they were looked up.
type Looked = (Instant, Vec<SocketAddr>);

/// The resolver and its check, one per proxy.
pub struct Guard {
    /// The testbeds' gateways: the host's, even when rdocker runs in
    /// another network namespace (a CI job container) where they are not
    /// its own.
    gateways: Vec<IpAddr>,
    names: Mutex<HashMap<(String, u16), Looked>>,
}

impl Guard {
    pub fn new(gateways: Vec<IpAddr>) -> Guard {
        Guard {
            gateways,
            names: Mutex::default(),
        }
    }

    /// The addresses of `host:port`, every one of them checked.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Denied> {
        let key = (host.to_string(), port);
        let kept = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|(at, _)| at.elapsed() < KEPT_FOR)
            .map(|(_, a)| a.clone());
        let addrs = match kept {
            Some(a) => a,
            None => {
                let a: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| Denied::Lookup(e.to_string()))?
                    .collect();
                let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
                if names.len() >= NAMES {
                    names.clear();
                }
                names.insert(key, (Instant::now(), a.clone()));
                a
            }
        };
        if addrs.is_empty() {
            return Err(Denied::Lookup("no address".into()));
        }
        // Any one of them is enough: a connect may try each.
        if let Some(a) = addrs.iter().find(|a| self.own(a.ip())) {
            return Err(Denied::Own(a.ip()));
        }
        Ok(addrs)
    }

    /// Whether `ip` reaches this host rather than the network.
    pub fn own(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        special(ip) || self.gateways.iter().any(|g| canonical(*g) == ip) || bindable(ip)
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`, `::a.b.c.d`), as
/// the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v) if !v.is_loopback() && !v.is_unspecified() => match v.to_ipv4() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        _ => ip,
    }
}

/// The ranges that are never a server elsewhere: this host, its link,
/// and group addresses.
pub fn special(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v) => {
            v.octets()[0] == 0 // "this network", 0.0.0.0 included
                || v.is_loopback()
                || v.is_link_local()
                || v.is_multicast()
                || v.is_broadcast()
                || v.octets()[0] >= 240
        }
        IpAddr::V6(v) => {
            let s0 = v.segments()[0];
            v.is_loopback()
                || v.is_unspecified()
                || (s0 & 0xffc0) == 0xfe80 // link-local
                || (s0 & 0xffc0) == 0xfec0 // site-local, deprecated
                || (s0 & 0xff00) == 0xff00 // multicast
        }
    }
}

/// Whether a socket can be bound to `ip`: whether it is an address of one
/// of this host's interfaces, whatever the interface. Asks the kernel,
/// which knows them all, rather than a list read once.
fn bindable(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_spelling_of_this_host_is_refused() {
        let g = Guard::new(vec!["172.17.0.1".parse().unwrap()]);
        for host in [
            "127.0.0.1",
            "127.1",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "0",
            "0.0.0.0",
            "localhost",
            "::1",
            "::ffff:127.0.0.1",
            "::",
            "169.254.169.254",
            "fe80::1",
            "172.17.0.1",
            "::ffff:172.17.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            match g.resolve(host, 80).await {
                Err(Denied::Own(_)) => {}
                other => panic!("{host}: {other:?}"),
            }
        }
        // Every address of this host's own interfaces.
        let me = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        if me.connect("192.0.2.1:9").is_ok() {
            let ip = me.local_addr().unwrap().ip();
            assert!(g.own(ip), "{ip}");
        }
        assert!(!g.own("192.0.2.7".parse().unwrap()));
        assert!(!g.own("2001:db8::7".parse().unwrap()));
        assert!(matches!(
            g.resolve("192.0.2.7", 80).await,
            Ok(a) if a == vec!["192.0.2.7:80".parse().unwrap()]
        ));
    }
}

/// Property tests: any spelling getaddrinfo accepts of an address of
/// this host's is refused (numeric forms: no DNS is asked).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// An IPv4 address that is this host's in every case: loopback,
    /// "this network", link-local.
    fn forbidden() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            any::<[u8; 3]>().prop_map(|[a, b, c]| Ipv4Addr::new(127, a, b, c)),
            any::<[u8; 3]>().prop_map(|[a, b, c]| Ipv4Addr::new(0, a, b, c)),
            any::<[u8; 2]>().prop_map(|[a, b]| Ipv4Addr::new(169, 254, a, b)),
        ]
    }

    /// One number as inet_aton reads it: decimal, 0x hex or 0 octal.
    fn spell(n: u32, how: u8) -> String {
        match how % 3 {
            0 => format!("{n}"),
            1 => format!("0x{n:x}"),
            _ => format!("0{n:o}"),
        }
    }

    /// The address in inet_aton's forms: a.b.c.d, a.b.cd, a.bcd, abcd.
    fn spellings(ip: Ipv4Addr, parts: u8, how: [u8; 4]) -> String {
        let o = ip.octets().map(u32::from);
        let v = u32::from(ip);
        match parts % 5 {
            0 => (0..4)
                .map(|i| spell(o[i], how[i]))
                .collect::<Vec<_>>()
                .join("."),
            1 => format!(
                "{}.{}.{}",
                spell(o[0], how[0]),
                spell(o[1], how[1]),
                spell(v & 0xffff, how[2])
            ),
            2 => format!("{}.{}", spell(o[0], how[0]), spell(v & 0xff_ffff, how[1])),
            3 => spell(v, how[0]),
            _ => format!("::ffff:{ip}"),
        }
    }

    proptest! {
        #[test]
        fn every_spelling_of_a_forbidden_address_is_refused(
            ip in forbidden(),
            parts in any::<u8>(),
            how in any::<[u8; 4]>(),
        ) {
            let host = spellings(ip, parts, how);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let g = Guard::new(vec![]);
            match rt.block_on(g.resolve(&host, 80)) {
                Err(Denied::Own(got)) => prop_assert!(!canonical(got).is_ipv6()),
                other => prop_assert!(false, "{} ({}): {:?}", host, ip, other),
            }
        }
    }
}

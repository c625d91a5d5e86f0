//! apt in the testbed: the proxy that the host's apt uses (APT's own
//! `Acquire::http::Proxy`, auto-apt-proxy's answer, an apt-cacher-ng on
//! the host's loopback), an address on the host's loopback rewritten to
//! one the testbed reaches (its network's gateway), and the one
//! apt.conf.d file that hands a proxy to the testbed's apt and to nothing
//! else. Discovery runs host commands; parsing and rewriting are pure.
//! The file is written through api/exec.rs, as root.

use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::time::Duration;

use crate::docker::api::exec;
use crate::docker::daemon::client::Client;

/// The file rdocker writes in the testbed. `00`: apt reads apt.conf.d in
/// order and the last setting wins, so a proxy the image sets itself
/// (autopkgtest-build-docker --apt-proxy writes 01proxy) stays in force.
pub const CONF_PATH: &str = "/etc/apt/apt.conf.d/00rdocker-apt-proxy";

/// apt-cacher-ng's port.
pub const ACNG_PORT: u16 = 3142;

/// `--apt-proxy`.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Look for the host's.
    Auto,
    /// `--apt-proxy none`.
    Off,
    /// `--apt-proxy URL`.
    Url(String),
}

impl Choice {
    pub fn parse(v: Option<&str>) -> Result<Choice> {
        match v {
            None => Ok(Choice::Auto),
            Some("none") => Ok(Choice::Off),
            Some(u) => match usable(u) {
                Some(u) => Ok(Choice::Url(u)),
                None => bail!("--apt-proxy takes an http:// URL or none, not {u:?}"),
            },
        }
    }
}

/// A proxy, and where it was found (for -d).
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub url: String,
    pub source: String,
}

/// A value of Acquire::http::Proxy that names a proxy: an http:// URL
/// (not DIRECT, false or empty), without a trailing slash.
pub fn usable(v: &str) -> Option<String> {
    let v = v.trim();
    let lower = v.to_ascii_lowercase();
    if !lower.starts_with("http://") || v.len() <= "http://".len() {
        return None;
    }
    Some(v.trim_end_matches('/').to_string())
}

/// The value `apt-config shell P Acquire::http::Proxy` printed: `P='...'`,
/// with a `'` inside written as `'"'"'` or `'\''`.
pub fn parse_apt_config_shell(out: &str) -> Option<String> {
    let line = out.lines().find_map(|l| l.trim().strip_prefix("P="))?;
    let mut v = String::new();
    let mut chars = line.chars().peekable();
    // A POSIX sh word of quoted and unquoted parts.
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    v.push(c);
                }
            }
            '"' => {
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    v.push(c);
                }
            }
            '\\' => v.extend(chars.next()),
            c => v.push(c),
        }
    }
    usable(&v)
}

/// The value of `Acquire::http::Proxy` in `apt-config dump` output.
pub fn parse_apt_config_dump(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Acquire::http::Proxy ")?;
        let v = rest.trim().trim_end_matches(';').trim().trim_matches('"');
        usable(v)
    })
}

/// The host part of an http:// URL, brackets of IPv6 removed, and the
/// byte range it takes in the URL.
fn host_of(url: &str) -> Option<(String, std::ops::Range<usize>)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let auth = &rest[..auth_end];
    let at = auth.rfind('@').map_or(0, |i| i + 1);
    let hostport = &auth[at..];
    let host_len = if hostport.starts_with('[') {
        hostport.find(']')? + 1
    } else {
        hostport.find(':').unwrap_or(hostport.len())
    };
    let b = start + at;
    let host = url[b..b + host_len].trim_matches(['[', ']']).to_string();
    Some((host, b..b + host_len))
}

/// Whether the URL's host is this host's loopback.
pub fn is_loopback(url: &str) -> bool {
    host_of(url).is_some_and(|(h, _)| {
        let h = h.to_ascii_lowercase();
        h == "localhost"
            || h == "ip6-localhost"
            || h.ends_with(".localhost")
            || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// The URL with its host replaced by `host` (an IPv6 address gets its
/// brackets).
pub fn with_host(url: &str, host: &str) -> String {
    let Some((_, range)) = host_of(url) else {
        return url.to_string();
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("{}{}{}", &url[..range.start], host, &url[range.end..])
}

/// The port of an http:// URL (80 if none).
pub fn port_of(url: &str) -> u16 {
    host_of(url)
        .and_then(|(_, r)| {
            let after = &url[r.end..];
            let p = after.strip_prefix(':')?;
            p.split('/').next()?.parse().ok()
        })
        .unwrap_or(80)
}

/// The apt.conf.d file's text.
pub fn conf_text(url: &str, source: &str) -> String {
    format!(
        "// Written by autopkgtest-virt-rdocker: {source}.\n\
         // autopkgtest-virt-rdocker --apt-proxy none leaves it out.\n\
         Acquire::http::Proxy \"{url}\";\n"
    )
}

/// How the testbed reaches its host's loopback, by its network mode.
#[derive(Debug, PartialEq)]
pub enum Reach {
    /// `--network host`: the same loopback.
    Loopback,
    /// Through the network's gateway, an address of the host's bridge.
    Gateway(String),
    /// `--network none`, or a network without a gateway.
    Not(String),
}

/// How a testbed with this `--network` reaches the host, from its
/// container's inspect (NetworkSettings.Networks).
pub async fn reach(client: &Client, id: &str, network: Option<&str>) -> Result<Reach> {
    if network == Some("host") {
        return Ok(Reach::Loopback);
    }
    if network == Some("none") {
        return Ok(Reach::Not("--network none".into()));
    }
    let i = client
        .docker
        .inspect_container(id, None)
        .await
        .context("cannot inspect the testbed for its network's gateway")?;
    let nets = i
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    let mut names: Vec<_> = nets.keys().cloned().collect();
    names.sort();
    for n in &names {
        if let Some(gw) = nets[n].gateway.as_deref().filter(|g| !g.is_empty()) {
            return Ok(Reach::Gateway(gw.to_string()));
        }
    }
    Ok(Reach::Not(format!(
        "its network ({}) has no gateway",
        if names.is_empty() {
            network.unwrap_or("default").to_string()
        } else {
            names.join(", ")
        }
    )))
}

/// This process's own address on the testbed's network, when it has one
/// there: rdocker in a CI job container on the same bridge as the testbed
/// (the host's socket mounted in), where the bridge's gateway is not an
/// address of ours to listen on. The address we reach `gateway` from,
/// kept only when it is in the testbed's subnet, so that the testbed
/// reaches it directly, without crossing bridges.
pub async fn own_address_beside(client: &Client, id: &str, gateway: &str) -> Option<IpAddr> {
    let gw: IpAddr = gateway.parse().ok()?;
    let any: IpAddr = match gw {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    // A connected UDP socket sends nothing: it only asks for the route.
    let sock = std::net::UdpSocket::bind((any, 0)).ok()?;
    sock.connect((gw, 9)).ok()?;
    let me = sock.local_addr().ok()?.ip();
    let i = client.docker.inspect_container(id, None).await.ok()?;
    let nets = i.network_settings?.networks?;
    nets.values().find_map(|n| {
        if n.gateway.as_deref() != Some(gateway) {
            return None;
        }
        let ip: IpAddr = n.ip_address.as_deref()?.parse().ok()?;
        same_subnet(ip, me, u32::try_from(n.ip_prefix_len?).ok()?).then_some(me)
    })
}

/// The testbed's own addresses, as the cache sees its connections come:
/// from its networks' inspect, or the host's loopback with `--network
/// host`.
pub async fn addresses(client: &Client, id: &str, network: Option<&str>) -> Result<Vec<IpAddr>> {
    if network == Some("host") {
        return Ok(vec![
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ]);
    }
    let i = client
        .docker
        .inspect_container(id, None)
        .await
        .context("cannot inspect the testbed for its addresses")?;
    let nets = i
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    let ips: Vec<IpAddr> = nets
        .values()
        .flat_map(|n| [n.ip_address.as_deref(), n.global_ipv6_address.as_deref()])
        .filter_map(|a| a?.parse().ok())
        .collect();
    if ips.is_empty() {
        bail!("the testbed has no address on its networks");
    }
    Ok(ips)
}

/// Whether `a` and `b` are two addresses of one IPv4 subnet of `len` bits.
pub fn same_subnet(a: IpAddr, b: IpAddr, len: u32) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) if (8..=32).contains(&len) && a != b => {
            let mask = u32::MAX << (32 - len);
            u32::from(a) & mask == u32::from(b) & mask
        }
        _ => false,
    }
}

/// The proxy the host's apt uses, first found of: `Acquire::http::Proxy`
/// (apt-config), `auto-apt-proxy`, an apt-cacher-ng on 127.0.0.1:3142.
/// Blocking: runs host commands.
pub fn discover() -> Option<Found> {
    let run = |argv: &[&str]| -> Option<String> {
        let out = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let configured = match run(&["apt-config", "shell", "P", "Acquire::http::Proxy"]) {
        Some(out) => parse_apt_config_shell(&out),
        // An apt-config without `shell`: its dump.
        None => run(&["apt-config", "dump"])
            .as_deref()
            .and_then(parse_apt_config_dump),
    };
    if let Some(url) = configured {
        return Some(Found {
            url,
            source: "the host's apt configuration (Acquire::http::Proxy)".into(),
        });
    }
    if which::which("auto-apt-proxy").is_ok() {
        if let Some(url) = run(&["auto-apt-proxy"])
            .as_deref()
            .and_then(|o| o.lines().next().and_then(usable))
        {
            return Some(Found {
                url,
                source: "auto-apt-proxy on the host".into(),
            });
        }
    }
    let acng = std::net::SocketAddr::from(([127, 0, 0, 1], ACNG_PORT));
    if std::net::TcpStream::connect_timeout(&acng, Duration::from_millis(200)).is_ok() {
        return Some(Found {
            url: format!("http://127.0.0.1:{ACNG_PORT}"),
            source: format!("a proxy (apt-cacher-ng's port) listening on 127.0.0.1:{ACNG_PORT}"),
        });
    }
    None
}

/// Whether something on this host listens on `host:port`: a loopback
/// proxy rewritten to the bridge's gateway must listen there too (an
/// apt-cacher-ng bound to 127.0.0.1 only does not), or the testbed's apt
/// would fail every download.
pub fn listens(host: &str, port: u16) -> bool {
    let Ok(ip) = host.parse::<IpAddr>() else {
        return false;
    };
    std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(300)).is_ok()
}

/// Write the apt.conf.d file into the testbed, as root; an image without
/// /etc/apt/apt.conf.d (no apt) is left alone.
pub async fn write_conf(client: &Client, id: &str, text: &str) -> Result<()> {
    let script = "test -d /etc/apt/apt.conf.d || exit 0; \
                  printf '%s' \"$2\" > \"$1\" && chmod 644 \"$1\"; exit $?";
    let mut cap = exec::Captured::default();
    let code = exec::run_script(
        client,
        id,
        script,
        vec![CONF_PATH.into(), text.into()],
        None,
        &mut cap,
    )
    .await?;
    if code != 0 {
        bail!(
            "cannot write {CONF_PATH} in the testbed (exit {code}): {}",
            cap.err
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_subnet(ip("172.17.0.3"), ip("172.17.0.7"), 16));
        assert!(!same_subnet(ip("172.17.0.3"), ip("172.18.0.7"), 16));
        assert!(!same_subnet(ip("172.17.0.3"), ip("172.17.0.3"), 16));
        assert!(!same_subnet(ip("10.0.0.1"), ip("10.0.0.2"), 0));
        assert!(!same_subnet(ip("::1"), ip("::2"), 64));
    }

    #[test]
    fn apt_config_shell_output() {
        assert_eq!(
            parse_apt_config_shell("P='http://10.0.0.1:3142/'\n").as_deref(),
            Some("http://10.0.0.1:3142")
        );
        assert_eq!(
            parse_apt_config_shell("P='http://u:it'\"'\"'s@p:3128'\n").as_deref(),
            Some("http://u:it's@p:3128")
        );
        assert_eq!(parse_apt_config_shell(""), None);
        assert_eq!(parse_apt_config_shell("P='DIRECT'\n"), None);
        assert_eq!(parse_apt_config_shell("P='false'\n"), None);
        assert_eq!(parse_apt_config_shell("P='socks5h://x:1080'\n"), None);
    }

    #[test]
    fn apt_config_dump_output() {
        let dump = "APT \"\";\nAcquire::http::Proxy-Auto-Detect \"/usr/bin/auto-apt-proxy\";\n\
                    Acquire::http::Proxy \"http://127.0.0.1:3142\";\nDir \"/\";\n";
        assert_eq!(
            parse_apt_config_dump(dump).as_deref(),
            Some("http://127.0.0.1:3142")
        );
        assert_eq!(
            parse_apt_config_dump("Acquire::http::Proxy \"DIRECT\";\n"),
            None
        );
        assert_eq!(parse_apt_config_dump("APT \"\";\n"), None);
    }

    #[test]
    fn choices() {
        assert_eq!(Choice::parse(None).unwrap(), Choice::Auto);
        assert_eq!(Choice::parse(Some("none")).unwrap(), Choice::Off);
        assert_eq!(
            Choice::parse(Some("http://p:3142/")).unwrap(),
            Choice::Url("http://p:3142".into())
        );
        assert!(Choice::parse(Some("p:3142")).is_err());
        assert!(Choice::parse(Some("https://p")).is_err());
    }

    #[test]
    fn loopback_urls_are_rewritten() {
        for u in [
            "http://127.0.0.1:3142",
            "http://localhost:3142/",
            "http://127.1.2.3",
            "http://[::1]:3142",
            "http://user:pw@localhost:3128",
        ] {
            assert!(is_loopback(u), "{u}");
        }
        for u in [
            "http://172.17.0.1:3142",
            "http://proxy.lan:3128",
            "http://[fe80::1]:1",
        ] {
            assert!(!is_loopback(u), "{u}");
        }
        assert_eq!(
            with_host("http://127.0.0.1:3142", "172.17.0.1"),
            "http://172.17.0.1:3142"
        );
        assert_eq!(
            with_host("http://user:pw@localhost:3128/x", "172.18.0.1"),
            "http://user:pw@172.18.0.1:3128/x"
        );
        assert_eq!(
            with_host("http://[::1]:3142", "fd00::1"),
            "http://[fd00::1]:3142"
        );
        assert_eq!(with_host("http://localhost", "10.0.0.1"), "http://10.0.0.1");
        assert_eq!(port_of("http://127.0.0.1:3142"), 3142);
        assert_eq!(port_of("http://u:p@[::1]:8000/x"), 8000);
        assert_eq!(port_of("http://localhost/"), 80);
    }

    #[test]
    fn conf_names_the_proxy_for_http_only() {
        let t = conf_text("http://172.17.0.1:3142", "x");
        assert!(t.contains("Acquire::http::Proxy \"http://172.17.0.1:3142\";\n"));
        assert!(!t.contains("https"));
    }
}

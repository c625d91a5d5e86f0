//! Which proxy the testbeds' apt gets, decided once a session from the
//! command line (`--apt-proxy`, `--apt-cache`), the host's own apt proxy
//! (conf.rs finds it) and how the first testbed reaches the host; and
//! rdocker's package cache (proxy.rs) started for it. Each testbed then
//! gets the same apt.conf.d file at prepare time, and connection slots of
//! its own in the cache, released when it is removed.

use anyhow::Result;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::conf::{self as apt, Choice, Found, Reach};
use super::proxy::{self, Proxy};
use super::store::Store;
use crate::debug;
use crate::docker::daemon::client::Client;

/// `--apt-cache`.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheChoice {
    /// A cache for this session, removed at close (the default).
    Session,
    /// `--apt-cache DIR`: kept, and shared with other runs.
    Dir(PathBuf),
    /// `--apt-cache off`.
    Off,
}

impl CacheChoice {
    pub fn parse(v: Option<&str>) -> CacheChoice {
        match v {
            None => CacheChoice::Session,
            Some("off") | Some("none") => CacheChoice::Off,
            Some(d) => CacheChoice::Dir(d.into()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AptOptions {
    pub proxy: Choice,
    pub cache: CacheChoice,
}

/// What the testbeds' apt is handed: the proxy URL as the testbed reaches
/// it, and where it came from.
type Decision = Option<(String, String)>;

pub struct AptPlan {
    /// The host's proxy (or --apt-proxy's).
    upstream: Option<Found>,
    store: Option<Arc<Store>>,
    network: Option<String>,
    /// The daemon runs on this machine: the host's loopback is its too.
    local: bool,
    decided: tokio::sync::OnceCell<Decision>,
    proxy: Mutex<Option<Proxy>>,
    /// The testbeds admitted to the cache, by container: their addresses.
    admitted: Mutex<HashMap<String, Vec<IpAddr>>>,
}

impl AptPlan {
    /// Look for the host's proxy and make the cache's directory. Blocking
    /// (apt-config, auto-apt-proxy).
    pub fn new(opts: &AptOptions, network: Option<String>, local: bool) -> Result<AptPlan> {
        let upstream = match &opts.proxy {
            Choice::Off => {
                debug!("apt proxy: none (--apt-proxy none)");
                None
            }
            Choice::Url(u) => {
                debug!("apt proxy: {u} (--apt-proxy)");
                Some(Found {
                    url: u.clone(),
                    source: "--apt-proxy".into(),
                })
            }
            Choice::Auto => match apt::discover() {
                Some(f) if apt::is_loopback(&f.url) && !local => {
                    debug!(
                        "apt proxy: {} found in {}, but on this machine's loopback, which a \
                         testbed of a daemon elsewhere cannot reach: not used",
                        f.url, f.source
                    );
                    None
                }
                Some(f) => {
                    debug!("apt proxy: {} found in {}", f.url, f.source);
                    Some(f)
                }
                None => {
                    debug!(
                        "apt proxy: none found (no Acquire::http::Proxy in the host's apt \
                         configuration, no auto-apt-proxy answer, nothing on 127.0.0.1:{})",
                        apt::ACNG_PORT
                    );
                    None
                }
            },
        };
        let off = network.as_deref() == Some("none");
        let store = match &opts.cache {
            CacheChoice::Off => {
                debug!("apt cache: off (--apt-cache off)");
                None
            }
            _ if off => None,
            _ if !local => {
                debug!(
                    "apt cache: off, as the daemon is not on this machine and its testbeds \
                     could not reach rdocker"
                );
                None
            }
            CacheChoice::Dir(d) => Some(Arc::new(Store::at(d)?)),
            CacheChoice::Session => Some(Arc::new(Store::session()?)),
        };
        Ok(AptPlan {
            upstream,
            store,
            network,
            local,
            decided: tokio::sync::OnceCell::new(),
            proxy: Mutex::new(None),
            admitted: Mutex::default(),
        })
    }

    /// Hand the testbed `id` its apt proxy, deciding it at the first.
    pub async fn configure(&self, client: &Client, id: &str) -> Result<()> {
        let d = self.decided.get_or_init(|| self.decide(client, id)).await;
        if let Some((url, source)) = d {
            if self.proxy.lock().unwrap().is_some() {
                self.admit(client, id).await;
            }
            apt::write_conf(client, id, &apt::conf_text(url, source)).await?;
        }
        Ok(())
    }

    /// Give the testbed `id` connection slots of its own in the cache,
    /// known by its addresses.
    async fn admit(&self, client: &Client, id: &str) {
        let ips = match apt::addresses(client, id, self.network.as_deref()).await {
            Ok(ips) => ips,
            Err(e) => {
                debug!("apt cache: {id} shares the slots of unknown clients: {e:#}");
                return;
            }
        };
        if let Some(p) = self.proxy.lock().unwrap().as_ref() {
            p.admit(&ips);
        }
        self.admitted.lock().unwrap().insert(id.to_string(), ips);
    }

    /// The testbed `id` is being removed: its connections to the cache
    /// end, and what they were fetching with them.
    pub fn release(&self, id: &str) {
        let Some(ips) = self.admitted.lock().unwrap().remove(id) else {
            return;
        };
        if let Some(p) = self.proxy.lock().unwrap().as_ref() {
            debug!("apt cache: connections of {ips:?} released");
            p.release(&ips);
        }
    }

    async fn decide(&self, client: &Client, id: &str) -> Decision {
        let reach = match apt::reach(client, id, self.network.as_deref()).await {
            Ok(r) => r,
            Err(e) => {
                debug!("apt: no proxy for the testbeds: {e:#}");
                return None;
            }
        };
        if let Reach::Not(why) = &reach {
            debug!("apt: no proxy for the testbeds, which cannot reach the host: {why}");
            return None;
        }
        if let Some(store) = &self.store {
            let ip = match &reach {
                Reach::Loopback => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                Reach::Gateway(g) => g.parse().ok(),
                Reach::Not(_) => None,
            };
            if let Some(ip) = ip {
                let up = self.upstream.as_ref().map(|f| f.url.as_str());
                let gateways: Vec<IpAddr> = match &reach {
                    Reach::Gateway(g) => g.parse().into_iter().collect(),
                    _ => vec![],
                };
                let started = match proxy::start(ip, store.clone(), up, gateways.clone()).await {
                    Err(e) if matches!(reach, Reach::Gateway(_)) => {
                        let g = ip.to_string();
                        match apt::own_address_beside(client, id, &g).await {
                            Some(me) => {
                                debug!(
                                    "apt cache: not on the gateway ({e:#}), but on {me}, this \
                                     process's own address on the testbed's network (a \
                                     container beside the testbeds)"
                                );
                                proxy::start(me, store.clone(), up, gateways).await
                            }
                            None => Err(e),
                        }
                    }
                    r => r,
                };
                match started {
                    Ok(p) => {
                        let host = match p.addr.ip() {
                            IpAddr::V6(v) => format!("[{v}]"),
                            v => v.to_string(),
                        };
                        let url = format!("http://{host}:{}", p.addr.port());
                        debug!(
                            "apt cache: {} ({}), served to the testbeds' apt at {url}, fetching \
                             {}",
                            store.dir().display(),
                            if store.temporary() {
                                "this session's, removed at close"
                            } else {
                                "kept (--apt-cache)"
                            },
                            match &self.upstream {
                                Some(f) => format!("through {}", f.url),
                                None => "from the origin".into(),
                            }
                        );
                        *self.proxy.lock().unwrap() = Some(p);
                        return Some((url, "rdocker's package cache, kept across reverts".into()));
                    }
                    Err(e) => debug!("apt cache: off: {e:#}"),
                }
            }
        }
        let up = self.upstream.as_ref()?;
        if !apt::is_loopback(&up.url) {
            debug!("apt: the testbeds' apt goes through {}", up.url);
            return Some((up.url.clone(), format!("the apt proxy from {}", up.source)));
        }
        match reach {
            Reach::Loopback => {
                debug!(
                    "apt: the testbeds' apt goes through {} (--network host)",
                    up.url
                );
                Some((up.url.clone(), format!("the apt proxy from {}", up.source)))
            }
            Reach::Gateway(g) => {
                let url = apt::with_host(&up.url, &g);
                if self.local && !apt::listens(&g, apt::port_of(&up.url)) {
                    debug!(
                        "apt: no proxy for the testbeds: {} listens only on the host's loopback, \
                         not on {g}, where the testbeds would reach it (apt-cacher-ng: \
                         BindAddress in /etc/apt-cacher-ng/acng.conf)",
                        up.url
                    );
                    return None;
                }
                debug!(
                    "apt: the testbeds' apt goes through {url} ({} on the host's loopback, \
                     reached through the testbed network's gateway)",
                    up.url
                );
                Some((
                    url,
                    format!("the apt proxy from {}, at the host's gateway", up.source),
                ))
            }
            Reach::Not(_) => None,
        }
    }

    /// What the cache did so far, if it runs.
    pub fn summary(&self) -> Option<String> {
        self.proxy
            .lock()
            .unwrap()
            .as_ref()
            .map(|p| p.stats.summary())
    }

    /// Stop the cache, and remove this session's directory.
    pub fn close(&self) {
        if let Some(s) = self.summary() {
            debug!("apt cache: {s}");
        }
        self.proxy.lock().unwrap().take();
        if let Some(s) = &self.store {
            if s.temporary() {
                let _ = std::fs::remove_dir_all(s.dir());
            }
        }
    }
}

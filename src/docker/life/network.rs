//! The testbeds' network when the run options name none. On Docker: one
//! bridge that every rdocker session shares, made on first use, with
//! container-to-container traffic off (`enable_icc=false`). A testbed
//! there reaches the host through the gateway (the apt cache listens
//! there) and the outside, but no other container: not another
//! session's testbed, nor the one its own revert is retiring, nor what
//! runs on the default bridge (Docker isolates bridges from each other).
//! Podman's bridges have no such option: there each session makes a
//! network of its own (Podman's API makes it `isolate`d from its other
//! networks), removed at close, by the reaper thread if dropped, and by
//! `--reap` once its owner is gone. So does rdocker in a container beside
//! the daemon (a CI job container), which cannot listen on the shared
//! network's gateway for its apt cache: it joins its session's network,
//! where the testbeds reach it. `--network` given keeps its meaning: this
//! module is not asked.

use anyhow::{Context, Result};
use bollard::models::{NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest};
use bollard::query_parameters::ListNetworksOptionsBuilder;
use std::collections::HashMap;
use std::net::IpAddr;

use super::labels::{
    Owner, LABEL_MANAGED, LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_PIDNS, LABEL_OWNER_START,
};
use crate::docker::daemon::client::{status_of, Client};
use crate::docker::names::random_hex;

/// The shared network's name, before a random suffix: each make has a
/// name of its own, as a name that two networks have (two sessions made
/// it at once: Docker 20.10 lets both creates succeed) makes the daemon
/// refuse to start a container on either, even by id.
pub const NAME: &str = "rdocker-testbeds";
/// Marks the networks rdocker made: sessions find the shared one by it,
/// never by name.
pub const LABEL: &str = "org.debian.autopkgtest.rdocker.network";
const LABEL_VALUE: &str = "apart";
/// LABEL's value on a network of one session (Podman, a job container).
pub const LABEL_SESSION: &str = "session";
/// The container rdocker runs in, joined to its session's network: it
/// leaves before the network goes.
pub const LABEL_JOINED: &str = "org.debian.autopkgtest.rdocker.network.joined";

/// How long removal of a session's network waits for its containers to
/// go (a removal in flight, the daemon restarting).
const REMOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The bridge driver's option that turns container-to-container traffic
/// off (iptables DROP between the bridge's ports).
pub const ICC: &str = "com.docker.network.bridge.enable_icc";

/// Where the testbeds go.
pub enum Choice {
    /// The shared network.
    Apart {
        id: String,
        name: String,
        gateway: Option<IpAddr>,
    },
    /// A network of this session alone (Podman, a job container).
    Session(Box<Own>),
    /// The daemon's default network, as before: why.
    Default(String),
}

/// A network as `pick` sees it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub name: String,
    pub created: String,
    pub icc_off: bool,
    pub gateway: Option<IpAddr>,
}

/// The testbeds' network. `needs_gateway`: the apt cache will listen on
/// the network's gateway, so this process must be able to; in a
/// container beside the daemon it cannot, and joins a network of the
/// session's own instead, where the cache listens on its address there.
pub async fn choose(client: &Client, needs_gateway: bool) -> Result<Choice> {
    let (podman, found) = tokio::join!(podman(client), list(client));
    if podman {
        return own(client, None).await;
    }
    let mut made = None;
    let mut found = found?;
    if found.is_empty() {
        let labels = HashMap::from([
            (LABEL.into(), LABEL_VALUE.into()),
            (LABEL_MANAGED.into(), "1".into()),
        ]);
        let options = HashMap::from([(ICC.into(), "false".into())]);
        made = create(
            client,
            &format!("{NAME}-{}", random_hex(4)),
            labels,
            options,
        )
        .await?;
        found = list(client).await?;
    }
    let Some(w) = pick(&found).cloned() else {
        anyhow::bail!(
            "network {NAME} was made but the daemon at {} does not list it; see `docker \
             network ls --filter label={LABEL}`, or give the testbeds a network with \
             `--network NAME` after the image",
            client.endpoint.host
        );
    };
    // Lost a race to make it: ours goes, nobody else can have picked it
    // (whoever sees ours sees the older one too).
    if let Some(m) = made.filter(|m| *m != w.id) {
        crate::debug!(
            "network {}: another session made one too; removing ours ({m})",
            w.name
        );
        let _ = client.docker.remove_network(&m).await;
    }
    if !w.icc_off {
        return Ok(Choice::Default(format!(
            "network {} does not have {ICC}=false, so its containers could reach each other; \
             remove it (`docker network rm {}`) and rdocker makes it again",
            w.name, w.name
        )));
    }
    if let Some(why) = unreachable_gateway(needs_gateway, w.gateway, &w.name) {
        crate::debug!("{why}: a network for this session, which this container joins");
        return own(client, w.gateway).await;
    }
    Ok(Choice::Apart {
        id: w.id,
        name: w.name,
        gateway: w.gateway,
    })
}

/// For `--reap`: remove the copies of the shared network that two
/// sessions made at once, where the one that lost was killed before it
/// removed its own; never the one sessions use. Returns how many went.
pub async fn reap_copies(client: &Client) -> Result<usize> {
    let found = list(client).await?;
    let Some(keep) = pick(&found).map(|w| w.name.clone()) else {
        return Ok(0);
    };
    let mut removed = 0;
    for n in found.iter().filter(|n| n.name != keep) {
        // In use: a session picked it after all; it stays.
        if client.docker.remove_network(&n.id).await.is_ok() {
            println!("removed network {}: a copy of {keep}", n.name);
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether the network `id` is still on the daemon (an error other
/// than 404 counts as yes: nothing to make again).
pub async fn exists(client: &Client, id: &str) -> bool {
    match client.docker.inspect_network(id, None).await {
        Err(e) => status_of(&e) != Some(404),
        Ok(_) => true,
    }
}

/// Why the testbeds cannot be on the network whose gateway is `g`: the
/// apt cache would listen there, and this process cannot (it runs in a
/// container beside the daemon; on the default network the testbeds
/// reach the cache at this container's own address, as before).
fn unreachable_gateway(needs_gateway: bool, g: Option<IpAddr>, name: &str) -> Option<String> {
    let g = g.filter(|_| needs_gateway)?;
    std::net::TcpListener::bind((g, 0)).err().map(|_| {
        format!(
            "this process cannot listen on {g}, the gateway of network {name} (it runs in a \
             container beside the daemon), where the testbeds would reach its apt cache"
        )
    })
}

/// The container this process runs in, on a local daemon: the one found
/// at start (labels.rs), else the one with the address we reach `toward`
/// from.
async fn find_self(client: &Client, toward: IpAddr) -> Option<String> {
    if let Some(c) = Owner::current().container {
        return Some(c);
    }
    let any: IpAddr = match toward {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    // A connected UDP socket sends nothing: it only asks for the route.
    let sock = std::net::UdpSocket::bind((any, 0)).ok()?;
    sock.connect((toward, 9)).ok()?;
    let me = sock.local_addr().ok()?.ip().to_string();
    let list = client.docker.list_containers(None).await.ok()?;
    list.into_iter().find_map(|c| {
        let nets = c.network_settings?.networks?;
        nets.values()
            .any(|n| n.ip_address.as_deref() == Some(me.as_str()))
            .then_some(c.id)?
    })
}

/// Podman's bridges (CNI, netavark) have no `enable_icc`: its API warns
/// the option away, and its containers would reach each other.
async fn podman(client: &Client) -> bool {
    let Ok(v) = client.docker.version().await else {
        return false;
    };
    v.components
        .unwrap_or_default()
        .iter()
        .any(|c| c.name.to_ascii_lowercase().contains("podman"))
}

/// A network for this session's testbeds alone: on Podman; and beside
/// the daemon (`join`: the shared network's gateway), where the container
/// this process runs in joins it, so that the testbeds reach its apt
/// cache there.
async fn own(client: &Client, join: Option<IpAddr>) -> Result<Choice> {
    let joined =
        match join {
            None => None,
            Some(g) => match find_self(client, g).await {
                Some(c) => Some(c),
                None => return Ok(Choice::Default(
                    "rdocker runs in a container beside the daemon, which it cannot find there \
                     to join a network of this session; on the default network the testbeds \
                     reach its apt cache at this container's own address (and each other: \
                     `--apt-cache off` keeps them apart)"
                        .into(),
                )),
            },
        };
    let name = format!("rdocker-{}-{}", std::process::id(), random_hex(4));
    let mut labels = Owner::current().labels();
    labels.insert(LABEL.into(), LABEL_SESSION.into());
    if let Some(c) = &joined {
        labels.insert(LABEL_JOINED.into(), c.clone());
    }
    let Some(id) = create(client, &name, labels, HashMap::new()).await? else {
        anyhow::bail!("network {name} exists already: remove it (`docker network rm {name}`)");
    };
    let mut own = Own {
        id,
        name,
        gateway: None,
        joined: None,
        client: client.clone(),
        removed: false,
    };
    if let Some(c) = joined {
        let req = NetworkConnectRequest {
            container: c.clone(),
            ..Default::default()
        };
        if let Err(e) = client.docker.connect_network(&own.id, req).await {
            own.remove().await?;
            return Ok(Choice::Default(format!(
                "cannot join this container ({}) to network {}: {e}; the testbeds go on the \
                 default network, where they reach its apt cache (and each other: \
                 `--apt-cache off` keeps them apart)",
                short(&c),
                own.name
            )));
        }
        crate::debug!("this container ({}) joined network {}", short(&c), own.name);
        own.joined = Some(c);
    }
    let inspected = client.docker.inspect_network(&own.id, None).await;
    own.gateway = inspected
        .ok()
        .and_then(|n| n.ipam)
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .find_map(|c| c.gateway.and_then(|g| g.parse().ok()));
    Ok(Choice::Session(Box::new(own)))
}

/// A network this session made. `remove` at close; dropped, it goes to
/// the reaper thread, which removes it once its containers went.
pub struct Own {
    pub id: String,
    pub name: String,
    pub gateway: Option<IpAddr>,
    /// This process's container, joined to it.
    pub joined: Option<String>,
    client: Client,
    removed: bool,
}

impl Own {
    pub async fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        remove_when_free(&self.client, &self.id, &self.name, self.joined.as_deref()).await?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (endpoint, version) = (self.client.endpoint.clone(), self.client.api_version());
        let via = self.client.via.clone();
        let (id, name, joined) = (self.id.clone(), self.name.clone(), self.joined.clone());
        super::reaper::remove(super::reaper::Job {
            name: self.name.clone(),
            work: Box::new(move || {
                Box::pin(async move {
                    let client = Client::connect_with_version(&endpoint, &version, via.as_deref())?;
                    remove_when_free(&client, &id, &name, joined.as_deref()).await
                })
            }),
        });
    }
}

/// Remove a session's network, waiting for its testbeds to go first;
/// the container `joined` to it leaves it.
pub async fn remove_when_free(
    client: &Client,
    id: &str,
    name: &str,
    joined: Option<&str>,
) -> Result<()> {
    if let Some(c) = joined {
        let req = NetworkDisconnectRequest {
            container: c.into(),
            force: Some(true),
        };
        if let Err(e) = client.docker.disconnect_network(id, req).await {
            crate::debug!("container {} did not leave network {name}: {e}", short(c));
        }
    }
    let deadline = std::time::Instant::now() + REMOVE_WAIT;
    loop {
        match client.docker.remove_network(id).await {
            Ok(()) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => return Ok(()),
            // In use (a container's removal in flight), or the daemon
            // away for a moment.
            Err(e) if std::time::Instant::now() < deadline => {
                crate::debug!("cannot remove network {name} yet ({e}); retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot remove network {name}; once its containers are gone, remove it \
                     with `autopkgtest-virt-rdocker --reap` or `docker network rm {name}`"
                )))
            }
        }
    }
}

/// Remove this process's session networks: one whose making an ended
/// open cut off, which no `Own` holds.
pub async fn sweep_own(client: &Client) -> Result<()> {
    let me = Owner::current().labels();
    for (id, name, labels) in sessions(client).await? {
        let mine = [
            LABEL_OWNER_PID,
            LABEL_OWNER_HOST,
            LABEL_OWNER_START,
            LABEL_OWNER_PIDNS,
        ]
        .iter()
        .all(|k| labels.get(*k) == me.get(*k));
        if mine {
            let joined = labels.get(LABEL_JOINED).map(String::as_str);
            remove_when_free(client, &id, &name, joined).await?;
        }
    }
    Ok(())
}

/// The session networks on the daemon, with their labels, for `--reap`.
pub async fn sessions(client: &Client) -> Result<Vec<(String, String, HashMap<String, String>)>> {
    let nets = labelled(client, LABEL_SESSION).await?;
    Ok(nets
        .into_iter()
        .filter_map(|n| {
            Some((
                n.id?,
                n.name.unwrap_or_default(),
                n.labels.unwrap_or_default(),
            ))
        })
        .collect())
}

/// The networks whose rdocker label has `value`.
async fn labelled(client: &Client, value: &str) -> Result<Vec<bollard::models::Network>> {
    let filters = HashMap::from([("label", vec![format!("{LABEL}={value}")])]);
    let opts = ListNetworksOptionsBuilder::new().filters(&filters).build();
    client
        .docker
        .list_networks(Some(opts))
        .await
        .with_context(|| {
            format!(
                "cannot list networks on the daemon at {}",
                client.endpoint.host
            )
        })
}

async fn list(client: &Client) -> Result<Vec<Seen>> {
    let nets = labelled(client, LABEL_VALUE).await?;
    Ok(nets
        .into_iter()
        .filter_map(|n| {
            let gateway = n
                .ipam
                .and_then(|i| i.config)
                .unwrap_or_default()
                .into_iter()
                .find_map(|c| c.gateway.and_then(|g| g.parse().ok()));
            Some(Seen {
                id: n.id?,
                name: n.name.unwrap_or_default(),
                created: n.created.map(|c| c.to_string()).unwrap_or_default(),
                icc_off: n
                    .options
                    .is_some_and(|o| o.get(ICC).is_some_and(|v| v == "false")),
                gateway,
            })
        })
        .collect())
}

/// Make a network; its id, or None if the daemon says it exists (made
/// meanwhile by another session).
async fn create(
    client: &Client,
    name: &str,
    labels: HashMap<String, String>,
    options: HashMap<String, String>,
) -> Result<Option<String>> {
    let req = NetworkCreateRequest {
        name: name.into(),
        driver: Some("bridge".into()),
        options: (!options.is_empty()).then_some(options),
        labels: Some(labels),
        ..Default::default()
    };
    match client.docker.create_network(req).await {
        Ok(r) => {
            crate::debug!("made network {name} ({}) for the testbeds", short(&r.id));
            Ok(Some(r.id))
        }
        Err(e) if status_of(&e) == Some(409) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot make network {name} for the testbeds on the daemon at {}; give them a \
             network with `--network NAME` after the image (`--network bridge`: Docker's \
             default, where sessions can reach each other)",
            client.endpoint.host
        ))),
    }
}

/// The network every session agrees on: the oldest, then the least id.
pub fn pick(found: &[Seen]) -> Option<&Seen> {
    found
        .iter()
        .min_by(|a, b| (sortable(&a.created), &a.id).cmp(&(sortable(&b.created), &b.id)))
}

/// An RFC 3339 time whose fraction Go trims of trailing zeros, padded to
/// nanoseconds, so that two compare as strings.
fn sortable(t: &str) -> String {
    let Some(dot) = t.find('.') else {
        // No fraction: `…:SS` then the zone.
        let z = t
            .find(['Z', '+'])
            .or_else(|| t.rfind('-').filter(|&i| i > 10));
        return match z {
            Some(i) => format!("{}.000000000{}", &t[..i], &t[i..]),
            None => t.to_string(),
        };
    };
    let rest = &t[dot + 1..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    format!("{}.{:0<9}{}", &t[..dot], &rest[..digits], &rest[digits..])
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seen(id: &str, created: &str) -> Seen {
        Seen {
            id: id.into(),
            name: format!("{NAME}-{id}"),
            created: created.into(),
            icc_off: true,
            gateway: None,
        }
    }

    #[test]
    fn the_oldest_wins_whatever_its_fraction() {
        let a = seen("bb", "2026-12-07T05:49:04.3557858Z");
        let b = seen("aa", "2026-12-07T05:49:04.355785869Z");
        // .3557858 is .355785800: older, although "8Z" sorts after "86".
        assert_eq!(pick(&[a.clone(), b.clone()]).unwrap().id, "bb");
        assert_eq!(pick(&[b, a]).unwrap().id, "bb");
        let c = seen("cc", "2026-12-07T05:49:04Z");
        assert_eq!(
            pick(&[seen("dd", "2026-12-07T05:49:04.1Z"), c]).unwrap().id,
            "cc"
        );
        // Same time: the least id.
        let t = "2026-12-07T05:49:04.5Z";
        assert_eq!(pick(&[seen("b", t), seen("a", t)]).unwrap().id, "a");
        assert!(pick(&[]).is_none());
    }

    #[test]
    fn a_gateway_that_is_not_ours_keeps_the_default_network() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // TEST-NET-1: no address of this machine.
        assert!(unreachable_gateway(true, ip("192.0.2.1"), "n").is_some());
        assert!(unreachable_gateway(false, ip("192.0.2.1"), "n").is_none());
        assert!(unreachable_gateway(true, ip("127.0.0.1"), "n").is_none());
        assert!(unreachable_gateway(true, None, "n").is_none());
    }

    proptest! {
        // Every session picks the same network, in whatever order the
        // daemon lists them, and it is the oldest.
        #[test]
        fn every_order_picks_the_same(
            nanos in proptest::collection::vec(0u32..1_000_000_000, 1..6),
            secs in proptest::collection::vec(0u32..60, 6),
            rot in 0usize..6,
        ) {
            let found: Vec<Seen> = nanos
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    // Go's RFC 3339 with nanoseconds drops trailing zeros.
                    let frac = format!("{n:09}");
                    let frac = frac.trim_end_matches('0');
                    let t = if frac.is_empty() {
                        format!("2026-12-07T05:49:{:02}Z", secs[i])
                    } else {
                        format!("2026-12-07T05:49:{:02}.{frac}Z", secs[i])
                    };
                    seen(&format!("id{i}"), &t)
                })
                .collect();
            let oldest = (0..found.len())
                .min_by_key(|&i| (secs[i], nanos[i], found[i].id.clone()))
                .unwrap();
            let mut turned = found.clone();
            turned.rotate_left(rot % found.len());
            turned.reverse();
            prop_assert_eq!(&pick(&found).unwrap().id, &found[oldest].id);
            prop_assert_eq!(&pick(&turned).unwrap().id, &found[oldest].id);
        }
    }
}

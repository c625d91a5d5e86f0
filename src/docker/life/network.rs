//! The testbeds' network when the run options name none: one bridge that
//! every rdocker session shares, made on first use, with
//! container-to-container traffic off (`enable_icc=false`). A testbed
//! there reaches the host through the gateway (the apt cache listens
//! there) and the outside, but no other container: not another
//! session's testbed, nor the one its own revert is retiring, nor what
//! runs on the default bridge (Docker isolates bridges from each other).
//! `--network` given keeps its meaning: this module is not asked.

use anyhow::{Context, Result};
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;
use std::collections::HashMap;
use std::net::IpAddr;

use super::labels::LABEL_MANAGED;
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
/// The bridge driver's option that turns container-to-container traffic
/// off (iptables DROP between the bridge's ports).
pub const ICC: &str = "com.docker.network.bridge.enable_icc";

/// Where the testbeds go.
#[derive(Debug, PartialEq)]
pub enum Choice {
    /// The shared network.
    Apart {
        id: String,
        name: String,
        gateway: Option<IpAddr>,
    },
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
/// the network's gateway, so this process must be able to (it cannot in
/// a container beside the daemon: then the default network, where the
/// cache listens on our own address, as before).
pub async fn choose(client: &Client, needs_gateway: bool) -> Result<Choice> {
    let (podman, found) = tokio::join!(podman(client), list(client));
    if let Some(why) = podman {
        return Ok(Choice::Default(why));
    }
    let mut made = None;
    let mut found = found?;
    if found.is_empty() {
        made = create(client).await?;
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
    if needs_gateway {
        if let Some(g) = w.gateway {
            if std::net::TcpListener::bind((g, 0)).is_err() {
                return Ok(Choice::Default(format!(
                    "this process cannot listen on {g}, the gateway of network {} (it runs \
                     in a container beside the daemon), where the testbeds would reach its apt \
                     cache; on the default network they reach it at this container's own \
                     address. `--apt-cache off` keeps the testbeds apart instead",
                    w.name
                )));
            }
        }
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

/// Podman's bridges (CNI, netavark) have no `enable_icc`: its API warns
/// the option away, and its containers would reach each other.
async fn podman(client: &Client) -> Option<String> {
    let v = client.docker.version().await.ok()?;
    let is = v
        .components
        .unwrap_or_default()
        .iter()
        .any(|c| c.name.to_ascii_lowercase().contains("podman"));
    is.then(|| {
        format!(
            "Podman's networks cannot turn container-to-container traffic off ({ICC} is \
             ignored): the testbeds go on its default network, where sessions can reach each \
             other"
        )
    })
}

async fn list(client: &Client) -> Result<Vec<Seen>> {
    let filters = HashMap::from([("label", vec![format!("{LABEL}={LABEL_VALUE}")])]);
    let opts = ListNetworksOptionsBuilder::new().filters(&filters).build();
    let nets = client
        .docker
        .list_networks(Some(opts))
        .await
        .with_context(|| {
            format!(
                "cannot list networks on the daemon at {}",
                client.endpoint.host
            )
        })?;
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

/// Make the network; its id, or None if the daemon says it exists (made
/// meanwhile by another session).
async fn create(client: &Client) -> Result<Option<String>> {
    let name = format!("{NAME}-{}", random_hex(4));
    let req = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        options: Some(HashMap::from([(ICC.into(), "false".into())])),
        labels: Some(HashMap::from([
            (LABEL.into(), LABEL_VALUE.into()),
            (LABEL_MANAGED.into(), "1".into()),
        ])),
        ..Default::default()
    };
    match client.docker.create_network(req).await {
        Ok(r) => {
            crate::debug!(
                "made network {name} ({}) for the testbeds, container-to-container traffic off",
                short(&r.id)
            );
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

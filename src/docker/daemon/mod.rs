//! Reaching the daemon: which one (the docker CLI's rules, or Podman's),
//! its address and TLS settings, the HTTP client over unix, TCP, TLS or
//! ssh, the routes that spare exec helpers a login or a handshake each
//! (tunnel.rs for ssh, relay.rs for TLS), registry credentials for pulls,
//! and whether the daemon can see this machine. It knows nothing of
//! testbeds, and imports no other wing.

pub mod auth;
pub mod client;
pub mod context;
pub mod endpoint;
pub mod locality;
pub mod relay;
pub mod rundir;
pub mod tunnel;

use anyhow::Result;

use crate::debug;
use endpoint::Endpoint;

/// For a TLS daemon, the relay that spares exec helpers a handshake.
pub fn relay_for(endpoint: &Endpoint) -> Option<relay::Relay> {
    use client::TlsDialer;
    use relay::Relay;
    let started = TlsDialer::new(endpoint).and_then(|d| d.map(Relay::start).transpose());
    match started {
        Ok(Some(r)) => {
            debug!(
                "exec helpers connect through {}, over TLS connections opened ahead",
                r.socket().display()
            );
            Some(r)
        }
        Ok(None) => None,
        Err(e) => {
            debug!("exec helpers make their own TLS connections: {e:#}");
            None
        }
    }
}

/// Through the tunnel if there is one and it answers, else directly.
pub async fn connect(
    endpoint: &Endpoint,
    tunnel: Option<&tunnel::Tunnel>,
) -> Result<client::Client> {
    use client::Client;
    if let Some(t) = tunnel {
        match Client::connect(endpoint, Some(t.socket())).await {
            Ok(c) => return Ok(c),
            Err(e) => debug!("the ssh tunnel does not reach the daemon: {e:#}"),
        }
    }
    Client::connect(endpoint, None).await
}

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

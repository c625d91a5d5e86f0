//! Reaching the daemon: which one (the docker CLI's rules, or Podman's),
//! its address and TLS settings, the HTTP client over unix, TCP, TLS or
//! ssh (one connection a session, tunnel.rs), registry credentials for pulls, and whether the daemon can see
//! this machine. It knows nothing of testbeds, and imports no other wing.

pub mod auth;
pub mod client;
pub mod context;
pub mod endpoint;
pub mod locality;
pub mod rundir;
pub mod tunnel;

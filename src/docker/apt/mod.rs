//! apt in the testbed, all of it: which proxy the testbeds' apt gets
//! (`plan.rs`, from `--apt-proxy`, `--apt-cache` and the host's own apt
//! proxy that `conf.rs` finds), the apt.conf.d file that hands it to the
//! testbed (`conf.rs`), rdocker's package cache on the host (`proxy.rs`,
//! by `policy.rs`'s rules, `resolve.rs`'s address check and `store.rs`'s
//! directory and disk space), and the warming of a spare's apt binary
//! cache (`warm.rs`).
//!
//! This wing talks to the daemon (daemon/) and runs its scripts in the
//! testbed through api/exec.rs; it never opens a testbed's files. It uses
//! archive.rs (the disk margin) and names.rs; only docker/mod.rs and
//! main.rs import it.

pub mod conf;
pub mod plan;
pub mod policy;
pub mod proxy;
pub mod resolve;
pub mod store;
pub mod warm;

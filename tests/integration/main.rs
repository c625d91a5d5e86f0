//! Integration tests: the server binary driven over its protocol against
//! the real Docker daemon. One test binary; shared helpers in tests/util.

#[path = "../util/mod.rs"]
mod util;

mod agent_bounds;
mod apt;
mod apt_attacks;
mod cleanup;
mod copy;
mod copy_bounds;
mod daemon_restart;
mod daemons;
mod exec;
mod faults;
mod foreign;
mod hostile;
mod init;
mod options;
mod protocol;
mod pull;
mod reap;
mod reboot;
mod reboot_plain;
mod revert;
mod sessions_apart;
mod shared_dir;
mod shell;
mod tar_guard;
mod timeout_kill;
mod warm;

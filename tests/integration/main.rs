//! Integration tests: the server binary driven over its protocol against
//! the real Docker daemon. One test binary; shared helpers in tests/util.

#[path = "../util/mod.rs"]
mod util;

mod apt;
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
mod revert;
mod shell;
mod warm;

//! The small interface the protocol server drives. Docker is its one
//! implementation; the server knows nothing of containers.

use anyhow::Result;
use futures_util::Stream;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite};

/// The caller's terminal, for an interactive shell.
pub struct Console<'a> {
    /// Keystrokes; EOF when the terminal hangs up.
    pub input: &'a mut (dyn AsyncRead + Unpin),
    pub output: &'a mut (dyn AsyncWrite + Unpin),
    /// Rows and columns at the start.
    pub size: (u16, u16),
    /// The size each time it changes.
    pub resizes: &'a mut (dyn Stream<Item = (u16, u16)> + Unpin),
}

#[allow(async_fn_in_trait)]
pub trait Testbed {
    /// Bring up a fresh testbed; returns the scratch directory.
    async fn start(&mut self) -> Result<String>;
    /// Throw the testbed away and start a fresh one with the same scratch
    /// directory.
    async fn revert(&mut self) -> Result<String>;
    /// Reboot the open testbed, keeping its files and scratch directory.
    /// With `prepare_only`, the test reboots it itself once let go.
    async fn reboot(&mut self, prepare_only: bool) -> Result<()>;
    /// Why the testbed cannot reboot, if it cannot: then `reboot` is not
    /// advertised.
    fn cannot_reboot(&self) -> Option<String>;
    /// Tear the testbed down; must be idempotent.
    async fn stop(&mut self) -> Result<()>;
    /// Copy a host file or directory into the testbed.
    async fn push(&mut self, host: &Path, testbed: &str, dir: bool) -> Result<()>;
    /// Copy a testbed file or directory out to the host.
    async fn pull(&mut self, testbed: &str, host: &Path, dir: bool) -> Result<()>;
    /// The argv prefix that runs a command in the open testbed.
    fn run_argv(&self) -> Result<Vec<String>>;
    /// Run the shell script `script` as root on a terminal in the testbed
    /// that `console` drives, until it exits.
    async fn shell(&mut self, script: &str, console: Console<'_>) -> Result<()>;
    fn capabilities(&self) -> Vec<String>;
    /// What to tell the caller when it asks why things failed.
    async fn describe(&mut self) -> String;
}

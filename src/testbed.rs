//! The small interface the protocol server drives. Docker is its one
//! implementation; the server knows nothing of containers.

use anyhow::Result;
use std::path::Path;

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
    fn capabilities(&self) -> Vec<String>;
    /// What to tell the caller when it asks why things failed.
    async fn describe(&mut self) -> String;
}

//! Warming a spare testbed while the test before it runs: apt's binary
//! cache (pkgcache.bin, srcpkgcache.bin) generated, as the testbed's own
//! first apt call would generate it. autopkgtest 6.x reverts before every
//! test, and its set-up's first apt call (`apt-cache policy`) then builds
//! the cache from the image's package lists: about a second on the
//! critical path, moved here to the background, where it pays if a core
//! is idle (docs/performance.md).
//!
//! What a test can tell: nothing that an apt call before it (autopkgtest
//! makes several) would not have left the same. Only files that the
//! image's apt configuration names are written (`Dir::Cache::pkgcache`,
//! `Dir::Cache::srcpkgcache`; an image that empties them, as Docker's
//! official Debian images do, gets nothing), by apt itself, with the
//! contents apt's next call would write; their mtimes are older than the
//! handover. Run through api/exec.rs, as root.

use anyhow::{bail, Result};
use std::time::Duration;

use crate::docker::api::exec;
use crate::docker::daemon::client::Client;

/// Generate the binary cache only where the image's apt would write one:
/// `apt-config` names the files (none when both are empty, or no apt).
/// Exit 0 with nothing printed when there is nothing to do; `warmed` on
/// stdout when apt wrote it.
const SCRIPT: &str = "command -v apt-cache >/dev/null 2>&1 || exit 0
eval \"$(apt-config shell P Dir::Cache::pkgcache S Dir::Cache::srcpkgcache)\" || exit 1
[ -n \"${P:-}${S:-}\" ] || exit 0
apt-cache -q gencaches >/dev/null || exit 1
echo warmed";

/// The most a warming may take: revert waits for it, and a spare whose
/// apt still runs could write its files during the test.
const LIMIT: Duration = Duration::from_secs(60);

/// What the warming did.
pub enum Warmed {
    /// apt's binary cache generated.
    Done,
    /// The image's apt writes none, or there is no apt.
    Nothing,
    /// apt failed: the testbed is as good as unwarmed (its own first apt
    /// call will build the cache, or fail the same way).
    Failed(String),
}

/// Warm the spare `id`. An error (the exec failed, or apt outran
/// `LIMIT`) means the spare must not be handed out.
pub async fn apt_cache(client: &Client, id: &str) -> Result<Warmed> {
    let mut cap = exec::Captured::default();
    let ran = exec::run_script(client, id, SCRIPT, Vec::new(), None, &mut cap);
    let code = match tokio::time::timeout(LIMIT, ran).await {
        Ok(r) => r?,
        Err(_) => bail!(
            "apt-cache gencaches in the spare testbed still ran after {} s: the spare is \
             dropped, and revert makes a fresh testbed",
            LIMIT.as_secs()
        ),
    };
    Ok(match code {
        0 if cap.out.to_string().contains("warmed") => Warmed::Done,
        0 => Warmed::Nothing,
        c => Warmed::Failed(format!(
            "apt-cache gencaches exited {c}: {}",
            cap.err.to_string().trim()
        )),
    })
}

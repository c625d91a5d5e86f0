//! `reboot` under `--init`: the testbed's own init reboots it, and rdocker
//! brings the same container back, booted, with its files and the scratch
//! directory, as autopkgtest's VirtSubproc cmd_reboot does for the servers
//! it ships (lxd, qemu).
//!
//! Why the container stops: an init as PID 1 of a pid namespace cannot
//! reboot the machine; on `reboot` it shuts the system down and exits, and
//! the daemon reports the container stopped. rdocker starts the same
//! container again through the Engine API (same id, same filesystem, a
//! fresh tmpfs on /run) and waits for the boot as at open (boot.rs).
//!
//! Why the scratch directory is saved inside the testbed: Debian's systemd
//! empties /tmp at boot (tmpfiles' `D /tmp`), and Podman's systemd mode
//! mounts a tmpfs there. The reference's tar to /var/cache or /home and
//! back is kept word for word, with its removal of
//! /run/autopkgtest-reboot-prepare-mark: that removal is what lets a test
//! waiting in /tmp/autopkgtest-reboot-prepare go on to reboot.

use anyhow::{bail, Result};
use std::time::Duration;

use super::container::{not_running_on_podman, Container};
use crate::docker::api::exec::{self, As, Captured};
use crate::docker::daemon::client::{status_of, Client};

/// How long the testbed may take to begin shutting down, or to be down,
/// once told to (or, with `prepare-only`, once the test was let go); the
/// reference's lxd waits 100 s. A shutdown that has begun gets
/// SHUTDOWN_SECONDS instead.
pub const STOP_SECONDS: u64 = 120;

/// How long a shutdown that has begun may take before the container is
/// killed instead (see `restart`).
pub const SHUTDOWN_SECONDS: u64 = 30;

/// Where the reference keeps the scratch directory over a reboot.
const KEEP_IN: &str = "/var/cache /home";

/// A copy's worth of time for tar, as the reference's copy timeout.
const TAR_SECONDS: u64 = 300;

async fn script(
    client: &Client,
    c: &Container,
    what: &str,
    script: String,
    args: &[&str],
) -> Result<()> {
    let mut argv = vec!["sh".into(), "-ec".into(), script, "rdocker-reboot".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut out = Captured::default();
    let ran = tokio::time::timeout(
        Duration::from_secs(TAR_SECONDS),
        exec::run(client, &c.id, As::Root, argv, None, &mut out),
    )
    .await;
    match ran {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(code)) => bail!(
            "cannot {what} in testbed container {} (exit {code}): {}",
            c.name,
            [out.out.to_string(), out.err.to_string()].join(" ").trim()
        ),
        Ok(Err(e)) => Err(e.context(format!("cannot {what} in testbed container {}", c.name))),
        Err(_) => bail!(
            "cannot {what} in testbed container {}: still at it after {TAR_SECONDS} s",
            c.name
        ),
    }
}

/// What a test's own `reboot` needs of a systemd testbed, checked before
/// `reboot prepare-only` lets the test go. systemd's `reboot` asks logind
/// over D-Bus first, and without a system bus prints "Failed to connect
/// to bus" before it falls back; after reboot-prepare the test's stderr
/// reader (autopkgtest's wrapper and its tee) is gone, so that message
/// kills `reboot` with SIGPIPE and the testbed never goes down. Waiting
/// STOP_SECONDS for it only ends in the same failure, later.
pub async fn check_bus(client: &Client, c: &Container) -> Result<()> {
    let argv = vec![
        "sh".into(),
        "-c".into(),
        "if [ -d /run/systemd/system ] && [ ! -S /run/dbus/system_bus_socket ]; then \
           echo no-bus; fi"
            .into(),
    ];
    let mut out = Captured::default();
    let ran = tokio::time::timeout(
        Duration::from_secs(10),
        exec::run(client, &c.id, As::Root, argv, None, &mut out),
    )
    .await;
    match ran {
        Ok(Ok(0)) if out.out.to_string() == "no-bus" => bail!(
            "cannot `reboot prepare-only` testbed container {}: its systemd has no D-Bus system \
             bus (no /run/dbus/system_bus_socket), so the test's own `reboot` would print \
             \"Failed to connect to bus\" to an output nobody reads any more and die of \
             SIGPIPE, and the testbed would never reboot. Install dbus and libpam-systemd in \
             the image, as autopkgtest-build-docker's system images have them (or have the \
             test use /tmp/autopkgtest-reboot, which rdocker carries out itself)",
            c.name
        ),
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(code)) => bail!(
            "cannot look for D-Bus in testbed container {} (exit {code}): {}",
            c.name,
            out.err
        ),
        Ok(Err(e)) => Err(e.context(format!(
            "cannot look for D-Bus in testbed container {}",
            c.name
        ))),
        Err(_) => bail!(
            "cannot look for D-Bus in testbed container {}: no answer within 10 s",
            c.name
        ),
    }
}

/// Save the scratch directory where a boot leaves it, and let a test that
/// waits in /tmp/autopkgtest-reboot-prepare go on.
pub async fn save_scratch(client: &Client, c: &Container, downtmp: &str) -> Result<()> {
    script(
        client,
        c,
        "save the scratch directory before the reboot",
        format!(
            "for d in {KEEP_IN}; do if [ -w $d ]; then \
               tar --warning=none --create --absolute-names \
                 -f $d/autopkgtest-tmpdir.tar \"$1\"; \
               rm -f /run/autopkgtest-reboot-prepare-mark; \
               exit 0; fi; done; exit 1"
        ),
        &[downtmp],
    )
    .await
}

/// Put the saved scratch directory back after the boot.
pub async fn restore_scratch(client: &Client, c: &Container) -> Result<()> {
    script(
        client,
        c,
        "restore the scratch directory after the reboot",
        format!(
            "for d in {KEEP_IN}; do \
             if [ -e $d/autopkgtest-tmpdir.tar ]; then \
               tar --warning=none --extract --absolute-names \
                 -f $d/autopkgtest-tmpdir.tar; \
               rm $d/autopkgtest-tmpdir.tar; exit 0; \
             fi; done; exit 1"
        ),
        &[],
    )
    .await
}

/// Ask the testbed's init to reboot, as a test would. Whether it did is
/// seen in the container stopping (`restart`); the command's own status
/// is only looked at if it does not.
pub async fn ask(client: &Client, c: &Container) -> Option<String> {
    let mut out = Captured::default();
    let ran = tokio::time::timeout(
        Duration::from_secs(30),
        exec::run(
            client,
            &c.id,
            As::Root,
            vec!["reboot".into()],
            None,
            &mut out,
        ),
    )
    .await;
    match ran {
        Ok(Ok(0)) => None,
        Ok(Ok(code)) => Some(format!(
            "`reboot` in the testbed exited {code}: {}",
            [out.out.to_string(), out.err.to_string()].join(" ").trim()
        )),
        Ok(Err(e)) => Some(format!("`reboot` in the testbed failed: {e:#}")),
        Err(_) => None,
    }
}

/// Whether the testbed's init is shutting the system down: systemd says
/// `stopping`; sysvinit is in runlevel 0 or 6. Bounded: an exec into a
/// system going down may hang.
async fn shutting_down(client: &Client, c: &Container) -> bool {
    let argv = vec![
        "sh".into(),
        "-c".into(),
        "if [ -d /run/systemd/system ]; then systemctl is-system-running; \
         else runlevel; fi"
            .into(),
    ];
    let mut out = Captured::default();
    let ran = tokio::time::timeout(
        Duration::from_secs(2),
        exec::run(client, &c.id, As::Root, argv, None, &mut out),
    )
    .await;
    if !matches!(ran, Ok(Ok(_))) {
        return false;
    }
    let said = out.out.to_string();
    let said = said.trim();
    said == "stopping" || said.ends_with(" 0") || said.ends_with(" 6")
}

/// Wait until the testbed's init has shut down and the container stopped,
/// then start the same container again. `asked` is what `ask` reported,
/// for the error if it never stops.
pub async fn restart(client: &Client, c: &Container, asked: Option<String>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(STOP_SECONDS);
    let mut next_look = tokio::time::Instant::now();
    let mut stopping_since = None;
    loop {
        match client.docker.inspect_container(&c.id, None).await {
            Ok(i) if i.state.as_ref().and_then(|s| s.running) != Some(true) => {
                let code = i.state.and_then(|s| s.exit_code).unwrap_or(-1);
                crate::debug!("{} has shut down (its init exited {code})", c.name);
                break;
            }
            Ok(_) => {}
            Err(e) if not_running_on_podman(&e) => {
                crate::debug!("{} has shut down (Podman: {e})", c.name);
                break;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot inspect testbed container {}", c.name)))
            }
        }
        let now = tokio::time::Instant::now();
        if now >= next_look {
            next_look = now + Duration::from_secs(1);
            if stopping_since.is_none() && shutting_down(client, c).await {
                crate::debug!("{} is shutting down", c.name);
                stopping_since = Some(now);
            }
        }
        if stopping_since.is_some_and(|t| now >= t + Duration::from_secs(SHUTDOWN_SECONDS)) {
            // A unit that does not stop holds the shutdown for its own
            // stop timeout (90 s each): Podman's systemd mode on a cgroup
            // v1 host leaves the user manager of a `su` session in
            // final-sigkill now and then. Power it off, as a watchdog
            // would: the files are in the host's page cache, none is lost.
            crate::debug!(
                "{} still shutting down after {SHUTDOWN_SECONDS} s: killing it",
                c.name
            );
            c.kill().await?;
            break;
        }
        if stopping_since.is_none() && now >= deadline {
            bail!(
                "testbed container {} did not shut down within {STOP_SECONDS} s of the \
                 reboot{}",
                c.name,
                asked.map(|a| format!(" ({a})")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A daemon still tearing the last boot down (Podman's clean-up of a
    // `stopped` container) may refuse the start for a moment.
    let busy_until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.docker.start_container(&c.id, None).await {
            Ok(()) => return Ok(()),
            // Started already (a restart policy in the run options).
            Err(e) if status_of(&e) == Some(304) => return Ok(()),
            Err(e)
                if matches!(status_of(&e), Some(409 | 500))
                    && tokio::time::Instant::now() < busy_until =>
            {
                crate::debug!("cannot start {} again yet ({e}); retrying", c.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot start testbed container {} again after its reboot",
                    c.name
                )))
            }
        }
    }
}

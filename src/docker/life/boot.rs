//! `--init`: waiting for the testbed's init system to finish booting, as
//! the reference's VirtSubproc.wait_booted does, before rdocker makes the
//! scratch directory (an init that cleans or mounts /tmp would hide it)
//! and hands the testbed out.
//!
//! Why one exec and not a poll from here: the reference runs `runlevel`
//! through a new `docker exec` every second; a loop in the testbed sees
//! the boot end within 0.1 s and costs one exec.

use anyhow::{anyhow, bail, Result};
use futures_util::StreamExt;
use std::time::Duration;

use super::container::{Container, INIT};
use crate::docker::api::exec::{self, As, Captured};
use crate::docker::daemon::client::Client;

/// How long the init may take to reach its runlevel, as the reference's.
const BOOT_SECONDS: u64 = 120;
/// And then to start the network (systemd) or finish its rc scripts.
const SETTLE_SECONDS: u64 = 60;

/// Booted when `runlevel` names one (systemd's `N 5`, sysvinit's `N 2`),
/// or, for a systemd without its `runlevel`, when the system is up; then
/// as the reference's await-boot.sh: systemd brings the network online,
/// sysvinit's rc scripts are let finish. Exit 3: the time ran out.
const SCRIPT: &str = r#"end=$(($(date +%s) + $1))
booted() {
    if command -v runlevel >/dev/null 2>&1; then
        state=$(runlevel 2>/dev/null) || return 1
        case "${state##* }" in [0-9]) return 0;; esac
    elif [ -d /run/systemd/system ]; then
        state=$(systemctl is-system-running 2>/dev/null)
        case "$state" in running|degraded) return 0;; esac
    else
        state="no runlevel command"
    fi
    return 1
}
until booted; do
    if [ "$(date +%s)" -ge "$end" ]; then
        echo "not booted after $1 s (runlevel: ${state:-unknown})"
        exit 3
    fi
    sleep 0.1
done
if [ -d /run/systemd/system ]; then
    systemctl start network-online.target
else
    while grep -qs '/etc/init[.]d/rc' /proc/[0-9]*/cmdline; do sleep 0.1; done
fi
"#;

/// Wait until the init of `c` has booted. An init that exits meanwhile is
/// named with its status, what it printed, and the options it likely
/// lacks.
pub async fn wait(client: &Client, c: &Container) -> Result<()> {
    let argv = vec![
        "sh".into(),
        "-c".into(),
        SCRIPT.into(),
        "rdocker-boot".into(),
        BOOT_SECONDS.to_string(),
    ];
    let mut out = Captured::default();
    let limit = Duration::from_secs(BOOT_SECONDS + SETTLE_SECONDS);
    let ran = tokio::time::timeout(
        limit,
        exec::run(client, &c.id, As::Root, argv, None, &mut out),
    )
    .await;
    let why = match ran {
        Ok(Ok(0)) => return Ok(()),
        Ok(Ok(code)) => format!(
            "the boot check exited {code}: {}",
            [out.out.to_string(), out.err.to_string()].join(" ").trim()
        ),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => format!("still booting after {} s", limit.as_secs()),
    };
    // The daemon can report the init's exit a moment after the check's
    // exec died of it (exit 137, under load).
    let mut status = exited(client, &c.id).await;
    let settle = tokio::time::Instant::now() + Duration::from_secs(2);
    while status.is_none() && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = exited(client, &c.id).await;
    }
    if let Some(status) = status {
        let printed = last_output(client, &c.id).await;
        bail!(
            "the testbed's init ({INIT}, --init) exited with status {status} before it had \
             booted{printed}. systemd in a container needs a writable /run and the cgroup \
             hierarchy: pass docker run options such as --tmpfs /run --tmpfs /run/lock \
             -v /sys/fs/cgroup:/sys/fs/cgroup:ro (a cgroup v1 host), --cgroupns host \
             -v /sys/fs/cgroup:/sys/fs/cgroup (cgroup v2), or --privileged"
        );
    }
    Err(anyhow!(
        "the testbed's init ({INIT}, --init) did not finish booting: {why}"
    ))
}

/// Whether the testbed's first process has died since it started (an
/// exec format error for want of an emulator, an image without /bin/sh, an
/// entrypoint that exits): then the error that says so, with its status
/// and last output. `open` must never answer ok for such a testbed.
pub async fn died(client: &Client, c: &Container, platform: Option<&str>) -> Option<anyhow::Error> {
    let status = exited(client, &c.id).await?;
    let printed = last_output(client, &c.id).await;
    let hint = match platform {
        Some(p) => format!(
            "; with --platform {p}, the host must be able to run {p} binaries (an exec format \
             error means it cannot: install qemu-user-static and binfmt-support on the \
             daemon's host, or `docker run --privileged --rm tonistiigi/binfmt --install all` \
             there)"
        ),
        None => "; the image needs a /bin/sh that this host runs (an exec format error: the \
                 image is for another architecture; name it with --platform, and install \
                 qemu-user-static and binfmt-support)"
            .to_string(),
    };
    Some(anyhow!(
        "the testbed container {} stopped right after it started: its first process exited \
         with status {status}{printed}{hint}",
        c.name
    ))
}

/// The exit status of a container that is no longer running.
async fn exited(client: &Client, id: &str) -> Option<i64> {
    let state = client
        .docker
        .inspect_container(id, None)
        .await
        .ok()?
        .state?;
    (state.running != Some(true)).then(|| state.exit_code.unwrap_or(-1))
}

/// The last lines the container printed, as ": LINE | LINE", or nothing.
async fn last_output(client: &Client, id: &str) -> String {
    let opts = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail("5")
        .build();
    let mut logs = client.docker.logs(id, Some(opts));
    // The image's words: the last 5 lines of at most 500 characters each,
    // read up to 1 MiB, whatever it printed (a log driver may not split a
    // long line, and each of its pieces would count as one).
    let mut lines = std::collections::VecDeque::with_capacity(6);
    let mut read = 0;
    while let Some(Ok(chunk)) = logs.next().await {
        let chunk = chunk.into_bytes();
        read += chunk.len();
        for l in String::from_utf8_lossy(&chunk).lines().map(str::trim) {
            if !l.is_empty() {
                lines.push_back(l.chars().take(500).collect::<String>());
                if lines.len() > 5 {
                    lines.pop_front();
                }
            }
        }
        if read > 1 << 20 {
            break;
        }
    }
    if lines.is_empty() {
        String::new()
    } else {
        format!(" after printing: {}", Vec::from(lines).join(" | "))
    }
}

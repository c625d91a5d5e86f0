//! One ssh connection for a whole session with an ssh:// daemon: a master
//! connection (ControlMaster) that forwards the remote daemon's socket to
//! a socket in a private directory. Each request, and each exec helper,
//! then opens a channel on that connection instead of logging in and
//! starting `docker system dial-stdio` again (about half a second each).
//!
//! Anything that stops it (no ControlMaster, forwarding refused, a remote
//! daemon that is not on a unix socket) leaves the session on
//! client.rs's per-connection dial-stdio, said under -d.

use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::ssh_login;
use super::rundir::RunDir;

/// As client.rs's ssh: a login that takes longer has failed.
const LOGIN_LIMIT: Duration = Duration::from_secs(35);

pub struct Tunnel {
    master: Child,
    socket: PathBuf,
    // Last: removed after the master is stopped.
    _dir: RunDir,
}

impl Tunnel {
    /// The tunnel for `url`, or None (and why, under -d).
    pub fn open(url: &str) -> Option<Tunnel> {
        match Tunnel::try_open(url) {
            Ok(t) => {
                crate::debug!(
                    "one ssh connection for the session: the daemon's socket is forwarded to {}",
                    t.socket.display()
                );
                Some(t)
            }
            Err(e) => {
                crate::debug!("each connection runs its own ssh: {e:#}");
                None
            }
        }
    }

    fn try_open(url: &str) -> Result<Tunnel> {
        let login = ssh_login(url).map_err(|e| anyhow!("{url}: {e}"))?;
        let ssh = which::which("ssh").context("no `ssh' on PATH")?;
        let dir = RunDir::new()?;
        let ctl = dir.path().join("ctl");
        let log = dir.path().join("ssh.log");
        let ssh_cmd = |extra: &[&str]| {
            let mut c = Command::new(&ssh);
            c.args(&login.options)
                .arg("-o")
                .arg(format!("ControlPath={}", ctl.display()))
                .args(extra);
            c
        };
        let mut cmd = ssh_cmd(&[
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=no",
            "-N",
            "--",
            &login.host,
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            // Its own process group: a Ctrl-C to ours must leave it up
            // while the testbed is removed.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. The master ends with us,
        // even killed (SIGKILL): the kernel sends it SIGTERM, on which ssh
        // removes its control socket. This runs on the main thread, which
        // lives as long as the process.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let master = cmd.spawn().context("cannot run ssh")?;
        let mut t = Tunnel {
            master,
            socket: dir.path().join("docker.sock"),
            _dir: dir,
        };
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        let start = Instant::now();
        while !ctl.exists() {
            if let Some(st) = t.master.try_wait()? {
                bail!("the ssh master connection exited ({st}): {}", said().trim());
            }
            if start.elapsed() > LOGIN_LIMIT {
                bail!("the ssh master connection did not come up in {LOGIN_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let remote = match &login.path {
            Some(p) => p.clone(),
            None => remote_socket(ssh_cmd(&["-o", "ControlMaster=no", "--", &login.host]))?,
        };
        let forward = format!("{}:{remote}", t.socket.display());
        let o = ssh_cmd(&["-O", "forward", "-L", &forward, "--", &login.host])
            .stdin(Stdio::null())
            .output()
            .context("cannot run ssh")?;
        if !o.status.success() || !t.socket.exists() {
            bail!(
                "ssh could not forward {remote}: {}{}",
                String::from_utf8_lossy(&o.stderr).trim(),
                said().trim()
            );
        }
        Ok(t)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// Where the remote docker CLI's daemon listens, as its `dial-stdio`
/// would find it (DOCKER_HOST, the current context): a unix socket only.
fn remote_socket(mut ssh: Command) -> Result<String> {
    let o = ssh
        .args([
            "docker",
            "context",
            "inspect",
            "--format",
            "'{{.Endpoints.docker.Host}}'",
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run ssh")?;
    let host = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if !o.status.success() {
        bail!(
            "`docker context inspect' on the remote host failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    match host.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(p.to_string()),
        _ => bail!("the remote docker CLI's daemon is at {host:?}, not on a unix socket"),
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // SIGTERM: ssh closes the connection and its control socket.
        let pid = nix::unistd::Pid::from_raw(self.master.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(self.master.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

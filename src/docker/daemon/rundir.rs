//! A private directory for a session's sockets: made 0700 and checked to
//! be ours, removed when dropped. One a server left behind by dying
//! without clean-up (SIGKILL) is removed by the next server.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

const PREFIX: &str = "rdocker-run-";

pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// `$XDG_RUNTIME_DIR` (the user's, never shared), else the temporary
    /// directory; either way short, as a socket path must be.
    pub fn new() -> Result<RunDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        sweep(&base);
        let me = std::process::id();
        for _ in 0..8 {
            let path = base.join(format!(
                "{PREFIX}{me}-{}",
                crate::docker::names::random_hex(4)
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot make a private directory in {}", base.display())
                    })
                }
            }
            let dir = RunDir { path };
            dir.check()?;
            return Ok(dir);
        }
        bail!("cannot make a private directory in {}", base.display())
    }

    /// Ours, a real directory, and closed to everyone else: what is in it
    /// reaches the daemon.
    fn check(&self) -> Result<()> {
        let m = std::fs::symlink_metadata(&self.path)
            .with_context(|| format!("cannot inspect {}", self.path.display()))?;
        if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o077 != 0 {
            bail!(
                "{} is not a directory of ours closed to others (mode {:o}, owner {})",
                self.path.display(),
                m.mode() & 0o7777,
                m.uid()
            );
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Remove our directories whose server is gone.
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, _)| p.parse::<i32>().ok())
        else {
            continue;
        };
        let ours = e
            .metadata()
            .is_ok_and(|m| m.is_dir() && m.uid() == uid && !e.path().is_symlink());
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        if ours && gone {
            crate::debug!(
                "removing {}, left by a server that is gone",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_removed() {
        let d = RunDir::new().unwrap();
        let p = d.path().to_path_buf();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        std::fs::write(p.join("x"), "").unwrap();
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn left_behind_by_a_dead_server_is_swept() {
        let base = std::env::temp_dir().join(format!("rdocker-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        // pid_max is at most 2^22: this pid cannot exist.
        let dead = base.join(format!("{PREFIX}99999999-00"));
        let alive = base.join(format!("{PREFIX}{}-00", std::process::id()));
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        std::fs::create_dir_all(&alive).unwrap();
        sweep(&base);
        assert!(!dead.exists());
        assert!(alive.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}

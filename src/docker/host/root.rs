//! The testbed's root directory, as /proc/PID/root shows it to a root
//! rdocker beside a local daemon: proving it is the testbed's, the
//! scratch directory and /etc/passwd at open, and single-file copies.
//!
//! Why: the archive API moves a file through tar, HTTP and the daemon's
//! extraction, about 0.5 s for 256 MiB here, where the kernel copies it in
//! under 0.1 s (the reference's shared directory gets that speed by
//! bind-mounting a host directory, which only works on a local daemon too).
//! Directories take the same route (tree.rs). Tar over an exec, the
//! other honest route, measured the same as the archive API within noise
//! for 5000 files of 1 KiB (3.03 s against 3.17 s down, 2.82 s against
//! 2.64 s up, `bench/bench.py --rounds 5 --servers rdocker-api,docker-remote
//! --ops copyup-tree,copydown-tree` with the exec route forced): the files'
//! creation, not the transport, is the cost for big trees.
//!
//! Safety: the testbed is untrusted; every path below its root is opened
//! through confined.rs, by its rule.

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{renameat, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::confined::{self, Entry, Made};
use crate::docker::archive;
use crate::docker::cancel::CancelOnDrop;
use crate::docker::daemon::client::Client;
use crate::docker::names::split_testbed_path;

/// The testbed's root directory, held open: it stays this container's root
/// even if its PID 1 dies and the number is reused.
pub struct Root {
    fd: OwnedFd,
    /// PID 1 of the testbed and its start time: a removed container's root
    /// stays readable through `fd`, so each copy first checks that the
    /// process, hence the container, still runs.
    pid: i64,
    start: Option<u64>,
    /// The agent's ctl fifo, as made (agent.rs); None: no agent.
    agent: Option<Made>,
}

/// Field 22 of /proc/PID/stat, the start time in clock ticks after boot.
fn start_time(pid: i64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// What the process a daemon names as a testbed's PID 1 is, seen from here.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstProcess {
    /// It carries the testbed's name (container.rs).
    Testbed,
    /// In a pid namespace of its own but without the name yet: the daemon
    /// answers the start before the runtime's init has exec'd the
    /// entrypoint (about 1 open in 14 with 8 at once here), and execve
    /// keeps the process, its number and its start time.
    Starting,
    /// A process of our own pid namespace: rdocker sees other numbers than
    /// the daemon (a CI job container), and waiting would not help.
    Foreign,
}

pub fn first_process(pid: i64, name: &str) -> Result<FirstProcess> {
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("cannot read the command line of process {pid}"))?;
    if argv.split(|b| *b == 0).rfind(|a| !a.is_empty()) == Some(name.as_bytes()) {
        return Ok(FirstProcess::Testbed);
    }
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let theirs = ns(&pid.to_string());
    Ok(if theirs.is_some() && theirs != ns("self") {
        FirstProcess::Starting
    } else {
        FirstProcess::Foreign
    })
}

/// The testbed's root, from what the daemon says of its container: its
/// PID 1 as this machine sees it, and whether execs run as root there.
pub async fn find(client: &Client, id: &str, name: &str) -> Result<(Root, bool)> {
    let c = client
        .docker
        .inspect_container(id, None)
        .await
        .context("cannot inspect the testbed")?;
    let user = c
        .config
        .as_ref()
        .and_then(|c| c.user.clone())
        .unwrap_or_default();
    let as_root = matches!(user.split(':').next(), Some("" | "root" | "0"));
    let hostname = c.config.and_then(|c| c.hostname).unwrap_or_default();
    let pid = c
        .state
        .and_then(|s| s.pid)
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("the daemon gives no pid for the testbed"))?;
    // Bounded: a process that never takes the name is not the testbed.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while first_process(pid, name)? == FirstProcess::Starting
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    Ok((Root::open(pid, name, &hostname)?, as_root))
}

impl Root {
    /// The root of the container whose PID 1 is `pid`, if we may use it.
    /// `name` is the container's, which its PID 1 carries as its last
    /// argument (container.rs): the daemon allows one container of a name,
    /// so a process of this number that carries it is that container's,
    /// and not one of another pid namespace (rdocker in a CI job container
    /// sees other processes under the daemon's numbers). Sharing our user
    /// namespace shows that root there is root here, so the files we make
    /// get the owners the testbed expects. `hostname` is the container's,
    /// as the daemon reports it: a second, independent check.
    pub fn open(pid: i64, name: &str, hostname: &str) -> Result<Root> {
        let path = format!("/proc/{pid}/root");
        // The start time is read after the open, as `attach` checks it.
        let mut root = Root::at(pid, None)?;
        root.start = start_time(pid);
        if root.start.is_none() {
            bail!("cannot read the start time of process {pid}");
        }
        if first_process(pid, name)? != FirstProcess::Testbed {
            bail!("process {pid} here is not the testbed's first process: rdocker sees another pid namespace than the daemon's");
        }
        // Still the same process, so the root opened above is its.
        root.check_alive()?;
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
        let theirs = ns(&pid.to_string());
        if theirs.is_none() || theirs != ns("self") {
            bail!(
                "the testbed runs in another user namespace than rdocker, so its root is not ours"
            );
        }
        // And the container's own name for itself, which Docker writes.
        let f = root
            .lookup("/etc/hostname", true)
            .with_context(|| format!("no /etc/hostname through {path}"))?
            .read_regular("/etc/hostname")?;
        let mut seen = String::new();
        f.take(256).read_to_string(&mut seen)?;
        if seen.trim() != hostname {
            bail!(
                "{path} belongs to another container (hostname {:?})",
                seen.trim()
            );
        }
        Ok(root)
    }

    /// Make the scratch directory at `path`, owned by root and mode 1777
    /// like the reference's: no archive upload (the daemon re-executes
    /// itself for each, about 0.1 s).
    pub fn make_dir(&self, path: &str) -> Result<()> {
        let (parent, name) = split_testbed_path(path);
        let dir = self
            .lookup(&parent, true)
            .with_context(|| format!("cannot open {parent} in the testbed"))?;
        if dir.kind() != SFlag::S_IFDIR {
            bail!("{parent} in the testbed is not a directory");
        }
        let (made, _) = confined::make_dir(dir.path_fd(), &name)
            .with_context(|| format!("cannot create {path} in the testbed"))?;
        // Not through mkdir's mode, which the umask trims.
        let made = made.open_dir(path)?;
        nix::sys::stat::fchmod(&made, Mode::from_bits_truncate(0o1777))?;
        Ok(())
    }

    /// A small text file of the testbed's, such as /etc/passwd; None if
    /// there is none. Over 1 MiB is an error: the testbed picks the size,
    /// and the server's memory is ours.
    pub fn read_text(&self, path: &str) -> Result<Option<String>> {
        const LIMIT: u64 = 1 << 20;
        let f = match self.lookup(path, true) {
            Ok(f) => f.read_regular(path)?,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot open {path}"))),
        };
        if f.metadata()?.len() > LIMIT {
            bail!("{path} in the testbed is over {} MiB", LIMIT >> 20);
        }
        let mut text = String::new();
        f.take(LIMIT)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read {path}"))?;
        Ok(Some(text))
    }

    /// `PID:START[:AGENT]`, what an exec process needs to find this root
    /// and the agent again (see `attach`).
    pub fn handle(&self) -> String {
        let mut h = format!("{}:{}", self.pid, self.start.unwrap_or(0));
        if let Some(a) = self.agent {
            h = format!("{h}:{}", a.encode());
        }
        h
    }

    /// The agent's ctl as agent.rs made it.
    pub fn agent(&self) -> Option<Made> {
        self.agent
    }

    pub fn set_agent(&mut self, ctl: Made) {
        self.agent = Some(ctl);
    }

    /// The root that `open` proved to be the testbed's, from another
    /// process: the same PID 1 with the same start time is the same
    /// container, and the start time is read again after the open so that
    /// a number reused in between is caught.
    pub fn attach(handle: &str) -> Result<Root> {
        let bad = || anyhow!("bad testbed root handle {handle:?}");
        let mut parts = handle.split(':');
        let pid = parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(bad)?;
        let start = parts
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(bad)?;
        let agent = match parts.next() {
            Some(a) => Some(Made::decode(a).ok_or_else(bad)?),
            None => None,
        };
        let mut root = Root::at(pid, Some(start))?;
        root.agent = agent;
        root.check_alive()?;
        Ok(root)
    }

    /// /proc/PID/root held open, with the start time it is checked against.
    fn at(pid: i64, start: Option<u64>) -> Result<Root> {
        let path = format!("/proc/{pid}/root");
        let fd = nix::fcntl::open(
            path.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open {path}"))?;
        Ok(Root {
            fd,
            pid,
            start,
            agent: None,
        })
    }

    /// Whether the testbed still runs: a copy into or out of a removed
    /// container must fail, as it does through the API.
    pub fn check_alive(&self) -> Result<()> {
        if start_time(self.pid) != self.start {
            bail!(
                "the testbed container is gone (its first process, {} on this machine, has \
                 exited); it was removed or killed outside rdocker, or the daemon restarted",
                self.pid
            );
        }
        Ok(())
    }

    /// `path` in the testbed, not yet opened (confined.rs).
    pub fn lookup(&self, path: &str, follow: bool) -> nix::Result<Entry> {
        confined::lookup(self.fd.as_fd(), path, follow)
    }

    /// copydown of a regular file. Ok(false): not done here (the parent
    /// directory is missing, say); the archive route then gives its own
    /// answer.
    pub fn push_file(&self, host: &Path, testbed: &str, cancel: &AtomicBool) -> Result<bool> {
        self.check_alive()?;
        let (parent, name) = split_testbed_path(testbed);
        if name.is_empty() {
            return Ok(false);
        }
        let Ok(dir) = self.lookup(&parent, true) else {
            return Ok(false);
        };
        if dir.kind() != SFlag::S_IFDIR {
            return Ok(false);
        }
        let dir = dir.path_fd();
        // A missing or odd source gets the archive route's own answer.
        // O_NONBLOCK: opening a fifo must not wait for a writer.
        use std::os::unix::fs::OpenOptionsExt;
        let Ok(mut src) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(host)
        else {
            return Ok(false);
        };
        let md = src.metadata()?;
        if !md.is_file() {
            return Ok(false);
        }
        use std::os::unix::fs::MetadataExt;
        let tmp = format!(".{name}.rdocker-{}", std::process::id());
        // Where the temporary file cannot be made (a name near NAME_MAX, a
        // read-only mount), the archive route tries and answers.
        let Ok(out) = confined::create_new(dir, tmp.as_str()) else {
            return Ok(false);
        };
        let mut out = File::from(out);
        let done = (|| -> Result<()> {
            archive::reserve(&out, md.len(), md.blocks())?;
            copy(&mut src, &mut out, md.len(), cancel)
                .with_context(|| format!("cannot copy {} into the testbed", host.display()))?;
            nix::sys::stat::fchmod(&out, Mode::from_bits_truncate(md.mode() & 0o7777))?;
            let t = nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec());
            nix::sys::stat::futimens(&out, &t, &t)?;
            renameat(dir, tmp.as_str(), dir, name.as_str())
                .with_context(|| format!("cannot create {testbed} in the testbed"))?;
            Ok(())
        })();
        if done.is_err() {
            let _ =
                nix::unistd::unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        done.map(|_| true)
    }

    /// copyup of a regular file, following symlinks as `cat` would (within
    /// the testbed's root). Ok(false): not a case for this route.
    pub fn pull_file(&self, testbed: &str, host: &Path, cancel: &AtomicBool) -> Result<bool> {
        self.check_alive()?;
        // Nothing is opened before its type is known (confined.rs): a
        // device node planted here is never opened by us.
        let Ok(entry) = self.lookup(testbed, true) else {
            return Ok(false);
        };
        if entry.kind() != SFlag::S_IFREG {
            return Ok(false);
        }
        let st = *entry.stat();
        let mut src = entry.read_regular(testbed)?;
        archive::write_host_file(host, st.st_mode, st.st_mtime.max(0) as u64, |out| {
            archive::reserve(out, st.st_size as u64, st.st_blocks as u64)?;
            copy(&mut src, out, st.st_size as u64, cancel)
                .with_context(|| format!("cannot copy {testbed} out of the testbed"))
        })?;
        Ok(true)
    }
}

/// Copy `len` bytes in the kernel where it can (copy_file_range, else
/// sendfile), by read and write where it cannot; a set `cancel` (the copy
/// timed out) stops it. Holes stay holes.
pub fn copy(src: &mut File, dst: &mut File, len: u64, cancel: &AtomicBool) -> Result<()> {
    copy_hinted(src, dst, len, cancel, &mut true)
}

/// The data regions of `f` from `from` on, as SEEK_DATA and SEEK_HOLE
/// report them: an 8 GiB file with one byte in it is one byte to copy,
/// not 8 GiB of zeros written to the other side's disk. None: this
/// filesystem cannot tell, so everything is data.
fn next_data(f: &File, from: u64, len: u64) -> Option<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let start = match lseek(f.as_fd(), from as i64, Whence::SeekData) {
        Ok(n) => n as u64,
        // No data after `from`: the rest is a hole.
        Err(Errno::ENXIO) => return Some((len, len)),
        Err(_) => return None,
    };
    let end = lseek(f.as_fd(), start as i64, Whence::SeekHole).ok()? as u64;
    Some((start.min(len), end.min(len)))
}

/// `copy`, for many files between the same two filesystems: `range` says
/// whether copy_file_range is worth trying, and turns false once it fails
/// there (host and overlay: always), which saves a syscall per file.
pub fn copy_hinted(
    src: &mut File,
    dst: &mut File,
    len: u64,
    cancel: &AtomicBool,
    range: &mut bool,
) -> Result<()> {
    const STEP: usize = 8 << 20;
    let mut room = archive::Room::default();
    // Holes matter in big files only: two lseeks are not worth it for
    // the many small files of a tree.
    let sparse = len >= 1 << 20;
    let mut pos = 0u64;
    let mut data_end = 0u64;
    let mut sendfile = true;
    let mut buf = Vec::new();
    while pos < len {
        let (start, end) = if sparse {
            next_data(src, pos, len).unwrap_or((pos, len))
        } else {
            (pos, len)
        };
        pos = start;
        while pos < end {
            if cancel.load(Ordering::Relaxed) {
                bail!("cancelled");
            }
            let want = STEP.min((end - pos) as usize);
            room.take(dst, want as u64)?;
            let mut off = pos as i64;
            let n = if *range {
                let mut doff = off;
                match nix::fcntl::copy_file_range(
                    src.as_fd(),
                    Some(&mut off),
                    dst.as_fd(),
                    Some(&mut doff),
                    want,
                ) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                        *range = false;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            } else if sendfile {
                // Across filesystems (the host's and the testbed's
                // overlay), sendfile still keeps the data in the kernel.
                // It writes at dst's position and reads at `off`.
                nix::unistd::lseek(dst.as_fd(), off, nix::unistd::Whence::SeekSet)?;
                match nix::sys::sendfile::sendfile(dst.as_fd(), src.as_fd(), Some(&mut off), want) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EINVAL | Errno::ENOSYS) => {
                        sendfile = false;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                use std::os::unix::fs::FileExt;
                buf.resize(want.min(1 << 20), 0);
                let n = src.read_at(&mut buf, pos)?;
                dst.write_all_at(&buf[..n], pos)?;
                n
            };
            if n == 0 {
                bail!("the file shrank while it was copied");
            }
            pos += n as u64;
            data_end = pos;
        }
    }
    // The size, with a hole at the end.
    if data_end < len {
        dst.set_len(len)?;
    }
    Ok(())
}

/// Run a direct copy on a blocking thread, stopped if the caller gives up.
pub async fn run(
    root: Arc<Root>,
    f: impl FnOnce(&Root, &Arc<AtomicBool>) -> Result<bool> + Send + 'static,
) -> Result<bool> {
    let (_guard, flag) = CancelOnDrop::new();
    tokio::task::spawn_blocking(move || f(&root, &flag))
        .await
        .map_err(|e| anyhow!("the copy thread failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test process stands in for a testbed's PID 1: its root is
    /// "/", its last argument is the "name" and /etc/hostname the host name.
    fn own_identity() -> (i64, String, String) {
        let argv = std::fs::read("/proc/self/cmdline").unwrap();
        let last = argv.split(|b| *b == 0).rfind(|a| !a.is_empty()).unwrap();
        let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        (
            std::process::id() as i64,
            String::from_utf8_lossy(last).into_owned(),
            hostname.trim().to_string(),
        )
    }

    #[test]
    fn root_is_proved_by_the_first_process_carrying_the_container_name() {
        let (pid, name, hostname) = own_identity();
        let root = Root::open(pid, &name, &hostname).unwrap();
        assert!(root.read_text("/tmp").is_err(), "not a regular file");
        assert!(root
            .read_text("/etc/passwd")
            .unwrap()
            .unwrap()
            .contains("root:"));
        assert_eq!(root.read_text("/nonexistent-rdocker").unwrap(), None);
        // Another name: a process of another pid namespace under that number.
        let e = Root::open(pid, "rdocker-1-00000000", &hostname)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("pid namespace"), "{e:#}");
        // Another hostname: another container.
        let e = Root::open(pid, &name, "not-this-host").err().unwrap();
        assert!(format!("{e:#}").contains("another container"), "{e:#}");
    }

    #[test]
    fn scratch_dir_is_sticky_and_world_writable() {
        use std::os::unix::fs::PermissionsExt;
        let (pid, name, hostname) = own_identity();
        let root = Root::open(pid, &name, &hostname).unwrap();
        let dir = std::env::temp_dir().join(format!("rdocker-scratch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        root.make_dir(dir.to_str().unwrap()).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
        // Made, not reused: an existing path is an error.
        assert!(root.make_dir(dir.to_str().unwrap()).is_err());
        std::fs::remove_dir(&dir).unwrap();
    }
}

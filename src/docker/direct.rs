//! Single-file copies straight through the testbed's root directory, as
//! /proc/PID/root shows it to a root rdocker beside a local daemon.
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
//! Safety: the testbed is untrusted, so every path is resolved with
//! openat2(RESOLVE_IN_ROOT): `..` and symlinks, absolute ones included,
//! stay inside the container's root and can never reach the host's files.

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat2, renameat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::archive;

/// The testbed's root directory, held open: it stays this container's root
/// even if its PID 1 dies and the number is reused.
pub struct Root {
    fd: OwnedFd,
    /// PID 1 of the testbed and its start time: a removed container's root
    /// stays readable through `fd`, so each copy first checks that the
    /// process, hence the container, still runs.
    pid: i64,
    start: Option<u64>,
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

fn how(flags: OFlag, mode: u32) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// A new file, private until filled, named one step below `dir` and never
/// reached through a symlink a testbed may have planted.
pub fn create_new<P: ?Sized + nix::NixPath>(dir: BorrowedFd, name: &P) -> nix::Result<OwnedFd> {
    openat2(
        dir,
        name,
        OpenHow::new()
            .flags(
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(0o600))
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS),
    )
}

impl Root {
    /// The root of the container whose PID 1 is `pid`, if we may use it.
    /// `marker` is a directory just made in it through the API, owned by
    /// root there: its presence shows that this is the right container,
    /// and its owner that no user namespace maps root elsewhere (where our
    /// files would get the wrong owner). `hostname` is the container's, as
    /// the daemon reports it: a second, independent check.
    pub fn open(pid: i64, marker: &str, hostname: &str) -> Result<Root> {
        let path = format!("/proc/{pid}/root");
        // The start time is read after the open, as `attach` checks it.
        let mut root = Root::at(pid, None)?;
        root.start = start_time(pid);
        if root.start.is_none() {
            bail!("cannot read the start time of process {pid}");
        }
        let dir = root
            .open_at(marker, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
            .with_context(|| format!("{marker} is not visible through {path}"))?;
        let st = fstat(&dir)?;
        if st.st_uid != 0 {
            bail!(
                "{marker} shows owner {} through {path}, not root",
                st.st_uid
            );
        }
        // And the container's own name for itself, which Docker writes.
        let f = root
            .open_at("/etc/hostname", OFlag::O_RDONLY, 0)
            .with_context(|| format!("no /etc/hostname through {path}"))?;
        let mut seen = String::new();
        File::from(f).take(256).read_to_string(&mut seen)?;
        if seen.trim() != hostname {
            bail!(
                "{path} belongs to another container (hostname {:?})",
                seen.trim()
            );
        }
        Ok(root)
    }

    /// `PID:START`, what an exec process needs to find this root again
    /// (see `attach`).
    pub fn handle(&self) -> String {
        format!("{}:{}", self.pid, self.start.unwrap_or(0))
    }

    /// The root that `open` proved to be the testbed's, from another
    /// process: the same PID 1 with the same start time is the same
    /// container, and the start time is read again after the open so that
    /// a number reused in between is caught.
    pub fn attach(handle: &str) -> Result<Root> {
        let (pid, start) = handle
            .split_once(':')
            .and_then(|(p, s)| Some((p.parse::<i64>().ok()?, s.parse::<u64>().ok()?)))
            .ok_or_else(|| anyhow!("bad testbed root handle {handle:?}"))?;
        let root = Root::at(pid, Some(start))?;
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
        Ok(Root { fd, pid, start })
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

    pub fn open_at(&self, path: &str, flags: OFlag, mode: u32) -> nix::Result<OwnedFd> {
        let p = if path.is_empty() { "/" } else { path };
        openat2(self.fd.as_fd(), p, how(flags, mode))
    }

    /// copydown of a regular file. Ok(false): not done here (the parent
    /// directory is missing, say); the archive route then gives its own
    /// answer.
    pub fn push_file(&self, host: &Path, testbed: &str, cancel: &AtomicBool) -> Result<bool> {
        self.check_alive()?;
        let (parent, name) = super::copy::split_testbed_path(testbed);
        if name.is_empty() {
            return Ok(false);
        }
        let Ok(dir) = self.open_at(&parent, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) else {
            return Ok(false);
        };
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
        let Ok(out) = create_new(dir.as_fd(), tmp.as_str()) else {
            return Ok(false);
        };
        let mut out = File::from(out);
        let done = (|| -> Result<()> {
            copy(&mut src, &mut out, md.len(), cancel)
                .with_context(|| format!("cannot copy {} into the testbed", host.display()))?;
            nix::sys::stat::fchmod(&out, Mode::from_bits_truncate(md.mode() & 0o7777))?;
            let t = nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec());
            nix::sys::stat::futimens(&out, &t, &t)?;
            renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name.as_str())
                .with_context(|| format!("cannot create {testbed} in the testbed"))?;
            Ok(())
        })();
        if done.is_err() {
            let _ = nix::unistd::unlinkat(
                dir.as_fd(),
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        done.map(|_| true)
    }

    /// copyup of a regular file, following symlinks as `cat` would (within
    /// the testbed's root). Ok(false): not a case for this route.
    pub fn pull_file(&self, testbed: &str, host: &Path, cancel: &AtomicBool) -> Result<bool> {
        self.check_alive()?;
        // O_NONBLOCK: a fifo must not block the open; only regular files
        // are read here.
        let src = match self.open_at(testbed, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(_) => return Ok(false),
        };
        let st = fstat(&src)?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Ok(false);
        }
        let mut src = File::from(src);
        archive::write_host_file(host, st.st_mode, st.st_mtime.max(0) as u64, |out| {
            copy(&mut src, out, st.st_size as u64, cancel)
                .with_context(|| format!("cannot copy {testbed} out of the testbed"))
        })?;
        Ok(true)
    }
}

/// Copy `len` bytes in the kernel where it can (copy_file_range, else
/// sendfile), by read and write where it cannot; a set `cancel` (the copy timed out) stops it.
pub fn copy(src: &mut File, dst: &mut File, len: u64, cancel: &AtomicBool) -> Result<()> {
    const STEP: usize = 8 << 20;
    archive::reserve(dst, len)?;
    let mut left = len;
    let mut kernel = true;
    let mut sendfile = true;
    let mut buf = Vec::new();
    while left > 0 {
        if cancel.load(Ordering::Relaxed) {
            bail!("cancelled");
        }
        let want = STEP.min(left as usize);
        let n = if kernel {
            match nix::fcntl::copy_file_range(src.as_fd(), None, dst.as_fd(), None, want) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                    kernel = false;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        } else if sendfile {
            // Across filesystems (the host's and the testbed's overlay),
            // sendfile still keeps the data in the kernel.
            match nix::sys::sendfile::sendfile(dst.as_fd(), src.as_fd(), None, want) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EINVAL | Errno::ENOSYS) => {
                    sendfile = false;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            buf.resize(want.min(1 << 20), 0);
            let n = src.read(&mut buf)?;
            dst.write_all(&buf[..n])?;
            n
        };
        if n == 0 {
            bail!("the file shrank while it was copied");
        }
        left -= n as u64;
    }
    Ok(())
}

/// A cancellation flag that is set when the copy's future is dropped (the
/// copy timeout), so that the blocking thread stops too.
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Run a direct copy on a blocking thread, stopped if the caller gives up.
pub async fn run(
    root: Arc<Root>,
    f: impl FnOnce(&Root, &AtomicBool) -> Result<bool> + Send + 'static,
) -> Result<bool> {
    let flag = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(flag.clone());
    tokio::task::spawn_blocking(move || f(&root, &flag))
        .await
        .map_err(|e| anyhow!("the copy thread failed: {e}"))?
}

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

    /// Make the scratch directory at `path`, owned by root and mode 1777
    /// like the reference's: no archive upload (the daemon re-executes
    /// itself for each, about 0.1 s).
    pub fn make_dir(&self, path: &str) -> Result<()> {
        let (parent, name) = super::copy::split_testbed_path(path);
        let dir = self
            .open_at(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
            .with_context(|| format!("cannot open {parent} in the testbed"))?;
        nix::sys::stat::mkdirat(dir.as_fd(), name.as_str(), Mode::from_bits_truncate(0o700))
            .with_context(|| format!("cannot create {path} in the testbed"))?;
        let made = openat2(
            dir.as_fd(),
            name.as_str(),
            OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS),
        )?;
        // Not through mkdir's mode, which the umask trims.
        nix::sys::stat::fchmod(&made, Mode::from_bits_truncate(0o1777))?;
        Ok(())
    }

    /// A small text file of the testbed's, such as /etc/passwd; None if
    /// there is none.
    pub fn read_text(&self, path: &str) -> Result<Option<String>> {
        let f = match self.open_at(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0) {
            Ok(f) => f,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot open {path}"))),
        };
        if SFlag::from_bits_truncate(fstat(&f)?.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            bail!("{path} in the testbed is not a regular file");
        }
        let mut text = String::new();
        File::from(f)
            .take(16 << 20)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read {path}"))?;
        Ok(Some(text))
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
            archive::reserve(&out, md.len())?;
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
            archive::reserve(out, st.st_size as u64)?;
            copy(&mut src, out, st.st_size as u64, cancel)
                .with_context(|| format!("cannot copy {testbed} out of the testbed"))
        })?;
        Ok(true)
    }
}

/// Copy `len` bytes in the kernel where it can (copy_file_range, else
/// sendfile), by read and write where it cannot; a set `cancel` (the copy timed out) stops it.
pub fn copy(src: &mut File, dst: &mut File, len: u64, cancel: &AtomicBool) -> Result<()> {
    copy_hinted(src, dst, len, cancel, &mut true)
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
    let mut left = len;
    let kernel = range;
    let mut sendfile = true;
    let mut buf = Vec::new();
    while left > 0 {
        if cancel.load(Ordering::Relaxed) {
            bail!("cancelled");
        }
        let want = STEP.min(left as usize);
        let n = if *kernel {
            match nix::fcntl::copy_file_range(src.as_fd(), None, dst.as_fd(), None, want) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                    *kernel = false;
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

//! Directory copies straight through the testbed's root (see root.rs),
//! beside a local daemon.
//!
//! Why: each archive-API copy of a directory costs the daemon about 90 ms
//! before the first file (it re-executes itself to unpack or pack in the
//! container's root), and autopkgtest copies a handful of small trees per
//! test: in the upstream suite 180 tree copies took 17 s of 506. Here a
//! small tree takes a few milliseconds; a big one costs what creating its
//! files costs, as on every route.
//!
//! Safety: the testbed is untrusted. Every entry is found and opened
//! through confined.rs: only the starting directory by path (inside the
//! container's root); below it every step is relative to a directory
//! descriptor, never follows a symlink, and opens an object only once its
//! type is known, so a link, device or fifo planted or swapped in during
//! the copy can neither lead to the host's files nor be opened. Copied
//! up, the tree goes through archive.rs's extraction, the same checks as
//! the archive route's.
//!
//! Semantics are the archive route's: copydown merges into what is there,
//! replaces any entry in the way that is not a directory for a directory,
//! and makes everything owned by root; copyup stores symlinks as links.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{fchmod, futimens, mkdirat, mknodat, utimensat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::confined::{self, each_name};
use super::root::{self, Root};
use crate::docker::api::copy::{ChanReader, ChanWriter};
use crate::docker::archive;
use crate::docker::names::split_testbed_path;

/// Deeper than any real tree; a bind mount looping into itself would
/// otherwise be walked until descriptors run out.
const MAX_DEPTH: usize = 512;

/// The directory `name` directly below `dir`, opened once it is known to
/// be one.
fn subdir(dir: BorrowedFd, name: &OsStr) -> Result<OwnedFd> {
    confined::child(dir, name)?.open_dir(&name.to_string_lossy())
}

fn cancelled(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        bail!("cancelled");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// copydown

/// Threads that create files, besides the one that walks the tree: the
/// time of a big tree goes to the kernel creating its files, and two
/// threads on two cores made 5000 files of 1 KiB in an overlay in about
/// 0.6 of the time one took. Directories are made by the walker alone.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Jobs waiting for a worker. Each holds its directory open, so this also
/// bounds the descriptors a wide tree keeps open.
const QUEUE: usize = 256;

/// copydown of the directory `host` to `testbed`. Ok(false): not a case
/// for this route (the parent is missing, say); the archive route then
/// gives its own answer.
pub fn push(root: &Root, host: &Path, testbed: &str, cancel: &AtomicBool) -> Result<bool> {
    root.check_alive()?;
    let (parent, name) = split_testbed_path(testbed);
    let Ok(md) = std::fs::metadata(host) else {
        return Ok(false);
    };
    if name.is_empty() || !md.is_dir() {
        return Ok(false);
    }
    let Ok(base) = root.lookup(&parent, true) else {
        return Ok(false);
    };
    if base.kind() != SFlag::S_IFDIR {
        return Ok(false);
    }
    let shared = Shared {
        cancel,
        failed: Mutex::new(None),
        stop: AtomicBool::new(false),
        root_creds: nix::unistd::geteuid().is_root() && nix::unistd::getegid().as_raw() == 0,
    };
    let n = workers();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        if n > 1 {
            for _ in 0..n {
                let (rx, shared) = (&rx, &shared);
                handles.push(scope.spawn(move || {
                    let mut range = true;
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = job else { break };
                        shared.run(job, &mut range);
                    }
                }));
            }
        }
        let mut walk = Walk {
            shared: &shared,
            tx: (n > 1).then_some(tx),
            depth: 0,
            range: true,
        };
        if let Err(e) = walk.dir(None, base.path_fd(), OsStr::new(&name), host, &md) {
            shared.fail(e);
        }
        // Workers finish what is queued, then see the channel close.
        drop(walk);
        for h in handles {
            if h.join().is_err() {
                shared.fail(anyhow!("a copy thread panicked"));
            }
        }
    });
    let failed = shared
        .failed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(e) = failed {
        return Err(e.context(format!(
            "cannot copy {} into {testbed} in the testbed",
            host.display()
        )));
    }
    Ok(true)
}

/// What the walker and the workers share.
struct Shared<'a> {
    cancel: &'a AtomicBool,
    /// The first failure.
    failed: Mutex<Option<anyhow::Error>>,
    /// Set with `failed`, and read before every entry: everybody stops,
    /// without taking the lock per file.
    stop: AtomicBool,
    /// We run as root:root: what we create in a directory we made (not
    /// set-group-id) is root's already, and needs no chown.
    root_creds: bool,
}

impl Shared<'_> {
    fn fail(&self, e: anyhow::Error) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> Result<()> {
        cancelled(self.cancel)?;
        if self.stop.load(Ordering::Relaxed) {
            bail!("stopped by an earlier failure");
        }
        Ok(())
    }

    fn run(&self, job: Job, range: &mut bool) {
        if self.stopped().is_err() {
            return;
        }
        let r =
            entry(self, &job, range).with_context(|| format!("cannot copy {}", job.host.display()));
        if let Err(e) = r {
            self.fail(e);
        }
    }
}

/// A directory being filled. Its owner, mode and times are set when the
/// last of its entries is done, which is when the last reference (the
/// walker's, its files' jobs, its subdirectories') goes: creating entries
/// changes a directory's mtime, so that must come last.
struct DirNode<'a> {
    fd: OwnedFd,
    md: Metadata,
    shared: &'a Shared<'a>,
    _parent: Option<Arc<DirNode<'a>>>,
}

impl Drop for DirNode<'_> {
    fn drop(&mut self) {
        let r = root_owned(self.fd.as_fd(), &self.md)
            .and_then(|()| futimens(&self.fd, &times(&self.md), &times(&self.md)));
        if let Err(e) = r {
            self.shared.fail(
                anyhow::Error::new(e).context("cannot set a directory's owner, mode or time"),
            );
        }
    }
}

/// One entry that is not a directory.
struct Job<'a> {
    dir: Arc<DirNode<'a>>,
    name: OsString,
    host: PathBuf,
    md: Metadata,
    /// What we create in `dir` is root's already (see `gives_root`).
    owned: bool,
}

/// The walker: makes the directories and hands out their other entries.
struct Walk<'a> {
    shared: &'a Shared<'a>,
    /// None: no workers; the walker does the jobs itself.
    tx: Option<std::sync::mpsc::SyncSender<Job<'a>>>,
    depth: usize,
    range: bool,
}

impl<'a> Walk<'a> {
    fn dir(
        &mut self,
        parent: Option<&Arc<DirNode<'a>>>,
        pfd: BorrowedFd,
        name: &OsStr,
        host: &Path,
        md: &Metadata,
    ) -> Result<()> {
        self.shared.stopped()?;
        if self.depth > MAX_DEPTH {
            bail!("{} is too deep", host.display());
        }
        let fresh = !clear(pfd, name, true, self.depth, self.shared.cancel)?;
        if fresh {
            mkdirat(pfd, name, Mode::from_bits_truncate(0o700))?;
        }
        let here = subdir(pfd, name)?;
        let owned = fresh && self.shared.root_creds && gives_root(here.as_fd());
        let node = Arc::new(DirNode {
            fd: here,
            md: md.clone(),
            shared: self.shared,
            _parent: parent.cloned(),
        });
        // As the kernel lists it, one entry at a time: a listing is never
        // held whole, nor sorted.
        let entries =
            std::fs::read_dir(host).with_context(|| format!("cannot list {}", host.display()))?;
        self.depth += 1;
        for e in entries {
            let e = e.with_context(|| format!("cannot list {}", host.display()))?;
            self.shared.stopped()?;
            let path = e.path();
            let md = std::fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if md.is_dir() {
                self.dir(Some(&node), node.fd.as_fd(), &e.file_name(), &path, &md)
                    .with_context(|| format!("cannot copy {}", path.display()))?;
                continue;
            }
            let job = Job {
                dir: node.clone(),
                name: e.file_name(),
                host: path,
                md,
                owned,
            };
            match &self.tx {
                Some(tx) => {
                    if tx.send(job).is_err() {
                        bail!("the copy threads stopped");
                    }
                }
                None => self.shared.run(job, &mut self.range),
            }
        }
        self.depth -= 1;
        Ok(())
    }
}

fn times(md: &Metadata) -> TimeSpec {
    TimeSpec::new(md.mtime(), md.mtime_nsec())
}

fn root_owned(fd: BorrowedFd, md: &Metadata) -> nix::Result<()> {
    fchown(fd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))?;
    fchmod(fd, Mode::from_bits_truncate(md.mode() & 0o7777))
}

/// Whether files created in the directory `fd` come out root:root.
fn gives_root(fd: BorrowedFd) -> bool {
    nix::sys::stat::fstat(fd)
        .is_ok_and(|st| st.st_uid == 0 && st.st_gid == 0 && st.st_mode & Mode::S_ISGID.bits() == 0)
}

/// Remove `name` in `dir`, a whole tree if it is a directory. A testbed
/// can put a huge tree in the way; a cancelled copy stops removing it.
fn remove(dir: BorrowedFd, name: &OsStr, depth: usize, cancel: &AtomicBool) -> Result<()> {
    cancelled(cancel)?;
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    if depth > MAX_DEPTH {
        bail!("the tree in the way is too deep to remove");
    }
    let sub = subdir(dir, name)?;
    // Removing while listing: a listing may miss names that move (or that
    // the testbed adds meanwhile), so list again while it is not empty.
    for _ in 0..3 {
        each_name(sub.as_fd(), |n| remove(sub.as_fd(), n, depth + 1, cancel))?;
        match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
            Err(Errno::ENOTEMPTY) => continue,
            r => return Ok(r?),
        }
    }
    bail!("the tree in the way keeps changing while it is removed")
}

/// What is at `name` in `dir`, made ready for a new entry: removed unless
/// `keep_dir` and it is a directory. True: a directory stays.
fn clear(
    dir: BorrowedFd,
    name: &OsStr,
    keep_dir: bool,
    depth: usize,
    cancel: &AtomicBool,
) -> Result<bool> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
        Ok(st) => {
            let is_dir =
                SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR;
            if keep_dir && is_dir {
                return Ok(true);
            }
            remove(dir, name, depth, cancel)?;
            Ok(false)
        }
    }
}

/// Create one entry that is not a directory.
fn entry(shared: &Shared, job: &Job, range: &mut bool) -> Result<()> {
    let (dir, name, host, md) = (job.dir.fd.as_fd(), job.name.as_os_str(), &job.host, &job.md);
    let ft = md.file_type();
    if ft.is_socket() {
        // Sockets have no copy; GNU tar and the archive route skip them.
        eprintln!(
            "autopkgtest-virt-rdocker: skipping socket {}",
            host.display()
        );
        return Ok(());
    }
    if ft.is_file() {
        let mut src = File::open(host)?;
        // Create first and clear only what is in the way: most targets
        // are new, and O_EXCL never writes through a link.
        let out = match confined::create_new(dir, name) {
            Err(Errno::EEXIST) => {
                clear(dir, name, false, 0, shared.cancel)?;
                confined::create_new(dir, name)?
            }
            r => r?,
        };
        let mut out = File::from(out);
        root::copy_hinted(&mut src, &mut out, md.len(), shared.cancel, range)?;
        if job.owned {
            fchmod(out.as_fd(), Mode::from_bits_truncate(md.mode() & 0o7777))?;
        } else {
            root_owned(out.as_fd(), md)?;
        }
        futimens(&out, &times(md), &times(md))?;
        return Ok(());
    }
    if clear(dir, name, false, 0, shared.cancel)? {
        unreachable!("clear keeps no directory when asked not to");
    }
    if ft.is_symlink() {
        symlinkat(&std::fs::read_link(host)?, dir, name)?;
    } else {
        let kind = if ft.is_fifo() {
            SFlag::S_IFIFO
        } else if ft.is_char_device() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        mknodat(
            dir,
            name,
            kind,
            Mode::from_bits_truncate(md.mode() & 0o7777),
            md.rdev(),
        )?;
    }
    // Never through the new entry: it may be a link.
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(0)),
        Some(Gid::from_raw(0)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    utimensat(
        dir,
        name,
        &times(md),
        &times(md),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// copyup

/// copyup of the testbed directory `testbed` to `host`. Ok(false): not a
/// case for this route (no such directory); the archive route then gives
/// its own answer.
pub fn pull(root: &Root, testbed: &str, host: &Path, cancel: &Arc<AtomicBool>) -> Result<bool> {
    root.check_alive()?;
    let Ok(top) = root.lookup(testbed, true) else {
        return Ok(false);
    };
    if top.kind() != SFlag::S_IFDIR {
        return Ok(false);
    }
    let st = *top.stat();
    let top = top.open_dir(testbed)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Bytes>>(8);
    let written = std::thread::scope(|s| {
        let producer = s.spawn(move || {
            let w = ChanWriter::std(tx.clone()).until(cancel.clone());
            let r = (|| -> Result<()> {
                let mut b = tar::Builder::new(io::BufWriter::with_capacity(256 * 1024, w));
                b.mode(tar::HeaderMode::Complete);
                let mut h = header(&st);
                b.append_data(&mut h, "t", io::empty())?;
                let mut up = Up {
                    cancel,
                    links: HashMap::new(),
                    depth: 0,
                };
                up.walk(&mut b, top.as_fd(), Path::new("t"))?;
                b.into_inner()?
                    .into_inner()
                    .map_err(|e| anyhow!("{}", e.error()))?;
                Ok(())
            })();
            if let Err(e) = &r {
                // Fail the extraction rather than let a short archive look
                // whole.
                let _ = tx.send(Err(io::Error::other(format!("{e:#}"))));
            }
            r
        });
        let extracted = archive::extract_tree(ChanReader::std(rx).until(cancel.clone()), host);
        let produced = producer
            .join()
            .map_err(|_| anyhow!("the copy thread panicked"))?;
        // The walk's own error says more than the extraction's echo of it.
        produced.and(extracted)
    });
    written.with_context(|| {
        format!(
            "cannot copy {testbed} from the testbed to {}",
            host.display()
        )
    })?;
    Ok(true)
}

/// The header `set_metadata_in_mode(.., Complete)` would make, from the
/// stat of the entry's O_PATH descriptor (no second open or stat).
fn header(st: &nix::sys::stat::FileStat) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    h.set_entry_type(match kind {
        SFlag::S_IFDIR => tar::EntryType::Directory,
        SFlag::S_IFLNK => tar::EntryType::Symlink,
        SFlag::S_IFIFO => tar::EntryType::Fifo,
        SFlag::S_IFCHR => tar::EntryType::Char,
        SFlag::S_IFBLK => tar::EntryType::Block,
        _ => tar::EntryType::Regular,
    });
    h.set_size(if kind == SFlag::S_IFREG {
        st.st_size as u64
    } else {
        0
    });
    if kind == SFlag::S_IFCHR || kind == SFlag::S_IFBLK {
        let _ = h.set_device_major(nix::sys::stat::major(st.st_rdev) as u32);
        let _ = h.set_device_minor(nix::sys::stat::minor(st.st_rdev) as u32);
    }
    h
}

/// A file's data, failing rather than padding if it shrinks meanwhile.
struct Exact<'a> {
    f: File,
    left: u64,
    cancel: &'a AtomicBool,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled"));
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::other("the file shrank while it was copied"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct Up<'a> {
    cancel: &'a AtomicBool,
    /// Files with more than one link, by (device, inode): the first name
    /// each was stored under, so the others become hard links, as in the
    /// daemon's archives. At most MAX_LINKS: past that, a file is copied
    /// again rather than linked (a testbed picks how many links it has).
    links: HashMap<(u64, u64), PathBuf>,
    depth: usize,
}

/// Files kept in `Up::links`: a few MiB at most.
const MAX_LINKS: usize = 16384;

impl Up<'_> {
    fn walk<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        dir: BorrowedFd,
        name: &Path,
    ) -> Result<()> {
        if self.depth > MAX_DEPTH {
            bail!("{} is too deep", name.display());
        }
        self.depth += 1;
        each_name(dir, |n| self.entry(b, dir, name, n))?;
        self.depth -= 1;
        Ok(())
    }

    /// The entry `n` of `dir`, whose own name in the archive is `name`.
    fn entry<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        dir: BorrowedFd,
        name: &Path,
        n: &OsStr,
    ) -> Result<()> {
        cancelled(self.cancel)?;
        let ename = name.join(n);
        // The entry itself, whatever it is, held as O_PATH: a symlink
        // or a device is never opened, and what is read below is
        // this object, whatever the name holds by then.
        let e = match confined::child(dir, n) {
            Ok(e) => e,
            // Deleted since the listing: as if never there.
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", ename.display())),
        };
        let st = *e.stat();
        let mut h = header(&st);
        let what = || ename.display().to_string();
        match e.kind() {
            SFlag::S_IFDIR => {
                b.append_data(&mut h, &ename, io::empty())?;
                let sub = e.open_dir(&what())?;
                self.walk(b, sub.as_fd(), &ename)?;
            }
            SFlag::S_IFLNK => {
                b.append_link(&mut h, &ename, e.link_target()?)?;
            }
            SFlag::S_IFREG => {
                let key = (st.st_dev as u64, st.st_ino as u64);
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&key) {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, &ename, first)?;
                        return Ok(());
                    }
                    if self.links.len() < MAX_LINKS {
                        self.links.insert(key, ename.clone());
                    }
                }
                let mut f = e.read_regular(&what())?;
                let size = st.st_size as u64;
                if archive::has_holes(size, st.st_blocks as u64) {
                    // tar's sparse form, by the crate's own writer
                    // (SEEK_DATA), carries the data regions only: a 15 TiB
                    // file of holes costs nothing. The header is the one
                    // `header` makes, from this open file's fstat.
                    b.append_file(&ename, &mut f)?;
                    return Ok(());
                }
                let data = Exact {
                    f,
                    left: size,
                    cancel: self.cancel,
                };
                b.append_data(&mut h, &ename, data)?;
            }
            SFlag::S_IFIFO | SFlag::S_IFCHR | SFlag::S_IFBLK => {
                b.append_data(&mut h, &ename, io::empty())?;
            }
            // Sockets have no tar form; the daemon's archives skip them too.
            _ => {}
        }
        Ok(())
    }
}

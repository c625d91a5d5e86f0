//! Directory copies straight through the testbed's root (see direct.rs),
//! beside a local daemon.
//!
//! Why: each archive-API copy of a directory costs the daemon about 90 ms
//! before the first file (it re-executes itself to unpack or pack in the
//! container's root), and autopkgtest copies a handful of small trees per
//! test: in the upstream suite 180 tree copies took 17 s of 506. Here a
//! small tree takes a few milliseconds; a big one costs what creating its
//! files costs, as on every route.
//!
//! Safety: the testbed is untrusted. Only the starting directory is found
//! by path (openat2 RESOLVE_IN_ROOT, inside the container's root); below
//! it every step is relative to a directory descriptor and never follows a
//! symlink, so a link planted in the testbed, or swapped in during the
//! copy, cannot lead to the host's files. Copied up, the tree goes through
//! archive.rs's extraction, the same checks as the archive route's.
//!
//! Semantics are the archive route's: copydown merges into what is there,
//! replaces any entry in the way that is not a directory for a directory,
//! and makes everything owned by root; copyup stores symlinks as links.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, futimens, mkdirat, mknodat, utimensat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::archive;
use super::copy::{split_testbed_path, ChanReader, ChanWriter};
use super::direct::{self, Root};

/// Deeper than any real tree; a bind mount looping into itself would
/// otherwise be walked until descriptors run out.
const MAX_DEPTH: usize = 512;

/// One step below `dir`, never through a symlink.
fn step(dir: BorrowedFd, name: &OsStr, flags: OFlag) -> nix::Result<OwnedFd> {
    openat2(
        dir,
        name,
        OpenHow::new()
            .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS),
    )
}

/// The names in `dir`, sorted, without `.` and `..`.
fn names(dir: BorrowedFd) -> Result<Vec<OsString>> {
    let mut d = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for e in d.iter() {
        let n = e?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            out.push(OsString::from(std::ffi::OsStr::from_bytes(&n)));
        }
    }
    out.sort();
    Ok(out)
}

fn cancelled(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        bail!("cancelled");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// copydown

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
    let Ok(base) = root.open_at(&parent, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) else {
        return Ok(false);
    };
    let mut down = Down { cancel, depth: 0 };
    down.dir(base.as_fd(), OsStr::new(&name), host, &md)
        .with_context(|| {
            format!(
                "cannot copy {} into {testbed} in the testbed",
                host.display()
            )
        })?;
    Ok(true)
}

struct Down<'a> {
    cancel: &'a AtomicBool,
    depth: usize,
}

fn times(md: &Metadata) -> TimeSpec {
    TimeSpec::new(md.mtime(), md.mtime_nsec())
}

fn root_owned(fd: BorrowedFd, md: &Metadata) -> nix::Result<()> {
    fchown(fd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))?;
    fchmod(fd, Mode::from_bits_truncate(md.mode() & 0o7777))
}

/// Remove `name` in `dir`, a whole tree if it is a directory.
fn remove(dir: BorrowedFd, name: &OsStr, depth: usize) -> Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    if depth > MAX_DEPTH {
        bail!("the tree in the way is too deep to remove");
    }
    let sub = step(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    for n in names(sub.as_fd())? {
        remove(sub.as_fd(), &n, depth + 1)?;
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}

impl Down<'_> {
    /// What is at `name` in `dir`, made ready for a new entry: removed
    /// unless `keep_dir` and it is a directory. True: a directory stays.
    fn clear(&self, dir: BorrowedFd, name: &OsStr, keep_dir: bool) -> Result<bool> {
        match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
            Ok(st) => {
                let is_dir =
                    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR;
                if keep_dir && is_dir {
                    return Ok(true);
                }
                remove(dir, name, self.depth)?;
                Ok(false)
            }
        }
    }

    fn dir(&mut self, parent: BorrowedFd, name: &OsStr, host: &Path, md: &Metadata) -> Result<()> {
        cancelled(self.cancel)?;
        if self.depth > MAX_DEPTH {
            bail!("{} is too deep", host.display());
        }
        if !self.clear(parent, name, true)? {
            mkdirat(parent, name, Mode::from_bits_truncate(0o700))?;
        }
        let here = step(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let entries =
            std::fs::read_dir(host).with_context(|| format!("cannot list {}", host.display()))?;
        let mut list: Vec<_> = entries
            .collect::<io::Result<_>>()
            .with_context(|| format!("cannot list {}", host.display()))?;
        list.sort_by_key(|e| e.file_name());
        self.depth += 1;
        for e in list {
            let path = e.path();
            let md = std::fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            self.entry(here.as_fd(), &e.file_name(), &path, &md)
                .with_context(|| format!("cannot copy {}", path.display()))?;
        }
        self.depth -= 1;
        // Last, so that creating the entries does not change them.
        root_owned(here.as_fd(), md)?;
        futimens(&here, &times(md), &times(md))?;
        Ok(())
    }

    fn entry(&mut self, dir: BorrowedFd, name: &OsStr, host: &Path, md: &Metadata) -> Result<()> {
        let ft = md.file_type();
        if ft.is_dir() {
            return self.dir(dir, name, host, md);
        }
        cancelled(self.cancel)?;
        if ft.is_socket() {
            // Sockets have no copy; GNU tar and the archive route skip them.
            eprintln!(
                "autopkgtest-virt-rdocker: skipping socket {}",
                host.display()
            );
            return Ok(());
        }
        if self.clear(dir, name, false)? {
            unreachable!("clear keeps no directory when asked not to");
        }
        if ft.is_file() {
            let mut src = File::open(host)?;
            let out = direct::create_new(dir, name)?;
            let mut out = File::from(out);
            direct::copy(&mut src, &mut out, md.len(), self.cancel)?;
            root_owned(out.as_fd(), md)?;
            futimens(&out, &times(md), &times(md))?;
            return Ok(());
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
}

// ---------------------------------------------------------------------------
// copyup

/// copyup of the testbed directory `testbed` to `host`. Ok(false): not a
/// case for this route (no such directory); the archive route then gives
/// its own answer.
pub fn pull(root: &Root, testbed: &str, host: &Path, cancel: &AtomicBool) -> Result<bool> {
    root.check_alive()?;
    let Ok(top) = root.open_at(testbed, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) else {
        return Ok(false);
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Bytes>>(8);
    let written = std::thread::scope(|s| {
        let producer = s.spawn(move || {
            let w = ChanWriter::std(tx.clone());
            let r = (|| -> Result<()> {
                let mut b = tar::Builder::new(io::BufWriter::with_capacity(256 * 1024, w));
                b.mode(tar::HeaderMode::Complete);
                let md = File::from(top.try_clone()?).metadata()?;
                let mut h = header(&md);
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
        let extracted = archive::extract_tree(ChanReader::std(rx), host);
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

fn header(md: &Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(md, tar::HeaderMode::Complete);
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
    /// daemon's archives.
    links: HashMap<(u64, u64), PathBuf>,
    depth: usize,
}

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
        for n in names(dir)? {
            cancelled(self.cancel)?;
            let ename = name.join(&n);
            // The entry itself, whatever it is: O_PATH opens a symlink or
            // a fifo without following or blocking.
            let fd = match step(dir, &n, OFlag::O_PATH) {
                Ok(fd) => fd,
                // Deleted since the listing: as if never there.
                Err(Errno::ENOENT) => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot open {}", ename.display()))
                }
            };
            let md = File::from(fd).metadata()?;
            let ft = md.file_type();
            let mut h = header(&md);
            if ft.is_dir() {
                b.append_data(&mut h, &ename, io::empty())?;
                let sub = step(dir, &n, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
                self.walk(b, sub.as_fd(), &ename)?;
            } else if ft.is_symlink() {
                let target = nix::fcntl::readlinkat(dir, n.as_os_str())?;
                b.append_link(&mut h, &ename, target)?;
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, &ename, first)?;
                        continue;
                    }
                    self.links.insert((md.dev(), md.ino()), ename.clone());
                }
                let f = File::from(step(dir, &n, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?);
                if f.metadata()?.ino() != md.ino() {
                    bail!("{} was replaced while it was copied", ename.display());
                }
                let data = Exact {
                    f,
                    left: md.len(),
                    cancel: self.cancel,
                };
                b.append_data(&mut h, &ename, data)?;
            } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
                b.append_data(&mut h, &ename, io::empty())?;
            }
            // Sockets have no tar form; the daemon's archives skip them too.
        }
        self.depth -= 1;
        Ok(())
    }
}

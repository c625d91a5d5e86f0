//! Tar streams for the Engine API's archive endpoints: building them from
//! host files for copydown, and unpacking them safely for copyup.
//!
//! Both sides are synchronous and streaming; the caller runs them on a
//! blocking thread and bridges them to the HTTP body.

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::cell::Cell;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use tar::{EntryType, Header, HeaderMode};

/// Set-id bits never reach the host: a testbed is untrusted, and a set-uid
/// file owned by whoever runs rdocker is a way out of it. Nor does write
/// permission for others: rdocker's files on the host are root's, and a
/// world-writable one would be any host user's to change.
const HOST_MODE_MASK: u32 = 0o1775;

/// Write `src` (a file, followed if a symlink) as one entry named `name`.
pub fn write_file<W: Write>(out: W, src: &Path, name: &str) -> Result<W> {
    let md = fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if !md.is_file() {
        bail!(
            "{} is not a regular file; copy directories with a trailing / on both paths",
            src.display()
        );
    }
    let file = fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let mut b = builder(out);
    let mut h = header_for(&md);
    b.append_data(&mut h, name, file)
        .with_context(|| format!("cannot read {}", src.display()))?;
    Ok(b.into_inner()?)
}

/// Write the directory `src` and everything below it, under `prefix`
/// ("" for the archive root itself). Symlinks are stored, not followed.
pub fn write_tree<W: Write>(out: W, src: &Path, prefix: &str) -> Result<W> {
    write_tree_part(out, src, prefix, &mut |_| true)
}

/// write_tree with every directory, depth first, but only the other
/// entries whose file name `keep` takes: one of the parts that two tars
/// unpack at once (copy.rs).
pub fn write_tree_part<W: Write>(
    out: W,
    src: &Path,
    prefix: &str,
    keep: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<W> {
    let md = fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if !md.is_dir() {
        bail!("{} is not a directory", src.display());
    }
    let mut b = builder(out);
    let root = if prefix.is_empty() { "." } else { prefix };
    let mut h = header_for(&md);
    b.append_data(&mut h, root, io::empty())?;
    walk(&mut b, src, Path::new(root), keep)?;
    Ok(b.into_inner()?)
}

fn builder<W: Write>(out: W) -> tar::Builder<W> {
    let mut b = tar::Builder::new(out);
    b.mode(HeaderMode::Complete);
    b.follow_symlinks(false);
    b
}

/// Entries are owned by root in the testbed, as the reference's
/// `tar --no-same-owner` run as root gives.
fn header_for(md: &fs::Metadata) -> Header {
    let mut h = Header::new_gnu();
    h.set_metadata_in_mode(md, HeaderMode::Complete);
    h.set_uid(0);
    h.set_gid(0);
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h
}

fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    keep: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    // As the kernel lists it, one entry at a time: never a whole listing.
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        // The entry's type from the directory, without a stat for what is
        // left out (a failure reads as a directory: never drop a subtree).
        if !e.file_type().map_or(true, |t| t.is_dir()) && !keep(&e.file_name()) {
            continue;
        }
        let path = e.path();
        let ename = name.join(e.file_name());
        let md = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let ft = md.file_type();
        let mut h = header_for(&md);
        if ft.is_dir() {
            b.append_data(&mut h, &ename, io::empty())?;
            walk(b, &path, &ename, keep)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            b.append_link(&mut h, &ename, target)?;
        } else if ft.is_file() {
            let mut f =
                fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            if has_holes(md.len(), std::os::unix::fs::MetadataExt::blocks(&md)) {
                // GNU sparse form (the crate's SEEK_DATA writer), which
                // tar in the testbed unpacks with its holes. Its owner is
                // not root's, but both unpackers make everything root's.
                b.append_file(&ename, &mut f)
            } else {
                b.append_data(&mut h, &ename, f)
            }
            .with_context(|| format!("cannot read {}", path.display()))?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            b.append_data(&mut h, &ename, io::empty())?;
        } else {
            // Sockets have no tar form; GNU tar skips them too.
            eprintln!(
                "autopkgtest-virt-rdocker: skipping socket {}",
                path.display()
            );
        }
    }
    Ok(())
}

/// A file worth tar's sparse form: big, with fewer blocks than its size.
/// Smaller ones are not worth the lseeks.
/// `blocks` in 512-byte units, as stat gives them.
pub fn has_holes(size: u64, blocks: u64) -> bool {
    size >= 1 << 20 && blocks.saturating_mul(512) < size
}

/// Where one archive member lands below the target, or None for the
/// archive's root directory itself. Refuses anything that climbs out.
pub fn member_path(raw: &Path, strip_root: bool) -> Result<Option<PathBuf>> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => bail!("refusing archive member {raw:?}: it contains `..`"),
            Component::RootDir | Component::Prefix(_) => {
                bail!("refusing archive member {raw:?}: it is an absolute path")
            }
        }
    }
    if strip_root {
        if parts.is_empty() {
            return Ok(None);
        }
        parts.remove(0);
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(parts.iter().collect()))
}

/// Make sure every directory between `root` and `rel`'s parent is a real
/// directory below `root`, creating missing ones. A symlink on the way
/// (planted by the testbed, or anything else) is refused, never followed.
/// The directories of the current member's path, top down, are known to
/// be real directories (created here, or checked with lstat): each is
/// checked once while members keep coming below it, not once for every
/// member (a tree of 5000 files cost 5000 lstats per level). Only the
/// current path is kept, so a tree of 50,000 directories costs what its
/// deepest path does. Nothing in the archive can turn a known directory
/// into a link: a member that would replace a directory is refused.
#[derive(Default)]
struct Dirs {
    chain: Vec<PathBuf>,
}

impl Dirs {
    /// `root/rel`, once every directory above it below `root` is a real
    /// directory, created where missing.
    fn parent_of(&mut self, root: &Path, rel: &Path) -> Result<PathBuf> {
        let mut cur = root.to_path_buf();
        let mut depth = 0;
        for c in rel.parent().into_iter().flat_map(|p| p.components()) {
            cur.push(c);
            depth += 1;
            if self.chain.get(depth - 1) == Some(&cur) {
                continue;
            }
            self.chain.truncate(depth - 1);
            match fs::symlink_metadata(&cur) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => bail!(
                    "refusing to write below {}: it is not a directory (a symlink planted \
                     in the testbed?)",
                    cur.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur)
                        .with_context(|| format!("cannot create {}", cur.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot stat {}", cur.display())),
            }
            self.chain.push(cur.clone());
        }
        self.chain.truncate(depth);
        Ok(root.join(rel))
    }

    /// The directory member at `path`, just below the last parent_of's
    /// parents, is a real directory now.
    fn entered(&mut self, path: PathBuf) {
        self.chain.push(path);
    }
}

/// Directories whose entries are being written, top down, with the mode
/// and time each gets once it is left: creating entries changes a
/// directory's time, and a read-only mode would stop a user's rdocker
/// from creating them. Archives list a directory's entries right after
/// it, so only the current path's directories wait here.
#[derive(Default)]
struct Pending {
    dirs: Vec<(PathBuf, u32, u64)>,
}

impl Pending {
    /// The member at `path` comes next: every directory it is not inside
    /// is done.
    fn next(&mut self, path: &Path) -> Result<()> {
        while let Some((d, _, _)) = self.dirs.last() {
            if path.starts_with(d) && path != d {
                break;
            }
            self.finish_one()?;
        }
        Ok(())
    }

    fn push(&mut self, path: PathBuf, mode: u32, mtime: u64) {
        self.dirs.push((path, mode, mtime));
    }

    fn finish_one(&mut self) -> Result<()> {
        if let Some((path, mode, mtime)) = self.dirs.pop() {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", path.display()))?;
            set_times(&path, mtime);
        }
        Ok(())
    }

    /// The end of the archive: deepest first.
    fn finish(mut self) -> Result<()> {
        while !self.dirs.is_empty() {
            self.finish_one()?;
        }
        Ok(())
    }
}

/// Remove whatever non-directory is at `path`, so that we create a fresh
/// entry rather than write through an existing symlink.
fn clear_non_dir(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Ok(true),
        Ok(_) => {
            fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
            Ok(false)
        }
        Err(_) => Ok(false),
    }
}

fn create_new_file(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

fn set_times(path: &Path, mtime: u64) {
    let t = TimeSpec::new(mtime as i64, 0);
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
}

/// The most the tar reader may read for one member's header, its
/// extensions included (GNU long names and links, pax records, old-GNU
/// sparse maps). It holds long names and pax records whole in memory, and
/// the stream is the testbed's: a "long name" of 4 GiB would take 4 GiB of
/// ours. GNU tar's own are far smaller (a path is at most 4 KiB).
const HEADER_LIMIT: u64 = 1 << 20;

/// What the tar reader may still read before it has the next member's
/// header: None while it reads a member's data.
#[derive(Default)]
struct Meter {
    left: Cell<Option<u64>>,
    over: Cell<bool>,
}

fn header_too_big() -> String {
    format!(
        "the testbed's archive has a header of more than {} KiB (long names, pax records and \
         sparse maps included): not a tar that GNU tar makes; the testbed's tar may have been \
         replaced, so restore it (or reset the testbed) and copy again",
        HEADER_LIMIT >> 10
    )
}

/// The stream under the tar reader, counting what the reader takes while
/// the meter runs. The tar crate stays the one parser of the stream: this
/// counts bytes, it does not read them.
struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.meter.left.get() else {
            return self.inner.read(buf);
        };
        if left == 0 && !buf.is_empty() {
            self.meter.over.set(true);
            return Err(io::Error::other(header_too_big()));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.meter.left.set(Some(left - n as u64));
        Ok(n)
    }
}

/// A tar stream from the testbed, read by the tar crate with every header
/// metered.
struct Members<R: Read> {
    archive: tar::Archive<Metered<R>>,
    meter: Rc<Meter>,
}

impl<R: Read> Members<R> {
    fn new(input: R) -> Self {
        let meter = Rc::new(Meter::default());
        let archive = tar::Archive::new(Metered {
            inner: input,
            meter: meter.clone(),
        });
        Members { archive, meter }
    }

    fn iter(&mut self) -> Result<MemberIter<'_, R>> {
        Ok(MemberIter {
            entries: self
                .archive
                .entries()
                .context("cannot read the archive from the testbed")?,
            meter: &self.meter,
        })
    }
}

/// The crate reads a member's header and extensions in `Entries::next`,
/// and its data only as the member is read. The caller reads each member
/// to its end (`drain`) before the next, so that all `next` reads is
/// headers, their extensions and padding: that is what is metered.
struct MemberIter<'a, R: Read> {
    entries: tar::Entries<'a, Metered<R>>,
    meter: &'a Meter,
}

impl<'a, R: Read> MemberIter<'a, R> {
    fn next(&mut self) -> Result<Option<tar::Entry<'a, Metered<R>>>> {
        self.meter.left.set(Some(HEADER_LIMIT));
        let next = self.entries.next();
        self.meter.left.set(None);
        if self.meter.over.get() {
            bail!("{}", header_too_big());
        }
        next.transpose()
            .context("cannot read the archive from the testbed")
    }
}

/// Read the rest of a member: what it has left is data, not header.
fn drain<R: Read>(entry: &mut tar::Entry<R>, buf: &mut Vec<u8>) -> Result<()> {
    if buf.is_empty() {
        buf.resize(256 * 1024, 0);
    }
    loop {
        match entry.read(buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("cannot read the archive from the testbed"),
        }
    }
}

/// Unpack a directory archive from the testbed into `dst`, merging with
/// what is there. The archive's first path component is the testbed
/// directory's own name and is dropped.
pub fn extract_tree<R: Read>(input: R, dst: &Path) -> Result<()> {
    let mut members = Members::new(input);
    let mut pending = Pending::default();
    let mut dirs = Dirs::default();
    let mut buf = Vec::new();
    let mut room = Room::default();
    fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    let mut iter = members.iter()?;
    while let Some(mut entry) = iter.next()? {
        let raw = entry.path()?.into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & HOST_MODE_MASK;
        let mtime = header.mtime().unwrap_or(0);
        let Some(rel) = member_path(&raw, true)? else {
            if kind.is_dir() {
                pending.next(dst)?;
                fs::set_permissions(dst, fs::Permissions::from_mode(mode | 0o700))?;
                pending.push(dst.to_path_buf(), mode, mtime);
            }
            drain(&mut entry, &mut buf)?;
            continue;
        };
        let path = dirs.parent_of(dst, &rel)?;
        pending.next(&path)?;
        match kind {
            EntryType::Directory => {
                if !clear_non_dir(&path)? {
                    fs::create_dir(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                }
                // Writable until its entries are in, whoever runs us.
                fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o700))?;
                dirs.entered(path.clone());
                pending.push(path, mode, mtime);
            }
            // GNU tar --sparse (copy.rs's tar in the testbed, tree.rs's
            // walk): holes are seeks, not zeros.
            EntryType::GNUSparse => {
                if clear_non_dir(&path)? {
                    bail!(
                        "cannot copy file {}: a directory is in the way",
                        path.display()
                    );
                }
                unpack_sparse(&mut entry, &path, mode, mtime)?;
            }
            EntryType::Regular | EntryType::Continuous => {
                // Create first and clear only what is in the way: most
                // targets are new, and O_EXCL never writes through a link.
                let f = match create_new_file(&path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if clear_non_dir(&path)? {
                            bail!(
                                "cannot copy file {}: a directory is in the way",
                                path.display()
                            );
                        }
                        create_new_file(&path)
                    }
                    r => r,
                };
                let mut f = f.with_context(|| format!("cannot create {}", path.display()))?;
                copy_exact(&mut entry, &mut f, &path, &mut buf, &mut room)?;
                f.set_permissions(fs::Permissions::from_mode(mode))?;
                let t = TimeSpec::new(mtime as i64, 0);
                let _ = nix::sys::stat::futimens(&f, &t, &t);
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| anyhow!("symlink {raw:?} has no target"))?
                    .into_owned();
                if clear_non_dir(&path)? {
                    bail!(
                        "cannot copy symlink {}: a directory is in the way",
                        path.display()
                    );
                }
                std::os::unix::fs::symlink(&target, &path)
                    .with_context(|| format!("cannot create symlink {}", path.display()))?;
                set_times(&path, mtime);
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name()?
                    .ok_or_else(|| anyhow!("hard link {raw:?} has no target"))?
                    .into_owned();
                let target_rel = member_path(&target_raw, true)?
                    .ok_or_else(|| anyhow!("refusing hard link {raw:?} to the archive root"))?;
                let target = dirs.parent_of(dst, &target_rel)?;
                let md = fs::symlink_metadata(&target).with_context(|| {
                    format!("hard link {raw:?} points to {target_raw:?}, which is not there")
                })?;
                if !md.is_file() {
                    bail!("refusing hard link {raw:?}: its target {target_raw:?} is not a file");
                }
                if clear_non_dir(&path)? {
                    bail!(
                        "cannot copy link {}: a directory is in the way",
                        path.display()
                    );
                }
                fs::hard_link(&target, &path)
                    .with_context(|| format!("cannot create link {}", path.display()))?;
            }
            EntryType::Fifo => {
                if clear_non_dir(&path)? {
                    bail!(
                        "cannot copy fifo {}: a directory is in the way",
                        path.display()
                    );
                }
                nix::unistd::mkfifo(&path, Mode::from_bits_truncate(mode))
                    .with_context(|| format!("cannot create fifo {}", path.display()))?;
            }
            EntryType::Char | EntryType::Block => {
                // Device nodes from an untrusted testbed are not made on the host.
                eprintln!(
                    "autopkgtest-virt-rdocker: not copying device node {}",
                    rel.display()
                );
            }
            _ => {}
        }
        drain(&mut entry, &mut buf)?;
    }
    pending.finish()
}

/// A GNU sparse member, created new at `path`. The crate's reader gives
/// holes as zeros, 15 TiB of them for a 15 TiB file of holes (minutes of
/// a core); its own unpack seeks over them and writes the archive's data
/// regions only, which must fit above the disk margin.
fn unpack_sparse<R: Read>(
    entry: &mut tar::Entry<R>,
    path: &Path,
    mode: u32,
    mtime: u64,
) -> Result<()> {
    let stored = entry.header().entry_size()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Ok(st) = nix::sys::statvfs::statvfs(dir) {
        if !leaves_room(&st, stored) {
            bail!(
                "stopped before the disk fills: {} has {} MiB of data, more than {} leaves \
                 free above rdocker's margin; free some space there or copy less",
                path.display(),
                stored >> 20,
                dir.display()
            );
        }
    }
    // Owner only until the mode below; times set below too.
    entry.set_mask(0o077);
    entry.set_preserve_mtime(false);
    let unpacked = entry
        .unpack(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let tar::Unpacked::File(f) = unpacked else {
        bail!("{} did not unpack as a file", path.display());
    };
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    let t = TimeSpec::new(mtime as i64, 0);
    let _ = nix::sys::stat::futimens(&f, &t, &t);
    Ok(())
}

/// The free space a copy leaves on the filesystem it writes to: 2% of
/// it, at least 16 MiB and at most 1 GiB. A testbed can make a copyup as
/// big as it likes; it fails before the host's disk is full.
fn margin(st: &nix::sys::statvfs::Statvfs) -> u64 {
    // fsblkcnt_t and c_ulong are not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    let total = (st.blocks() as u64).saturating_mul(st.fragment_size() as u64);
    (total / 50).clamp(16 << 20, 1 << 30)
}

#[allow(clippy::unnecessary_cast)]
fn available(st: &nix::sys::statvfs::Statvfs) -> u64 {
    (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64)
}

/// Whether a filesystem can take `len` more bytes and still keep the
/// margin above free (the apt cache, apt/store.rs, asks before it keeps a
/// package).
pub fn leaves_room(st: &nix::sys::statvfs::Statvfs, len: u64) -> bool {
    available(st) >= len.saturating_add(margin(st))
}

/// The disk space check of one copy: before every CHECK_EVERY bytes it
/// writes, the filesystem must still have that much above the margin, so
/// that free space never falls more than CHECK_EVERY below it (the margin
/// is at least twice that).
#[derive(Default)]
pub struct Room {
    unchecked: u64,
}

const CHECK_EVERY: u64 = 8 << 20;

impl Room {
    /// `n` more bytes (at most CHECK_EVERY) are about to go to `f`.
    /// The first check comes once CHECK_EVERY bytes are due, so that a
    /// small file costs no statvfs.
    pub fn take(&mut self, f: &fs::File, n: u64) -> Result<()> {
        self.unchecked += n;
        if self.unchecked < CHECK_EVERY {
            return Ok(());
        }
        self.unchecked = 0;
        let Ok(st) = nix::sys::statvfs::fstatvfs(f) else {
            return Ok(());
        };
        let (free, keep) = (available(&st), margin(&st));
        if free < keep + CHECK_EVERY + n {
            bail!(
                "stopped before the disk fills: {} MiB are free where the copy writes, and \
                 rdocker keeps {} MiB free; free some space there or copy less",
                free >> 20,
                keep >> 20
            );
        }
        Ok(())
    }
}

/// Reserve a big file's blocks in one call before it is written: ext4
/// then need not allocate them page by page (256 MiB into a testbed's
/// overlay took 65 ms instead of 84 here, sendfile, median of 6). Only
/// for a temporary file that a failed copy removes: the file has its full
/// size at once, and a copy cut short (a timeout) must not leave a file
/// that looks complete. `blocks` is the source's allocation (512-byte
/// units): a sparse source is not reserved, as its holes must stay holes.
/// Nothing is reserved that would leave less than the margin free; the
/// copy itself then stops where Room says.
pub fn reserve(f: &fs::File, len: u64, blocks: u64) -> Result<()> {
    if len < 1 << 20 || blocks.saturating_mul(512) < len {
        return Ok(());
    }
    match nix::sys::statvfs::fstatvfs(f) {
        Ok(st) if available(&st) > len.saturating_add(margin(&st)) => {}
        _ => return Ok(()),
    }
    use nix::fcntl::{fallocate, FallocateFlags};
    match fallocate(f, FallocateFlags::empty(), 0, len as i64) {
        Ok(()) | Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot reserve {len} bytes"))),
    }
}

/// Write `data` at the file's position, skipping blocks of zeros: a hole
/// sent as zeros (the archive endpoint has no sparse form) stays a hole
/// on the host. The caller sets the length at the end; true when `data`
/// ended in zeros, so that the file is shorter than what it has taken.
fn write_sparse(out: &mut fs::File, data: &[u8]) -> io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    const BLOCK: usize = 4096;
    static ZERO: [u8; BLOCK] = [0; BLOCK];
    // memcmp against zeros: fast in every build profile.
    let is_zero = |b: &[u8]| b == &ZERO[..b.len()];
    let mut i = 0;
    let mut hole_at_end = false;
    while i < data.len() {
        let end = (i + BLOCK).min(data.len());
        let zero = is_zero(&data[i..end]);
        hole_at_end = zero;
        // Grow the run while blocks keep the same kind.
        let mut j = end;
        while j < data.len() {
            let e = (j + BLOCK).min(data.len());
            if is_zero(&data[j..e]) != zero {
                break;
            }
            j = e;
        }
        if zero {
            out.seek(SeekFrom::Current((j - i) as i64))?;
        } else {
            out.write_all(&data[i..j])?;
        }
        i = j;
    }
    Ok(hole_at_end)
}

/// Copy an entry's data, failing on a short archive: the tar reader just
/// stops at the end of its input, which would pass a truncated file off as
/// a whole one.
fn copy_exact<R: Read>(
    entry: &mut tar::Entry<R>,
    out: &mut fs::File,
    path: &Path,
    buf: &mut Vec<u8>,
    room: &mut Room,
) -> Result<()> {
    // The file's size: for a sparse entry, more than the archive holds.
    let want = entry.size();
    // Large writes: io::copy's 8 KiB would cost a syscall per 8 KiB. One
    // buffer for a whole tree: a fresh one per file costs an mmap.
    if buf.is_empty() {
        buf.resize(256 * 1024, 0);
    }
    let mut got = 0u64;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
        };
        room.take(out, n as u64)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let hole_at_end = write_sparse(out, &buf[..n])
            .with_context(|| format!("cannot write {}", path.display()))?;
        got += n as u64;
        // A copy cut short (the copy timeout) leaves what has arrived, as
        // a plain write would, holes included: upstream's test_copy_timeout
        // wants a partial copy of an all-hole file to show its progress.
        // Only a hole makes the length differ from what was written (the
        // file is new, or reserved at its full size): no ftruncate per
        // file otherwise (a tree of small files paid one each).
        if hole_at_end {
            out.set_len(got)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if got != want {
        bail!(
            "the archive from the testbed ended early: {} has {got} of {want} bytes",
            path.display()
        );
    }
    Ok(())
}

/// What the archive of a single testbed path turned out to hold.
pub enum SingleFile {
    Written,
    /// The path is a symlink; the copy has to follow it.
    Symlink(PathBuf),
    Directory,
}

/// Unpack the one-member archive of a testbed file into `dst`. The data
/// goes to a temporary name first, so that a failed copy leaves no partial
/// target behind.
pub fn extract_file<R: Read>(input: R, dst: &Path) -> Result<SingleFile> {
    let mut members = Members::new(input);
    let mut entry = members
        .iter()?
        .next()?
        .ok_or_else(|| anyhow!("the testbed sent an empty archive"))?;
    let header = entry.header();
    match header.entry_type() {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {}
        EntryType::Symlink => {
            let target = entry
                .link_name()?
                .ok_or_else(|| anyhow!("symlink without a target"))?;
            return Ok(SingleFile::Symlink(target.into_owned()));
        }
        EntryType::Directory => return Ok(SingleFile::Directory),
        other => bail!("the testbed path is not a regular file (tar type {other:?})"),
    }
    let mode = header.mode().unwrap_or(0o644) & HOST_MODE_MASK;
    let mtime = header.mtime().unwrap_or(0);
    if header.entry_type() == EntryType::GNUSparse {
        let tmp = temp_name(dst)?;
        let r = unpack_sparse(&mut entry, &tmp, mode, mtime).and_then(|()| {
            fs::rename(&tmp, dst).with_context(|| format!("cannot create {}", dst.display()))
        });
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r?;
        return Ok(SingleFile::Written);
    }
    // Not reserved: the size is the testbed's word, and holes come as
    // zeros that write_sparse skips.
    write_host_file(dst, mode, mtime, |f| {
        copy_exact(&mut entry, f, dst, &mut Vec::new(), &mut Room::default())
    })?;
    Ok(SingleFile::Written)
}

/// The temporary name of a copied-up file on its way to `dst`.
fn temp_name(dst: &Path) -> Result<PathBuf> {
    let name = dst
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", dst.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".rdocker-{}", std::process::id()));
    Ok(dst.with_file_name(tmp_name))
}

/// Write one copied-up file at `dst`: a temporary name first, so that a
/// failed copy leaves no partial target; then the testbed's mode (less
/// setuid and setgid) and modification time.
pub fn write_host_file(
    dst: &Path,
    mode: u32,
    mtime: u64,
    fill: impl FnOnce(&mut fs::File) -> Result<()>,
) -> Result<()> {
    let tmp = temp_name(dst)?;
    let result = (|| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        fill(&mut f)?;
        f.set_permissions(fs::Permissions::from_mode(mode & HOST_MODE_MASK))?;
        drop(f);
        set_times(&tmp, mtime);
        fs::rename(&tmp, dst).with_context(|| format!("cannot create {}", dst.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    pub(super) fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "rdocker-archive-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reserve_sizes_big_files_and_leaves_impossible_ones_to_the_copy() {
        use std::os::unix::fs::MetadataExt;
        let d = tmpdir("reserve");
        let f = fs::File::create(d.join("f")).unwrap();
        reserve(&f, 1000, 8).unwrap();
        assert_eq!(
            f.metadata().unwrap().len(),
            0,
            "small files are not reserved"
        );
        reserve(&f, 4 << 20, 8 << 11).unwrap();
        let md = f.metadata().unwrap();
        assert_eq!(md.len(), 4 << 20);
        // ext4, xfs, btrfs and tmpfs all allocate; a filesystem that
        // cannot would leave the blocks at zero and fail this.
        assert!(md.blocks() * 512 >= 4 << 20, "{} blocks", md.blocks());
        // More than any disk here: left alone, not an error.
        let g = fs::File::create(d.join("g")).unwrap();
        reserve(&g, 1 << 60, 1 << 51).unwrap();
        assert_eq!(g.metadata().unwrap().len(), 0);
        // A sparse source: nothing reserved, its holes stay holes.
        let h = fs::File::create(d.join("h")).unwrap();
        reserve(&h, 64 << 20, 8).unwrap();
        assert_eq!(h.metadata().unwrap().len(), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    /// A hand-crafted archive; tar::Builder refuses bad paths, so the
    /// header's name field is written raw.
    fn crafted(entries: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, link, data) in entries {
            let mut h = Header::new_old();
            {
                let raw = h.as_old_mut();
                raw.name[..name.len()].copy_from_slice(name.as_bytes());
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            out.extend(std::iter::repeat_n(0u8, pad));
        }
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }

    #[test]
    fn member_paths() {
        assert_eq!(member_path(Path::new("d"), true).unwrap(), None);
        assert_eq!(member_path(Path::new("./d/"), true).unwrap(), None);
        assert_eq!(
            member_path(Path::new("d/a/b"), true).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert!(member_path(Path::new("d/../x"), true).is_err());
        assert!(member_path(Path::new("/etc/passwd"), true).is_err());
    }

    #[test]
    fn refuses_parent_and_absolute_members() {
        for bad in ["d/../../escape", "/tmp/escape-abs"] {
            let dst = tmpdir("bad");
            let tar = crafted(&[(bad, EntryType::Regular, "", b"x")]);
            let err = extract_tree(&tar[..], &dst).unwrap_err().to_string();
            assert!(err.contains("refusing"), "{bad}: {err}");
            assert!(!dst.parent().unwrap().join("escape").exists());
        }
    }

    #[test]
    fn refuses_writing_through_planted_symlinks() {
        let outside = tmpdir("outside");
        let dst = tmpdir("dst");
        let link = outside.to_str().unwrap().to_string();
        // outward symlink, then a file below it
        let tar = crafted(&[
            ("d/evil", EntryType::Symlink, &link, b""),
            ("d/evil/pwned", EntryType::Regular, "", b"x"),
        ]);
        let err = extract_tree(&tar[..], &dst).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        assert!(!outside.join("pwned").exists());

        // a symlink into an earlier entry, then a file written "through" it
        let dst = tmpdir("dst2");
        let tar = crafted(&[
            ("d/real", EntryType::Regular, "", b"original"),
            ("d/alias", EntryType::Symlink, "real", b""),
            ("d/alias", EntryType::Regular, "", b"replaced"),
        ]);
        extract_tree(&tar[..], &dst).unwrap();
        assert_eq!(fs::read(dst.join("real")).unwrap(), b"original");
        assert_eq!(fs::read(dst.join("alias")).unwrap(), b"replaced");
        assert!(!fs::symlink_metadata(dst.join("alias"))
            .unwrap()
            .is_symlink());
    }

    #[test]
    fn refuses_hard_links_outside() {
        let dst = tmpdir("hl");
        let tar = crafted(&[("d/h", EntryType::Link, "/etc/passwd", b"")]);
        assert!(extract_tree(&tar[..], &dst).is_err());
        let tar = crafted(&[("d/h", EntryType::Link, "d/../../x", b"")]);
        assert!(extract_tree(&tar[..], &dst).is_err());
    }

    #[test]
    fn tree_roundtrip_keeps_modes_links_and_times() {
        let src = tmpdir("src");
        fs::create_dir(src.join("sub dir")).unwrap();
        fs::write(src.join("sub dir/x%é"), b"hello").unwrap();
        fs::set_permissions(src.join("sub dir/x%é"), fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("sub dir/x%é", src.join("link")).unwrap();
        set_times(&src.join("sub dir/x%é"), 1_000_000_000);
        let tar = write_tree(Vec::new(), &src, "top").unwrap();
        let dst = tmpdir("out");
        extract_tree(&tar[..], &dst).unwrap();
        let f = dst.join("sub dir/x%é");
        assert_eq!(fs::read(&f).unwrap(), b"hello");
        let md = fs::metadata(&f).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o751);
        assert_eq!(md.mtime(), 1_000_000_000);
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            PathBuf::from("sub dir/x%é")
        );
    }

    #[test]
    fn single_file_is_atomic() {
        let dst = tmpdir("single").join("f");
        // truncated archive: header says 10 bytes, only 3 follow
        let mut tar = crafted(&[("f", EntryType::Regular, "", b"0123456789")]);
        tar.truncate(512 + 3);
        assert!(extract_file(&tar[..], &dst).is_err());
        assert!(!dst.exists());
        assert_eq!(fs::read_dir(dst.parent().unwrap()).unwrap().count(), 0);
    }

    #[test]
    fn zeros_from_the_testbed_stay_holes_on_the_host() {
        let dst = tmpdir("sparse");
        let mut data = vec![0u8; 32 << 20];
        data[5 << 20] = 1;
        let tar = crafted(&[("f", EntryType::Regular, "", &data)]);
        assert!(matches!(
            extract_file(&tar[..], &dst.join("f")).unwrap(),
            SingleFile::Written
        ));
        let md = fs::metadata(dst.join("f")).unwrap();
        assert_eq!(md.len(), 32 << 20);
        assert_eq!(fs::read(dst.join("f")).unwrap(), data);
        assert!(md.blocks() * 512 <= 1 << 20, "{} blocks", md.blocks());
    }

    /// An extension header with `n` bytes of data (zeros), then `tail`.
    fn extension_bomb(kind: EntryType, n: usize, tail: &[u8]) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.set_path("x").unwrap();
        h.set_entry_type(kind);
        h.set_size(n as u64);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.resize(512 + n.div_ceil(512) * 512, 0);
        tar.extend_from_slice(tail);
        tar
    }

    /// An old-GNU sparse member followed by `n` extension blocks, each
    /// saying another follows.
    fn sparse_map_bomb(n: usize) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.set_path("d/s").unwrap();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_size(0);
        let g = h.as_gnu_mut().unwrap();
        g.set_real_size(0);
        g.set_is_extended(true);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        let mut e = tar::GnuExtSparseHeader::new();
        e.set_is_extended(true);
        for _ in 0..n {
            tar.extend_from_slice(e.as_bytes());
        }
        tar
    }

    #[test]
    fn headers_are_bounded_as_the_crate_reads_them() {
        let dst = tmpdir("header-bomb");
        let too_big = |r: Result<()>| {
            let e = format!("{:#}", r.unwrap_err());
            assert!(e.contains("a header of more than 1024 KiB"), "{e}");
        };
        let mut pax = b"9 a=bbbb\n".repeat((2 << 20) / 9);
        pax.truncate(2 << 20);
        let mut tar = Vec::new();
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(1 << 30);
        h.set_path("PaxHeader/x").unwrap();
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(&pax);
        too_big(extract_tree(&tar[..], &dst));
        for kind in [EntryType::GNULongName, EntryType::GNULongLink] {
            let tar = extension_bomb(kind, 2 << 20, b"");
            too_big(extract_tree(&tar[..], &dst));
            too_big(extract_file(&tar[..], &dst.join("f")).map(drop));
        }
        // Two extensions of one member count together.
        let mut tar = extension_bomb(EntryType::GNULongName, 600 << 10, b"");
        tar.extend(extension_bomb(EntryType::GNULongLink, 600 << 10, b""));
        too_big(extract_tree(&tar[..], &dst));
        too_big(extract_tree(&sparse_map_bomb(3000)[..], &dst));
        // A body of any size is data, and read as such.
        let big = crafted(&[
            ("d/", EntryType::Directory, "", b""),
            ("d/big", EntryType::Regular, "", &vec![1u8; 3 << 20]),
        ]);
        extract_tree(&big[..], &dst).unwrap();
        assert_eq!(fs::metadata(dst.join("big")).unwrap().len(), 3 << 20);
        // So is a global pax header's: the crate gives it as a member.
        let g = crafted(&[
            ("d/", EntryType::Directory, "", b""),
            ("d/g", EntryType::XGlobalHeader, "", &vec![b'\n'; 3 << 20]),
            ("d/after", EntryType::Regular, "", b"after"),
        ]);
        extract_tree(&g[..], &dst).unwrap();
        assert_eq!(fs::read(dst.join("after")).unwrap(), b"after");
    }

    #[test]
    fn real_gnu_tar_archives_unpack() {
        // GNU tar's own: long names, pax records, sparse files, big files.
        let src = tmpdir("real-src");
        let long = "n".repeat(200);
        fs::create_dir_all(src.join("d").join(&long)).unwrap();
        fs::write(src.join("d").join(&long).join("f"), vec![7u8; 3 << 20]).unwrap();
        let f = fs::File::create(src.join("d/sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"x", 40 << 20).unwrap();
        drop(f);
        for format in ["gnu", "pax"] {
            let out = std::process::Command::new("tar")
                .args(["-S", "--format", format, "-cf", "-", "d"])
                .current_dir(&src)
                .output()
                .expect("GNU tar");
            assert!(out.status.success());
            let dst = tmpdir(&format!("real-dst-{format}"));
            extract_tree(&out.stdout[..], &dst).unwrap();
            assert_eq!(
                fs::read(dst.join(&long).join("f")).unwrap(),
                vec![7u8; 3 << 20]
            );
            // tar-rs knows GNU sparse entries, not pax's GNU.sparse
            // records; copy.rs's tar writes the gnu format.
            if format == "gnu" {
                assert_eq!(fs::metadata(dst.join("sparse")).unwrap().len(), 64 << 20);
            }
        }
    }

    /// GNU tar's own sparse entries (copy.rs asks for them): the holes
    /// stay holes and the data lands where it was.
    #[test]
    fn gnu_tar_sparse_entries_unpack_sparse() {
        let src = tmpdir("gnusparse-src");
        fs::create_dir(src.join("d")).unwrap();
        let f = fs::File::create(src.join("d/s")).unwrap();
        f.set_len(128 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"middle", 100 << 20).unwrap();
        drop(f);
        let out = std::process::Command::new("tar")
            .args(["-S", "-cf", "-", "d"])
            .current_dir(&src)
            .output()
            .expect("GNU tar");
        assert!(out.status.success());
        assert!(out.stdout.len() < 1 << 20, "tar stored the holes");
        let dst = tmpdir("gnusparse-dst");
        extract_tree(&out.stdout[..], &dst).unwrap();
        let md = fs::metadata(dst.join("s")).unwrap();
        assert_eq!(md.len(), 128 << 20);
        assert!(md.blocks() * 512 <= 1 << 20, "{} blocks", md.blocks());
        let mut buf = [0u8; 6];
        fs::File::open(dst.join("s"))
            .unwrap()
            .read_exact_at(&mut buf, 100 << 20)
            .unwrap();
        assert_eq!(&buf, b"middle");
        fs::remove_dir_all(&src).unwrap();
        fs::remove_dir_all(&dst).unwrap();
    }

    /// A single file in GNU tar's sparse form (the exec route's file
    /// copyup): 1 TiB of holes unpacks by seeking, not by writing or even
    /// reading a TiB of zeros.
    #[test]
    fn a_sparse_single_file_unpacks_by_seeking() {
        let src = tmpdir("sparse1-src");
        let f = fs::File::create(src.join("s")).unwrap();
        f.set_len(1 << 40).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"end", (1 << 40) - 3).unwrap();
        drop(f);
        let out = std::process::Command::new("tar")
            .args(["-S", "--format=gnu", "-cf", "-", "s"])
            .current_dir(&src)
            .output()
            .expect("GNU tar");
        assert!(out.status.success());
        let dst = tmpdir("sparse1-dst").join("s");
        let t = std::time::Instant::now();
        assert!(matches!(
            extract_file(&out.stdout[..], &dst).unwrap(),
            SingleFile::Written
        ));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        let md = fs::metadata(&dst).unwrap();
        assert_eq!(md.len(), 1 << 40);
        assert!(md.blocks() * 512 <= 1 << 20, "{} blocks", md.blocks());
        let mut buf = [0u8; 3];
        fs::File::open(&dst)
            .unwrap()
            .read_exact_at(&mut buf, (1 << 40) - 3)
            .unwrap();
        assert_eq!(&buf, b"end");
        // Cut short: no file, and no temporary one.
        let dst2 = dst.with_file_name("cut");
        assert!(extract_file(&out.stdout[..600], &dst2).is_err());
        assert_eq!(fs::read_dir(dst.parent().unwrap()).unwrap().count(), 1);
        fs::remove_dir_all(&src).unwrap();
        fs::remove_dir_all(dst.parent().unwrap()).unwrap();
    }

    /// A directory gets its own mode and time once its entries are in,
    /// even read-only ones, with only the current path's directories kept
    /// waiting.
    #[test]
    fn directories_get_their_mode_and_time_once_left() {
        let mut tar = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar);
            let mut add = |path: &str, kind: EntryType, mode: u32, mtime: u64| {
                let mut h = Header::new_gnu();
                h.set_entry_type(kind);
                h.set_mode(mode);
                h.set_mtime(mtime);
                let data: &[u8] = if kind == EntryType::Regular {
                    b"x"
                } else {
                    b""
                };
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data).unwrap();
            };
            add("top", EntryType::Directory, 0o755, 1000);
            add("top/ro", EntryType::Directory, 0o555, 2000);
            add("top/ro/sub", EntryType::Directory, 0o500, 3000);
            add("top/ro/sub/f", EntryType::Regular, 0o644, 4000);
            add("top/ro/g", EntryType::Regular, 0o644, 5000);
            add("top/other", EntryType::Directory, 0o750, 6000);
            add("top/other/h", EntryType::Regular, 0o644, 7000);
            b.finish().unwrap();
        }
        let dst = tmpdir("dirtimes");
        extract_tree(&tar[..], &dst).unwrap();
        for (p, mode, mtime) in [
            ("", 0o755, 1000),
            ("ro", 0o555, 2000),
            ("ro/sub", 0o500, 3000),
            ("other", 0o750, 6000),
        ] {
            let md = fs::metadata(dst.join(p)).unwrap();
            assert_eq!(md.permissions().mode() & 0o7777, mode, "{p:?}");
            assert_eq!(md.mtime(), mtime, "{p:?}");
        }
        for f in ["ro/sub/f", "ro/g", "other/h"] {
            assert_eq!(fs::read(dst.join(f)).unwrap(), b"x", "{f}");
        }
        fs::set_permissions(dst.join("ro/sub"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(dst.join("ro"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::remove_dir_all(&dst).unwrap();
    }

    proptest::proptest! {
        /// Any tree written by write_tree (streamed listings, unsorted)
        /// extracts to the same names, kinds, data and directory times.
        #[test]
        fn trees_round_trip(files in proptest::collection::vec(
            (proptest::collection::vec(0u8..4, 1..5), 0u8..3, 0u64..4096), 0..40)
        ) {
            let src = tmpdir("prop-src");
            for (i, (path, kind, len)) in files.iter().enumerate() {
                let mut p = src.clone();
                for c in &path[..path.len() - 1] {
                    p.push(format!("d{c}"));
                    if p.exists() && !p.is_dir() {
                        break;
                    }
                    let _ = fs::create_dir(&p);
                }
                if !p.is_dir() {
                    continue;
                }
                let p = p.join(format!("e{}-{i}", path[path.len() - 1]));
                match kind {
                    0 => fs::write(&p, vec![(i % 251) as u8; *len as usize]).unwrap(),
                    1 => fs::create_dir(&p).unwrap(),
                    _ => std::os::unix::fs::symlink(format!("t{len}"), &p).unwrap(),
                }
            }
            // Directory times, deepest first, after everything is made.
            let mut dirs = vec![src.clone()];
            let mut i = 0;
            while i < dirs.len() {
                for e in fs::read_dir(&dirs[i]).unwrap() {
                    let e = e.unwrap();
                    if e.file_type().unwrap().is_dir() {
                        dirs.push(e.path());
                    }
                }
                i += 1;
            }
            for (n, d) in dirs.iter().enumerate().rev() {
                set_times(d, 1_000_000 + n as u64);
            }
            let tar = write_tree(Vec::new(), &src, "top").unwrap();
            let dst = tmpdir("prop-dst");
            extract_tree(&tar[..], &dst).unwrap();
            fn listing(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u8, Vec<u8>, i64)>) {
                for e in fs::read_dir(dir).unwrap() {
                    let p = e.unwrap().path();
                    let md = fs::symlink_metadata(&p).unwrap();
                    let rel = p.strip_prefix(root).unwrap().to_path_buf();
                    if md.is_dir() {
                        out.push((rel, 1, Vec::new(), md.mtime()));
                        listing(root, &p, out);
                    } else if md.is_symlink() {
                        let t = fs::read_link(&p).unwrap();
                        out.push((rel, 2, t.into_os_string().into_encoded_bytes(), 0));
                    } else {
                        out.push((rel, 0, fs::read(&p).unwrap(), 0));
                    }
                }
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            listing(&src, &src, &mut a);
            listing(&dst, &dst, &mut b);
            a.sort();
            b.sort();
            fs::remove_dir_all(&src).unwrap();
            fs::remove_dir_all(&dst).unwrap();
            proptest::prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn setuid_bits_do_not_reach_the_host() {
        let dst = tmpdir("suid");
        let mut tar = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar);
            let mut h = Header::new_gnu();
            h.set_mode(0o4755);
            h.set_size(1);
            h.set_entry_type(EntryType::Regular);
            b.append_data(&mut h, "d/suid", &b"x"[..]).unwrap();
            b.finish().unwrap();
        }
        extract_tree(&tar[..], &dst).unwrap();
        let md = fs::metadata(dst.join("suid")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o755);
        let mut tar = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar);
            let mut h = Header::new_gnu();
            h.set_mode(0o666);
            h.set_size(1);
            h.set_entry_type(EntryType::Regular);
            b.append_data(&mut h, "d/open", &b"x"[..]).unwrap();
            b.finish().unwrap();
        }
        extract_tree(&tar[..], &dst).unwrap();
        let md = fs::metadata(dst.join("open")).unwrap();
        assert_eq!(
            md.permissions().mode() & 0o7777,
            0o664,
            "no write for others"
        );
    }
}

/// Property tests: archives in every header form the tar crate reads,
/// whole, cut short, with bytes changed, or with a header of any size.
/// Read through the meter, each reads exactly as the crate alone reads it
/// or fails on the bound; extracted, each gives what its generator meant
/// or fails cleanly. PROPTEST_CASES sets the budget.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::hash::{DefaultHasher, Hasher};

    #[derive(Debug, Clone)]
    enum Form {
        Plain,
        /// Base-256 size, with bytes the crate ignores before the last 8.
        Base256([u8; 3]),
        /// A pax `x` header with the path and the size (the header's own
        /// size is wrong).
        PaxPath,
        /// A pax `x` (whose size record is the next header's only) then a
        /// global `g`, then the member.
        PaxThenGlobal,
        /// GNU `L`.
        LongName,
        /// GNU `K`: a symlink with a long target.
        LongLink,
        /// Old-GNU sparse: the data in 512-byte chunks with holes
        /// (in 512-byte units) before each, and one after.
        Sparse(Vec<u8>, u16),
    }

    #[derive(Debug, Clone)]
    struct Member {
        form: Form,
        name_len: usize,
        data: Vec<u8>,
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        File(Vec<u8>),
        Link(String),
    }

    fn form() -> impl Strategy<Value = Form> {
        prop_oneof![
            Just(Form::Plain),
            any::<[u8; 3]>().prop_map(Form::Base256),
            Just(Form::PaxPath),
            Just(Form::PaxThenGlobal),
            Just(Form::LongName),
            Just(Form::LongLink),
            (prop::collection::vec(0u8..64, 0..40), 0u16..16).prop_map(|(g, t)| Form::Sparse(g, t)),
        ]
    }

    fn member() -> impl Strategy<Value = Member> {
        (
            form(),
            1usize..250,
            prop::collection::vec(any::<u8>(), 0..16000),
        )
            .prop_map(|(form, name_len, data)| Member {
                form,
                name_len,
                data,
            })
    }

    fn header(name: &str, kind: EntryType, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_mtime(1_000_000_000);
        h.set_size(size);
        h
    }

    fn put(out: &mut Vec<u8>, mut h: Header, data: &[u8]) {
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            let mut n = body.len() + 1;
            while format!("{n}{body}").len() != n {
                n += 1;
            }
            out.extend_from_slice(format!("{n}{body}").as_bytes());
        }
        out
    }

    /// The archive of `members` below `d/`, and what it should unpack to.
    fn build(members: &[Member]) -> (Vec<u8>, Vec<(String, Want)>) {
        let mut out = Vec::new();
        let mut want = Vec::new();
        put(&mut out, header("d/", EntryType::Directory, 0), b"");
        for (i, m) in members.iter().enumerate() {
            let long = format!("{i}-{}", "n".repeat(m.name_len));
            let short = format!("{i}-{}", "n".repeat(m.name_len.min(90)));
            let data = &m.data[..];
            let len = data.len() as u64;
            match &m.form {
                Form::Plain => {
                    put(
                        &mut out,
                        header(&format!("d/{short}"), EntryType::Regular, len),
                        data,
                    );
                    want.push((short, Want::File(data.to_vec())));
                }
                Form::Base256(junk) => {
                    let mut h = header(&format!("d/{short}"), EntryType::Regular, 0);
                    let size = &mut h.as_old_mut().size;
                    size[0] = 0x80;
                    size[1..4].copy_from_slice(junk);
                    size[4..].copy_from_slice(&len.to_be_bytes());
                    put(&mut out, h, data);
                    want.push((short, Want::File(data.to_vec())));
                }
                Form::PaxPath => {
                    let x = pax(&[("path", &format!("d/{long}")), ("size", &len.to_string())]);
                    put(
                        &mut out,
                        header(
                            &format!("PaxHeader/{i}"),
                            EntryType::XHeader,
                            x.len() as u64,
                        ),
                        &x,
                    );
                    let mut h = header(&format!("d/short{i}"), EntryType::Regular, len + 7);
                    h.set_cksum();
                    out.extend_from_slice(h.as_bytes());
                    out.extend_from_slice(data);
                    out.resize(out.len().div_ceil(512) * 512, 0);
                    want.push((long, Want::File(data.to_vec())));
                }
                Form::PaxThenGlobal => {
                    let x = pax(&[("path", &format!("d/ignored{i}")), ("size", "3")]);
                    put(
                        &mut out,
                        header(
                            &format!("PaxHeader/{i}"),
                            EntryType::XHeader,
                            x.len() as u64,
                        ),
                        &x,
                    );
                    let g = pax(&[("comment", &format!("global {i}"))]);
                    put(
                        &mut out,
                        header("GlobalHead", EntryType::XGlobalHeader, g.len() as u64),
                        &g,
                    );
                    put(
                        &mut out,
                        header(&format!("d/{short}"), EntryType::Regular, len),
                        data,
                    );
                    want.push((short, Want::File(data.to_vec())));
                }
                Form::LongName => {
                    let mut name = format!("d/{long}").into_bytes();
                    name.push(0);
                    put(
                        &mut out,
                        header("././@LongLink", EntryType::GNULongName, name.len() as u64),
                        &name,
                    );
                    put(
                        &mut out,
                        header(&format!("d/{short}"), EntryType::Regular, len),
                        data,
                    );
                    want.push((long, Want::File(data.to_vec())));
                }
                Form::LongLink => {
                    let target = "t".repeat(m.name_len);
                    let mut link = target.clone().into_bytes();
                    link.push(0);
                    put(
                        &mut out,
                        header("././@LongLink", EntryType::GNULongLink, link.len() as u64),
                        &link,
                    );
                    let mut h = header(&format!("d/{short}"), EntryType::Symlink, 0);
                    let n = target.len().min(100);
                    h.as_old_mut().linkname[..n].copy_from_slice(&target.as_bytes()[..n]);
                    put(&mut out, h, b"");
                    want.push((short, Want::Link(target)));
                }
                Form::Sparse(gaps, tail) => {
                    let mut chunks = Vec::new();
                    let mut end = 0u64;
                    for (k, c) in data.chunks(512).enumerate() {
                        let off = end + u64::from(gaps.get(k).copied().unwrap_or(0)) * 512;
                        chunks.push((off, c.len() as u64));
                        end = off + c.len() as u64;
                    }
                    let real = end + u64::from(*tail) * 512;
                    if real > end || chunks.is_empty() {
                        chunks.push((real, 0));
                    }
                    let mut file = vec![0u8; real as usize];
                    for ((off, l), c) in chunks.iter().zip(data.chunks(512)) {
                        file[*off as usize..(*off + *l) as usize].copy_from_slice(c);
                    }
                    let mut h = header(&format!("d/{short}"), EntryType::GNUSparse, len);
                    let g = h.as_gnu_mut().unwrap();
                    for (s, (o, l)) in g.sparse.iter_mut().zip(&chunks) {
                        s.set_offset(*o);
                        s.set_length(*l);
                    }
                    g.set_real_size(real);
                    g.set_is_extended(chunks.len() > 4);
                    h.set_cksum();
                    out.extend_from_slice(h.as_bytes());
                    let ext: Vec<_> = chunks.iter().skip(4).collect();
                    let n = ext.chunks(21).count();
                    for (k, part) in ext.chunks(21).enumerate() {
                        let mut e = tar::GnuExtSparseHeader::new();
                        for (s, (o, l)) in e.sparse.iter_mut().zip(part) {
                            s.set_offset(*o);
                            s.set_length(*l);
                        }
                        e.set_is_extended(k + 1 < n);
                        out.extend_from_slice(e.as_bytes());
                    }
                    out.extend_from_slice(data);
                    out.resize(out.len().div_ceil(512) * 512, 0);
                    want.push((short, Want::File(file)));
                }
            }
        }
        out.extend([0u8; 1024]);
        (out, want)
    }

    /// One member as read: path, type, link, data length and hash.
    type Seen = (Vec<u8>, u8, Option<Vec<u8>>, u64, u64);

    fn describe<R: Read>(e: &mut tar::Entry<R>) -> io::Result<Seen> {
        let path = e.path_bytes().into_owned();
        let link = e.link_name_bytes().map(|l| l.into_owned());
        let kind = e.header().entry_type().as_byte();
        let (mut len, mut hash, mut buf) = (0u64, DefaultHasher::new(), [0u8; 8192]);
        loop {
            let n = e.read(&mut buf)?;
            if n == 0 {
                return Ok((path, kind, link, len, hash.finish()));
            }
            hash.write(&buf[..n]);
            len += n as u64;
        }
    }

    /// What the tar crate alone reads.
    fn plain(tar: &[u8]) -> Result<Vec<Seen>, String> {
        let mut a = tar::Archive::new(tar);
        let mut out = Vec::new();
        for e in a.entries().map_err(|e| e.to_string())? {
            out.push(describe(&mut e.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    /// What it reads through the meter.
    fn metered(tar: impl Read) -> Result<Vec<Seen>, String> {
        let mut m = Members::new(tar);
        let mut it = m.iter().map_err(|e| format!("{e:#}"))?;
        let mut out = Vec::new();
        while let Some(mut e) = it.next().map_err(|e| format!("{e:#}"))? {
            out.push(describe(&mut e).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    fn fresh(tag: &str) -> PathBuf {
        super::tests::tmpdir(&format!("prop-{tag}"))
    }

    /// Unpacked as meant: exactly the members, with their data or targets.
    fn check_unpacked(dst: &Path, want: &[(String, Want)]) -> Result<(), TestCaseError> {
        let mut names: Vec<_> = fs::read_dir(dst)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut meant: Vec<_> = want.iter().map(|(n, _)| n.clone()).collect();
        meant.sort();
        prop_assert_eq!(names, meant);
        for (name, w) in want {
            let p = dst.join(name);
            let got = if fs::symlink_metadata(&p).unwrap().is_symlink() {
                Want::Link(
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_string()
                        .unwrap(),
                )
            } else {
                Want::File(fs::read(&p).unwrap())
            };
            prop_assert!(&got == w, "{name}: {got:?} is not {w:?}");
        }
        Ok(())
    }

    /// PROPTEST_CASES if set, else `n`: the defaults keep the three
    /// under 10 s in a debug build.
    fn cases(n: u32) -> ProptestConfig {
        let mut c = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = n;
        }
        c
    }

    proptest! {
        #![proptest_config(cases(128))]
        #[test]
        fn whole_archives_unpack_as_meant(members in prop::collection::vec(member(), 0..6)) {
            let (tar, want) = build(&members);
            prop_assert_eq!(metered(&tar[..]), plain(&tar));
            let dst = fresh("whole");
            let r = extract_tree(&tar[..], &dst);
            prop_assert!(r.is_ok(), "{:#}", r.unwrap_err());
            check_unpacked(&dst, &want)?;
            let _ = fs::remove_dir_all(&dst);
        }
    }

    proptest! {
        #![proptest_config(cases(128))]
        #[test]
        fn cut_or_changed_archives_read_as_the_crate_reads_them(
            members in prop::collection::vec(member(), 1..6),
            cut in any::<prop::sample::Index>(),
            cutting in any::<bool>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let (mut tar, _) = build(&members);
            for (at, b) in &flips {
                let at = at.index(tar.len());
                tar[at] = *b;
            }
            if cutting {
                tar.truncate(cut.index(tar.len()));
            }
            let (ours, theirs) = (metered(&tar[..]), plain(&tar));
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?} / {:?}", ours, theirs);
            match (&ours, &theirs) {
                (Ok(o), Ok(t)) => prop_assert_eq!(o, t),
                // Smaller than the bound: any failure is the crate's own.
                (Err(e), _) => prop_assert!(!e.contains(&header_too_big()), "{}", e),
                _ => {}
            }
            // Never a panic: unpacked or refused.
            let dst = fresh("cut");
            let _ = extract_tree(&tar[..], &dst);
            let _ = extract_file(&tar[..], &dst.join("single"));
            let _ = fs::remove_dir_all(&dst);
        }
    }

    proptest! {
        #![proptest_config(cases(32))]
        #[test]
        fn a_header_of_any_size_is_read_within_the_bound(
            before in prop::collection::vec(member(), 0..3),
            kind in 0..4u8,
            n in prop_oneof![0..(HEADER_LIMIT - 4096) as usize, HEADER_LIMIT as usize..(HEADER_LIMIT as usize + (256 << 10))],
        ) {
            // After members in odd forms, where a second parser could
            // lose its place.
            let (mut tar, _) = build(&before);
            tar.truncate(tar.len() - 1024);
            match kind {
                0..=2 => {
                    let t = [EntryType::GNULongName, EntryType::GNULongLink, EntryType::XHeader];
                    let mut body = b"9 a=bbbb\n".repeat(n / 9 + 1);
                    body.truncate(n);
                    put(&mut tar, header("././@LongLink", t[kind as usize], n as u64), &body);
                }
                _ => {
                    let mut h = header("d/s", EntryType::GNUSparse, 0);
                    let g = h.as_gnu_mut().unwrap();
                    g.set_real_size(0);
                    g.set_is_extended(true);
                    h.set_cksum();
                    tar.extend_from_slice(h.as_bytes());
                    let blocks = n / 512 + 1;
                    for k in 0..blocks {
                        let mut e = tar::GnuExtSparseHeader::new();
                        e.set_is_extended(k + 1 < blocks);
                        tar.extend_from_slice(e.as_bytes());
                    }
                }
            }
            put(&mut tar, header("d/after", EntryType::Regular, 5), b"after");
            tar.extend([0u8; 1024]);
            let ours = metered(&tar[..]);
            let dst = fresh("bomb");
            let unpacked = extract_tree(&tar[..], &dst).map_err(|e| format!("{e:#}"));
            let _ = fs::remove_dir_all(&dst);
            if n as u64 >= HEADER_LIMIT {
                let too_big = header_too_big();
                prop_assert!(matches!(&ours, Err(e) if e.contains(&too_big)), "{:?}", ours);
                prop_assert!(matches!(&unpacked, Err(e) if e.contains(&too_big)), "{:?}", unpacked);
            } else {
                prop_assert_eq!(ours, plain(&tar));
            }
        }
    }
}

//! The one module that opens paths under a testbed's root. Everything
//! else (root.rs, tree.rs, pipes.rs, agent.rs) gets descriptors from it.
//!
//! Why: rdocker is root on the host and the testbed is not trusted. A
//! root test can put a device node, a fifo or a symlink at any name
//! rdocker is about to open, and the device cgroup that stops the test
//! from opening `c 1 11` (the host's /dev/kmsg) or `b 8 0` (a host disk)
//! does not stop rdocker. Opening such a node has effects of its own
//! (a tape rewinds, a tty becomes ours), so checking after the open is
//! too late. The rule:
//!
//! 1. look the path up as O_PATH, which opens nothing (openat2 with
//!    RESOLVE_IN_ROOT and RESOLVE_NO_MAGICLINKS, or one step beneath a
//!    directory we hold, never through a symlink);
//! 2. check the object's type on that descriptor, and for rdocker's own
//!    fifos and directories also the owner, mode, device and inode that
//!    were recorded when they were made;
//! 3. only then reopen that very object through /proc/self/fd.
//!
//! The object cannot change between 2 and 3: the descriptor pins it,
//! whatever the testbed renames meanwhile.

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, mknodat, FileStat, Mode, SFlag};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// An object under a testbed's root, held as O_PATH: nothing opened yet.
pub struct Entry {
    fd: OwnedFd,
    st: FileStat,
}

/// What rdocker recorded of an object it made itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Made {
    pub dev: u64,
    pub ino: u64,
}

impl Made {
    /// `DEV.INO`, for a handle passed to the exec process.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.dev, self.ino)
    }

    pub fn decode(s: &str) -> Option<Made> {
        let (d, i) = s.split_once('.')?;
        Some(Made {
            dev: d.parse().ok()?,
            ino: i.parse().ok()?,
        })
    }
}

fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn kind_name(k: SFlag) -> &'static str {
    match k {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symlink",
        SFlag::S_IFIFO => "a fifo",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFSOCK => "a socket",
        _ => "of an unknown type",
    }
}

/// Look `path` up inside the root `root`: `..` and symlinks, absolute
/// ones too, stay inside it. `follow`: whether a final symlink is
/// followed (within the root), as `cat` would.
pub fn lookup(root: BorrowedFd, path: &str, follow: bool) -> nix::Result<Entry> {
    let p = if path.is_empty() { "/" } else { path };
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if !follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    Entry::from_path_fd(openat2(root, p, how)?)
}

/// The name `name` directly beneath the directory `dir`, never through a
/// symlink and never following one.
pub fn child<P: ?Sized + nix::NixPath>(dir: BorrowedFd, name: &P) -> nix::Result<Entry> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    Entry::from_path_fd(openat2(dir, name, how)?)
}

/// A new regular file `name` in `dir`, mode 0600 until filled. O_EXCL
/// with O_NOFOLLOW creates or fails: it never opens what is there.
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

/// Make a private directory `name` in `dir` (mode 0700, ours), and check
/// that what the name now holds is what we made.
pub fn make_dir(dir: BorrowedFd, name: &str) -> Result<(Entry, Made)> {
    mkdirat(dir, name, Mode::from_bits_truncate(0o700))
        .with_context(|| format!("cannot make {name} in the testbed"))?;
    made(dir, name, SFlag::S_IFDIR, 0o700)
}

/// Make a fifo `name` in `dir` (mode 0600, ours), and check it as above.
pub fn make_fifo(dir: BorrowedFd, name: &str) -> Result<(Entry, Made)> {
    mknodat(
        dir,
        name,
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o600),
        0,
    )
    .with_context(|| format!("cannot make the fifo {name} in the testbed"))?;
    made(dir, name, SFlag::S_IFIFO, 0o600)
}

fn made(dir: BorrowedFd, name: &str, kind: SFlag, mode: u32) -> Result<(Entry, Made)> {
    let e = child(dir, name).with_context(|| format!("cannot find {name} just made"))?;
    let m = Made {
        dev: e.st.st_dev,
        ino: e.st.st_ino,
    };
    // Checked as every later use will check it: a name swapped between
    // the mknod and the lookup fails here.
    e.check_ours(m, kind, mode)
        .with_context(|| format!("{name} in the testbed is not what rdocker just made"))?;
    Ok((e, m))
}

impl Entry {
    fn from_path_fd(fd: OwnedFd) -> nix::Result<Entry> {
        let st = fstat(&fd)?;
        Ok(Entry { fd, st })
    }

    pub fn kind(&self) -> SFlag {
        kind_of(&self.st)
    }

    pub fn stat(&self) -> &FileStat {
        &self.st
    }

    /// The O_PATH descriptor, for *at calls and as a directory to look
    /// beneath. It reads and writes nothing.
    pub fn path_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn into_path_fd(self) -> OwnedFd {
        self.fd
    }

    fn expect(&self, kind: SFlag, what: &str) -> Result<()> {
        let k = self.kind();
        if k != kind {
            bail!(
                "{what} in the testbed is {}, not {}; rdocker leaves it alone",
                kind_name(k),
                kind_name(kind)
            );
        }
        Ok(())
    }

    /// Rdocker's own object: the type, owner and mode it gave it, and the
    /// very inode it recorded.
    fn check_ours(&self, m: Made, kind: SFlag, mode: u32) -> Result<()> {
        self.expect(kind, "rdocker's own file")?;
        let st = &self.st;
        if (Made {
            dev: st.st_dev,
            ino: st.st_ino,
        }) != m
        {
            bail!("rdocker's own file was replaced in the testbed");
        }
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o7777 != mode {
            bail!(
                "rdocker's own file in the testbed has another owner or mode (uid {}, mode {:o})",
                st.st_uid,
                st.st_mode & 0o7777
            );
        }
        Ok(())
    }

    /// The object itself, never its name: the kernel reopens the inode
    /// the O_PATH descriptor holds.
    fn reopen(&self, flags: OFlag) -> nix::Result<OwnedFd> {
        let own = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        nix::fcntl::open(own.as_str(), flags | OFlag::O_CLOEXEC, Mode::empty())
    }

    /// A regular file, opened for reading.
    pub fn read_regular(&self, what: &str) -> Result<File> {
        self.expect(SFlag::S_IFREG, what)?;
        Ok(File::from(self.reopen(OFlag::O_RDONLY).with_context(
            || format!("cannot open {what} in the testbed"),
        )?))
    }

    /// A directory, opened for listing and for fchown, fchmod, futimens.
    pub fn open_dir(&self, what: &str) -> Result<OwnedFd> {
        self.expect(SFlag::S_IFDIR, what)?;
        self.reopen(OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .with_context(|| format!("cannot open {what} in the testbed"))
    }

    /// One of rdocker's own objects, after `check_ours`.
    pub fn open_ours(&self, m: Made, kind: SFlag, mode: u32, flags: OFlag) -> Result<OwnedFd> {
        self.check_ours(m, kind, mode)?;
        self.reopen(flags)
            .map_err(|e| anyhow::Error::new(e).context("cannot open rdocker's own file"))
    }

    /// The object a symlink entry holds, read from the entry itself (not
    /// its name, which may have been swapped).
    pub fn link_target(&self) -> Result<std::ffi::OsString> {
        self.expect(SFlag::S_IFLNK, "the link")?;
        Ok(nix::fcntl::readlinkat(self.fd.as_fd(), OsStr::new(""))?)
    }
}

/// Each name in the directory `dir` (opened by `open_dir`), without `.`
/// and `..`, handed to `f` as the kernel lists it: unsorted, and never a
/// whole listing in memory (a testbed can put millions of names in one
/// directory).
pub fn each_name(dir: BorrowedFd, mut f: impl FnMut(&OsStr) -> Result<()>) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // "." of a directory we hold is that directory: no name to swap.
    let mut d = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            f(OsStr::from_bytes(n))?;
        }
    }
    Ok(())
}

/// `open_ours` for a fifo that may have no reader yet: ENXIO stays an
/// errno the caller can match.
pub fn open_fifo(e: &Entry, m: Made, flags: OFlag) -> Result<std::result::Result<OwnedFd, Errno>> {
    e.check_ours(m, SFlag::S_IFIFO, 0o600)?;
    Ok(e.reopen(flags))
}

/// How deep `empty_dir` descends before it moves a directory up to the
/// top: descriptors held stay few, however deep the tree.
const EMPTY_DEPTH: usize = 32;

/// Remove everything in the directory `top` (opened by `open_dir`), never
/// through a symlink: each entry is unlinked by name relative to the
/// directory that holds it, and a directory is entered only as one
/// (`child`, then `open_dir`). Directories are read as streams, and at
/// most EMPTY_DEPTH are open at once: deeper ones are moved up to `top`
/// and emptied from there. So memory and descriptors stay bounded,
/// however wide or deep the tree.
pub fn empty_dir(top: BorrowedFd) -> Result<()> {
    let mut moved = 0u64;
    empty_below(top, top, 0, &mut moved)
}

fn empty_below(top: BorrowedFd, dir: BorrowedFd, depth: usize, moved: &mut u64) -> Result<()> {
    loop {
        // Read again until a pass finds nothing: a stream read while its
        // entries go may skip some.
        let mut d = nix::dir::Dir::openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let (mut any, mut progress, mut stuck) = (false, false, None);
        for e in d.iter() {
            let e = e?;
            let name = e.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            any = true;
            if empty_entry(top, dir, name, depth, moved)? {
                progress = true;
            } else if stuck.is_none() {
                stuck = Some(name.to_string_lossy().into_owned());
            }
        }
        if !any {
            return Ok(());
        }
        if !progress {
            bail!(
                "cannot empty a directory: {} stays",
                stuck.unwrap_or_default()
            );
        }
    }
}

/// Remove the entry `name` of `dir`, a directory with all it holds.
/// Ok(false): it changed type under us; the next pass sees it again.
fn empty_entry(
    top: BorrowedFd,
    dir: BorrowedFd,
    name: &std::ffi::CStr,
    depth: usize,
    moved: &mut u64,
) -> Result<bool> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let what = name.to_string_lossy();
    // Anything but a directory: the name goes, whatever it is.
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(true),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {what}")),
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(true),
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {what}")),
    }
    if depth + 1 >= EMPTY_DEPTH {
        loop {
            let up = format!(".rdocker-deep-{moved}");
            *moved += 1;
            match nix::fcntl::renameat2(
                dir,
                name,
                top,
                up.as_str(),
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            ) {
                Err(Errno::EEXIST) => continue,
                r => r.with_context(|| format!("cannot move {what} up to empty it"))?,
            }
            return Ok(true);
        }
    }
    let e = child(dir, name).with_context(|| format!("cannot look at {what}"))?;
    if e.kind() != SFlag::S_IFDIR {
        return Ok(false);
    }
    let sub = e.open_dir(&what)?;
    empty_below(top, sub.as_fd(), depth + 1, moved)?;
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        // Refilled meanwhile: the next pass.
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => Ok(true),
        Err(e) => Err(e).with_context(|| format!("cannot remove {what}")),
    }
}

/// Remove the empty directory `name` in `dir` if it is the one recorded
/// as `m`.
pub fn remove_dir(dir: BorrowedFd, name: &str, m: Made) -> Result<()> {
    let e = child(dir, name).with_context(|| format!("cannot find {name}"))?;
    let st = e.stat();
    if e.kind() != SFlag::S_IFDIR
        || (Made {
            dev: st.st_dev,
            ino: st.st_ino,
        }) != m
    {
        bail!("{name} is no longer the directory rdocker made; rdocker leaves it alone");
    }
    nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)
        .with_context(|| format!("cannot remove {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rdocker-confined-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn dirfd(p: &std::path::Path) -> OwnedFd {
        nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn a_device_node_is_never_opened_for_reading() {
        let d = tmpdir("dev");
        // A fifo stands in for a device: opening it for reading without
        // O_NONBLOCK would hang this test, so a hang is the failure.
        nix::unistd::mkfifo(&d.join("f"), Mode::from_bits_truncate(0o600)).unwrap();
        let root = dirfd(&d);
        let e = lookup(root.as_fd(), "/f", true).unwrap();
        assert_eq!(e.kind(), SFlag::S_IFIFO);
        let err = e.read_regular("/f").unwrap_err();
        assert!(
            format!("{err:#}").contains("is a fifo, not a regular file"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn lookups_stay_in_the_root_and_reopen_the_object_not_the_name() {
        let d = tmpdir("root");
        std::fs::write(d.join("a"), b"inside").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/hostname", d.join("up")).unwrap();
        let root = dirfd(&d);
        // Absolute and climbing links resolve inside the root: no such file.
        assert_eq!(
            lookup(root.as_fd(), "/abs", true).err(),
            Some(Errno::ENOENT)
        );
        assert_eq!(lookup(root.as_fd(), "/up", true).err(), Some(Errno::ENOENT));
        let e = lookup(root.as_fd(), "/a", true).unwrap();
        // The name now holds something else; the entry is still the file.
        std::fs::rename(d.join("a"), d.join("old")).unwrap();
        nix::unistd::mkfifo(&d.join("a"), Mode::from_bits_truncate(0o600)).unwrap();
        let mut s = String::new();
        use std::io::Read;
        e.read_regular("/a")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "inside");
        // Not following: the link itself, and its target read from it.
        let l = lookup(root.as_fd(), "/abs", false).unwrap();
        assert_eq!(l.link_target().unwrap(), "/etc/passwd");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn own_fifos_are_checked_by_inode_owner_and_mode() {
        let d = tmpdir("own");
        let dir = dirfd(&d);
        let (e, m) = make_fifo(dir.as_fd(), "ctl").unwrap();
        // Our own, unchanged: opens (read side, non-blocking).
        open_fifo(&e, m, OFlag::O_RDONLY | OFlag::O_NONBLOCK)
            .unwrap()
            .unwrap();
        // Swapped for another fifo of the same name, owner and mode.
        std::fs::remove_file(d.join("ctl")).unwrap();
        nix::unistd::mkfifo(&d.join("ctl"), Mode::from_bits_truncate(0o600)).unwrap();
        let again = child(dir.as_fd(), "ctl").unwrap();
        let err = open_fifo(&again, m, OFlag::O_RDONLY | OFlag::O_NONBLOCK).unwrap_err();
        assert!(format!("{err:#}").contains("replaced"), "{err:#}");
        // A mode the testbed changed.
        let (e2, m2) = make_fifo(dir.as_fd(), "other").unwrap();
        drop(e2);
        std::fs::set_permissions(
            d.join("other"),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        let e2 = child(dir.as_fd(), "other").unwrap();
        assert!(open_fifo(&e2, m2, OFlag::O_RDONLY | OFlag::O_NONBLOCK).is_err());
        // make_dir records what it made.
        let (de, dm) = make_dir(dir.as_fd(), "sub").unwrap();
        assert_eq!(dm.ino, std::fs::metadata(d.join("sub")).unwrap().ino());
        assert_eq!(de.kind(), SFlag::S_IFDIR);
        assert_eq!(Made::decode(&dm.encode()), Some(dm));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

//! `--shared-dir`: the host directory that the testbed's scratch directory
//! is, bind-mounted at the same path.
//!
//! Why this shape: the testbed writes there as root. Were the directory
//! it sees a plain one inside the caller's directory (as the reference
//! has it), the test could replace it with a symlink to any host
//! directory, and whatever rdocker then made or chmodded by path would
//! land there; and the set-uid files and device nodes it leaves would
//! be open to every host user. So:
//!
//! - rdocker makes `DIR/.rdocker-XXXXXXXX` (0700, its own) and in it
//!   `downtmp` (0777 so that the testbed's normal user may write), and
//!   binds only `downtmp`: the testbed sees neither the caller's DIR nor
//!   the private directory, and cannot remove or rename a mount point.
//!   Host users cannot pass the private directory.
//! - Both are made, checked (type, owner, mode, device and inode) and
//!   held by descriptor through confined.rs; revert and close work on
//!   those descriptors only (fchown, fchmod, unlinkat), never by path.
//! - Copies whose host path lies in the scratch directory are done in the
//!   testbed (`cp` there, or nothing when both paths are the same file),
//!   so no host-side read or write follows a link the test made.

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::{fchmod, Mode, SFlag};
use nix::unistd::{fchown, getegid, geteuid};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use super::confined::{self, Made};
use crate::docker::api::exec::{self, Captured};
use crate::docker::daemon::client::Client;

/// The directory bound into the testbed, in the private one.
const SCRATCH: &str = "downtmp";

/// The session's scratch directory in the caller's `--shared-dir`.
pub struct SharedDir {
    /// The caller's directory.
    top: OwnedFd,
    /// `.rdocker-XXXXXXXX` in it: ours, 0700.
    name: String,
    private: OwnedFd,
    private_made: Made,
    /// downtmp, opened (fchmod, fchown, emptying).
    scratch: OwnedFd,
    scratch_made: Made,
    path: PathBuf,
    /// Why the daemon may not see this directory (we may be in a
    /// container), until a testbed has proved it does; None once seen.
    doubt: Option<String>,
    seen: bool,
}

impl SharedDir {
    /// Make the private directory and the scratch directory in `dir`
    /// (made if missing: it is the caller's).
    pub fn make(dir: &Path, doubt: Option<String>) -> Result<SharedDir> {
        let what = || format!("cannot set up the shared directory {}", dir.display());
        // The daemon binds absolute paths only.
        let dir = &std::path::absolute(dir).with_context(what)?;
        std::fs::create_dir_all(dir).with_context(what)?;
        let top = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(what)?;
        let name = format!(".rdocker-{}", crate::docker::names::random_hex(4));
        let (e, private_made) = confined::make_dir(top.as_fd(), &name).with_context(what)?;
        let private = e
            .open_ours(
                private_made,
                SFlag::S_IFDIR,
                0o700,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            )
            .with_context(what)?;
        let made = (|| {
            let (e, scratch_made) = confined::make_dir(private.as_fd(), SCRATCH)?;
            let scratch = e.open_ours(
                scratch_made,
                SFlag::S_IFDIR,
                0o700,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            )?;
            anyhow::Ok((scratch, scratch_made))
        })();
        let (scratch, scratch_made) = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = confined::remove_dir(top.as_fd(), &name, private_made);
                return Err(e.context(what()));
            }
        };
        let sd = SharedDir {
            path: dir.join(&name).join(SCRATCH),
            top,
            name,
            private,
            private_made,
            scratch,
            scratch_made,
            doubt,
            seen: false,
        };
        sd.reset()?;
        Ok(sd)
    }

    /// Where it is, on the host and in the testbed alike.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The docker-run bind: the scratch directory alone.
    pub fn bind(&self) -> String {
        format!("{0}:{0}", self.path.display())
    }

    /// Both directories are still where rdocker made them.
    fn check(&self) -> Result<()> {
        let same = |e: &confined::Entry, m: Made| {
            let st = e.stat();
            e.kind() == SFlag::S_IFDIR && st.st_dev == m.dev && st.st_ino == m.ino
        };
        let p = confined::child(self.top.as_fd(), self.name.as_str())?;
        let s = confined::child(self.private.as_fd(), SCRATCH)?;
        if !same(&p, self.private_made) || !same(&s, self.scratch_made) {
            bail!(
                "{} is no longer the directory rdocker made; rdocker leaves it alone",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Empty it and give it back its owner and mode: after a testbed is
    /// dead, before the next one is handed out. Works on the held
    /// descriptors only, so a test's links and swaps lead nowhere.
    pub fn reset(&self) -> Result<()> {
        let what = || format!("cannot clean the shared directory {}", self.path.display());
        self.check().with_context(what)?;
        confined::empty_dir(self.scratch.as_fd()).with_context(what)?;
        fchown(&self.scratch, Some(geteuid()), Some(getegid())).with_context(what)?;
        // The testbed's normal user must be able to write it.
        fchmod(&self.scratch, Mode::from_bits_truncate(0o777)).with_context(what)?;
        Ok(())
    }

    /// Remove it all, once no testbed mounts it.
    pub fn remove(self) -> Result<()> {
        let what = || format!("cannot remove the shared directory {}", self.path.display());
        self.check().with_context(what)?;
        confined::empty_dir(self.scratch.as_fd()).with_context(what)?;
        confined::remove_dir(self.private.as_fd(), SCRATCH, self.scratch_made)
            .with_context(what)?;
        confined::remove_dir(self.top.as_fd(), &self.name, self.private_made).with_context(what)
    }

    /// Prove, once a session, that the testbed `container` sees this very
    /// directory: a marker made here must be there. A daemon that binds
    /// its own machine's path of the same name (rdocker in a container
    /// with the host's socket) would hand the test another directory.
    pub async fn check_seen(&mut self, client: &Client, container: &str) -> Result<()> {
        if self.seen {
            return Ok(());
        }
        let marker = format!(".rdocker-seen-{}", crate::docker::names::random_hex(4));
        drop(
            confined::create_new(self.scratch.as_fd(), marker.as_str()).with_context(|| {
                format!(
                    "cannot write in the shared directory {}",
                    self.path.display()
                )
            })?,
        );
        let probe = self.path.join(&marker).to_string_lossy().into_owned();
        let mut cap = Captured::quiet_stdout();
        let code = exec::run_script(
            client,
            container,
            r#"test -f "$1"; exit $?"#,
            vec![probe],
            None,
            &mut cap,
        )
        .await;
        let _ = nix::unistd::unlinkat(
            self.scratch.as_fd(),
            marker.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        if code? != 0 {
            bail!(
                "the testbed does not see the shared directory {}: the daemon binds a \
                 directory of its own machine{}; drop --shared-dir to copy through the \
                 Engine API",
                self.path.display(),
                self.doubt
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            );
        }
        self.seen = true;
        Ok(())
    }

    /// Whether the host path `host` is in the scratch directory: then a
    /// copy is the testbed's business (`copy_in_testbed`).
    pub fn holds(&self, host: &Path) -> bool {
        in_dir(&self.path, host)
    }
}

/// Lexically: `p` names `dir` or something below it. A `..` after `dir`
/// still counts: on the host it would be resolved through what the test
/// made.
fn in_dir(dir: &Path, p: &Path) -> bool {
    let mut parts = p.components().filter(|c| *c != Component::CurDir);
    dir.components()
        .filter(|c| *c != Component::CurDir)
        .all(|d| parts.next() == Some(d))
}

/// The same path once `.` and trailing slashes are gone.
fn same_path(a: &Path, b: &str) -> bool {
    fn norm(p: &Path) -> Vec<Component<'_>> {
        p.components().filter(|c| *c != Component::CurDir).collect()
    }
    norm(a) == norm(Path::new(b))
}

/// copydown or copyup whose host path is in the shared scratch directory
/// (`host`, and the testbed sees it at the same path): done by `cp` in
/// the testbed, or not at all when both paths name the same file. So the
/// host neither reads nor writes through the test's links. `up`: copyup.
pub async fn copy_in_testbed(
    client: &Client,
    container: &str,
    host: &Path,
    testbed: &str,
    dir: bool,
    up: bool,
) -> Result<()> {
    if same_path(host, testbed) {
        return Ok(());
    }
    let host = host.to_string_lossy().into_owned();
    let (src, dst) = if up {
        (testbed.to_string(), host)
    } else {
        (host, testbed.to_string())
    };
    // -H: a link named as the source is followed (in the testbed); links
    // below it stay links. Owned by root, as on the other routes.
    let script = if dir {
        r#"mkdir -p -- "$2" && cp -R -H --preserve=mode,timestamps -T -- "$1" "$2"; exit $?"#
    } else {
        r#"cp --preserve=mode,timestamps -T -- "$1" "$2"; exit $?"#
    };
    let mut cap = Captured::quiet_stdout();
    let code = exec::run_script(
        client,
        container,
        script,
        vec![src.clone(), dst.clone()],
        None,
        &mut cap,
    )
    .await?;
    if code != 0 {
        bail!(
            "cannot copy {src} to {dst} in the testbed (the shared directory's copies are made \
             there): cp exited {code}: {}",
            cap.err.excerpt(400)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn host_paths_in_the_scratch_dir_are_found_lexically() {
        let d = Path::new("/srv/sd/.rdocker-ab/downtmp");
        assert!(in_dir(d, Path::new("/srv/sd/.rdocker-ab/downtmp")));
        assert!(in_dir(d, Path::new("/srv/sd/.rdocker-ab/downtmp/")));
        assert!(in_dir(d, Path::new("/srv/sd/./.rdocker-ab/downtmp/x/y")));
        assert!(in_dir(
            d,
            Path::new("/srv/sd/.rdocker-ab/downtmp/l/../../x")
        ));
        assert!(!in_dir(d, Path::new("/srv/sd/.rdocker-ab/downtmp2/x")));
        assert!(!in_dir(d, Path::new("/srv/sd/.rdocker-ab")));
        assert!(!in_dir(d, Path::new("/tmp/x")));
        assert!(same_path(Path::new("/a/b/"), "/a/./b"));
        assert!(!same_path(Path::new("/a/b"), "/a/c"));
    }

    #[test]
    fn made_private_reset_and_removed_by_descriptor() {
        let base = std::env::temp_dir().join(format!("rdocker-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f"), "f").unwrap();
        let sd = SharedDir::make(&base.join("sd"), None).unwrap();
        let private = sd.path().parent().unwrap().to_path_buf();
        let md = std::fs::metadata(&private).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o700);
        assert_eq!(md.uid(), geteuid().as_raw());
        assert_eq!(std::fs::metadata(sd.path()).unwrap().mode() & 0o7777, 0o777);
        // What a test does in it: links out, a tree, its own mode.
        std::os::unix::fs::symlink(&outside, sd.path().join("l")).unwrap();
        std::fs::create_dir_all(sd.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(&outside, sd.path().join("a/b/deep")).unwrap();
        std::fs::set_permissions(sd.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        sd.reset().unwrap();
        assert_eq!(std::fs::read_dir(sd.path()).unwrap().count(), 0);
        assert_eq!(std::fs::metadata(sd.path()).unwrap().mode() & 0o7777, 0o777);
        assert_eq!(std::fs::read_to_string(outside.join("f")).unwrap(), "f");
        std::fs::write(sd.path().join("x"), "x").unwrap();
        sd.remove().unwrap();
        assert!(!private.exists());
        assert_eq!(std::fs::read_dir(base.join("sd")).unwrap().count(), 0);
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// What a test may leave: nested directories (deeper than empty_dir
    /// holds open), files, fifos, links out of the directory, closed
    /// directories.
    #[derive(Debug, Clone)]
    enum Op {
        Dir(u8),
        File(u8),
        Fifo(u8),
        LinkOut(u8),
        Closed(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..80).prop_map(Op::Dir),
            (0u8..80).prop_map(Op::File),
            (0u8..80).prop_map(Op::Fifo),
            (0u8..80).prop_map(Op::LinkOut),
            (0u8..80).prop_map(Op::Closed),
        ]
    }

    proptest::proptest! {
        /// Whatever tree is in it, empty_dir leaves the directory empty
        /// and never touches what links lead to.
        #[test]
        fn emptying_removes_every_tree_and_follows_no_link(
            depth in 0usize..48,
            ops in proptest::collection::vec(op(), 0..16),
        ) {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let base = std::env::temp_dir()
                .join(format!("rdocker-empty-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            let (dir, outside) = (base.join("d"), base.join("outside"));
            std::fs::create_dir_all(&outside).unwrap();
            std::fs::write(outside.join("f"), "f").unwrap();
            // One chain as deep as asked, with the ops spread along it.
            let mut chain = vec![dir.clone()];
            for i in 0..depth {
                chain.push(chain[i].join("d"));
            }
            std::fs::create_dir_all(chain.last().unwrap()).unwrap();
            for (i, o) in ops.iter().enumerate() {
                let at = |k: &u8| chain[*k as usize % chain.len()].join(format!("e{i}"));
                match o {
                    Op::Dir(k) => std::fs::create_dir(at(k)).unwrap(),
                    Op::File(k) => std::fs::write(at(k), "x").unwrap(),
                    Op::Fifo(k) => {
                        nix::unistd::mkfifo(&at(k), Mode::from_bits_truncate(0o600)).unwrap()
                    }
                    Op::LinkOut(k) => std::os::unix::fs::symlink(&outside, at(k)).unwrap(),
                    Op::Closed(k) => {
                        std::fs::create_dir(at(k)).unwrap();
                        std::fs::write(at(k).join("in"), "x").unwrap();
                        std::fs::set_permissions(at(k), std::fs::Permissions::from_mode(0o000))
                            .unwrap();
                    }
                }
            }
            let fd = nix::fcntl::open(
                &dir,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap();
            confined::empty_dir(fd.as_fd()).unwrap();
            proptest::prop_assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
            let names: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
            proptest::prop_assert_eq!(names, vec![std::ffi::OsString::from("f")]);
            proptest::prop_assert_eq!(std::fs::read_to_string(outside.join("f")).unwrap(), "f");
            std::fs::remove_dir_all(&base).unwrap();
        }
    }
}

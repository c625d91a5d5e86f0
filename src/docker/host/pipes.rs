//! Exec stdio through fifos made in the testbed, for an rdocker that sees
//! the testbed's root (root.rs proves that when the testbed opens).
//!
//! Why: the daemon's attach stream is the bottleneck of exec output and
//! input. It carries about 280 MiB/s here, the docker CLI's speed, and raw
//! API calls reach only 340 MiB/s out and 600 MiB/s in. Fifos in the
//! testbed, read and written through /proc/PID/root, move the same bytes
//! in the kernel (splice). The exec itself, its environment, its status
//! and its kill still go through the API: only the three streams change
//! route, and a wrapper that cannot open them never runs the command.
//!
//! The fifos live in /run/rdocker-exec-TOKEN (root's, mode 0700), are
//! opened read-write here so that neither side's open waits for the other
//! and no read sees a false end of file, and are removed when the command
//! ends. They are made and opened through confined.rs: a name the testbed
//! swaps for a device node between the mknod and the open is never
//! opened, and once open, swapping the name changes nothing.

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::SFlag;
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;

use super::confined::{self, Made};
use super::root::Root;
use crate::docker::api::exec;

/// Where the fifos' directory is made, inside the testbed.
pub const DIR: &str = "/run";

/// Opens the fifos as fds 3-5, tells rdocker so with an `R` on the exec's
/// own stdout (then the stdin fifo may be closed without the open here
/// waiting for ever), and makes them stdin, stdout and stderr. The exec's
/// own stdout stays open on fd 6, so that the exec ends when the wrapper
/// does and not when a background process lets go of the fifos. A failed
/// open ends the shell before the command runs, and without the `R`.
/// `rdocker_host_rm`: the wrapper leaves its PID file to Fifos::drop.
pub const PRELUDE: &str = r#"rdocker_host_rm=1
exec 3<"/run/$0/in" 4>"/run/$0/out" 5>"/run/$0/err" 6>&1
printf R
exec <&3 >&4 2>&5 3<&- 4>&- 5>&-
"#;

const STREAMS: [&str; 3] = ["in", "out", "err"];

/// The fifos' directory in the testbed; dropping it removes them.
pub struct Fifos {
    run: OwnedFd,
    dir: OwnedFd,
    name: String,
}

/// The host's ends of the three fifos.
pub struct Ends {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Make DIR/`name` in the testbed, root's and mode 0700, and hold it.
/// Returns DIR and the new directory, both as O_PATH descriptors.
pub fn private_dir(root: &Root, name: &str) -> Result<(OwnedFd, OwnedFd)> {
    root.check_alive()?;
    let run = root
        .lookup(DIR, true)
        .with_context(|| format!("no {DIR} in the testbed"))?;
    if run.kind() != SFlag::S_IFDIR {
        bail!("{DIR} in the testbed is not a directory");
    }
    let run = run.into_path_fd();
    match confined::make_dir(run.as_fd(), name) {
        Ok((d, _)) => Ok((run, d.into_path_fd())),
        Err(e) => {
            let _ = unlinkat(&run, name, UnlinkatFlags::RemoveDir);
            Err(e).with_context(|| format!("cannot make {DIR}/{name} in the testbed"))
        }
    }
}

/// Make the fifo `name` in `dir` and open it with `flags`, once it is
/// known to be the fifo just made. Returns what was recorded of it too.
pub fn fifo(dir: &OwnedFd, name: &str, flags: OFlag) -> Result<(OwnedFd, Made)> {
    let (e, m) = confined::make_fifo(dir.as_fd(), name)?;
    let fd = e
        .open_ours(m, SFlag::S_IFIFO, 0o600, flags)
        .with_context(|| format!("cannot open the fifo {name} in the testbed"))?;
    Ok((fd, m))
}

impl Fifos {
    /// Make /run/rdocker-exec-TOKEN and its fifos in the testbed.
    pub fn make(root: &Root, token: &str) -> Result<(Fifos, Ends)> {
        let name = format!("rdocker-exec-{token}");
        let (run, dir) = private_dir(root, &name)?;
        let fifos = Fifos { run, dir, name };
        let mut ends = Vec::new();
        for s in STREAMS {
            let (fd, _) = fifo(&fifos.dir, s, OFlag::O_RDWR)?;
            // Bigger than the default 64 KiB: fewer wake-ups per MiB. The
            // limit (fs.pipe-max-size) may refuse; the default still works.
            let _ = nix::fcntl::fcntl(&fd, FcntlArg::F_SETPIPE_SZ(1 << 20));
            ends.push(fd);
        }
        let (stderr, stdout, stdin) = (ends.pop(), ends.pop(), ends.pop());
        match (stdin, stdout, stderr) {
            (Some(stdin), Some(stdout), Some(stderr)) => Ok((
                fifos,
                Ends {
                    stdin,
                    stdout,
                    stderr,
                },
            )),
            _ => bail!("the fifos were not all made"),
        }
    }

    /// The directory's name in DIR.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another fifo in the directory, for agent.rs.
    pub fn extra_fifo(&self, name: &str, flags: OFlag) -> Result<OwnedFd> {
        Ok(fifo(&self.dir, name, flags)?.0)
    }

    /// A new file in the directory with `contents`.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<()> {
        let fd = confined::create_new(self.dir.as_fd(), name)
            .with_context(|| format!("cannot write {DIR}/{}/{name} in the testbed", self.name))?;
        write_all(fd.as_fd(), contents)
            .with_context(|| format!("cannot write {DIR}/{}/{name} in the testbed", self.name))
    }

    /// Create `name` if nobody has: the one of two parties that gets true
    /// owns what the name stands for.
    pub fn claim(&self, name: &str) -> Result<bool> {
        match confined::create_new(self.dir.as_fd(), name) {
            Ok(_) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot create {DIR}/{}/{name}", self.name)),
        }
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        // Whatever is in it: the fifos, and what the agent route put there
        // (agent.rs's cmd and st, the agent's claim).
        let _ = confined::each_name(self.dir.as_fd(), |n| {
            let _ = unlinkat(&self.dir, n, UnlinkatFlags::NoRemoveDir);
            Ok(())
        });
        for n in STREAMS {
            let _ = unlinkat(&self.dir, n, UnlinkatFlags::NoRemoveDir);
        }
        let _ = unlinkat(&self.run, self.name.as_str(), UnlinkatFlags::RemoveDir);
        // The wrapper's PID file (exec.rs), left to us: an unlink beneath
        // a directory looked up without symlinks opens nothing.
        if let (Some(token), Ok(pids)) = (
            self.name.strip_prefix("rdocker-exec-"),
            confined::child(self.run.as_fd(), exec::PIDS),
        ) {
            if pids.kind() == SFlag::S_IFDIR {
                let _ = unlinkat(pids.path_fd(), token, UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}

/// The threads that move the streams between our stdio and the fifos.
pub struct Pumps {
    /// Closing it wakes the output pumps for their last drain.
    stop: Option<OwnedFd>,
    /// Sending (or dropping) lets the input pump close the stdin fifo.
    ready: Option<std::sync::mpsc::Sender<()>>,
    outs: Vec<JoinHandle<()>>,
}

impl Pumps {
    pub fn start(ends: Ends) -> Result<Pumps> {
        let (stop_r, stop_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (ready, ready_rx) = std::sync::mpsc::channel();
        let mut outs = Vec::new();
        for (fifo, fd) in [(ends.stdout, 1), (ends.stderr, 2)] {
            let stop = stop_r.try_clone()?;
            outs.push(std::thread::spawn(move || pump_out(fifo, fd, stop)));
        }
        let stdin = ends.stdin;
        // Detached: a read of our stdin cannot be cancelled, and the
        // process ends without waiting for it.
        std::thread::spawn(move || pump_in(stdin, ready_rx));
        Ok(Pumps {
            stop: Some(stop_w),
            ready: Some(ready),
            outs,
        })
    }

    /// The wrapper has opened its ends of the fifos.
    pub fn ready(&mut self) {
        if let Some(r) = self.ready.take() {
            let _ = r.send(());
        }
    }

    /// The wrapper has exited: pass on what is left in the fifos and stop.
    pub fn finish(mut self) {
        self.ready.take();
        self.stop.take();
        for t in self.outs.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// In the kernel: works when the target is a pipe, file or socket.
    Splice,
    /// read and write: a terminal, say.
    Copy,
    /// Our reader went away: keep draining, as a pipe's writer would see
    /// the rest lost.
    Discard,
}

fn borrowed(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: 0, 1 and 2 stay open for the process's life.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

fn readable(fd: BorrowedFd, timeout: PollTimeout) -> bool {
    let mut p = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut p, timeout), Ok(n) if n > 0)
}

/// Write all of `buf` to `fd`, waiting where it is non-blocking.
fn write_all(fd: BorrowedFd, mut buf: &[u8]) -> nix::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(&mut p, PollTimeout::NONE);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Move one chunk (at most `max` bytes) that is waiting in `from` to
/// `to`. 0: `from` is finished (it is never, while we hold its write
/// side, except on error).
fn move_chunk(
    from: BorrowedFd,
    to: BorrowedFd,
    route: &mut Route,
    buf: &mut Vec<u8>,
    max: usize,
) -> usize {
    let chunk = max.min(1 << 20);
    loop {
        if *route == Route::Splice {
            match nix::fcntl::splice(from, None, to, None, chunk, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(n) => return n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE) => *route = Route::Discard,
                // Not spliceable, or a non-blocking target: the plain way.
                Err(_) => *route = Route::Copy,
            }
        }
        buf.resize(chunk, 0);
        let n = match nix::unistd::read(from, buf) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(_) => return 0,
        };
        if *route == Route::Copy && write_all(to, &buf[..n]).is_err() {
            *route = Route::Discard;
        }
        return n;
    }
}

/// The bytes waiting in the pipe `fd`.
fn pending(fd: BorrowedFd) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer we pass.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    if r < 0 {
        // Unknown: at most what a full pipe holds.
        return 1 << 20;
    }
    n.max(0) as usize
}

/// Our stdout or stderr (`fd`) from its fifo, until `stop` closes and the
/// fifo is empty.
fn pump_out(fifo: OwnedFd, fd: i32, stop: OwnedFd) {
    let to = borrowed(fd);
    let mut route = Route::Splice;
    let mut buf = Vec::new();
    loop {
        let mut p = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut p, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
        let data = p[0].any().unwrap_or(false);
        let stopping = p[1].any().unwrap_or(false);
        if data && move_chunk(fifo.as_fd(), to, &mut route, &mut buf, usize::MAX) == 0 {
            return;
        }
        if stopping {
            // The wrapper has exited, after its command: what that wrote
            // is all in the fifo now. Only that: a writer the wrapper
            // could not kill (the testbed moved the fifo's name) must not
            // keep this process draining for ever.
            let mut left = pending(fifo.as_fd());
            while left > 0 && readable(fifo.as_fd(), PollTimeout::ZERO) {
                match move_chunk(fifo.as_fd(), to, &mut route, &mut buf, left) {
                    0 => return,
                    n => left = left.saturating_sub(n),
                }
            }
            return;
        }
    }
}

/// Our stdin into its fifo; at its end, close the fifo once the wrapper
/// has opened its side (closed earlier, that open would wait for ever).
fn pump_in(fifo: OwnedFd, ready: std::sync::mpsc::Receiver<()>) {
    let from = borrowed(0);
    let mut route = Route::Splice;
    let mut buf = Vec::new();
    loop {
        if route == Route::Splice {
            match nix::fcntl::splice(
                from,
                None,
                &fifo,
                None,
                1 << 20,
                SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => route = Route::Copy,
            }
        }
        buf.resize(1 << 20, 0);
        match nix::unistd::read(from, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if write_all(fifo.as_fd(), &buf[..n]).is_err() {
                    break;
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                readable(from, PollTimeout::NONE);
            }
            Err(_) => break,
        }
    }
    let _ = ready.recv();
    drop(fifo);
}

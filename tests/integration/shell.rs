//! `shell` on a real terminal: the server's stdin and stdout stay pipes
//! for the protocol, and a pseudo-terminal made here is its controlling
//! terminal (/dev/tty), typed into and read through the master side.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::Signal;

use crate::util::*;

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

/// A pseudo-terminal: the master to type into and read from, the slave
/// kept open to read its settings.
struct Pty {
    master: File,
    slave: OwnedFd,
    seen: Arc<Mutex<Vec<u8>>>,
    marks: std::cell::Cell<u32>,
}

impl Pty {
    fn new(rows: u16, cols: u16) -> Pty {
        let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .expect("posix_openpt");
        nix::pty::grantpt(&m).unwrap();
        nix::pty::unlockpt(&m).unwrap();
        let name = nix::pty::ptsname_r(&m).unwrap();
        let slave: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_noctty()
            .open(&name)
            .unwrap_or_else(|e| panic!("cannot open {name}: {e}"))
            .into();
        let master = File::from(OwnedFd::from(m));
        let pty = Pty {
            master,
            slave,
            seen: Arc::default(),
            marks: std::cell::Cell::new(0),
        };
        pty.resize(rows, cols);
        // Drained all along: a terminal nobody reads blocks its writers.
        let mut reader = pty.master.try_clone().unwrap();
        let seen = pty.seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        pty
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize.
        unsafe { set_winsize(self.master.as_raw_fd(), &ws) }.expect("TIOCSWINSZ");
    }

    /// The terminal's settings, as the kernel has them.
    fn termios(&self) -> libc::termios {
        nix::sys::termios::tcgetattr(self.slave.as_fd())
            .expect("tcgetattr")
            .into()
    }

    /// Make it the controlling terminal of the child, in a session of its
    /// own whose process group is the terminal's foreground one.
    fn controlling(&self, cmd: &mut Command) {
        let fd = self.slave.as_raw_fd();
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid()?;
                if libc::ioctl(fd, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    fn type_in(&self, keys: &[u8]) {
        (&self.master).write_all(keys).unwrap();
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn since(&self, from: usize) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()[from..]).into_owned()
    }

    /// What the terminal showed from `from` until `needle`, which must
    /// come within `timeout`.
    fn wait_for(&self, from: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.since(from);
            if let Some(i) = got.find(needle) {
                return got[..i + needle.len()].to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the terminal did not show {needle:?} within {timeout:?}; it showed {got:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Type a command line into the shell and return what the terminal
    /// showed until it finished (an end mark the echo of the typed line
    /// cannot contain).
    fn run(&self, line: &str, timeout: Duration) -> String {
        let n = self.marks.get() + 1;
        self.marks.set(n);
        let from = self.len();
        self.type_in(format!("{line}; echo @@$(({n}*1000))@@\r").as_bytes());
        self.wait_for(from, &format!("@@{}@@", n * 1000), timeout)
    }

    /// Wait until the terminal is in raw mode (rdocker set it).
    fn wait_raw(&self, server: &Server) -> libc::termios {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let t = self.termios();
            if t.c_lflag & libc::ICANON as libc::tcflag_t == 0 {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never went raw; stderr: {}",
                server.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// O_NOCTTY on an OpenOptions, so that opening the slave here does not
/// make it the test's own controlling terminal.
trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOCTTY | libc::O_CLOEXEC)
    }
}

/// The whole termios, field by field (the struct has padding).
fn same_termios(a: &libc::termios, b: &libc::termios) -> bool {
    a.c_iflag == b.c_iflag
        && a.c_oflag == b.c_oflag
        && a.c_cflag == b.c_cflag
        && a.c_lflag == b.c_lflag
        && a.c_line == b.c_line
        && a.c_cc == b.c_cc
        && a.c_ispeed == b.c_ispeed
        && a.c_ospeed == b.c_ospeed
}

const SHELL_WAIT: Duration = Duration::from_secs(60);

fn alive(server: &mut Server) -> bool {
    server.child.try_wait().unwrap().is_none()
}

#[test]
fn shell_gets_a_terminal_and_gives_it_back() {
    let pty = Pty::new(33, 111);
    let before = pty.termios();
    assert_ne!(
        before.c_lflag & libc::ICANON as libc::tcflag_t,
        0,
        "a new pty starts canonical"
    );
    let mut server = Server::start_with(&[&image()], &[("TERM", "vt220")], |c| pty.controlling(c));
    let dir = server.open();
    server.send(&format!(
        "shell {} {}",
        quote(&dir),
        quote("RDOCKER_T=v4lue-x")
    ));

    // Raw while the shell runs: no echo, no line editing, no signals.
    let raw = pty.wait_raw(&server);
    assert_eq!(raw.c_lflag & (libc::ISIG | libc::ECHO) as libc::tcflag_t, 0);
    // The shell is up (bash reads what was typed before it started).
    pty.run("true", SHELL_WAIT);

    let out = pty.run("tty", SHELL_WAIT);
    assert!(out.contains("/dev/pts/"), "tty in the testbed said {out:?}");
    assert!(!out.contains("not a tty"), "{out:?}");
    let out = pty.run(
        "echo U$(id -u)U; pwd; echo T${TERM}T; echo \"$RDOCKER_T\"",
        SHELL_WAIT,
    );
    assert!(out.contains("U0U"), "not root: {out:?}");
    assert!(out.contains(&dir), "not in {dir}: {out:?}");
    assert!(out.contains("Tvt220T"), "TERM not passed: {out:?}");
    assert!(
        out.contains("v4lue-x"),
        "the protocol's variable is missing: {out:?}"
    );

    // The window size at the start, and after a SIGWINCH.
    let out = pty.run("stty size", SHELL_WAIT);
    assert!(out.contains("33 111"), "stty size said {out:?}");
    pty.resize(40, 100);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = pty.run("stty size", SHELL_WAIT);
        if out.contains("40 100") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resize never arrived: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Ctrl-C stops the shell's command, not rdocker.
    let from = pty.len();
    pty.type_in(b"sleep 100\r");
    pty.wait_for(from, "sleep 100", SHELL_WAIT);
    std::thread::sleep(Duration::from_millis(700));
    pty.type_in(b"\x03");
    pty.run("echo back", Duration::from_secs(5));
    assert!(alive(&mut server), "Ctrl-C ended rdocker");

    // Ctrl-Z stops it in the shell's job control.
    let from = pty.len();
    pty.type_in(b"sleep 100\r");
    pty.wait_for(from, "sleep 100", SHELL_WAIT);
    std::thread::sleep(Duration::from_millis(700));
    pty.type_in(b"\x1a");
    pty.wait_for(from, "Stopped", Duration::from_secs(5));
    // Reaped before `exit`, which refuses to leave stopped jobs.
    pty.run("kill -9 %1; wait %1", Duration::from_secs(5));

    // A SIGINT sent to rdocker while the shell has the terminal neither
    // ends the session now nor later.
    server.signal(Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(&mut server), "SIGINT during the shell ended rdocker");
    pty.run("echo still", Duration::from_secs(5));

    let from = pty.len();
    pty.type_in(b"exit\r");
    let reply = server.poll_line(SHELL_WAIT).unwrap_or_else(|()| {
        panic!(
            "no reply after exit; the terminal showed {:?}; stderr: {}",
            pty.since(from),
            server.stderr()
        )
    });
    assert_eq!(reply.as_deref(), Some("ok"));
    let after = pty.termios();
    assert!(
        same_termios(&before, &after),
        "the terminal's settings changed: before {before:?}, after {after:?}"
    );
    assert!(server.capabilities().contains(&"revert".to_string()));
    assert!(alive(&mut server));
    server.quit();
}

#[test]
fn shell_terminal_is_restored_when_a_signal_ends_the_session() {
    let pty = Pty::new(24, 80);
    let before = pty.termios();
    let mut server = Server::start_with(&[&image()], &[], |c| pty.controlling(c));
    let dir = server.open();
    server.send(&format!("shell {}", quote(&dir)));
    pty.wait_raw(&server);
    pty.run("true", SHELL_WAIT);
    server.signal(Signal::SIGTERM);
    let st = server.wait(Duration::from_secs(60));
    assert_eq!(st.signal(), Some(Signal::SIGTERM as i32), "{st:?}");
    let after = pty.termios();
    assert!(
        same_termios(&before, &after),
        "the terminal's settings changed: before {before:?}, after {after:?}"
    );
    assert_no_containers(server.pid());
}

#[test]
fn shell_without_a_terminal_says_so_and_answers_ok() {
    // A session of its own, without a controlling terminal.
    let mut server = Server::start_with(&[&image()], &[], |c| unsafe {
        c.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    });
    let dir = server.open();
    assert_eq!(server.cmd(&format!("shell {}", quote(&dir))), "ok");
    assert!(
        server.stderr_says("Cannot run shell: No such device or address"),
        "stderr: {}",
        server.stderr()
    );
    let argv = server.exec_argv();
    assert_eq!(sh_ok(&argv, "echo fine"), "fine\n");
    server.quit();
}

//! rdocker's own terminal, for `shell`: /dev/tty opened apart from the
//! protocol's stdin and stdout, read and written without blocking, put in
//! raw mode while a shell in the testbed has it (restored on every path),
//! its window size, and SIGWINCH.

use nix::sys::termios::{self, SetArg, Termios};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::signal::unix::{signal, Signal, SignalKind};

nix::ioctl_read_bad!(get_winsize, nix::libc::TIOCGWINSZ, nix::libc::winsize);

/// The controlling terminal. Its own open file description, so that
/// O_NONBLOCK here changes nothing for whoever else holds the terminal
/// (autopkgtest's stdin): a read can then be dropped without a blocked
/// thread left behind to swallow the user's next keystroke.
pub struct Terminal {
    fd: AsyncFd<OwnedFd>,
}

impl Terminal {
    /// Open /dev/tty; fails (ENXIO) when the process has no controlling
    /// terminal. Needs the runtime.
    pub fn open() -> io::Result<Terminal> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open("/dev/tty")?;
        // SAFETY: the OwnedFd is the AsyncFd's own, never replaced or
        // closed while registered.
        let fd = unsafe { AsyncFd::register(OwnedFd::from(f))? };
        Ok(Terminal { fd })
    }

    /// The window size: (rows, columns).
    pub fn size(&self) -> io::Result<(u16, u16)> {
        let mut ws = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
        unsafe { get_winsize(std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref()), &mut ws) }?;
        Ok((ws.ws_row, ws.ws_col))
    }

    /// Raw mode (cfmakeraw: no echo, no line editing, no signals from
    /// Ctrl-C or Ctrl-Z, no output processing) until the guard is
    /// dropped, which puts back the settings found here.
    pub fn raw(&self) -> io::Result<Raw<'_>> {
        let fd = self.fd.get_ref().as_fd();
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(Raw { fd, saved })
    }

    /// The window size each time it changes (SIGWINCH).
    pub fn resizes(&self) -> io::Result<Resizes<'_>> {
        Ok(Resizes {
            term: self,
            winch: signal(SignalKind::window_change())?,
        })
    }
}

/// The terminal's settings before raw mode, restored on drop: on a normal
/// end, an error, a signal that ends the session (the future holding it is
/// dropped) and a panic (unwinding) alike. TCSANOW, so that a terminal
/// whose output is stuck cannot hang rdocker here.
pub struct Raw<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl Drop for Raw<'_> {
    fn drop(&mut self) {
        if let Err(e) = termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved) {
            eprintln!(
                "{}: cannot restore the terminal's settings ({e}); `stty sane' does",
                crate::PROG
            );
        }
    }
}

pub struct Resizes<'a> {
    term: &'a Terminal,
    winch: Signal,
}

impl futures_util::Stream for Resizes<'_> {
    type Item = (u16, u16);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<(u16, u16)>> {
        loop {
            if ready!(self.winch.poll_recv(cx)).is_none() {
                return Poll::Ready(None);
            }
            if let Ok(size) = self.term.size() {
                return Poll::Ready(Some(size));
            }
        }
    }
}

/// A hung-up terminal reads as EOF (EIO).
impl AsyncRead for &Terminal {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for &Terminal {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

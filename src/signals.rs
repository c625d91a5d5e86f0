//! Termination: catch the signals that end a run, so that the testbed can
//! be removed first, then die of the same signal as the reference does.

use nix::sys::signal::{self, SigHandler, Signal};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::signal::unix::{signal as listen, Signal as Listener, SignalKind};

pub struct Terminations {
    term: Listener,
    int: Listener,
    hup: Listener,
}

impl Terminations {
    pub fn listen() -> std::io::Result<Terminations> {
        Ok(Terminations {
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
            hup: listen(SignalKind::hangup())?,
        })
    }

    /// The next signal that ends the run. A SIGINT while `shell` has the
    /// terminal (see `hold_interrupts`) is not one: it is dropped here, so
    /// that it does not end the session later either.
    pub async fn next(&mut self) -> Signal {
        loop {
            let sig = tokio::select! {
                _ = self.term.recv() => Signal::SIGTERM,
                _ = self.int.recv() => Signal::SIGINT,
                _ = self.hup.recv() => Signal::SIGHUP,
            };
            if sig == Signal::SIGINT && INTERRUPTS_HELD.load(Ordering::SeqCst) {
                crate::debug!("SIGINT while the shell has the terminal: not ending the session");
                continue;
            }
            return sig;
        }
    }
}

static INTERRUPTS_HELD: AtomicBool = AtomicBool::new(false);

/// While the guard lives, SIGINT does not end the session: the shell in
/// the testbed has the terminal (in raw mode, so Ctrl-C reaches it as a
/// byte, not as a signal to us), and a stray SIGINT to rdocker's process
/// group must not take the testbed away from under it.
pub struct InterruptsHeld(());

pub fn hold_interrupts() -> InterruptsHeld {
    INTERRUPTS_HELD.store(true, Ordering::SeqCst);
    InterruptsHeld(())
}

impl Drop for InterruptsHeld {
    fn drop(&mut self) {
        INTERRUPTS_HELD.store(false, Ordering::SeqCst);
    }
}

/// Restore the default action and re-raise, so that our caller sees a death
/// by `sig`; exit 128+N should that not kill us.
pub fn die_of(sig: Signal) -> ! {
    // SAFETY: setting SIG_DFL installs no Rust code as a handler.
    unsafe {
        let _ = signal::signal(sig, SigHandler::SigDfl);
    }
    let mut set = signal::SigSet::empty();
    set.add(sig);
    let _ = set.thread_unblock();
    let _ = signal::raise(sig);
    std::process::exit(128 + sig as i32);
}

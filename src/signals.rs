//! Termination: catch the signals that end a run, so that the testbed can
//! be removed first, then die of the same signal as the reference does.

use nix::sys::signal::{self, SigHandler, Signal};
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

    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
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

//! A copy's cancellation. Its blocking threads poll a flag that a guard
//! sets when the copy's future goes (the copy timeout drops it), so that
//! no way of giving up on a copy leaves a thread copying on: one stacked
//! per timed-out copy, each growing a host file for minutes, before this.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Sets its flag when dropped: held by the copy's future.
pub struct CancelOnDrop(Arc<AtomicBool>);

impl CancelOnDrop {
    /// A guard, and the flag it sets for the blocking threads.
    pub fn new() -> (CancelOnDrop, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (CancelOnDrop(flag.clone()), flag)
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An error once the copy is cancelled: what each step of a blocking
/// copy loop checks.
pub fn check(cancel: &AtomicBool) -> io::Result<()> {
    if cancel.load(Ordering::Relaxed) {
        return Err(io::Error::other("the copy was cancelled (it timed out)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_guard_cancels() {
        let (guard, flag) = CancelOnDrop::new();
        assert!(check(&flag).is_ok());
        drop(guard);
        assert!(check(&flag).is_err());
    }
}

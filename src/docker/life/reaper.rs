//! Removal of containers dropped without `Container::remove` (an error, a
//! panic, a cancelled future). Drop cannot await, and must not block an
//! async worker either: it hands the container to this process-wide
//! thread with a runtime of its own, and `main` waits for the thread
//! (boundedly) before exiting. Not to be confused with reap.rs (`--reap`),
//! which removes the containers of rdocker processes that are gone.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::PROG;

/// A removal: the container's name, for messages, and the work, which
/// container.rs writes (so that this module needs nothing of it).
pub struct Job {
    pub name: String,
    pub work: Box<dyn FnOnce() -> Removal + Send>,
}

pub type Removal = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

enum Msg {
    Remove(Box<Job>),
    /// Answer once nothing is being removed.
    Drain(std_mpsc::Sender<()>),
}

struct Reaper {
    tx: mpsc::UnboundedSender<Msg>,
    /// Names of the containers queued or being removed, for the message
    /// should `drain` give up on them.
    pending: Arc<Mutex<Vec<String>>>,
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

fn reaper() -> Option<&'static Reaper> {
    REAPER
        .get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let pending = Arc::new(Mutex::new(Vec::new()));
            let p = pending.clone();
            let spawned = std::thread::Builder::new()
                .name("rdocker-reaper".into())
                .spawn(move || run(rx, p));
            match spawned {
                Ok(_) => Some(Reaper { tx, pending }),
                Err(e) => {
                    eprintln!("{PROG}: cannot start the container reaper thread: {e}");
                    None
                }
            }
        })
        .as_ref()
}

fn left_behind(name: &str) {
    eprintln!(
        "{PROG}: testbed container {name} may be left behind; remove it with \
         `{PROG} --reap` or `docker rm -f {name}`"
    );
}

/// Queue the removal of a container; returns at once.
pub fn remove(job: Job) {
    let Some(r) = reaper() else {
        return left_behind(&job.name);
    };
    let name = job.name.clone();
    lock(&r.pending).push(name.clone());
    if r.tx.send(Msg::Remove(Box::new(job))).is_err() {
        lock(&r.pending).retain(|n| *n != name);
        left_behind(&name);
    }
}

/// Wait until every queued removal is done, for at most `limit`. Returns
/// at once if nothing was ever queued.
pub fn drain(limit: Duration) {
    let Some(Some(r)) = REAPER.get() else {
        return;
    };
    let (tx, rx) = std_mpsc::channel();
    let done = r.tx.send(Msg::Drain(tx)).is_ok() && rx.recv_timeout(limit).is_ok();
    if !done {
        for name in lock(&r.pending).iter() {
            left_behind(name);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it leaves a list that is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(mut rx: mpsc::UnboundedReceiver<Msg>, pending: Arc<Mutex<Vec<String>>>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{PROG}: the container reaper cannot start a runtime: {e}");
            // Dropping rx makes every later `remove` report its container.
            return;
        }
    };
    rt.block_on(async move {
        let mut running = tokio::task::JoinSet::new();
        let mut drains = Vec::new();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Remove(job)) => {
                        running.spawn(remove_now(*job, pending.clone()));
                    }
                    Some(Msg::Drain(done)) => drains.push(done),
                    None => break,
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
            if running.is_empty() {
                for d in drains.drain(..) {
                    let _ = d.send(());
                }
            }
        }
    });
}

async fn remove_now(job: Job, pending: Arc<Mutex<Vec<String>>>) {
    crate::debug!("removing dropped container {}", job.name);
    let removed = (job.work)().await;
    if let Err(e) = removed {
        eprintln!("{PROG}: {e:#}");
    }
    let mut p = lock(&pending);
    if let Some(i) = p.iter().position(|n| *n == job.name) {
        p.remove(i);
    }
}

//! For a daemon reached over TLS: a unix socket in a private directory
//! that exec helpers connect to instead. Each connection is relayed, byte
//! for byte (half-closes included), over a TLS connection the server
//! opened ahead of need, so that a command's helper does no TLS handshake
//! and reads no certificate.

use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{TlsDialer, TlsStream};
use super::rundir::RunDir;

/// An exec takes two connections (its stream, then its status).
const SPARES: usize = 2;
/// Older spares are dialed again: a daemon or a proxy may have closed
/// them meanwhile.
const SPARE_AGE: Duration = Duration::from_secs(20);

pub struct Relay {
    socket: PathBuf,
    accept: tokio::task::JoinHandle<()>,
    freshen: tokio::task::JoinHandle<()>,
    _dir: RunDir,
}

type Spares = Mutex<VecDeque<(Instant, TlsStream)>>;

impl Relay {
    /// On the runtime.
    pub fn start(dialer: TlsDialer) -> Result<Relay> {
        let dir = RunDir::new()?;
        let socket = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        let dialer = Arc::new(dialer);
        let spares: Arc<Spares> = Arc::default();
        // Spares kept fresh between commands, however far apart.
        let freshen = tokio::spawn({
            let (dialer, spares) = (dialer.clone(), spares.clone());
            async move {
                loop {
                    let missing = {
                        let mut q = lock(&spares);
                        q.retain(|(at, _)| at.elapsed() < SPARE_AGE);
                        SPARES - q.len()
                    };
                    for _ in 0..missing {
                        refill(&dialer, &spares);
                    }
                    tokio::time::sleep(SPARE_AGE / 2).await;
                }
            }
        });
        let accept = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (dialer, spares) = (dialer.clone(), spares.clone());
                tokio::spawn(async move {
                    let spare = lock(&spares).pop_front();
                    refill(&dialer, &spares);
                    let up = match spare {
                        Some((at, s)) if at.elapsed() < SPARE_AGE => Ok(s),
                        _ => dialer.dial().await,
                    };
                    match up {
                        Ok(mut up) => {
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                        }
                        // The helper sees its connection closed, and says so.
                        Err(e) => crate::debug!("relay: {e}"),
                    }
                });
            }
        });
        Ok(Relay {
            socket,
            accept,
            freshen,
            _dir: dir,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

fn lock(s: &Spares) -> std::sync::MutexGuard<'_, VecDeque<(Instant, TlsStream)>> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn refill(dialer: &Arc<TlsDialer>, spares: &Arc<Spares>) {
    let (dialer, spares) = (dialer.clone(), spares.clone());
    tokio::spawn(async move {
        if let Ok(s) = dialer.dial().await {
            let mut q = lock(&spares);
            q.retain(|(at, _)| at.elapsed() < SPARE_AGE);
            if q.len() < SPARES {
                q.push_back((Instant::now(), s));
            }
        }
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.freshen.abort();
    }
}

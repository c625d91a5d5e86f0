//! Where exec helpers find the testbeds' stream agents (agent.rs): the
//! server keeps each agent's exec stream, and listens on a unix socket in
//! its private directory (rundir.rs); an exec helper sends its command
//! there and gets the command's output and status back, in agent.rs's
//! frames. A helper that finds no socket, or is told there is no agent,
//! uses docker exec.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::agent::{frame, Agent, Decoder, Event};
use super::exec::Sink;
use crate::docker::daemon::client::Client;
use crate::docker::daemon::rundir::RunDir;

/// The agents of this session's testbeds, by container id, each with a
/// number of its own: an agent that ended takes only itself off the list,
/// never the one started after it in the same container (a reboot).
pub type Agents = Arc<Mutex<HashMap<String, (u64, Arc<Agent>)>>>;

/// The largest request: the agent reads no longer frame.
const MAX_REQUEST: usize = 1 << 20;

/// The largest frame from the server: one of the agent's, or a message.
const MAX_REPLY: usize = 1 << 20;

/// What the wrapper runs first on this route: the processes to expect
/// when nothing was left in the background (PID 1, its sleep, the agent
/// and the wrapper).
pub const PRELUDE: &str = "rdocker_procs=4\n";

pub struct Hub {
    dir: RunDir,
    agents: Agents,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Hub {
    pub fn start() -> Result<Hub> {
        let dir = RunDir::new()?;
        let path = dir.path().join("agents.sock");
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        let agents: Agents = Arc::default();
        let a = agents.clone();
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, a.clone()));
            }
        });
        Ok(Hub {
            dir,
            agents,
            accept,
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agents.sock")
    }

    pub fn agents(&self) -> Agents {
        self.agents.clone()
    }

    /// Whether `container` has a live agent.
    pub fn serves(&self, container: &str) -> bool {
        live(&self.agents, container).is_some()
    }
}

fn live(agents: &Agents, container: &str) -> Option<Arc<Agent>> {
    let a = agents.lock().expect("agents");
    a.get(container)
        .map(|(_, a)| a)
        .filter(|a| a.alive())
        .cloned()
}

/// Start `container`'s agent and list it; it is taken off the list when
/// it ends.
pub async fn start_agent(client: &Client, container: &str, agents: &Agents) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (list, id) = (agents.clone(), container.to_string());
    let agent = Agent::start(client, container, move || {
        let mut l = list.lock().expect("agents");
        if l.get(&id).is_some_and(|(m, _)| *m == n) {
            l.remove(&id);
        }
    })
    .await?;
    let agent = Arc::new(agent);
    agents
        .lock()
        .expect("agents")
        .insert(container.to_string(), (n, agent.clone()));
    // It may have ended before it was listed.
    if !agent.alive() {
        forget(agents, container);
        bail!("the agent ended as soon as it started");
    }
    Ok(())
}

/// Forget `container`'s agent (it is being removed).
pub fn forget(agents: &Agents, container: &str) {
    agents.lock().expect("agents").remove(container);
}

async fn read_frame(
    conn: &mut (impl AsyncReadExt + Unpin),
    dec: &mut Decoder,
    buf: &mut [u8],
) -> Result<Option<(u8, u32, bytes::Bytes)>> {
    loop {
        if let Some(f) = dec.next()? {
            return Ok(Some(f));
        }
        let n = conn.read(buf).await?;
        if n == 0 {
            return Ok(None);
        }
        dec.push(&buf[..n]);
    }
}

/// One exec helper's command.
async fn serve(conn: UnixStream, agents: Agents) {
    let (mut rd, mut wr) = conn.into_split();
    let mut dec = Decoder::new(MAX_REQUEST);
    let mut buf = vec![0u8; 4096];
    let Ok(Some((b'S', _, req))) = read_frame(&mut rd, &mut dec, &mut buf).await else {
        return;
    };
    let mut words = req
        .split(|b| *b == 0)
        .map(|w| String::from_utf8_lossy(w).into_owned());
    let container = words.next().unwrap_or_default();
    let argv: Vec<String> = words.collect();
    let started = live(&agents, &container).and_then(|a| a.spawn(&argv).ok().map(|s| (a, s)));
    let Some((agent, (chan, mut rx))) = started else {
        let _ = wr.write_all(&frame(b'N', 0, b"")).await;
        return;
    };
    let mut caller = true;
    let end = loop {
        let Some(ev) = rx.recv().await else {
            break frame(b'L', 0, b"the agent was stopped");
        };
        let (kind, data) = match ev {
            Event::Stdout(d) => (b'O', d),
            Event::Stderr(d) => (b'E', d),
            Event::Exit(c) => break frame(b'X', 0, c.to_string().as_bytes()),
            Event::NotStarted(why) => break frame(b'F', 0, why.as_bytes()),
            Event::Lost(why) => break frame(b'L', 0, why.as_bytes()),
        };
        // A caller gone takes no more, but the command runs on: its
        // output is dropped and credited, so the agent never stalls on it.
        if caller && wr.write_all(&frame(kind, 0, &data)).await.is_err() {
            caller = false;
        }
        agent.credit(chan, data.len());
    };
    if caller {
        let _ = wr.write_all(&end).await;
    }
}

/// What became of a command sent to the hub.
pub enum Outcome {
    /// No agent took it: it has not run.
    NoAgent(String),
    Exit(i64),
    /// The agent ended before the command did: its status is unknown,
    /// and it may still run.
    Lost(String),
}

/// Run `argv` in `container` through the hub at `socket`.
pub async fn run(
    socket: &Path,
    container: &str,
    argv: &[String],
    sink: &mut dyn Sink,
) -> Result<Outcome> {
    let mut req = container.as_bytes().to_vec();
    for a in argv {
        req.push(0);
        req.extend_from_slice(a.as_bytes());
    }
    if req.len() > MAX_REQUEST || argv.iter().any(|a| a.contains('\0')) {
        return Ok(Outcome::NoAgent(
            "the command is too long for the agent".into(),
        ));
    }
    let mut conn = match UnixStream::connect(socket).await {
        Ok(c) => c,
        Err(e) => {
            return Ok(Outcome::NoAgent(format!(
                "cannot reach the server's agents at {}: {e}",
                socket.display()
            )))
        }
    };
    conn.write_all(&frame(b'S', 0, &req))
        .await
        .context("cannot send the command to the server")?;
    let mut dec = Decoder::new(MAX_REPLY);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Some((kind, _, data)) = read_frame(&mut conn, &mut dec, &mut buf)
            .await
            .context("lost the server's answer")?
        else {
            return Ok(Outcome::Lost("the server ended".into()));
        };
        let text = || String::from_utf8_lossy(&data).into_owned();
        match kind {
            b'O' => sink.stdout(&data)?,
            b'E' => sink.stderr(&data)?,
            b'X' => {
                return text()
                    .parse()
                    .map(Outcome::Exit)
                    .map_err(|_| anyhow!("the server sent the exit status {:?}", text()))
            }
            b'N' => return Ok(Outcome::NoAgent("the testbed has no agent".into())),
            b'F' => {
                return Ok(Outcome::NoAgent(format!(
                    "the agent could not start it: {}",
                    text()
                )))
            }
            b'L' => return Ok(Outcome::Lost(text())),
            k => bail!("the server sent a frame of kind {:?}", k as char),
        }
    }
}

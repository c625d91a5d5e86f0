//! The program that print-execute-command hands out: rdocker itself, run
//! once per testbed command. It streams stdio through the exec API and
//! exits with the command's status.

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use std::io::{Read, Write};
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::docker::api::exec::{self, Sink, TestbedGone};
use crate::docker::api::hub;
use crate::docker::daemon::client::Client;
use crate::docker::daemon::endpoint::{Endpoint, ExecArgs};
use crate::docker::host::root::Root;
use crate::docker::host::{agent, pipes};

/// The hidden first argument that selects this mode.
pub const FLAG: &str = "--internal-exec";

/// Exit status for rdocker's own failures: autopkgtest reads 254 and 255
/// as a broken testbed, never as a test result.
const TESTBED_FAILURE: u8 = 255;

struct Args {
    /// The server's endpoint, exactly (Endpoint::exec_args).
    endpoint: Endpoint,
    /// The server's socket to the daemon (tunnel.rs, relay.rs), tried first.
    via: Option<std::path::PathBuf>,
    /// The server's socket to the testbed's stream agent (api/hub.rs).
    hub: Option<std::path::PathBuf>,
    api_version: String,
    container: String,
    /// The testbed's root as root.rs proved it: stdio then goes through
    /// fifos (pipes.rs).
    root: Option<String>,
    command: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args> {
    let (mut api_version, mut container, mut root, mut via, mut hub) =
        (None, None, None, None, None);
    let mut endpoint = ExecArgs::default();
    let mut it = args.iter();
    for a in it.by_ref() {
        if a == "--" {
            break;
        }
        if endpoint.take(a)? {
            continue;
        }
        if let Some(v) = a.strip_prefix("--api-version=") {
            api_version = Some(v.to_string());
        } else if let Some(v) = a.strip_prefix("--container=") {
            container = Some(v.to_string());
        } else if let Some(v) = a.strip_prefix("--root=") {
            root = Some(v.to_string());
        } else if let Some(v) = a.strip_prefix("--via=") {
            via = Some(v.into());
        } else if let Some(v) = a.strip_prefix("--hub=") {
            hub = Some(v.into());
        } else if a == "--debug" {
            crate::DEBUG.store(true, std::sync::atomic::Ordering::Relaxed);
        } else {
            bail!("unexpected argument {a:?}");
        }
    }
    let command: Vec<String> = it.cloned().collect();
    if command.is_empty() {
        bail!("no command given after --");
    }
    Ok(Args {
        endpoint: endpoint.endpoint()?,
        via,
        hub,
        api_version: api_version.ok_or_else(|| anyhow!("--api-version= missing"))?,
        container: container.ok_or_else(|| anyhow!("--container= missing"))?,
        root,
        command,
    })
}

/// Writes output on a plain thread, so that a slow reader of our stdout
/// never stalls the stdin pump on the runtime.
struct ThreadSink {
    tx: Option<std::sync::mpsc::SyncSender<(u8, Bytes)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThreadSink {
    fn new() -> ThreadSink {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u8, Bytes)>(16);
        let thread = std::thread::spawn(move || {
            // Straight to the descriptors: std's stdout is line-buffered,
            // which splits binary data at every newline. Never locking
            // std's handles also leaves stderr free for the signal path.
            let raw = |fd| {
                use std::os::fd::FromRawFd;
                // SAFETY: 1 and 2 stay open for the process's life, and
                // ManuallyDrop never closes them.
                std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) })
            };
            let mut files = [raw(1), raw(2)];
            let mut ok = [true, true];
            // Frames are often small: what is already queued goes out in
            // one write, and the other stream is flushed before a switch
            // so that the order between them is kept.
            let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
            let mut flush = |i: usize, pending: &mut [Vec<u8>; 2], ok: &mut [bool; 2]| {
                // A closed reader loses the rest of that stream, as with a pipe.
                if ok[i] && !pending[i].is_empty() {
                    ok[i] = files[i].write_all(&pending[i]).is_ok();
                }
                pending[i].clear();
            };
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                while let Some((fd, data)) = next.take() {
                    let i = usize::from(fd == 2);
                    if !pending[1 - i].is_empty() {
                        flush(1 - i, &mut pending, &mut ok);
                    }
                    pending[i].extend_from_slice(&data);
                    if pending[i].len() >= 256 * 1024 {
                        flush(i, &mut pending, &mut ok);
                    }
                    next = rx.try_recv().ok();
                }
                flush(0, &mut pending, &mut ok);
                flush(1, &mut pending, &mut ok);
            }
        });
        ThreadSink {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn send(&mut self, fd: u8, data: &[u8]) -> Result<()> {
        if let Some(tx) = &self.tx {
            tx.send((fd, Bytes::copy_from_slice(data)))
                .map_err(|_| anyhow!("the output writer stopped"))?;
        }
        Ok(())
    }

    fn finish(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Sink for ThreadSink {
    fn stdout(&mut self, d: &[u8]) -> Result<()> {
        self.send(1, d)
    }
    fn stderr(&mut self, d: &[u8]) -> Result<()> {
        self.send(2, d)
    }
}

/// Whether stdin may carry input: not closed, not /dev/null (what
/// autopkgtest gives every command), not an empty file.
fn stdin_has_input() -> bool {
    use nix::sys::stat::{fstat, stat, SFlag};
    let Ok(st) = fstat(std::io::stdin()) else {
        return false;
    };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFCHR {
        return !stat("/dev/null").is_ok_and(|null| null.st_rdev == st.st_rdev);
    }
    !(kind == SFlag::S_IFREG && st.st_size == 0)
}

/// Read our stdin on a plain thread; a blocking read cannot be cancelled,
/// and the process exits without waiting for it.
fn stdin_pump() -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

pub fn main(args: &[String]) -> ExitCode {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("autopkgtest-virt-rdocker {FLAG}: {e:#}");
            return ExitCode::from(TESTBED_FAILURE);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("autopkgtest-virt-rdocker: cannot start the async runtime: {e}");
            return ExitCode::from(TESTBED_FAILURE);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("autopkgtest-virt-rdocker: {e:#}");
            ExitCode::from(TESTBED_FAILURE)
        }
    }
}

/// The fifo route's pumps, when the testbed's root can be reached.
fn fifos(root: Option<&Root>, token: &str) -> Option<(pipes::Fifos, pipes::Pumps)> {
    let (fifos, ends) = pipes::Fifos::make(root?, token).ok()?;
    let pumps = pipes::Pumps::start(ends).ok()?;
    Some((fifos, pumps))
}

/// Run the command through agent.rs's agent. None: no agent took it,
/// and it has not run.
async fn through_agent(
    root: &Root,
    fifos: &pipes::Fifos,
    pumps: &mut pipes::Pumps,
    token: &str,
    command: &[String],
) -> Option<(Result<i64>, bool)> {
    let argv = exec::wrapped(token, command, &agent::prelude());
    // Any failure before the agent has the token leaves the command ours.
    let st = agent::submit(root, fifos, token, &argv).ok()??;
    match agent::wait(st, fifos, root, || pumps.ready()).await {
        Ok(agent::Outcome::NotTaken) => None,
        // Killed along with its parent before either could say: as the
        // exec API reports a SIGKILLed command.
        Ok(agent::Outcome::Ended { ready, status }) => Some((Ok(status.unwrap_or(137)), ready)),
        Err(e) => Some((Err(e), true)),
    }
}

/// Run the command through the server's stream agent (api/hub.rs). None:
/// no agent took it, and it has not run.
async fn through_hub(
    hub: &std::path::Path,
    client: &Client,
    args: &Args,
    token: &str,
    sink: &mut ThreadSink,
) -> Option<(Result<i64>, bool)> {
    let argv = exec::wrapped(token, &args.command, hub::PRELUDE);
    match hub::run(hub, &args.container, &argv, sink).await {
        Ok(hub::Outcome::Exit(code)) => Some((Ok(code), true)),
        Ok(hub::Outcome::NoAgent(why)) => {
            crate::debug!("through docker exec: {why}");
            None
        }
        // Killed with the agent, or orphaned by it: nothing of it may run
        // on. Reported as the exec API reports a SIGKILLed command (and
        // as a testbed failure if the testbed is gone).
        Ok(hub::Outcome::Lost(why)) => {
            crate::debug!("the agent ended before the command did: {why}");
            kill(client, &args.container, token).await;
            Some((Ok(137), true))
        }
        Err(e) => {
            kill(client, &args.container, token).await;
            Some((Err(e), true))
        }
    }
}

/// The exec's own stdout carries only the fifo wrapper's `R`.
struct ReadySink<'a> {
    inner: &'a mut ThreadSink,
    pumps: &'a mut pipes::Pumps,
    seen: bool,
}

impl Sink for ReadySink<'_> {
    fn stdout(&mut self, mut d: &[u8]) -> Result<()> {
        if !self.seen && d.first() == Some(&b'R') {
            self.seen = true;
            self.pumps.ready();
            d = &d[1..];
        }
        if d.is_empty() {
            return Ok(());
        }
        self.inner.stdout(d)
    }
    fn stderr(&mut self, d: &[u8]) -> Result<()> {
        self.inner.stderr(d)
    }
}

async fn run(args: Args) -> Result<u8> {
    let client =
        Client::connect_with_version(&args.endpoint, &args.api_version, args.via.as_deref())?;
    let token = crate::docker::names::random_hex(8);
    // A handle from before a reboot names the last boot's PID 1: its start
    // time no longer matches (nor would a process that reused the number),
    // so the commands take the exec API, in the same container.
    let root = args.root.as_deref().and_then(|h| Root::attach(h).ok());
    // Where the fifos cannot be made, the exec's own streams carry stdio.
    let mut fifo_route = fifos(root.as_ref(), &token);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;

    let mut sink = ThreadSink::new();
    let exec = async {
        match (&mut fifo_route, &root) {
            (Some((fifos, pumps)), Some(root)) => {
                if let Some(done) = through_agent(root, fifos, pumps, &token, &args.command).await {
                    return done;
                }
                let argv = exec::wrapped(&token, &args.command, pipes::PRELUDE);
                let mut s = ReadySink {
                    inner: &mut sink,
                    pumps,
                    seen: false,
                };
                let r = exec::run(
                    &client,
                    &args.container,
                    exec::As::Default,
                    argv,
                    None,
                    &mut s,
                )
                .await;
                (r, s.seen)
            }
            _ => {
                let has_input = stdin_has_input();
                if let (Some(hub), false) = (&args.hub, has_input) {
                    if let Some(done) = through_hub(hub, &client, &args, &token, &mut sink).await {
                        return done;
                    }
                }
                let argv = exec::wrapped(&token, &args.command, "");
                // Without input, the exec's stream is never half-closed:
                // some proxies cut a half-closed connection (socat's
                // default, 0.5 s after), taking the output with it.
                let stdin = has_input.then(stdin_pump);
                let r = exec::run(
                    &client,
                    &args.container,
                    exec::As::Default,
                    argv,
                    stdin,
                    &mut sink,
                )
                .await;
                (r, true)
            }
        }
    };
    use nix::sys::signal::Signal;
    let signalled = tokio::select! {
        r = exec => Ok(r),
        _ = term.recv() => Err(Signal::SIGTERM),
        _ = int.recv() => Err(Signal::SIGINT),
        _ = hup.recv() => Err(Signal::SIGHUP),
    };
    let (result, ready) = match signalled {
        Ok(r) => r,
        Err(sig) => {
            kill(&client, &args.container, &token).await;
            drop(fifo_route);
            crate::signals::die_of(sig);
        }
    };
    if let Some((fifos, pumps)) = fifo_route {
        pumps.finish();
        drop(fifos);
        // Without the wrapper's `R` the command never ran: a testbed
        // failure either way, but say which.
        if !ready && result.is_ok() {
            sink.finish();
            let why = if container_running(&client, &args.container).await {
                format!(
                    "the command's fifos in {}/rdocker-exec-{token} could not be opened in \
                     testbed container {}, so it did not run",
                    pipes::DIR,
                    args.container
                )
            } else {
                format!(
                    "the testbed container {} went away before the command could start",
                    args.container
                )
            };
            return Err(anyhow::Error::new(TestbedGone(why)));
        }
    }
    sink.finish();
    // A command killed because its testbed went away (removed, or killed
    // behind our back) is a testbed failure, not a test failure.
    let result = match result {
        Ok(code) if code >= 128 && !container_running(&client, &args.container).await => {
            Err(anyhow::Error::new(TestbedGone(format!(
                "the testbed container {} went away while the command ran (it exited {code})",
                args.container
            ))))
        }
        r => r,
    };
    match result {
        Ok(code) => Ok(exit_status(code)),
        Err(e) if e.downcast_ref::<TestbedGone>().is_some() => Err(e),
        Err(e) => Err(e.context(format!(
            "running {:?} in testbed container {}",
            args.command, args.container
        ))),
    }
}

/// Whether the testbed still runs. A forced removal kills the command
/// before the daemon marks the container stopped, so look a few times.
async fn container_running(client: &Client, id: &str) -> bool {
    for _ in 0..6 {
        let running = match client.docker.inspect_container(id, None).await {
            Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => false,
        };
        if !running {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    true
}

/// Status as the caller sees it: the wrapper already maps 255 to 253;
/// anything out of range is a failure of ours.
fn exit_status(code: i64) -> u8 {
    match code {
        0..=254 => code as u8,
        _ => 253,
    }
}

/// Our caller gave up on the command (autopkgtest's timeout sends SIGTERM):
/// kill it and its children in the testbed; the caller then dies of the
/// same signal.
async fn kill(client: &Client, container: &str, token: &str) {
    if let Err(e) = exec::kill(client, container, token).await {
        eprintln!("autopkgtest-virt-rdocker: could not stop the command in the testbed: {e:#}");
    }
}

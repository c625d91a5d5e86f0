//! The protocol state machine (Closed/Open) over a Testbed, and the loop
//! that feeds it lines from stdin. Replies, messages and exit codes follow
//! autopkgtest's VirtSubproc.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::protocol::{self, Command, Parsed};
use crate::signals::{self, Terminations};
use crate::terminal::Terminal;
use crate::testbed::{Console, Testbed};
use crate::{debug, PROG};

/// The reference's exit status for protocol failures.
const EXIT_FAILURE: u8 = 12;

/// A line longer than this is no command of autopkgtest's.
const MAX_LINE: usize = 1 << 20;

pub enum Step {
    Reply(String),
    Quit,
}

/// A failure that ends the session, as VirtSubproc's bomb().
#[derive(Debug)]
pub struct Bomb(pub String);

pub struct Server<T: Testbed> {
    tb: T,
    scratch: Option<String>,
    copy_timeout: Duration,
}

impl<T: Testbed> Server<T> {
    pub fn new(tb: T, copy_timeout: Duration) -> Server<T> {
        Server {
            tb,
            scratch: None,
            copy_timeout,
        }
    }

    fn require_open(&self, what: &str) -> Result<&str, Bomb> {
        self.scratch
            .as_deref()
            .ok_or_else(|| Bomb(format!("`{what}' when not open")))
    }

    pub async fn handle(&mut self, cmd: Command) -> Result<Step, Bomb> {
        let fail = |e: anyhow::Error| Bomb(format!("{e:#}"));
        match cmd {
            Command::Capabilities => Ok(reply(&self.tb.capabilities())),
            Command::Open => {
                if self.scratch.is_some() {
                    return Err(Bomb("`open' when already open".into()));
                }
                let d = self.tb.start().await.map_err(fail)?;
                self.scratch = Some(d.clone());
                Ok(reply(&[protocol::quote(d.as_bytes())]))
            }
            Command::Close => {
                self.require_open("close")?;
                self.scratch = None;
                self.tb.stop().await.map_err(fail)?;
                Ok(reply(&[]))
            }
            Command::Revert => {
                let before = self.require_open("revert")?.to_string();
                let d = self.tb.revert().await.map_err(|e| {
                    self.scratch = None;
                    fail(e)
                })?;
                if d != before {
                    return Err(Bomb(format!(
                        "virt-runner failed to restore downtmp path {before}, gave {d} instead"
                    )));
                }
                Ok(reply(&[protocol::quote(d.as_bytes())]))
            }
            Command::Reboot { prepare_only } => {
                self.require_open("reboot")?;
                if let Some(why) = self.tb.cannot_reboot() {
                    return Err(Bomb(format!(
                        "`reboot' when `reboot' not advertised: {why}"
                    )));
                }
                self.tb.reboot(prepare_only).await.map_err(fail)?;
                // A bare `ok`, as VirtSubproc's cmd_reboot answers and
                // autopkgtest expects (no result words), whatever
                // README.virtualisation-server says.
                Ok(reply(&[]))
            }
            Command::PrintExecuteCommand => {
                self.require_open("print-execute-command")?;
                let argv = self.tb.run_argv().map_err(fail)?;
                Ok(Step::Reply(protocol::execute_command_reply(&argv)))
            }
            Command::CopyDown { host, testbed } => {
                self.copy("copydown", &host, &testbed, false).await
            }
            Command::CopyUp { testbed, host } => self.copy("copyup", &testbed, &host, true).await,
            Command::Shell { dir, env } => {
                self.require_open("shell")?;
                // As the reference: no terminal, or a shell that failed,
                // is a message, and the reply is ok all the same.
                match Terminal::open() {
                    Err(e) => eprintln!("{PROG}: Cannot run shell: {e}"),
                    Ok(term) => {
                        if let Err(e) =
                            run_shell(&mut self.tb, &shell_script(&dir, &env), &term).await
                        {
                            eprintln!("{PROG}: Cannot run shell: {e:#}");
                        }
                    }
                }
                Ok(reply(&[]))
            }
            Command::AuxverbDebugFail => {
                eprintln!("{PROG}: {}", self.tb.describe().await);
                Ok(reply(&[]))
            }
            Command::Quit => Ok(Step::Quit),
        }
    }

    async fn copy(&mut self, what: &str, src: &[u8], dst: &[u8], up: bool) -> Result<Step, Bomb> {
        self.require_open(what)?;
        if src.is_empty() || dst.is_empty() {
            return Err(Bomb(format!("{what} paths must be nonempty")));
        }
        let dir = protocol::is_dir_path(src);
        if dir != protocol::is_dir_path(dst) {
            return Err(Bomb(format!(
                "{what} paths must agree about directoryness (presence or absence of trailing /)"
            )));
        }
        let (host, testbed) = if up { (dst, src) } else { (src, dst) };
        if host.contains(&0) || testbed.contains(&0) {
            eprintln!("{PROG}: {what}: paths must not contain NUL bytes");
            return Ok(Step::Reply("copy-failed".into()));
        }
        let host_os = protocol::to_os(host);
        let host = Path::new(&host_os);
        let testbed = String::from_utf8_lossy(testbed).into_owned();
        debug!("{what} {} {testbed} (dir: {dir})", host.display());
        let op = async {
            if up {
                self.tb.pull(&testbed, host, dir).await
            } else {
                self.tb.push(host, &testbed, dir).await
            }
        };
        match tokio::time::timeout(self.copy_timeout, op).await {
            Ok(Ok(())) => Ok(reply(&[])),
            Ok(Err(e)) => {
                eprintln!("{PROG}: {what} failed: {e:#}");
                Ok(Step::Reply("copy-failed".into()))
            }
            Err(_) => {
                eprintln!(
                    "{PROG}: {what} timed out after {} s (AUTOPKGTEST_VIRT_COPY_TIMEOUT)",
                    self.copy_timeout.as_secs()
                );
                Ok(Step::Reply("timeout".into()))
            }
        }
    }

    /// Remove the testbed, whatever state we are in.
    pub async fn cleanup(&mut self) {
        self.scratch = None;
        if let Err(e) = self.tb.stop().await {
            eprintln!("{PROG}: {e:#}");
        }
    }
}

fn reply(words: &[String]) -> Step {
    let mut s = String::from("ok");
    for w in words {
        s.push(' ');
        s.push_str(w);
    }
    Step::Reply(s)
}

/// The shell command line of the reference's default hook_shell: the
/// directory, the protocol's variables, and the caller's TERM.
fn shell_script(dir: &str, env: &[String]) -> String {
    let mut cmd = format!("cd \"{dir}\"; ");
    for e in env {
        cmd.push_str(&format!("export \"{e}\"; "));
    }
    if let Ok(term) = std::env::var("TERM") {
        cmd.push_str(&format!("export TERM=\"{term}\"; "));
    }
    cmd.push_str("bash -i");
    cmd
}

/// An interactive shell in the testbed on the caller's terminal
/// (/dev/tty), which is in raw mode meanwhile, so that Ctrl-C and Ctrl-Z
/// reach the shell, not rdocker.
async fn run_shell<T: Testbed>(tb: &mut T, script: &str, term: &Terminal) -> anyhow::Result<()> {
    let size = term.size()?;
    let mut resizes = term.resizes()?;
    // Dropped in reverse: the terminal is restored before SIGINT ends a
    // session again.
    let _held = signals::hold_interrupts();
    let _raw = term.raw()?;
    let (mut input, mut output) = (term, term);
    let console = Console {
        input: &mut input,
        output: &mut output,
        size,
        resizes: &mut resizes,
    };
    tb.shell(script, console).await
}

enum Input {
    Line(Vec<u8>),
    TooLong,
    Eof,
}

/// Read stdin on a plain thread, so that EOF is noticed even while a
/// command runs (a caller killed mid-copy must not leave the testbed).
fn read_input() -> mpsc::UnboundedReceiver<Input> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut r = stdin.lock();
        loop {
            let mut line = Vec::new();
            let got = std::io::Read::take(&mut r, MAX_LINE as u64 + 1).read_until(b'\n', &mut line);
            let ev = match got {
                Ok(0) | Err(_) => Input::Eof,
                Ok(_) if line.len() > MAX_LINE => Input::TooLong,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    Input::Line(line)
                }
            };
            let stop = !matches!(ev, Input::Line(_));
            if tx.send(ev).is_err() || stop {
                return;
            }
        }
    });
    rx
}

fn say(line: &str) {
    // autopkgtest closes our stdout before `quit`: a failed write is no error.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

enum End {
    Quit,
    Bomb(String),
    Signal(nix::sys::signal::Signal),
}

/// How the process is to end, once the runtime is down and dropped
/// containers are removed (main.rs).
pub enum Exit {
    Code(ExitCode),
    Signal(nix::sys::signal::Signal),
}

impl Exit {
    pub fn now(self) -> ExitCode {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(sig) => signals::die_of(sig),
        }
    }
}

pub async fn serve<T: Testbed>(mut server: Server<T>, mut sigs: Terminations) -> Exit {
    let mut input = read_input();
    let mut pending: VecDeque<Input> = VecDeque::new();
    let mut input_done = false;
    say("ok");
    let end = 'session: loop {
        let ev = match pending.pop_front() {
            Some(ev) => ev,
            None => tokio::select! {
                ev = input.recv() => ev.unwrap_or(Input::Eof),
                sig = sigs.next() => break 'session End::Signal(sig),
            },
        };
        let line = match ev {
            Input::Line(l) => l,
            Input::TooLong => {
                break End::Bomb(format!("command line longer than {MAX_LINE} bytes"))
            }
            Input::Eof => break End::Bomb("end of file on stdin - caller quit?".into()),
        };
        let cmd = match protocol::parse_line(&line) {
            Parsed::Blank => continue,
            Parsed::Error(m) => break End::Bomb(m),
            Parsed::Command(c) => c,
        };
        debug!("executing {}", String::from_utf8_lossy(&line).trim());
        // quit and close are clean-ups themselves: let them finish.
        let abortable = !matches!(cmd, Command::Quit | Command::Close);
        // A container being created cannot be removed before the daemon
        // says it exists: a signal during open or revert waits for that
        // (boundedly), then ends the session.
        let creates = matches!(cmd, Command::Open | Command::Revert);
        let mut deferred: Option<End> = None;
        let grace = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(grace);
        let step = {
            let run = server.handle(cmd);
            tokio::pin!(run);
            loop {
                tokio::select! {
                    r = &mut run => match deferred.take() {
                        Some(end) => break 'session end,
                        None => break r,
                    },
                    _ = &mut grace, if deferred.is_some() => break 'session deferred.take().unwrap(),
                    sig = sigs.next(), if deferred.is_none() => {
                        if creates {
                            debug!("signal {sig} during container creation: finishing it first");
                            grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(20));
                            deferred = Some(End::Signal(sig));
                        } else {
                            break 'session End::Signal(sig);
                        }
                    }
                    ev = input.recv(), if abortable && !input_done => match ev {
                        // A caller that queued more commands before closing
                        // stdin (a script) still gets them run in order.
                        Some(ev @ Input::Line(_)) => pending.push_back(ev),
                        Some(ev) if !pending.is_empty() => {
                            input_done = true;
                            pending.push_back(ev)
                        }
                        // EOF mid-command with nothing queued: the caller is
                        // gone (a cancelled CI job); do not finish its copy.
                        _ if creates => {
                            input_done = true;
                            grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(20));
                            deferred = Some(End::Bomb("end of file on stdin - caller quit?".into()));
                        }
                        _ => break 'session End::Bomb("end of file on stdin - caller quit?".into()),
                    },
                }
            }
        };
        match step {
            Ok(Step::Reply(r)) => say(&r),
            Ok(Step::Quit) => break End::Quit,
            Err(Bomb(m)) => break End::Bomb(m),
        }
    };
    server.cleanup().await;
    match end {
        End::Quit => {
            say("ok");
            Exit::Code(ExitCode::SUCCESS)
        }
        End::Bomb(m) => {
            eprintln!("{PROG}: failure: {m}");
            Exit::Code(ExitCode::from(EXIT_FAILURE))
        }
        End::Signal(sig) => Exit::Signal(sig),
    }
}

//! A shell kept running in the testbed that starts commands for rdocker
//! without a docker exec each, beside a local daemon where pipes.rs's
//! fifos already carry the command's stdio.
//!
//! Why: a docker exec costs the daemon a round trip of 70-80 ms here
//! (create, start through runc, inspect), and autopkgtest runs about 38
//! commands per test, 1650 over its own test suite. The agent starts a
//! command in a few milliseconds.
//!
//! How: the agent is itself started by a detached docker exec, as root,
//! so that the commands it starts have what a docker exec gives them (the
//! container's cgroup, capabilities, seccomp and AppArmor profiles,
//! rlimits, user and working directory); the wrapper gives each the same
//! clean environment as on the exec route. It reads tokens from the fifo
//! /run/rdocker-agent/ctl and runs /run/rdocker-exec-TOKEN/cmd through
//! `setsid -f`: a session of its own, as runc gives each exec, and
//! default signal dispositions (a shell's `&` would ignore SIGINT).
//!
//! cmd opens the fifo `st` as its stdout, runs the exec route's wrapper
//! (whose `R` then lands in `st`), and writes the wrapper's exit status
//! after it: rdocker reads `R`, then the status, then end of file.
//!
//! Whoever first creates the file `claim` owns the command: the agent
//! before starting it, rdocker before falling back to a docker exec when
//! the agent has not answered. So a command never runs twice, and a
//! killed or stuck agent costs one wait, not the command. A command the
//! agent claimed but did not start within START_WITHIN fails.
//!
//! ctl is the testbed's to replace. rdocker records its device and inode
//! when it makes it and opens it only through confined.rs, which checks
//! them first: a node planted under the name is never written to, and a
//! fifo that is not ours means there is no agent.

use anyhow::{anyhow, Context, Result};
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::confined::{self, Made};
use super::pipes::{self, Fifos};
use super::root::Root;
use crate::docker::daemon::client::Client;

/// The agent's directory in pipes::DIR, and its request fifo.
pub const AGENT_DIR: &str = "rdocker-agent";
const CTL: &str = "/run/rdocker-agent/ctl";

/// What the wrapper runs first on this route: the fifos, as on the
/// docker exec route, and two more processes to expect when nothing was
/// left in the background (the agent and the wrapper's parent).
pub fn prelude() -> String {
    format!("rdocker_procs=5\n{}", pipes::PRELUDE)
}

/// The agent. It gives up at once where `setsid -f` is missing (busybox),
/// before it opens ctl: rdocker then finds no reader there and uses
/// docker exec. Tokens are checked to be hex, so a line cannot name a
/// path of its choosing. The claim is made with noclobber (O_EXCL), and
/// through `true`: a failed redirection of a special built-in such as `:`
/// would end the shell.
pub const AGENT: &str = r#"setsid -f true </dev/null >/dev/null 2>&1 || exit 1
exec 3<>/run/rdocker-agent/ctl </dev/null >/dev/null 2>&1 || exit 1
set -C
while read -r t <&3; do
    case $t in ''|*[!0-9a-f]*) continue;; esac
    d=/run/rdocker-exec-$t
    true >"$d/claim" 2>/dev/null || continue
    setsid -f sh "$d/cmd" 3<&-
done
"#;

/// How long rdocker waits for the agent to start a command before it
/// claims the command back and uses docker exec.
const CLAIM_AFTER: Duration = Duration::from_secs(2);

/// How long a command the agent claimed may take to start (its wrapper's
/// `R`): a stuck or false agent must not hold the caller for ever.
const START_WITHIN: Duration = Duration::from_secs(5);

/// The agent's ctl, opened for writing once it is known to be the fifo
/// rdocker made. ENXIO: nobody reads it. ENOENT: no agent here.
fn open_ctl(root: &Root, ctl: Made) -> std::result::Result<OwnedFd, Errno> {
    let e = root.lookup(CTL, false)?;
    match confined::open_fifo(&e, ctl, OFlag::O_WRONLY | OFlag::O_NONBLOCK) {
        Ok(r) => r,
        // Replaced, or chmod'ed: not our agent's; as if there were none.
        Err(_) => Err(Errno::ENOENT),
    }
}

/// Start the agent in a testbed that was just created, and return what
/// was recorded of its ctl. Failure leaves docker exec as the route.
pub async fn start(client: &Client, container: &str, root: &Root) -> Result<Made> {
    let (_run, dir) = pipes::private_dir(root, AGENT_DIR)?;
    // Made, checked, and closed: while only the agent holds it open, a
    // writer that finds no reader knows the agent is gone.
    let (fd, ctl) = pipes::fifo(&dir, "ctl", OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
    drop(fd);
    let created = client
        .docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdin: Some(false),
                attach_stdout: Some(false),
                attach_stderr: Some(false),
                tty: Some(false),
                cmd: Some(
                    ["sh", "-c", AGENT, "rdocker-agent"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                ),
                ..Default::default()
            },
        )
        .await
        .context("cannot create the agent's exec")?;
    match client
        .docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        )
        .await
        .context("cannot start the agent")?
    {
        StartExecResults::Detached => {}
        StartExecResults::Attached { .. } => {
            return Err(anyhow!("the daemon attached the agent's exec"))
        }
    }
    // Until the agent has ctl open, a command would find no reader and
    // take a docker exec: wait for it, as the first commands follow at
    // once. A writer's open succeeds once there is a reader.
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    let mut delay = Duration::from_millis(1);
    loop {
        match open_ctl(root, ctl) {
            Ok(_) => return Ok(ctl),
            Err(Errno::ENXIO) if tokio::time::Instant::now() < deadline => {
                // One that gave up (no `setsid -f`: busybox) will never
                // open it.
                let running = client
                    .docker
                    .inspect_exec(&created.id)
                    .await
                    .map(|i| i.running)
                    .unwrap_or(Some(false));
                if running == Some(false) {
                    return Err(anyhow!(
                        "the agent exited at once (no `setsid -f` in the testbed?)"
                    ));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(20));
            }
            Err(Errno::ENXIO) => {
                return Err(anyhow!(
                    "the agent did not open its fifo within {READY_WITHIN:?}"
                ))
            }
            Err(e) => return Err(e).context("cannot open the agent's fifo"),
        }
    }
}

/// How long open waits for the agent to listen.
const READY_WITHIN: Duration = Duration::from_secs(2);

/// Quote for sh: any bytes but NUL survive single quotes.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// cmd for `argv` (the exec route's wrapped command).
pub fn script(fifo_dir: &str, argv: &[String]) -> String {
    let words: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    format!(
        "exec >{}/st || exit 1\n{}\necho \" $?\"\n",
        quote(&format!("{}/{fifo_dir}", pipes::DIR)),
        words.join(" ")
    )
}

/// Hand `argv` to the agent. None: there is no agent listening; the
/// caller uses docker exec.
pub fn submit(root: &Root, fifos: &Fifos, token: &str, argv: &[String]) -> Result<Option<OwnedFd>> {
    let Some(made) = root.agent() else {
        return Ok(None);
    };
    let ctl = match open_ctl(root, made) {
        Ok(f) => f,
        // No agent here, or it has died.
        Err(Errno::ENOENT | Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(e).context("cannot open the agent's fifo"),
    };
    // Open before cmd exists: its writer's open then never waits.
    let st = fifos.extra_fifo("st", OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
    fifos.write_file("cmd", script(fifos.name(), argv).as_bytes())?;
    match nix::unistd::write(&ctl, format!("{token}\n").as_bytes()) {
        Ok(_) => Ok(Some(st)),
        // Gone since the open (EPIPE), or so far behind that its fifo is
        // full: nothing was written, so the command is still ours.
        Err(Errno::EPIPE | Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e).context("cannot write to the agent's fifo"),
    }
}

/// What became of a command handed to the agent.
pub enum Outcome {
    /// The agent never took it: run it another way.
    NotTaken,
    /// It ended. `ready`: the wrapper opened its fifos (sent `R`), so the
    /// command ran. `status`: None if the wrapper was killed before it
    /// could say.
    Ended { ready: bool, status: Option<i64> },
}

/// Wait for the command to end. `on_ready` runs when the wrapper has
/// opened its fifos.
pub async fn wait(
    st: OwnedFd,
    fifos: &Fifos,
    root: &Root,
    mut on_ready: impl FnMut(),
) -> Result<Outcome> {
    // SAFETY: the OwnedFd moves into the AsyncFd, which alone closes it.
    let st = unsafe { AsyncFd::register_with_interest(st, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("cannot watch the command's status fifo")?;
    let mut got: Vec<u8> = Vec::new();
    let mut taken = false;
    let mut buf = [0u8; 64];
    let submitted = tokio::time::Instant::now();
    loop {
        // Until the agent has taken the command, wait for it only so long;
        // then until it has started it; then look now and then whether
        // the testbed still runs.
        let wait = if !got.is_empty() {
            Duration::from_secs(2)
        } else if taken {
            (submitted + START_WITHIN).saturating_duration_since(tokio::time::Instant::now())
        } else {
            CLAIM_AFTER
        };
        let mut guard = match tokio::time::timeout(wait, st.readable()).await {
            Ok(g) => g?,
            Err(_) if got.is_empty() && !taken => {
                if fifos.claim("claim")? {
                    return Ok(Outcome::NotTaken);
                }
                taken = true;
                continue;
            }
            Err(_) if got.is_empty() => {
                return Err(anyhow!(
                    "the agent in the testbed took the command but did not start it within \
                     {START_WITHIN:?}; something in the testbed has replaced or stopped the \
                     agent (/run/rdocker-agent); revert the testbed"
                ));
            }
            Err(_) => {
                root.check_alive()?;
                continue;
            }
        };
        match guard.try_io(|fd| {
            nix::unistd::read(fd.get_ref().as_fd(), &mut buf).map_err(std::io::Error::from)
        }) {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                if got.is_empty() && buf[0] == b'R' {
                    on_ready();
                }
                got.extend_from_slice(&buf[..n]);
                if got.len() > 64 {
                    return Err(anyhow!("the command's status fifo says too much"));
                }
            }
            Ok(Err(e)) => return Err(e).context("cannot read the command's status fifo"),
            Err(_would_block) => continue,
        }
    }
    let ready = got.first() == Some(&b'R');
    let rest = if ready { &got[1..] } else { &got[..] };
    let status = std::str::from_utf8(rest)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    Ok(Outcome::Ended { ready, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_every_word() {
        let argv: Vec<String> = ["env", "sh", "-c", "echo 'hi' \"$x\"", "a b", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = script("rdocker-exec-ab", &argv);
        assert_eq!(
            s,
            "exec >'/run/rdocker-exec-ab'/st || exit 1\n\
             'env' 'sh' '-c' 'echo '\\''hi'\\'' \"$x\"' 'a b' ''\n\
             echo \" $?\"\n"
        );
    }

    /// The script, run by a real sh, passes every word through unchanged.
    #[test]
    fn script_words_survive_sh() {
        let words = ["it's", "$HOME", "`id`", "a\nb", "\\", "*", "\"q\""];
        let mut argv = vec!["printf".to_string(), "[%s]".to_string()];
        argv.extend(words.iter().map(|s| s.to_string()));
        let quoted: Vec<String> = argv.iter().map(|a| quote(a)).collect();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(quoted.join(" "))
            .output()
            .expect("sh runs");
        let want: String = words.iter().map(|w| format!("[{w}]")).collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    }
}

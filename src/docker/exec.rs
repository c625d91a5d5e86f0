//! Running commands in the testbed through the exec API.
//!
//! The in-container part is a small POSIX sh wrapper, so that the
//! environment, the exit status and the clean-up of stray processes match
//! autopkgtest-virt-docker's auxverb without needing bash or a docker CLI.

use anyhow::{bail, Result};
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use super::client::{status_of, Client};

/// Runs "$@" with the reference's clean environment, maps 255 to 253 (255
/// means a testbed failure to autopkgtest), and kills background processes
/// still holding our stdout or stderr (the exec's pipes, or pipes.rs's
/// fifos), which would otherwise keep the caller waiting for EOF for ever.
/// $0 is a token that lets `KILL_SCRIPT` find this process.
pub const WRAPPER: &str = r#"unset PS1 2>/dev/null
set -a
[ -r /etc/environment ] && . /etc/environment 2>/dev/null || true
[ -r /etc/default/locale ] && . /etc/default/locale 2>/dev/null || true
[ -r /etc/profile ] && . /etc/profile 2>/dev/null || true
set +a
"$@" 6>&-; rc=$?; [ $rc != 255 ] || rc=253
# PID 1, its sleep and this shell (and on agent.rs's route the agent and
# this shell's parent) are all there is when nothing was left in the
# background: then there is nothing to look for (no forks).
set -- /proc/[0-9]*
[ $# -gt ${rdocker_procs:-3} ] || exit $rc
pat=""
for fd in 1 2; do
    l=$(readlink /proc/$$/fd/$fd 2>/dev/null) || continue
    case "$l" in
        pipe:\[*\]) n=${l#pipe:[}; pat="$pat -o -lname pipe:?${n%]}?";;
        /run/rdocker-exec-*) pat="$pat -o -lname $l";;
    esac
done
if [ -n "$pat" ]; then
    kill=""
    for f in $(find /proc/[0-9]*/fd -maxdepth 1 \( -false $pat \) 2>/dev/null); do
        p=${f#/proc/}; p=${p%%/*}
        [ "$p" != $$ ] && [ "$p" != "$PPID" ] && kill="$kill $p"
    done
    [ -z "$kill" ] || kill -9 $kill >/dev/null 2>&1 || true
fi
exit $rc
"#;

/// Kills the wrapper whose token is "rdocker-exec-$1", all its descendants,
/// and whatever holds its stdout or stderr: what a timed-out test leaves.
/// The pattern is written `rdocker[-]exec-` so that grep's own command
/// line, also under /proc, does not match it.
pub const KILL_SCRIPT: &str = r#"for round in 1 2 3; do
    w=$(grep -lzx -e "rdocker[-]exec-$1" /proc/[0-9]*/cmdline 2>/dev/null) || exit 0
    w=${w#/proc/}; w=${w%%/*}
    pat=""
    for fd in 1 2; do
        l=$(readlink /proc/$w/fd/$fd 2>/dev/null) || continue
        case "$l" in
            pipe:\[*\]) n=${l#pipe:[}; pat="$pat -o -lname pipe:?${n%]}?";;
            /run/rdocker-exec-*) pat="$pat -o -lname $l";;
        esac
    done
    all="$w"; new="$w"
    while [ -n "$new" ]; do
        next=""
        for s in /proc/[0-9]*/stat; do
            read -r line < "$s" 2>/dev/null || continue
            set -- ${line##*) }
            for p in $new; do
                if [ "$2" = "$p" ]; then c=${s#/proc/}; next="$next ${c%/stat}"; fi
            done
        done
        all="$all$next"; new=$next
    done
    if [ -n "$pat" ]; then
        for f in $(find /proc/[0-9]*/fd -maxdepth 1 \( -false $pat \) 2>/dev/null); do
            p=${f#/proc/}; all="$all ${p%%/*}"
        done
    fi
    for p in $all; do [ "$p" != $$ ] && kill -9 "$p" 2>/dev/null; done
done
exit 0
"#;

/// Where a command's stdio goes.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Stdio {
    /// The exec's own attached streams.
    Exec,
    /// pipes.rs's fifos, under a docker exec.
    Fifos,
    /// pipes.rs's fifos, under agent.rs's agent.
    Agent,
}

/// The argv that runs `cmd` under the wrapper, tagged with `token`.
pub fn wrapped(token: &str, cmd: &[String], stdio: Stdio) -> Vec<String> {
    let script = match stdio {
        Stdio::Exec => WRAPPER.to_string(),
        Stdio::Fifos => format!("{}{WRAPPER}", super::pipes::PRELUDE),
        Stdio::Agent => format!("rdocker_procs=5\n{}{WRAPPER}", super::pipes::PRELUDE),
    };
    let mut argv = vec![
        "env".to_string(),
        "-i".into(),
        "sh".into(),
        "-c".into(),
        script,
        format!("rdocker-exec-{token}"),
    ];
    argv.extend(cmd.iter().cloned());
    argv
}

/// A testbed failure that autopkgtest must not mistake for a test result.
#[derive(Debug)]
pub struct TestbedGone(pub String);

impl std::fmt::Display for TestbedGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for TestbedGone {}

fn gone(container: &str, e: &bollard::errors::Error) -> anyhow::Error {
    anyhow::Error::new(TestbedGone(format!(
        "the testbed container {container} is gone or stopped ({e}); it was removed or \
         killed outside rdocker, or the daemon restarted"
    )))
}

/// Where exec output goes.
pub trait Sink: Send {
    fn stdout(&mut self, data: &[u8]) -> Result<()>;
    fn stderr(&mut self, data: &[u8]) -> Result<()>;
}

/// Captured output, for rdocker's own small commands.
#[derive(Default)]
pub struct Captured {
    pub out: Vec<u8>,
    pub err: Vec<u8>,
}

impl Sink for Captured {
    fn stdout(&mut self, d: &[u8]) -> Result<()> {
        self.out.extend_from_slice(d);
        Ok(())
    }
    fn stderr(&mut self, d: &[u8]) -> Result<()> {
        self.err.extend_from_slice(d);
        Ok(())
    }
}

/// Who runs an exec.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum As {
    /// The image's user, as a docker exec without -u: the test's commands.
    Default,
    /// root: rdocker's own copies and clean-up, whatever the image's USER.
    Root,
}

/// Run `argv` in `container` as `user`, streaming `stdin` (None: no input)
/// in and output to `sink`. Returns the exit status.
pub async fn run(
    client: &Client,
    container: &str,
    user: As,
    argv: Vec<String>,
    stdin: Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
    sink: &mut dyn Sink,
) -> Result<i64> {
    let docker = &client.docker;
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdin: Some(stdin.is_some()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                cmd: Some(argv),
                user: (user == As::Root).then(|| "0".to_string()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match status_of(&e) {
            Some(404) | Some(409) => gone(container, &e),
            _ => anyhow::Error::new(e).context("cannot create an exec in the testbed"),
        })?;
    let started = docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await
        .map_err(|e| match status_of(&e) {
            Some(404) | Some(409) => gone(container, &e),
            _ => anyhow::Error::new(e).context("cannot start an exec in the testbed"),
        })?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        bail!("the daemon started the exec detached");
    };

    let pump = async move {
        if let Some(mut rx) = stdin {
            while let Some(chunk) = rx.recv().await {
                if input.write_all(&chunk).await.is_err() {
                    // The command stopped reading; drop the rest, as a pipe would.
                    return;
                }
            }
        }
        // EOF for the command's stdin: a half-close of the hijacked stream.
        let _ = input.shutdown().await;
    };
    let copy_out = async {
        while let Some(frame) = output.next().await {
            match frame {
                Ok(bollard::container::LogOutput::StdOut { message }) => sink.stdout(&message)?,
                Ok(bollard::container::LogOutput::StdErr { message }) => sink.stderr(&message)?,
                Ok(_) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e).context("lost the exec's output stream"))
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let (_, copied) = tokio::join!(pump, copy_out);
    let copied_err = copied.err();

    // The output ends when the command's descriptors close; its status can
    // lag a moment behind.
    let mut delay = Duration::from_micros(500);
    for _ in 0..200 {
        let inspect = docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| gone(container, &e))?;
        if inspect.running != Some(true) {
            if let Some(e) = copied_err {
                return Err(e);
            }
            return match inspect.exit_code {
                Some(code) => Ok(code),
                None => Err(anyhow::Error::new(TestbedGone(format!(
                    "the exec in testbed container {container} ended without an exit status"
                )))),
            };
        }
        if let Some(e) = copied_err {
            // The stream broke while the command still runs: the daemon or
            // the container is in trouble.
            return Err(e);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
    bail!("the exec in testbed container {container} did not finish after its output ended")
}

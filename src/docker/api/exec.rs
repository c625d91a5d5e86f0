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

use crate::docker::daemon::client::{status_of, Client};

/// Where the wrapper records its PID, in the testbed's /run.
pub const PIDS: &str = "rdocker-pids";

/// Runs "$@" with the reference's clean environment, maps 255 to 253 (255
/// means a testbed failure to autopkgtest), and kills background processes
/// still holding our stdout or stderr (the exec's pipes, or pipes.rs's
/// fifos), which would otherwise keep the caller waiting for EOF for ever.
/// $0 is the token "rdocker-exec-TOKEN". As root, the wrapper records its
/// PID and start time in /run/rdocker-pids/TOKEN, where a normal user
/// cannot write, for `KILL_SCRIPT`: anyone can imitate a command line.
/// Nothing the testbed names is globbed or split (set -f, quoted, find's
/// tests as positional parameters). The prologue forks only to make the
/// directory, once per testbed: a fork costs about 1 ms here, and commands
/// racing to make it test again after mkdir fails (the loser would
/// otherwise record nothing and be unkillable on agent.rs's route).
pub const WRAPPER: &str = r#"rdocker_pidf=""
rdocker_start() { read -r s </proc/$$/stat && set -- ${s##*) } && rdocker_st=${20}; }
rdocker_ours() { [ -d /run/rdocker-pids ] && [ ! -L /run/rdocker-pids ] && [ -O /run/rdocker-pids ]; }
if rdocker_ours || mkdir -m 700 /run/rdocker-pids 2>/dev/null || rdocker_ours; then
    f="/run/rdocker-pids/${0#rdocker-exec-}"
    if rdocker_start; then
        set -C
        { echo "$$ $rdocker_st" >"$f"; } 2>/dev/null && rdocker_pidf=$f
        set +C
    fi
fi
unset PS1 2>/dev/null
set -a
[ -r /etc/environment ] && . /etc/environment 2>/dev/null || true
[ -r /etc/default/locale ] && . /etc/default/locale 2>/dev/null || true
[ -r /etc/profile ] && . /etc/profile 2>/dev/null || true
set +a
"$@" 6>&-; rc=$?; [ $rc != 255 ] || rc=253
set -f
unset IFS
# On the host routes rdocker removes it, which saves a fork.
[ -z "$rdocker_pidf" ] || [ -n "${rdocker_host_rm:-}" ] || rm -f -- "$rdocker_pidf"
# PID 1, its sleep and this shell (and on agent.rs's route the agent and
# this shell's parent) are all there is when nothing was left in the
# background: then there is nothing to look for (no forks).
set +f; set -- /proc/[0-9]*; set -f
[ $# -gt ${rdocker_procs:-3} ] || exit $rc
# $1 as a pattern for find's -lname that matches it alone.
rdocker_glob() {
    case $1 in
        *\[*|*\]*|*\**|*\?*|*\\*) printf '%s\n' "$1" | sed 's/[][*?\\]/\\&/g';;
        *) printf '%s\n' "$1";;
    esac
}
set --
for fd in 1 2; do
    l=$(readlink "/proc/$$/fd/$fd" 2>/dev/null) || continue
    case $l in
        pipe:\[*\]) n=${l#pipe:[}; n=${n%]}
            case $n in ''|*[!0-9]*) ;; *) set -- "$@" -o -lname "pipe:?$n?";; esac;;
        "/run/$0/"*) set -- "$@" -o -lname "$(rdocker_glob "$l")";;
    esac
done
if [ $# -gt 0 ]; then
    set +f; fds=$(echo /proc/[0-9]*/fd); set -f
    kill=""
    for f in $(find $fds -maxdepth 1 \( -false "$@" \) 2>/dev/null); do
        p=${f#/proc/}; p=${p%%/*}
        [ "$p" != $$ ] && [ "$p" != "$PPID" ] && kill="$kill $p"
    done
    [ -z "$kill" ] || kill -9 $kill >/dev/null 2>&1 || true
fi
exit $rc
"#;

/// Kills the wrapper whose token is "rdocker-exec-$1", its session, all
/// their descendants, and whatever holds its stdout or stderr: what a
/// timed-out test leaves. The wrapper is the PID it recorded as root, if
/// that process (same start time) still carries the token; else a process
/// with the token whose parent is outside the container, as a docker
/// exec's is, or whose session leader is rdocker's: a root test that
/// deletes the records does not escape. Each command runs in a session of
/// its own (runc's, or the agents' setsid), whose leader carries the
/// token (the wrapper itself) or the agent's cmd path
/// (`sh /run/rdocker-exec-T/cmd`), and was started by root (real uid 0)
/// or from outside the container: a normal user's decoys, with the same
/// command line in a session of their own, have none of these, and a
/// process cannot join another session. A process that leaves the
/// session on purpose (setsid) is out of reach, as it is of the
/// reference's kill. The pattern is written `rdocker[-]exec-` so that
/// grep's own command line does not match it.
pub const KILL_SCRIPT: &str = r#"set -f
unset IFS
t=$1
case $t in ''|*[!0-9a-f]*) echo "rdocker-kill: bad token $t" >&2; exit 2;; esac
tok=rdocker-exec-$t
# The fields of /proc/$1/stat after the command name: the state is $1,
# the parent $2, the session $4.
fields() { read -r s <"/proc/$1/stat" && printf '%s\n' "${s##*) }"; } 2>/dev/null
set -- $(fields $$); mysid=$4; set --
# Whether the session $1 is one of rdocker's commands': its leader is
# the wrapper or the agent's cmd shell, root's or docker exec's.
leader() {
    case $1 in ''|*[!0-9]*|0|1|"$mysid") return 1;; esac
    grep -qzx -e "rdocker[-]exec-$t" -e "/run/rdocker[-]exec-$t/cmd" "/proc/$1/cmdline" \
        2>/dev/null || return 1
    set -- "$1" $(fields "$1")
    [ "$3" = 0 ] && return 0
    while read -r k r rest; do
        [ "$k" = Uid: ] && { [ "$r" = 0 ]; return; }
    done <"/proc/$1/status" 2>/dev/null
    return 1
}
wrapper() {
    if [ -n "$(find /run/rdocker-pids -maxdepth 0 -type d -user 0 -perm 700 2>/dev/null)" ] &&
        read -r p start <"/run/rdocker-pids/$t" 2>/dev/null; then
        case $p in
            ''|*[!0-9]*) ;;
            *) set -- $(fields "$p")
                if [ "${20}" = "$start" ] &&
                    grep -qzx -e "rdocker[-]exec-$t" "/proc/$p/cmdline" 2>/dev/null; then
                    echo "$p"
                    return
                fi;;
        esac
    fi
    set +f; set -- /proc/[0-9]*/cmdline; set -f
    for c in $(grep -lzx -e "rdocker[-]exec-$t" "$@" 2>/dev/null); do
        p=${c#/proc/}; p=${p%/cmdline}
        set -- $(fields "$p")
        if [ "$2" = 0 ] || leader "$4"; then echo "$p"; fi
    done
}
# $1 and all its descendants.
tree() {
    all=$1; new=$1
    while [ -n "$new" ]; do
        next=""
        set +f; stats=$(echo /proc/[0-9]*/stat); set -f
        for s in $stats; do
            c=${s#/proc/}; c=${c%/stat}
            set -- $(fields "$c")
            for p in $new; do
                if [ "$2" = "$p" ]; then next="$next $c"; fi
            done
        done
        all="$all$next"; new=$next
    done
    echo "$all"
}
# The live processes of the sessions $sessions.
members() {
    [ -n "$sessions" ] || return 0
    set +f; stats=$(echo /proc/[0-9]*/stat); set -f
    for s in $stats; do
        c=${s#/proc/}; c=${c%/stat}
        set -- $(fields "$c")
        [ -n "$4" ] && [ "$1" != Z ] || continue
        case " $sessions " in *" $4 "*) echo "$c";; esac
    done
}
glob() {
    case $1 in
        *\[*|*\]*|*\**|*\?*|*\\*) printf '%s\n' "$1" | sed 's/[][*?\\]/\\&/g';;
        *) printf '%s\n' "$1";;
    esac
}
found=""; sessions=""
for round in 1 2 3 4 5; do
    w=$(wrapper)
    # Sessions are remembered: a session's number is not reused while a
    # process of it lives, and its members outlive the wrapper.
    for p in $w; do
        set -- $(fields "$p")
        case " $sessions " in *" $4 "*) continue;; esac
        if leader "$4"; then sessions="$sessions $4"; fi
    done
    set --
    m=$(members)
    if [ -z "$w$m" ]; then
        # Not started yet (the agent takes a moment), or gone.
        [ -z "$found" ] && [ $round -lt 3 ] && { sleep 0.2; continue; }
        exit 0
    fi
    found=1
    # The wrapper's parent holds its pipes' other ends when it is
    # api/agent.rs's agent, which runs other commands too.
    pp=""
    for p in $w; do set -- $(fields "$p"); pp="$pp $2"; done
    set --
    for fd in 1 2; do
        for p in $w; do
            l=$(readlink "/proc/$p/fd/$fd" 2>/dev/null) || continue
            case $l in
                pipe:\[*\]) n=${l#pipe:[}; n=${n%]}
                    case $n in ''|*[!0-9]*) ;; *) set -- "$@" -o -lname "pipe:?$n?";; esac;;
                "/run/$tok/"*) set -- "$@" -o -lname "$(glob "$l")";;
            esac
        done
    done
    all=$(tree "$(echo $w $m)")
    if [ $# -gt 0 ]; then
        set +f; fds=$(echo /proc/[0-9]*/fd); set -f
        for f in $(find $fds -maxdepth 1 \( -false "$@" \) 2>/dev/null); do
            p=${f#/proc/}; all="$all ${p%%/*}"
        done
    fi
    for p in $all; do
        case " $pp $$ " in *" $p "*) continue;; esac
        kill -9 "$p" 2>/dev/null
    done
    # The wrapper cannot remove its file now.
    [ -z "$(find /run/rdocker-pids -maxdepth 0 -type d -user 0 -perm 700 2>/dev/null)" ] ||
        rm -f -- "/run/rdocker-pids/$t"
done
exit 0
"#;

/// Stop the command tagged "rdocker-exec-`token`" in `container`, with
/// what it started (KILL_SCRIPT).
pub async fn kill(client: &Client, container: &str, token: &str) -> Result<()> {
    let argv: Vec<String> = ["sh", "-c", KILL_SCRIPT, "rdocker-kill", token]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut cap = Captured::default();
    let killed = run(client, container, As::Root, argv, None, &mut cap);
    match tokio::time::timeout(Duration::from_secs(10), killed).await {
        Err(_) => bail!("the kill in the testbed took more than 10 s"),
        Ok(Err(e)) => Err(e),
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(code)) => bail!("the kill in the testbed exited {code}: {}", cap.err),
    }
}

/// Run rdocker's own `script` (sh, with `args` as $1...) as root, tagged
/// so that it is killed, with what it started, when rdocker gives up on
/// it (output refused, stream lost): the daemon leaves such an exec
/// running. The script must not `exec` its last command away from the
/// tag (end it with `exit $?`: dash execs a last simple command).
pub async fn run_script(
    client: &Client,
    container: &str,
    script: &str,
    args: Vec<String>,
    stdin: Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
    sink: &mut dyn Sink,
) -> Result<i64> {
    let token = crate::docker::names::random_hex(8);
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        script.into(),
        format!("rdocker-exec-{token}"),
    ];
    argv.extend(args);
    let ran = run(client, container, As::Root, argv, stdin, sink).await;
    if ran.is_err() {
        if let Err(e) = kill(client, container, &token).await {
            crate::debug!("could not stop rdocker's command in the testbed: {e:#}");
        }
    }
    ran
}

/// The argv that runs `cmd` under the wrapper, tagged with `token`.
/// `prelude` runs first: a route's own set-up of the command's stdio (the
/// host routes' fifos), "" for the exec's own streams.
pub fn wrapped(token: &str, cmd: &[String], prelude: &str) -> Vec<String> {
    let script = format!("{prelude}{WRAPPER}");
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

/// Start the exec `id`, attached; a container gone meanwhile is a
/// testbed failure.
pub(super) async fn start_attached(
    docker: &bollard::Docker,
    container: &str,
    id: &str,
    tty: bool,
) -> Result<StartExecResults> {
    docker
        .start_exec(
            id,
            Some(StartExecOptions {
                detach: false,
                tty,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await
        .map_err(|e| match status_of(&e) {
            Some(404) | Some(409) => gone(container, &e),
            _ => anyhow::Error::new(e).context("cannot start an exec in the testbed"),
        })
}

pub(super) fn gone(container: &str, e: &bollard::errors::Error) -> anyhow::Error {
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

/// How much of each stream rdocker keeps of what it captures from the
/// testbed: the rest is counted, not kept, so that a test writing without
/// end cannot make rdocker's memory grow.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// The first CAPTURE_LIMIT bytes of a stream, and how many more came.
#[derive(Default)]
pub struct Bounded {
    kept: Vec<u8>,
    more: u64,
}

impl Bounded {
    pub fn push(&mut self, d: &[u8]) {
        let take = CAPTURE_LIMIT.saturating_sub(self.kept.len()).min(d.len());
        self.kept.extend_from_slice(&d[..take]);
        self.more += (d.len() - take) as u64;
    }

    /// The first `n` bytes, quoted, for an error message that must stay
    /// short.
    pub fn excerpt(&self, n: usize) -> String {
        let head = String::from_utf8_lossy(&self.kept[..n.min(self.kept.len())]).into_owned();
        format!("{head:?}")
    }

    /// How many bytes came beyond what was kept.
    pub fn more(&self) -> u64 {
        self.more
    }
}

/// The text, trimmed, saying how much was left out.
impl std::fmt::Display for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(String::from_utf8_lossy(&self.kept).trim())?;
        if self.more > 0 {
            write!(f, " ... {} more bytes", self.more)?;
        }
        Ok(())
    }
}

/// Captured output, for rdocker's own small commands: bounded.
#[derive(Default)]
pub struct Captured {
    pub out: Bounded,
    pub err: Bounded,
    /// The command should print nothing on stdout: more than
    /// CAPTURE_LIMIT there stops it (see `Overflow`).
    quiet_stdout: bool,
}

impl Captured {
    /// For a command whose stdout should stay empty (tar -x): one that
    /// writes more than CAPTURE_LIMIT there is stopped, not waited for.
    pub fn quiet_stdout() -> Captured {
        Captured {
            quiet_stdout: true,
            ..Default::default()
        }
    }
}

/// A command wrote more than CAPTURE_LIMIT where it should write nothing,
/// and was stopped.
#[derive(Debug)]
pub struct Overflow;

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote more than {} KiB to its standard output, where it should write nothing, \
             and was stopped",
            CAPTURE_LIMIT / 1024
        )
    }
}
impl std::error::Error for Overflow {}

impl Sink for Captured {
    fn stdout(&mut self, d: &[u8]) -> Result<()> {
        self.out.push(d);
        if self.quiet_stdout && self.out.more() > 0 {
            return Err(Overflow.into());
        }
        Ok(())
    }
    fn stderr(&mut self, d: &[u8]) -> Result<()> {
        self.err.push(d);
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

/// Why an exec's stream is cut after its input ended, and what to do.
const CUT: &str = "the connection to the daemon was cut after the command's input ended. \
    The likely cause is a proxy between rdocker and the daemon that drops half-closed \
    connections (socat does, 0.5 s after one side ends, unless given -t with a longer \
    time): let it keep them open";

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
    let started = start_attached(docker, container, &created.id, false).await?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        bail!("the daemon started the exec detached");
    };

    let half_closed = std::sync::atomic::AtomicBool::new(false);
    let pump = async {
        let Some(mut rx) = stdin else {
            // Nothing attached: the stream stays whole both ways.
            return std::future::pending().await;
        };
        while let Some(chunk) = rx.recv().await {
            if input.write_all(&chunk).await.is_err() {
                // The command stopped reading; drop the rest, as a pipe would.
                return;
            }
        }
        // EOF for the command's stdin: a half-close of the hijacked stream.
        let _ = input.shutdown().await;
        half_closed.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    // Only a stream lost, not a sink that refused output, can be the cut.
    let lost = std::sync::atomic::AtomicBool::new(false);
    let copy_out = async {
        while let Some(frame) = output.next().await {
            match frame {
                Ok(bollard::container::LogOutput::StdOut { message }) => sink.stdout(&message)?,
                Ok(bollard::container::LogOutput::StdErr { message }) => sink.stderr(&message)?,
                Ok(_) => {}
                Err(e) => {
                    lost.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(anyhow::Error::new(e).context("lost the exec's output stream"));
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    // The exec is over when its output ends: input not yet read is
    // dropped, as a pipe's would be. A sink that refuses more output ends
    // it at once (the daemon kills an exec whose attach connection is
    // closed).
    tokio::pin!(pump);
    tokio::pin!(copy_out);
    let copied = tokio::select! {
        r = &mut copy_out => r,
        () = &mut pump => copy_out.await,
    };
    let half_closed = half_closed.load(std::sync::atomic::Ordering::Relaxed);
    let cut = half_closed && lost.load(std::sync::atomic::Ordering::Relaxed);
    let copied_err = copied.err().map(|e| if cut { e.context(CUT) } else { e });

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
                // The daemon's status for an exec whose connection went
                // away: the wrapper maps nothing to 126 itself, but a
                // command may exit 126 on its own, so only after a
                // half-close, the cause seen in practice.
                Some(126) if half_closed => Err(anyhow::Error::new(TestbedGone(format!(
                    "the exec in testbed container {container} ended with status 126, the \
                     daemon's status for an exec whose connection was closed: {CUT}"
                )))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_and_the_host_agree_on_the_pid_directory() {
        let dir = format!("/run/{PIDS}");
        assert!(WRAPPER.contains(&format!("mkdir -m 700 {dir} ")));
        assert!(KILL_SCRIPT.contains(&format!("<\"{dir}/$t\"")));
        // Every path in either script is that directory.
        for s in [WRAPPER, KILL_SCRIPT] {
            for (i, _) in s.match_indices("rdocker-pids") {
                assert_eq!(&s[i - 5..i], "/run/", "{}", &s[i - 5..i + 12]);
            }
        }
    }
}

//! The stream agent: one process kept running in a testbed that rdocker
//! reaches only through the Engine API (a CI job container, a remote
//! daemon, --remote), which starts the test's commands without a docker
//! exec each.
//!
//! Why: a docker exec costs the daemon 55-100 ms (create, start through
//! runc, inspect), and autopkgtest 6.x runs about 25 commands to prepare
//! each test. Through the agent a command starts in a few milliseconds.
//!
//! How: the agent is a small Perl program (perl-base is Essential in
//! Debian and its derivatives; without perl there is no agent and every
//! command takes a docker exec). It is started by one attached docker
//! exec, as the exec route runs commands, so the commands it forks have
//! what a docker exec would give them (cgroup, capabilities, seccomp and
//! AppArmor profiles, rlimits, user, working directory); each gets a
//! session of its own, default signal dispositions and an empty signal
//! mask, /dev/null as stdin (only commands without input take this
//! route), and runs under the exec route's wrapper, which gives it the
//! same clean environment. Frames go both ways over the exec's stdin and
//! stdout: `frame()`.
//!
//! The agent is the testbed's, so what it sends is not trusted: frames
//! are bounded, and each command may have at most WINDOW bytes of output
//! in flight (the agent reads a command's pipes only while it has credit;
//! the host gives credit back as its caller takes the output), so a
//! command that writes without end, or an agent that lies, cannot make
//! rdocker's memory grow. A broken frame ends the agent: its commands are
//! reported lost, later ones take docker exec.

use anyhow::{anyhow, bail, Context, Result};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::docker::daemon::client::Client;

/// The agent. Frames are `kind, channel (u32 BE), length (u32 BE), data`.
/// To the agent: `S` spawn (the argv, NUL-separated), `A` credit back
/// (u32 BE). From it: `H` hello (its uid), `O` and `E` output, `X` the
/// exit status (decimal; 128+N for a signal, as a shell reports it), `F`
/// a command that could not be started (it did not run). A command is
/// over when both its pipes reach end of file (the wrapper kills what
/// still holds them) and it is reaped.
pub const PROGRAM: &str = r#"use strict; use POSIX ();
my $W = WINDOW; my $MAXIN = 1 << 20;
$SIG{PIPE} = 'IGNORE';
binmode STDIN; binmode STDOUT;
my (%ch, %fd);
sub put {
    my $m = pack('a N N', $_[0], $_[1], length $_[2]) . $_[2];
    while (length $m) {
        my $n = syswrite(STDOUT, $m);
        if (!defined $n) { next if $!{EINTR}; exit 0 }
        substr($m, 0, $n, '');
    }
}
sub spawn {
    my ($c, $d) = @_;
    my @a = split /\0/, $d, -1;
    if (!@a || $ch{$c}) { put('F', $c, 'bad request'); return }
    my ($or, $ow, $er, $ew);
    unless (pipe($or, $ow) && pipe($er, $ew)) { put('F', $c, "pipe: $!"); return }
    my $pid = fork;
    if (!defined $pid) { put('F', $c, "fork: $!"); return }
    if (!$pid) {
        POSIX::setsid();
        open(STDIN, '<', '/dev/null'); open(STDOUT, '>&', $ow); open(STDERR, '>&', $ew);
        POSIX::sigaction($_, POSIX::SigAction->new('DEFAULT')) for 1 .. 64;
        POSIX::sigprocmask(POSIX::SIG_SETMASK(), POSIX::SigSet->new);
        exec { $a[0] } @a;
        POSIX::_exit(127);
    }
    close $ow; close $ew;
    $ch{$c} = { pid => $pid, credit => $W, open => 2 };
    $fd{fileno $or} = [$c, 'O', $or];
    $fd{fileno $er} = [$c, 'E', $er];
}
put('H', 0, "uid=$<");
my $in = '';
while (1) {
    my $r = '';
    vec($r, 0, 1) = 1;
    for my $f (keys %fd) { vec($r, $f, 1) = 1 if $ch{$fd{$f}[0]}{credit} > 0 }
    my $n = select(my $rr = $r, undef, undef, undef);
    if ($n < 0) { next if $!{EINTR}; exit 1 }
    if (vec($rr, 0, 1)) {
        my $got = sysread(STDIN, $in, 65536, length $in);
        if (!defined $got) { next if $!{EINTR}; exit 0 }
        exit 0 if !$got;
        while (length $in >= 9) {
            my ($t, $c, $l) = unpack('a N N', $in);
            exit 1 if $l > $MAXIN;
            last if length $in < 9 + $l;
            my $d = substr($in, 9, $l);
            substr($in, 0, 9 + $l, '');
            if ($t eq 'S') { spawn($c, $d) }
            elsif ($t eq 'A' && $ch{$c} && $l == 4) { $ch{$c}{credit} += unpack('N', $d) }
        }
    }
    for my $f (keys %fd) {
        next unless vec($rr, $f, 1);
        my ($c, $t, $fh) = @{$fd{$f}};
        my $x = $ch{$c};
        my $want = $x->{credit} < 65536 ? $x->{credit} : 65536;
        my $got = sysread($fh, my $buf, $want);
        if (!defined $got) { next if $!{EINTR} || $!{EAGAIN}; $got = 0 }
        if ($got) { $x->{credit} -= $got; put($t, $c, $buf); next }
        close $fh;
        delete $fd{$f};
        next if --$x->{open};
        waitpid($x->{pid}, 0);
        my $s = $?;
        put('X', $c, ($s & 127) ? 128 + ($s & 127) : $s >> 8);
        delete $ch{$c};
    }
}
"#;

/// Output a command may have in flight: the agent stops reading its
/// pipes until the host gives credit back.
pub const WINDOW: usize = 256 * 1024;

/// The largest frame the agent may send: it reads at most 64 KiB at once.
const MAX_FROM_AGENT: usize = 64 * 1024;

/// How long a new agent may take to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

const HEADER: usize = 9;

/// One frame.
pub fn frame(kind: u8, chan: u32, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + data.len());
    f.push(kind);
    f.extend_from_slice(&chan.to_be_bytes());
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// Frames out of a byte stream, each at most `max` bytes of data.
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            max,
        }
    }

    pub fn push(&mut self, d: &[u8]) {
        self.buf.extend_from_slice(d);
    }

    /// The next whole frame, if there is one.
    pub fn next(&mut self) -> Result<Option<(u8, u32, Bytes)>> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let kind = self.buf[0];
        let chan = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(self.buf[5..9].try_into().expect("4 bytes")) as usize;
        if len > self.max {
            bail!("a frame of {len} bytes, more than the {} allowed", self.max);
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        self.buf.advance(HEADER);
        Ok(Some((kind, chan, self.buf.split_to(len).freeze())))
    }
}

/// What becomes of a command given to the agent.
#[derive(Debug)]
pub enum Event {
    Stdout(Bytes),
    Stderr(Bytes),
    /// It ended with this status.
    Exit(i64),
    /// The agent could not start it: it did not run.
    NotStarted(String),
    /// The agent ended (or broke its protocol) before the command did.
    Lost(String),
}

struct Chan {
    tx: mpsc::UnboundedSender<Event>,
    /// Output sent to the caller and not yet credited back.
    in_flight: usize,
}

#[derive(Default)]
struct State {
    next: u32,
    chans: HashMap<u32, Chan>,
    /// Why the agent is gone, once it is.
    gone: Option<String>,
}

/// A running agent. Dropping it ends the exec's stream, and the agent
/// with it; commands it started run on, as a docker exec's do when its
/// client goes.
pub struct Agent {
    to_agent: mpsc::UnboundedSender<Vec<u8>>,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Agent {
    /// Start the agent in `container`. `on_end` runs when it has ended
    /// (the container stopped, perl killed). An error: no agent, and
    /// commands take docker exec.
    pub async fn start(
        client: &Client,
        container: &str,
        on_end: impl FnOnce() + Send + 'static,
    ) -> Result<Agent> {
        let program = PROGRAM.replace("WINDOW", &WINDOW.to_string());
        // Its environment is the image's: PERL5OPT and the like must not
        // reach it. The commands' own comes from the wrapper.
        let argv: Vec<String> = [
            "env",
            "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "perl",
            "-e",
            &program,
            "rdocker-agent",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let created = client
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    cmd: Some(argv),
                    ..Default::default()
                },
            )
            .await
            .context("cannot create the agent's exec")?;
        let started = super::exec::start_attached(&client.docker, container, &created.id, false)
            .await
            .context("cannot start the agent")?;
        let StartExecResults::Attached { mut output, input } = started else {
            bail!("the daemon started the agent's exec detached");
        };

        // The hello, before anything is handed over.
        let mut dec = Decoder::new(MAX_FROM_AGENT);
        let mut stderr = super::exec::Bounded::default();
        let hello = async {
            loop {
                if let Some((kind, _, data)) = dec.next()? {
                    if kind != b'H' {
                        bail!("the agent began with {:?}, not its hello", kind as char);
                    }
                    return Ok(String::from_utf8_lossy(&data).into_owned());
                }
                match output.next().await {
                    Some(Ok(bollard::container::LogOutput::StdOut { message })) => {
                        dec.push(&message)
                    }
                    Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                        stderr.push(&message)
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::Error::new(e).context("lost its stream")),
                    None => bail!("it ended at once ({})", or_nothing(&stderr)),
                }
            }
        };
        let said = match tokio::time::timeout(HELLO_WITHIN, hello).await {
            Ok(r) => r.context("the agent did not start (no perl in the testbed?)")?,
            Err(_) => bail!("the agent did not say hello within {HELLO_WITHIN:?}"),
        };
        // As a normal user it could not have the wrapper record its PID,
        // and a timed-out command could not be found to be killed.
        if said != "uid=0" {
            bail!("the agent runs as {said}, not as root (the image's USER)");
        }

        let state = Arc::new(Mutex::new(State::default()));
        let (to_agent, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            let mut input = input;
            while let Some(f) = rx.recv().await {
                if input.write_all(&f).await.is_err() {
                    return;
                }
            }
        });
        let st = state.clone();
        let reader = tokio::spawn(async move {
            let why = read_frames(&mut output, &mut dec, &st).await;
            let mut s = st.lock().expect("agent state");
            for (_, c) in s.chans.drain() {
                let _ = c.tx.send(Event::Lost(why.clone()));
            }
            s.gone = Some(why);
            drop(s);
            on_end();
        });
        Ok(Agent {
            to_agent,
            state,
            tasks: vec![writer, reader],
        })
    }

    /// Start `argv`. Its events come on the receiver, its channel is the
    /// number to give credit back for.
    pub fn spawn(&self, argv: &[String]) -> Result<(u32, mpsc::UnboundedReceiver<Event>)> {
        if argv.is_empty() || argv.iter().any(|a| a.contains('\0')) {
            bail!("a command with an empty or NUL-carrying argv cannot be started");
        }
        let mut s = self.state.lock().expect("agent state");
        if let Some(why) = &s.gone {
            bail!("the agent is gone: {why}");
        }
        s.next = s.next.wrapping_add(1).max(1);
        let chan = s.next;
        let (tx, rx) = mpsc::unbounded_channel();
        s.chans.insert(chan, Chan { tx, in_flight: 0 });
        let joined = argv.join("\0");
        self.to_agent
            .send(frame(b'S', chan, joined.as_bytes()))
            .map_err(|_| anyhow!("the agent's stream is closed"))?;
        Ok((chan, rx))
    }

    /// The caller took `n` bytes of `chan`'s output: the agent may read
    /// that much more.
    pub fn credit(&self, chan: u32, n: usize) {
        if n == 0 {
            return;
        }
        let mut s = self.state.lock().expect("agent state");
        if let Some(c) = s.chans.get_mut(&chan) {
            c.in_flight = c.in_flight.saturating_sub(n);
        }
        drop(s);
        let _ = self
            .to_agent
            .send(frame(b'A', chan, &(n as u32).to_be_bytes()));
    }

    pub fn alive(&self) -> bool {
        self.state.lock().expect("agent state").gone.is_none()
    }
}

fn or_nothing(b: &super::exec::Bounded) -> String {
    let s = b.to_string();
    if s.is_empty() {
        "it said nothing".into()
    } else {
        format!("it said: {s}")
    }
}

/// Route the agent's frames to their commands until its stream ends;
/// returns why it ended.
async fn read_frames(
    output: &mut (impl futures_util::Stream<
        Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
    > + Unpin),
    dec: &mut Decoder,
    state: &Mutex<State>,
) -> String {
    loop {
        loop {
            match dec.next() {
                Ok(Some((kind, chan, data))) => {
                    if let Err(e) = route(state, kind, chan, data) {
                        return format!("the agent broke its protocol: {e}");
                    }
                }
                Ok(None) => break,
                Err(e) => return format!("the agent broke its protocol: {e}"),
            }
        }
        match output.next().await {
            Some(Ok(bollard::container::LogOutput::StdOut { message })) => dec.push(&message),
            // perl's own complaints: not ours to keep.
            Some(Ok(_)) => {}
            Some(Err(e)) => return format!("its stream was lost: {e}"),
            None => {
                return "it ended (the testbed stopped, or something in it killed the agent)".into()
            }
        }
    }
}

/// One frame from the agent to its command's receiver.
fn route(state: &Mutex<State>, kind: u8, chan: u32, data: Bytes) -> Result<()> {
    let mut s = state.lock().expect("agent state");
    let Some(c) = s.chans.get_mut(&chan) else {
        bail!("a frame for channel {chan}, which is not open");
    };
    let event = match kind {
        b'O' | b'E' => {
            c.in_flight += data.len();
            if c.in_flight > WINDOW {
                bail!("{} bytes in flight, more than its credit", c.in_flight);
            }
            if kind == b'O' {
                Event::Stdout(data)
            } else {
                Event::Stderr(data)
            }
        }
        b'X' => {
            let code = std::str::from_utf8(&data)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|c| (0..=255).contains(c))
                .ok_or_else(|| anyhow!("an exit status {:?}", String::from_utf8_lossy(&data)))?;
            Event::Exit(code)
        }
        b'F' => Event::NotStarted(String::from_utf8_lossy(&data).into_owned()),
        k => bail!("a frame of kind {:?}", k as char),
    };
    let last = matches!(event, Event::Exit(_) | Event::NotStarted(_));
    // A caller that went away takes no more output; its credit comes
    // back from the hub.
    let _ = c.tx.send(event);
    if last {
        s.chans.remove(&chan);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let mut all = frame(b'O', 7, b"hello");
        all.extend(frame(b'X', 7, b"0"));
        all.extend(frame(b'E', 1, &[0u8; 300]));
        for cut in 0..all.len() {
            let mut d = Decoder::new(1024);
            let mut got = Vec::new();
            for part in [&all[..cut], &all[cut..]] {
                d.push(part);
                while let Some(f) = d.next().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0], (b'O', 7, Bytes::from_static(b"hello")));
            assert_eq!(got[1], (b'X', 7, Bytes::from_static(b"0")));
            assert_eq!(got[2].2.len(), 300);
        }
    }

    #[test]
    fn a_frame_longer_than_allowed_is_refused_before_it_is_read() {
        let mut d = Decoder::new(16);
        d.push(&frame(b'O', 1, &[1u8; 9])[..HEADER]);
        assert!(d.next().unwrap().is_none());
        let mut d = Decoder::new(16);
        d.push(&frame(b'O', 1, &[1u8; 17])[..HEADER]);
        assert!(d.next().is_err());
    }

    fn state_with(chan: u32) -> (Mutex<State>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = State::default();
        s.chans.insert(chan, Chan { tx, in_flight: 0 });
        (Mutex::new(s), rx)
    }

    #[test]
    fn output_beyond_the_credit_breaks_the_protocol() {
        let (s, _rx) = state_with(3);
        let chunk = Bytes::from(vec![0u8; MAX_FROM_AGENT]);
        for _ in 0..WINDOW / MAX_FROM_AGENT {
            route(&s, b'O', 3, chunk.clone()).unwrap();
        }
        assert!(route(&s, b'E', 3, Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn frames_for_unknown_channels_or_kinds_and_bad_statuses_are_refused() {
        let (s, mut rx) = state_with(1);
        assert!(route(&s, b'O', 2, Bytes::from_static(b"x")).is_err());
        assert!(route(&s, b'Z', 1, Bytes::new()).is_err());
        assert!(route(&s, b'X', 1, Bytes::from_static(b"256")).is_err());
        assert!(route(&s, b'X', 1, Bytes::from_static(b"-1")).is_err());
        route(&s, b'X', 1, Bytes::from_static(b"137")).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Event::Exit(137))));
        // Closed once it exited.
        assert!(route(&s, b'O', 1, Bytes::from_static(b"x")).is_err());
    }

    /// The real program, under the host's perl, fed frames on stdin.
    #[test]
    fn the_program_runs_commands_and_reports_their_output_and_status() {
        use std::io::{Read, Write};
        if which::which("perl").is_err() {
            panic!("perl is needed for this test (Debian's perl-base)");
        }
        let program = PROGRAM.replace("WINDOW", &WINDOW.to_string());
        let mut child = std::process::Command::new("perl")
            .args(["-e", &program])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let sh = |s: &str| ["sh", "-c", s].join("\0");
        stdin
            .write_all(&frame(
                b'S',
                1,
                sh("echo out; echo err >&2; exit 3").as_bytes(),
            ))
            .unwrap();
        stdin
            .write_all(&frame(b'S', 2, sh("kill -TERM $$").as_bytes()))
            .unwrap();
        stdin
            .write_all(&frame(b'S', 3, b"/nonexistent/command"))
            .unwrap();
        // A signal ignored by the agent is the default again in the child.
        stdin
            .write_all(&frame(
                b'S',
                4,
                sh("grep ^SigIgn /proc/self/status").as_bytes(),
            ))
            .unwrap();
        // The agent ends with its input: read until all four are over.
        let mut stdout = child.stdout.take().unwrap();
        let mut d = Decoder::new(MAX_FROM_AGENT);
        let mut by: HashMap<u32, Vec<(u8, Bytes)>> = HashMap::new();
        let mut hello = None;
        let mut exits = 0;
        let mut buf = [0u8; 4096];
        while exits < 4 {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "the agent ended early: {by:?}");
            d.push(&buf[..n]);
            while let Some((k, c, data)) = d.next().unwrap() {
                match k {
                    b'H' => hello = Some(data),
                    _ => {
                        exits += usize::from(k == b'X');
                        by.entry(c).or_default().push((k, data));
                    }
                }
            }
        }
        drop(stdin);
        child.wait().unwrap();
        assert!(hello.unwrap().starts_with(b"uid="));
        let one = &by[&1];
        assert!(one.contains(&(b'O', Bytes::from_static(b"out\n"))));
        assert!(one.contains(&(b'E', Bytes::from_static(b"err\n"))));
        assert_eq!(one.last().unwrap(), &(b'X', Bytes::from_static(b"3")));
        assert_eq!(by[&2].last().unwrap(), &(b'X', Bytes::from_static(b"143")));
        assert_eq!(by[&3].last().unwrap(), &(b'X', Bytes::from_static(b"127")));
        // Only what glibc lets nobody change (its own signals 32 and 33)
        // may come ignored from the test harness.
        let four = String::from_utf8_lossy(&by[&4][0].1).into_owned();
        let ign = u64::from_str_radix(four.trim().trim_start_matches("SigIgn:").trim(), 16);
        assert_eq!(ign.unwrap() & !0x1_8000_0000, 0, "{four}");
    }
}

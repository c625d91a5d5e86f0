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
//! are bounded, and each command may have at most WINDOW of output in
//! flight, each frame counting FRAME_COST beyond its data (the agent reads
//! a command's pipes only while it has credit; the host gives credit back
//! as its caller takes the output), so a command that writes without end,
//! or an agent that lies, cannot make rdocker's memory grow. What goes to
//! the agent is bounded too: credit owed is one sum per command, whatever
//! the number of frames it pays for, and commands waiting for a stalled
//! agent's input have a byte budget (`Outbox`). A broken frame ends the
//! agent: its commands are reported lost, later ones take docker exec.

use anyhow::{anyhow, bail, Context, Result};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};

use crate::docker::daemon::client::Client;

/// The agent. Frames are `kind, channel (u32 BE), length (u32 BE), data`.
/// To the agent: `S` spawn (the argv, NUL-separated), `A` credit back
/// (u32 BE). From it: `H` hello (its uid), `O` and `E` output, `X` the
/// exit status (decimal; 128+N for a signal, as a shell reports it), `F`
/// a command that could not be started (it did not run). A command is
/// over when both its pipes reach end of file (the wrapper kills what
/// still holds them) and it is reaped.
pub const PROGRAM: &str = r#"use strict; use POSIX ();
my $W = WINDOW; my $C = COST; my $MAXIN = 1 << 20;
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
    for my $f (keys %fd) { vec($r, $f, 1) = 1 if $ch{$fd{$f}[0]}{credit} > $C }
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
        my $want = $x->{credit} - $C < 65536 ? $x->{credit} - $C : 65536;
        my $got = sysread($fh, my $buf, $want);
        if (!defined $got) { next if $!{EINTR} || $!{EAGAIN}; $got = 0 }
        if ($got) { $x->{credit} -= $got + $C; put($t, $c, $buf); next }
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

/// What one output frame costs of the window beyond its data: the host
/// queues each frame whole, so a flood of one-byte frames must use the
/// window up as its memory does (at most WINDOW / FRAME_COST frames).
pub const FRAME_COST: usize = 64;

/// Output frames a command's queue can hold: what the window allows, and
/// its last word (exit, not started, lost).
const QUEUE: usize = WINDOW / (FRAME_COST + 1) + 2;

/// Bytes of commands that may wait for an agent that does not read its
/// input (stopped, or stalled by its testbed): beyond, commands take
/// docker exec.
const SPAWN_BUDGET: usize = 2 << 20;

/// The program with its constants.
pub fn program() -> String {
    PROGRAM
        .replace("WINDOW", &WINDOW.to_string())
        .replace("COST", &FRAME_COST.to_string())
}

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

    /// The next whole frame, if there is one. Its data is a copy: a small
    /// frame kept in a queue must not pin the buffer it was read in.
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
        let data = Bytes::copy_from_slice(&self.buf[HEADER..HEADER + len]);
        self.buf.advance(HEADER + len);
        Ok(Some((kind, chan, data)))
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
    tx: mpsc::Sender<Event>,
    /// Output sent to the caller and not yet credited back, each frame
    /// counting FRAME_COST beyond its data.
    in_flight: usize,
}

/// What waits to be written to the agent's input: commands in order, and
/// the credit owed to each command as one sum. An agent that stops
/// reading costs SPAWN_BUDGET and one number per command, however much
/// output it forges meanwhile.
#[derive(Default)]
struct Outbox {
    spawns: VecDeque<Vec<u8>>,
    spawn_bytes: usize,
    owed: HashMap<u32, u32>,
    /// The agent's input is closed: nothing more goes.
    closed: bool,
}

impl Outbox {
    /// Everything waiting, as one write: commands first, so that a credit
    /// never comes before the command it is for.
    fn take(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for s in self.spawns.drain(..) {
            out.extend_from_slice(&s);
        }
        self.spawn_bytes = 0;
        for (chan, n) in self.owed.drain() {
            out.extend_from_slice(&frame(b'A', chan, &n.to_be_bytes()));
        }
        out
    }
}

#[derive(Default)]
struct State {
    next: u32,
    chans: HashMap<u32, Chan>,
    outbox: Outbox,
    /// Why the agent is gone, once it is.
    gone: Option<String>,
}

/// A running agent. Dropping it ends the exec's stream, and the agent
/// with it; commands it started run on, as a docker exec's do when its
/// client goes.
pub struct Agent {
    /// Wakes the writer: the outbox has something.
    wake: Arc<Notify>,
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
        let program = program();
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
        let wake = Arc::new(Notify::new());
        let (st, w) = (state.clone(), wake.clone());
        let writer = tokio::spawn(async move {
            let mut input = input;
            loop {
                let batch = st.lock().expect("agent state").outbox.take();
                if batch.is_empty() {
                    w.notified().await;
                    continue;
                }
                if input.write_all(&batch).await.is_err() {
                    st.lock().expect("agent state").outbox.closed = true;
                    return;
                }
            }
        });
        let st = state.clone();
        let reader = tokio::spawn(async move {
            let why = read_frames(&mut output, &mut dec, &st).await;
            let mut s = st.lock().expect("agent state");
            for (_, c) in s.chans.drain() {
                // A full queue: its caller sees the channel close instead.
                let _ = c.tx.try_send(Event::Lost(why.clone()));
            }
            s.gone = Some(why);
            drop(s);
            on_end();
        });
        Ok(Agent {
            wake,
            state,
            tasks: vec![writer, reader],
        })
    }

    /// Start `argv`. Its events come on the receiver, its channel is the
    /// number to give credit back for.
    pub fn spawn(&self, argv: &[String]) -> Result<(u32, mpsc::Receiver<Event>)> {
        if argv.is_empty() || argv.iter().any(|a| a.contains('\0')) {
            bail!("a command with an empty or NUL-carrying argv cannot be started");
        }
        let mut s = self.state.lock().expect("agent state");
        if let Some(why) = &s.gone {
            bail!("the agent is gone: {why}");
        }
        if s.outbox.closed {
            bail!("the agent's stream is closed");
        }
        let joined = argv.join("\0");
        let waiting = s.outbox.spawn_bytes + HEADER + joined.len();
        if waiting > SPAWN_BUDGET {
            bail!("the agent has not read its input ({waiting} bytes of commands waiting)");
        }
        s.next = s.next.wrapping_add(1).max(1);
        let chan = s.next;
        let (tx, rx) = mpsc::channel(QUEUE);
        s.chans.insert(chan, Chan { tx, in_flight: 0 });
        s.outbox
            .spawns
            .push_back(frame(b'S', chan, joined.as_bytes()));
        s.outbox.spawn_bytes = waiting;
        drop(s);
        self.wake.notify_one();
        Ok((chan, rx))
    }

    /// The caller took one output frame of `n` bytes of `chan`'s: the
    /// agent may read that much more (and the frame's cost).
    pub fn credit(&self, chan: u32, n: usize) {
        let n = n + FRAME_COST;
        let mut s = self.state.lock().expect("agent state");
        let Some(c) = s.chans.get_mut(&chan) else {
            // Over: the agent has forgotten it too.
            return;
        };
        c.in_flight = c.in_flight.saturating_sub(n);
        let owed = s.outbox.owed.entry(chan).or_default();
        *owed = owed.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        drop(s);
        self.wake.notify_one();
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
            c.in_flight += data.len() + FRAME_COST;
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
    // The window bounds the queue: full, the agent sent past its credit.
    // A caller that went away takes no more output; its credit comes back
    // from the hub.
    if let Err(mpsc::error::TrySendError::Full(_)) = c.tx.try_send(event) {
        bail!("more than {QUEUE} frames queued for channel {chan}");
    }
    if last {
        s.chans.remove(&chan);
        s.outbox.owed.remove(&chan);
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

    fn state_with(chan: u32) -> (Mutex<State>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut s = State::default();
        s.chans.insert(chan, Chan { tx, in_flight: 0 });
        (Mutex::new(s), rx)
    }

    #[test]
    fn output_beyond_the_credit_breaks_the_protocol() {
        let (s, _rx) = state_with(3);
        let chunk = Bytes::from(vec![0u8; MAX_FROM_AGENT - FRAME_COST]);
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

    fn agent_with_no_writer() -> Agent {
        Agent {
            wake: Arc::new(Notify::new()),
            state: Arc::default(),
            tasks: Vec::new(),
        }
    }

    /// The attack of issue 26: an agent that reads nothing (stopped) while
    /// 300,000 one-byte frames are forged for a command whose caller
    /// takes them. What waits for the agent stays one command and one sum.
    #[test]
    fn a_stalled_agent_costs_one_credit_sum_per_command() {
        let a = agent_with_no_writer();
        let (chan, mut rx) = a.spawn(&["true".to_string()]).unwrap();
        for _ in 0..300_000 {
            route(&a.state, b'O', chan, Bytes::from_static(b"x")).unwrap();
            let Ok(Event::Stdout(d)) = rx.try_recv() else {
                panic!("no output")
            };
            a.credit(chan, d.len());
        }
        let s = a.state.lock().unwrap();
        assert_eq!(s.outbox.spawns.len(), 1);
        assert_eq!(s.outbox.owed.len(), 1);
        assert_eq!(s.outbox.owed[&chan] as usize, 300_000 * (1 + FRAME_COST));
        assert_eq!(s.chans[&chan].in_flight, 0);
    }

    #[test]
    fn commands_waiting_for_a_stalled_agent_have_a_budget() {
        let a = agent_with_no_writer();
        let long = "x".repeat(64 * 1024);
        let mut n = 0;
        while a.spawn(std::slice::from_ref(&long)).is_ok() {
            n += 1;
            assert!(n <= SPAWN_BUDGET / long.len());
        }
        assert!(n >= SPAWN_BUDGET / (long.len() + HEADER) - 1);
        assert!(a.state.lock().unwrap().outbox.spawn_bytes <= SPAWN_BUDGET);
    }

    /// The queue is bounded by the window: a caller that takes nothing
    /// lets at most QUEUE frames in, then the agent broke the protocol.
    #[test]
    fn tiny_frames_use_the_window_up() {
        let (s, _rx) = state_with(5);
        let mut sent = 0;
        while route(&s, b'O', 5, Bytes::from_static(b"y")).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, WINDOW / (FRAME_COST + 1));
        assert!(sent < QUEUE);
    }

    /// What a decoder makes of `parts` pushed one after the other: the
    /// frames, and whether it refused one.
    fn decode(parts: &[&[u8]], max: usize) -> (Vec<(u8, u32, Bytes)>, bool) {
        let mut d = Decoder::new(max);
        let mut got = Vec::new();
        for p in parts {
            d.push(p);
            loop {
                match d.next() {
                    Ok(Some(f)) => got.push(f),
                    Ok(None) => break,
                    Err(_) => return (got, true),
                }
            }
        }
        (got, false)
    }

    /// `bytes` cut at the given points (taken modulo its length).
    fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut parts = Vec::new();
        let mut from = 0;
        for c in at.into_iter().chain([bytes.len()]) {
            parts.push(&bytes[from..c]);
            from = c;
        }
        parts
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn frames() -> impl Strategy<Value = Vec<(u8, u32, Vec<u8>)>> {
            prop::collection::vec(
                (
                    any::<u8>(),
                    any::<u32>(),
                    prop::collection::vec(any::<u8>(), 0..300),
                ),
                0..12,
            )
        }

        proptest! {
            /// encode then decode, cut anywhere: the same frames.
            #[test]
            fn frames_round_trip_through_any_split(
                fs in frames(),
                cuts in prop::collection::vec(any::<usize>(), 0..16),
            ) {
                let all: Vec<u8> = fs.iter().flat_map(|(k, c, d)| frame(*k, *c, d)).collect();
                let (got, refused) = decode(&split(&all, &cuts), 300);
                prop_assert!(!refused);
                let want: Vec<(u8, u32, Bytes)> =
                    fs.into_iter().map(|(k, c, d)| (k, c, Bytes::from(d))).collect();
                prop_assert_eq!(got, want);
            }

            /// Any bytes at all, whole or cut anywhere: the same frames and
            /// the same refusal, never a panic.
            #[test]
            fn any_stream_decodes_the_same_however_it_is_cut(
                bytes in prop::collection::vec(any::<u8>(), 0..2000),
                cuts in prop::collection::vec(any::<usize>(), 0..16),
                max in 0usize..64,
            ) {
                let whole = decode(&[&bytes], max);
                prop_assert_eq!(decode(&split(&bytes, &cuts), max), whole);
            }

            /// A header claiming more than allowed is refused as soon as it
            /// is in, before any of its data.
            #[test]
            fn an_oversize_frame_is_refused_at_its_header(
                kind in any::<u8>(),
                chan in any::<u32>(),
                len in 65u32..,
                max in 0usize..65,
            ) {
                let mut d = Decoder::new(max);
                let mut h = vec![kind];
                h.extend_from_slice(&chan.to_be_bytes());
                h.extend_from_slice(&len.to_be_bytes());
                d.push(&h[..8]);
                prop_assert!(d.next().unwrap().is_none());
                d.push(&h[8..]);
                prop_assert!(d.next().is_err());
            }

            /// Whatever an agent sends for a command, its queue and the
            /// output it holds stay within the window, or it broke the
            /// protocol.
            #[test]
            fn no_frame_sequence_outgrows_the_window(
                fs in prop::collection::vec((0u8..6, 0usize..70_000), 0..200),
            ) {
                let (s, rx) = state_with(9);
                for (k, len) in fs {
                    let kind = b"OEXFZO"[k as usize];
                    let data = Bytes::from(vec![b'1'; len.min(MAX_FROM_AGENT)]);
                    if route(&s, kind, 9, data).is_err() {
                        break;
                    }
                    let st = s.lock().unwrap();
                    if let Some(c) = st.chans.get(&9) {
                        prop_assert!(c.in_flight <= WINDOW);
                    }
                    prop_assert!(rx.len() <= QUEUE);
                }
            }
        }
    }

    /// The real program, under the host's perl, fed frames on stdin.
    #[test]
    fn the_program_runs_commands_and_reports_their_output_and_status() {
        use std::io::{Read, Write};
        if which::which("perl").is_err() {
            panic!("perl is needed for this test (Debian's perl-base)");
        }
        let program = program();
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

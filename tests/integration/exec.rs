//! The print-execute-command argv: exit codes, streams, environment,
//! background processes, signals.

use crate::util::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn open() -> (Server, Vec<String>) {
    open_on(&[])
}

fn open_on(extra: &[&str]) -> (Server, Vec<String>) {
    let mut args = extra.to_vec();
    let img = image();
    args.push(&img);
    let mut s = Server::start(&args);
    s.open();
    let argv = s.exec_argv();
    (s, argv)
}

/// Beside this daemon (fifos, agent.rs's agent), and through the Engine
/// API alone (api/agent.rs's stream agent, docker exec for input).
const ROUTES: [&[&str]; 2] = [&[], &["--remote"]];

#[test]
fn exit_codes() {
    for route in ROUTES {
        let (s, argv) = open_on(route);
        assert_eq!(sh(&argv, "true").status.code(), Some(0));
        assert_eq!(sh(&argv, "exit 7").status.code(), Some(7));
        // 255 is reserved for testbed failures: the reference maps it to 253.
        assert_eq!(sh(&argv, "exit 255").status.code(), Some(253));
        // Killed by a signal: 128+N, as a shell reports it.
        assert_eq!(sh(&argv, "kill -9 $$").status.code(), Some(137));
        assert_eq!(sh(&argv, "kill -TERM $$").status.code(), Some(143));
        // A missing command is the shell's 127, not a testbed failure.
        let o = sh(&argv, "no-such-command-here");
        assert_eq!(o.status.code(), Some(127));
        s.quit();
    }
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    for route in ROUTES {
        let (s, argv) = open_on(route);
        let o = sh(&argv, "echo out1; echo err1 >&2; echo out2; echo err2 >&2");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "out1\nout2\n");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "err1\nerr2\n");
        // Binary data passes through unchanged.
        let o = sh(&argv, "printf '\\000\\377\\r\\n'");
        assert_eq!(o.stdout, b"\0\xff\r\n");
        s.quit();
    }
}

#[test]
fn stdin_is_streamed() {
    for route in ROUTES {
        let (s, argv) = open_on(route);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let o = sh_stdin(&argv, "cat", &data);
        assert!(o.status.success());
        assert!(
            o.stdout == data,
            "stdin came back changed ({} bytes)",
            o.stdout.len()
        );
        // EOF on stdin reaches the command.
        let o = sh_stdin(&argv, "wc -c", b"hello");
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "5");
        s.quit();
    }
}

#[test]
fn output_is_streamed_not_buffered() {
    for route in ROUTES {
        let (s, argv) = open_on(route);
        // The first line must arrive while the command still runs.
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["sh", "-c", "echo first; sleep 5; echo second"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 6];
        out.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"first\n");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "first line took {:?}",
            t.elapsed()
        );
        child.wait().unwrap();
        s.quit();
    }
}

#[test]
fn environment_is_clean_and_from_the_testbed() {
    for route in ROUTES {
        let (s, argv) = open_on(route);
        sh_ok(
            &argv,
            "echo 'RDOCKER_FROM_ETC_ENVIRONMENT=yes' >> /etc/environment",
        );
        let o = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["env"])
            .env("RDOCKER_HOST_SECRET", "leaked")
            .env("LANG", "xx_XX.UTF-8")
            .output()
            .unwrap();
        assert!(o.status.success());
        let env = String::from_utf8_lossy(&o.stdout);
        assert!(
            !env.contains("RDOCKER_HOST_SECRET"),
            "host variable leaked: {env}"
        );
        assert!(!env.contains("xx_XX"), "host LANG leaked: {env}");
        assert!(
            env.contains("RDOCKER_FROM_ETC_ENVIRONMENT=yes"),
            "/etc/environment not read: {env}"
        );
        assert!(
            env.lines().any(|l| l.starts_with("PATH=")),
            "no PATH: {env}"
        );
        // /etc/default/locale too, when present.
        sh_ok(&argv, "echo 'LANG=C.UTF-8' > /etc/default/locale");
        assert_eq!(sh_ok(&argv, "echo $LANG"), "C.UTF-8\n");
        s.quit();
    }
}

#[test]
fn background_process_holding_stdout_does_not_hang() {
    for route in ROUTES {
        let (s, argv) = open_on(route);
        let t = Instant::now();
        let o = sh(&argv, "sleep 1000 & echo started");
        assert!(o.status.success());
        assert_eq!(String::from_utf8_lossy(&o.stdout), "started\n");
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "took {:?}",
            t.elapsed()
        );
        // And it was killed rather than left running.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            count_procs(&argv, "^sleep 1000 $"),
            0,
            "the background sleep survived"
        );
        s.quit();
    }
}

#[test]
fn sigterm_kills_the_command_in_the_testbed() {
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        for route in ROUTES {
            let (s, argv) = open_on(route);
            let mut child = start_running(
                &argv,
                "sleep 777 & sleep 778; echo not-killed",
                "^sleep 77[78] $",
                2,
            );
            let out = signal_and_reap(&mut child, sig, Duration::from_secs(10));
            assert!(!out.contains("not-killed"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if count_procs(&argv, "^sleep 77[78] $") == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{sig}: processes survived in the testbed"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            s.quit();
        }
    }
}

#[test]
fn runs_as_the_normal_user_with_su() {
    // autopkgtest runs tests as the suggested user through su.
    let mut s = Server::start(&[&user_image()]);
    s.open();
    let argv = s.exec_argv();
    assert_eq!(sh_ok(&argv, "su tester -s /bin/sh -c 'id -un'"), "tester\n");
    s.quit();
}

/// Beside a local daemon, stdio goes through fifos in the testbed's /run
/// (pipes.rs); with --remote, through the exec's own streams. Either way
/// the command sees the same data, and no fifo outlives its command.
#[test]
fn stdio_route_follows_the_daemon() {
    let links = "for fd in 0 1 2; do readlink /proc/$$/fd/$fd; done";
    let (s, argv) = open();
    let got = sh_ok(&argv, links);
    let l: Vec<&str> = got.lines().collect();
    assert_eq!(l.len(), 3, "{got}");
    for (link, end) in l.iter().zip(["/in", "/out", "/err"]) {
        assert!(
            link.starts_with("/run/rdocker-exec-") && link.ends_with(end),
            "a local daemon's exec has no fifo for {end}: {got}"
        );
    }
    // Empty stdin is an immediate end of file, and stdin the command never
    // reads does not hold it up.
    assert_eq!(sh(&argv, "wc -c").stdout, b"0\n");
    let t = Instant::now();
    let o = sh_stdin(&argv, "exit 3", &vec![7u8; 8 << 20]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    // Only the running command's own fifos are there.
    assert_eq!(sh_ok(&argv, "ls /run | grep -c '^rdocker-exec-'"), "1\n");
    // Without /run the exec still runs, through its own streams.
    sh_ok(&argv, "mv /run /run.away");
    let got = sh_ok(&argv, links);
    let pipes = |got: &str| {
        let l: Vec<&str> = got.lines().collect();
        l.len() == 3 && l[0] == "/dev/null" && l[1..].iter().all(|l| l.starts_with("pipe:"))
    };
    assert!(pipes(&got), "{got}");
    assert_eq!(sh_stdin(&argv, "cat", b"still here").stdout, b"still here");
    sh_ok(&argv, "mv /run.away /run");
    s.quit();

    let mut s = Server::start(&["--remote", &image()]);
    s.open();
    let argv = s.exec_argv();
    let got = sh_ok(&argv, links);
    assert!(
        pipes(&got),
        "--remote must not use the testbed's root: {got}"
    );
    assert_eq!(sh_stdin(&argv, "cat", b"remote").stdout, b"remote");
    s.quit();
}

/// Where rdocker sees the testbed's root, commands start through the agent
/// kept in the testbed (agent.rs), not a docker exec each: the wrapper's
/// parent is the agent's `cmd` script. They get what a docker exec gives:
/// no ignored or blocked signals, a session of their own. A killed agent
/// leaves docker exec as the route; a stopped one delays a command, which
/// then runs once, not twice.
#[test]
fn commands_start_through_the_agent_and_outlive_it() {
    let (s, argv) = open();
    let parent = "p=$(cut -d' ' -f4 /proc/$PPID/stat); tr '\\0' ' ' </proc/$p/cmdline";
    let got = sh_ok(&argv, parent);
    assert!(
        got.starts_with("sh /run/rdocker-exec-") && got.ends_with("/cmd "),
        "not started by the agent: {got:?}"
    );
    let signals = "grep -E '^Sig(Ign|Blk):' /proc/self/status";
    let status = sh_ok(&argv, signals);
    assert!(
        status.starts_with("SigBlk:\t0000000000000000\n"),
        "{status}"
    );
    // The session's leader is the agent's cmd script, not the agent.
    let sid = sh_ok(&argv, "cut -d' ' -f6 /proc/$$/stat");
    let agent = "grep -lzx 'rdocker[-]agent' /proc/[0-9]*/cmdline | cut -d/ -f3";
    let agent_pid = sh_ok(&argv, agent);
    assert_eq!(agent_pid.lines().count(), 1, "one agent: {agent_pid:?}");
    assert_ne!(sid.trim(), agent_pid.trim());

    // Stopped: the command waits for the agent, then runs through docker
    // exec; the agent, once woken, finds it claimed and leaves it.
    sh_ok(&argv, &format!("kill -STOP {}", agent_pid.trim()));
    let t = Instant::now();
    assert_eq!(sh_ok(&argv, "echo ran >>/tmp/once; echo hi"), "hi\n");
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    sh_ok(&argv, &format!("kill -CONT {}", agent_pid.trim()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sh_ok(&argv, "cat /tmp/once"), "ran\n");
    assert!(sh_ok(&argv, parent).starts_with("sh /run/rdocker-exec-"));

    // Killed: docker exec from then on, with the same results.
    sh(&argv, &format!("kill -9 {}", agent_pid.trim()));
    let t = Instant::now();
    let o = sh_stdin(&argv, "cat; echo err >&2; exit 4", b"in");
    assert_eq!(
        (o.status.code(), &o.stdout[..], &o.stderr[..]),
        (Some(4), &b"in"[..], &b"err\n"[..])
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The wrapper's parent is outside the testbed (pid 0 there).
    assert_eq!(sh(&argv, parent).stdout, b"");
    // The agent's commands had the signal dispositions a docker exec
    // gives: the daemon's ignored ones (none, unless it was started
    // with some ignored) and nothing blocked.
    assert_eq!(sh_ok(&argv, signals), status);
    s.quit();
}

/// Finds the wrapper among this shell's ancestors: W is its PID, tok its
/// token (its $0), which any user can read there.
const FIND_WRAPPER: &str = r#"p=$$
while :; do
    tok=$(tr '\0' '\n' </proc/$p/cmdline | grep -xE 'rdocker-exec-[0-9a-f]+' || true)
    [ -n "$tok" ] && break
    p=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2)
    [ "$p" -gt 1 ] || { echo "no wrapper above $$" >&2; exit 9; }
done
W=$p
"#;

/// Send `sig` to an exec argv's process once `ready` (a file in the
/// testbed) exists and `running` processes match; returns what it printed
/// on stdout.
fn signal_when_ready(argv: &[String], child: &mut std::process::Child, ready: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while sh(argv, &format!("test -e {ready}")).status.code() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the command never got ready; it exited {:?}",
            child.try_wait()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal_and_reap(
        child,
        nix::sys::signal::Signal::SIGTERM,
        Duration::from_secs(15),
    )
}

/// Send `sig` to an exec argv's process, which must then die of it
/// within `within`; returns what it printed on stdout.
fn signal_and_reap(
    child: &mut std::process::Child,
    sig: nix::sys::signal::Signal,
    within: Duration,
) -> String {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
    let t = Instant::now();
    let st = child.wait().unwrap();
    assert!(
        t.elapsed() < within,
        "exec mode took {:?} to die",
        t.elapsed()
    );
    assert!(!st.success(), "{st:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

fn assert_gone(argv: &[String], pattern: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_procs(argv, pattern) != 0 {
        assert!(
            Instant::now() < deadline,
            "{pattern}: survived the kill in the testbed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Commands that start together in a fresh testbed race to make the
/// root-only PID directory: each must still record its PID, or the kill
/// cannot find it on the agent's route (where its parent is in the
/// testbed), and a timed-out test would keep running.
#[test]
fn commands_started_together_all_stay_killable() {
    let (s, argv) = open();
    let mut children: Vec<_> = (0..6)
        .map(|i| {
            Command::new(&argv[0])
                .args(&argv[1..])
                .args(["sh", "-c", &format!("sleep 60{i}; echo not-killed")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_procs(&argv, "^sleep 60[0-5] $") != 6 {
        assert!(Instant::now() < deadline, "the commands never all started");
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in &children {
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }
    for c in &mut children {
        assert!(!c.wait().unwrap().success());
    }
    assert_gone(&argv, "^sleep 60[0-5] $");
    s.quit();
}

/// A normal user's processes carrying the wrapper's token in their argv,
/// outside its process tree and listed before it in /proc, cannot turn
/// the kill on a timed-out command away from it, nor onto themselves:
/// the kill finds the wrapper by the PID it recorded as root.
#[test]
fn decoys_cannot_divert_the_kill() {
    let mut s = Server::start(&[&user_image()]);
    s.open();
    let argv = s.exec_argv();
    let decoys = r#"
first() { [ "$(LC_ALL=C expr "x$1/" \< "x$W/")" = 1 ]; }
n=0; i=0
while [ $n -lt 4 ]; do
    i=$((i+1))
    if [ $i -lt 20000 ]; then
        q=$(sh -c 'echo $$')
        first $((q+2)) || continue
    fi
    ( setsid bash -c 'exec -a "$0" sleep 4343' "$tok" </dev/null >/dev/null 2>&1 & echo $! >/tmp/decoy )
    d=$(cat /tmp/decoy)
    if [ $i -ge 20000 ] || first "$d"; then n=$((n+1)); else kill "$d"; fi
done
echo "wrapper $W, decoys sort first: $i" >&2
sleep 4242 & touch /tmp/ready; sleep 4244
echo not-killed
"#;
    let script = format!("{FIND_WRAPPER}{decoys}");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["su", "tester", "-s", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let decoy = "^rdocker-exec-[0-9a-f]+ 4343 $";
    let out = signal_when_ready(&argv, &mut child, "/tmp/ready");
    assert!(!out.contains("not-killed"), "{out}");
    assert_gone(&argv, "^sleep 424[24] $");
    assert_eq!(count_procs(&argv, decoy), 4, "the kill reached the decoys");
    assert_eq!(
        sh_ok(
            &argv,
            "stat -c %U /run/rdocker-pids; ls /run/rdocker-pids | wc -l"
        ),
        "root\n1\n",
        "the PID files are root's, and only the running command's is left"
    );
    s.quit();
}

/// The kill's and the wrapper's find tests are built from what the
/// wrapper's stdout links to: a fifo renamed to a name with a space and a
/// `*` (a root test can) is matched as it is, never globbed or split, so
/// that a background process holding it is still killed.
#[test]
fn odd_stdout_names_do_not_break_the_kill() {
    let (s, argv) = open();
    let rename = r#"
d=/run/$tok
[ -p "$d/out" ] || { echo "no fifo at $d/out" >&2; exit 9; }
mv "$d/out" "$d/o *"
( sleep 4545 & )
touch /tmp/ready; sleep 4546
echo not-killed
"#;
    let script = format!("{FIND_WRAPPER}{rename}");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = signal_when_ready(&argv, &mut child, "/tmp/ready");
    assert!(!out.contains("not-killed"), "{out}");
    assert_gone(&argv, "^sleep 454[56] $");
    s.quit();
}

/// Through the Engine API alone, a command without input starts through
/// the stream agent kept in the testbed (api/agent.rs), not a docker exec
/// each: the wrapper's parent is the agent. It gets what a docker exec
/// gives: no blocked signals, the same ignored ones, a session of its
/// own. Output beyond the agent's window arrives whole through a slow
/// reader, commands at once each get their own, and a command with input
/// takes docker exec. Killing the agent ends the command it ran (137, its
/// processes gone), and later commands take docker exec.
#[test]
fn commands_start_through_the_stream_agent_on_the_api_route() {
    let (s, argv) = open_on(&["--remote"]);
    assert!(
        argv.iter().any(|a| a.starts_with("--hub=")),
        "no agent listed in {argv:?}"
    );
    let parent = "p=$(cut -d' ' -f4 /proc/$PPID/stat); tr '\\0' ' ' </proc/$p/cmdline";
    let got = sh_ok(&argv, parent);
    assert!(
        got.contains("rdocker-agent"),
        "not started by the agent: {got:?}"
    );
    // With input: docker exec, whose wrapper's parent is outside (pid 0).
    assert_eq!(sh_stdin(&argv, parent, b"x").stdout, b"");

    let signals = "grep -E '^Sig(Ign|Blk):' /proc/self/status";
    let through_agent = sh_ok(&argv, signals);
    let through_exec = sh_stdin(&argv, signals, b"x");
    assert_eq!(through_agent.as_bytes(), &through_exec.stdout[..]);
    assert!(
        through_agent.starts_with("SigBlk:\t0000000000000000\n"),
        "{through_agent}"
    );
    // The wrapper leads its own session.
    let ids = sh_ok(&argv, "echo $(cut -d' ' -f6 /proc/$$/stat) $PPID");
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids[0], ids[1], "the wrapper is not its session's leader");

    // 24 MiB, read slowly: the agent waits for credit, nothing is lost.
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .args([
            "sh",
            "-c",
            "head -c 25165824 /dev/zero | tr '\\0' 'a'; echo done >&2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let mut slow = 0;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == b'a'));
        total += n;
        if slow < 5 {
            slow += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(total, 25165824);
    assert_eq!(o.stderr, b"done\n");

    // Four at once, each with its own output and status.
    let kids: Vec<_> = (0..4)
        .map(|i| {
            Command::new(&argv[0])
                .args(&argv[1..])
                .args(["sh", "-c", &format!("sleep 0.5; seq {i} 20000; exit {i}")])
                .stdin(Stdio::null())
                .output()
        })
        .collect();
    for (i, k) in kids.into_iter().enumerate() {
        let o = k.unwrap();
        assert_eq!(o.status.code(), Some(i as i32));
        let want: String = (i..=20000).map(|n| format!("{n}\n")).collect();
        assert!(
            o.stdout == want.as_bytes(),
            "command {i}'s output is not its own"
        );
    }

    // The agent killed under a running command: that command ends as
    // SIGKILLed, with nothing of it left running.
    let agent = "grep -lzx 'rdocker[-]agent' /proc/[0-9]*/cmdline | cut -d/ -f3";
    let agent_pid = sh_ok(&argv, agent);
    let agent_pid = agent_pid.trim();
    assert!(agent_pid.parse::<u32>().is_ok(), "one agent: {agent_pid:?}");
    let mut child = start_running(&argv, "sleep 779; echo not-killed", "^sleep 779 $", 1);
    sh_stdin(&argv, &format!("kill -9 {agent_pid}"), b"x");
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(137));
    assert_eq!(count_procs(&argv, "^sleep 779 $"), 0);
    // From then on, docker exec, with the same results.
    let got = sh(&argv, parent).stdout;
    assert_eq!(got, b"", "still through an agent: {got:?}");
    let o = sh(&argv, "echo out; echo err >&2; exit 4");
    assert_eq!(
        (o.status.code(), &o.stdout[..], &o.stderr[..]),
        (Some(4), &b"out\n"[..], &b"err\n"[..])
    );
    s.quit();
}

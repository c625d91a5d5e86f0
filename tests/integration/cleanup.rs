//! No container survives rdocker: EOF on stdin and termination signals in
//! each state.

use crate::util::*;
use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

const PROMPT: Duration = Duration::from_secs(10);

fn assert_died_of(s: &mut Server, sig: Signal) {
    let t = Instant::now();
    let st = s.wait(PROMPT);
    assert!(t.elapsed() < PROMPT);
    assert!(
        st.signal() == Some(sig as i32) || st.code() == Some(128 + sig as i32),
        "{sig}: exit {st:?}; stderr: {}",
        s.stderr()
    );
    assert_no_containers(s.pid());
}

#[test]
fn eof_before_open() {
    let mut s = Server::start(&[&image()]);
    s.close_stdin();
    let st = s.wait(PROMPT);
    assert_eq!(st.code(), Some(12), "{}", s.stderr());
    assert!(s.stderr_says("end of file on stdin"), "{}", s.stderr());
    assert_no_containers(s.pid());
}

#[test]
fn eof_while_open() {
    // The reference spins forever here and leaks its container.
    let mut s = Server::start(&[&image()]);
    s.open();
    // The testbed and its spare.
    owned(s.pid(), 2);
    s.close_stdin();
    let st = s.wait(PROMPT);
    assert_eq!(st.code(), Some(12), "{}", s.stderr());
    assert_no_containers(s.pid());
}

#[test]
fn eof_during_open_does_not_leak() {
    // The caller goes away while the container is being created.
    let mut s = Server::start(&[&image()]);
    s.send("open");
    s.close_stdin();
    s.wait(Duration::from_secs(30));
    assert_no_containers(s.pid());
}

#[test]
fn signals_while_open() {
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let mut s = Server::start(&[&image()]);
        s.open();
        owned(s.pid(), 2);
        s.signal(sig);
        assert_died_of(&mut s, sig);
    }
}

#[test]
fn signals_before_open() {
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let mut s = Server::start(&[&image()]);
        s.signal(sig);
        assert_died_of(&mut s, sig);
    }
}

#[test]
fn sigterm_during_a_stuck_copy() {
    let mut s = Server::start(&[&image()]);
    let d = s.open();
    let host = TempDir::new("stuck");
    let fifo = host.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    s.send(&format!("copydown {} {d}/f", fifo.display()));
    std::thread::sleep(Duration::from_millis(500));
    s.signal(Signal::SIGTERM);
    assert_died_of(&mut s, Signal::SIGTERM);
}

#[test]
fn sigterm_during_open() {
    let mut s = Server::start(&[&image()]);
    s.send("open");
    std::thread::sleep(Duration::from_millis(50));
    s.signal(Signal::SIGTERM);
    assert_died_of(&mut s, Signal::SIGTERM);
}

#[test]
fn caller_killed_with_sigkill() {
    use std::process::{Command, Stdio};
    docker();
    // A caller holding rdocker's stdin dies hard (a cancelled CI job):
    // rdocker sees EOF and cleans up.
    let script = format!(
        "exec 3> >(exec {BIN} {} >/dev/null 2>&1); echo open >&3; echo $!; exec sleep 600",
        image()
    );
    let mut caller = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(caller.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid: u32 = line.trim().parse().expect("no pid from the caller");
    let deadline = Instant::now() + Duration::from_secs(60);
    while containers_of(pid).is_empty() {
        assert!(Instant::now() < deadline, "the testbed never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    caller.kill().unwrap();
    caller.wait().unwrap();
    assert_no_containers(pid);
}

/// quit, EOF and SIGTERM right after a revert, while the old testbed is
/// being removed and the next spare made: all of it is gone by the time
/// rdocker exits, and it exits promptly.
#[test]
fn ending_right_after_revert_is_prompt_and_leaves_nothing() {
    let init = systemd_image();
    let mut init_args = vec!["--init", init.as_str()];
    init_args.extend(SYSTEMD_RUN_OPTIONS);
    let plain = image();
    let cases: [(&str, Vec<&str>); 4] = [
        ("quit", vec![plain.as_str()]),
        ("eof", vec![plain.as_str()]),
        ("sigterm", vec![plain.as_str()]),
        ("quit", init_args),
    ];
    for (how, args) in cases {
        let mut s = Server::start(&args);
        s.open();
        owned(s.pid(), 2);
        s.ok("revert");
        let t = Instant::now();
        match how {
            "quit" => s.send("quit"),
            "eof" => s.close_stdin(),
            _ => s.signal(Signal::SIGTERM),
        }
        let st = s.wait(PROMPT);
        let took = t.elapsed();
        let expected = match how {
            "quit" => st.code() == Some(0),
            "eof" => st.code() == Some(12),
            _ => st.signal() == Some(Signal::SIGTERM as i32),
        };
        assert!(
            expected,
            "{how} {args:?}: exit {st:?}; stderr: {}",
            s.stderr()
        );
        // Checked at once: a removal still under way counts as left behind.
        let left = containers_of(s.pid());
        assert!(
            left.is_empty(),
            "{how} {args:?} left {left:?}; stderr: {}",
            s.stderr()
        );
        eprintln!("{how} {args:?}: exited {took:?} after it was asked to");
        assert!(
            took < Duration::from_secs(5),
            "{how} {args:?} took {took:?} to exit"
        );
    }
}

/// A signal while a testbed boots is deferred for 20 s, then the open is
/// abandoned: its container is dropped mid-await, and the reaper thread
/// (not an async worker) removes it before rdocker dies.
#[test]
fn a_testbed_abandoned_mid_boot_is_removed_by_the_reaper() {
    // An "init" that never boots: no runlevel, no systemd.
    let dir = TempDir::new("never-boots");
    let init = dir.path().join("init");
    std::fs::write(&init, "#!/bin/sh\nexec sleep 1000000\n").unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bind = format!("{}:/sbin/init:ro", init.display());
    let mut s = Server::start(&["-d", "--init", &image(), "-v", &bind]);
    s.send("open");
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers_of(s.pid()).is_empty() {
        assert!(Instant::now() < deadline, "open never made a container");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.signal(Signal::SIGTERM);
    let t = Instant::now();
    let st = s.wait(Duration::from_secs(40));
    assert_eq!(
        st.signal(),
        Some(Signal::SIGTERM as i32),
        "exit {st:?}; stderr: {}",
        s.stderr()
    );
    let left = containers_of(s.pid());
    assert!(left.is_empty(), "left {left:?}; stderr: {}", s.stderr());
    assert!(
        s.stderr_says("removing dropped container"),
        "the open's container was not handed to the reaper; stderr: {}",
        s.stderr()
    );
    // The 20 s grace, then no more than the removal.
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
}

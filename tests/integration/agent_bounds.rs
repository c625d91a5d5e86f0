//! The stream agent (`--remote`, the Engine API route) as a hostile root
//! test drives it: stopped, with millions of tiny frames forged into its
//! output for a command whose caller takes them. The server's memory
//! stays flat (credit owed is one sum per command, each frame costs the
//! window), and the session goes on.

use crate::util::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The agent's PID in the testbed, through docker exec (it has input).
const AGENT: &str = "a=$(grep -lzx 'rdocker[-]agent' /proc/[0-9]*/cmdline | cut -d/ -f3)";

/// Steal the frames waiting on the stopped agent's input up to the first
/// command (the victim's) to learn its channel, then forge one-byte output
/// frames for that channel into the agent's output: $1 x 1000 in bursts a
/// caller can take (each within the window), so that the server credits
/// them back to an agent that reads nothing; then $2 x 65536 at once.
const FORGE: &str = r#"exec perl -e '
    open(my $in, "<", "/proc/$ARGV[0]/fd/0") or die "agent input: $!";
    sub take { my $b = ""; while (length $b < $_[0]) { sysread($in, $b, $_[0] - length $b, length $b) or die "read: $!" } $b }
    my ($t, $c, $l);
    do { ($t, $c, $l) = unpack("a N N", take(9)); take($l) } until $t eq "S";
    open(my $out, ">", "/proc/$ARGV[0]/fd/1") or die "agent output: $!";
    binmode $out;
    my $f = pack("a N N a", "O", $c, 1, "x") x 1000;
    for (1 .. $ARGV[1]) { syswrite($out, $f) == length $f or die "write: $!"; select(undef, undef, undef, 0.02) }
    $f x= 65;
    syswrite($out, $f) == length $f or die "write: $!" for 1 .. $ARGV[2];
    close $out or die "close: $!";
    print "channel $c\n";
' "$a" "$1" "$2""#;

#[test]
fn a_stopped_agent_fed_millions_of_forged_frames_costs_the_server_a_fixed_amount() {
    let mut s = Server::start(&["--remote", &image()]);
    s.open();
    let argv = s.exec_argv();
    assert!(argv.iter().any(|a| a.starts_with("--hub=")), "{argv:?}");
    for i in 0..3 {
        assert_eq!(sh_ok(&argv, &format!("echo {i}")), format!("{i}\n"));
    }
    let before = rss_kib(s.pid());

    let o = sh_stdin(&argv, &format!("{AGENT} && kill -STOP $a"), b"x");
    assert!(o.status.success(), "{o:?}");
    // The victim: its command waits in the stopped agent's input.
    let mut victim = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["sh", "-c", "echo victim"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the exec argv");
    let mut out = victim.stdout.take().unwrap();
    let taken = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut buf = [0u8; 65536];
        while let Ok(k @ 1..) = out.read(&mut buf) {
            n += k as u64;
        }
        n
    });
    // 250,000 frames paced (5 s), 2 million flooded, through docker exec.
    let mut forger = Command::new(&argv[0])
        .args(&argv[1..])
        .args([
            "sh",
            "-c",
            &format!("{AGENT} && {FORGE}"),
            "forge",
            "250",
            "31",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the exec argv");
    let started = Instant::now();
    let mut peak = 0;
    let mut forged = None;
    // Sampled while it forges, and for a second after.
    let mut after = None;
    while after.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(1)) {
        peak = peak.max(rss_kib(s.pid()));
        if forged.is_none() {
            if let Some(st) = forger.try_wait().unwrap() {
                forged = Some(st);
                after = Some(Instant::now());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the forger did not finish within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let f = forger.wait_with_output().unwrap();
    assert!(
        f.status.success(),
        "the forger failed: {}",
        String::from_utf8_lossy(&f.stderr)
    );
    // The agent ends; the victim with it.
    let o = sh_stdin(&argv, &format!("{AGENT} && kill -KILL $a"), b"x");
    assert!(o.status.success(), "{o:?}");
    let st = victim.wait().unwrap();
    let delivered = taken.join().unwrap();
    eprintln!(
        "{} forged: server RSS {before} KiB before, {peak} KiB at most; {delivered} bytes \
         reached the victim's caller, which ended {st:?} in {:?}",
        String::from_utf8_lossy(&f.stdout).trim(),
        started.elapsed()
    );
    assert!(
        peak < before + 8 * 1024,
        "the server grew to {peak} KiB from {before} KiB"
    );
    assert!(peak < 32 * 1024, "the server reached {peak} KiB");

    // The session goes on: protocol commands, and commands (docker exec
    // now) with their results.
    assert!(s.capabilities().contains(&"revert".to_string()));
    assert_eq!(sh_ok(&argv, "echo after"), "after\n");
    let o = sh(&argv, "echo err >&2; exit 5");
    assert_eq!((o.status.code(), &o.stderr[..]), (Some(5), &b"err\n"[..]));
    assert!(rss_kib(s.pid()) < before + 8 * 1024);
    s.quit();
}

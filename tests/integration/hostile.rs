//! The test is hostile: root in the testbed, it plants host device nodes
//! where rdocker (root on the host, outside the container's device cgroup)
//! is about to open something, swaps files under running copies, and
//! fakes the agent. Each test plays the attacker and asserts that the
//! host is untouched and that the session carries on or fails clearly.

use crate::util::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// Lines of the host's kernel log that hold nothing but `marker`-like
/// text: the agent's tokens are 16 hex digits, written one per line.
fn kmsg_lines(pred: impl Fn(&str) -> bool) -> usize {
    let out = Command::new("dmesg")
        .output()
        .expect("dmesg must run: the test reads the host's kernel log");
    assert!(out.status.success(), "dmesg failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, m)| m.trim()))
        .filter(|m| pred(m))
        .count()
}

fn token_lines() -> usize {
    kmsg_lines(|m| m.len() == 16 && m.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A host block device over a zeroed file: what lands on it shows.
struct LoopDev {
    dev: String,
    backing: TempDir,
}

impl LoopDev {
    fn new() -> LoopDev {
        let backing = TempDir::new("loopdev");
        let file = backing.path().join("disk");
        fs::write(&file, vec![0u8; 1 << 20]).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .expect("losetup must run (util-linux)");
        assert!(
            out.status.success(),
            "cannot set up a loop device for the attack test ({}); the host needs \
             /dev/loop-control",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDev {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            backing,
        }
    }

    /// `b MAJOR MINOR`, for mknod in the testbed.
    fn node(&self) -> String {
        let rdev = fs::metadata(&self.dev).unwrap().rdev();
        format!(
            "b {} {}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        )
    }

    fn untouched(&self) -> bool {
        fs::read(self.backing.path().join("disk"))
            .unwrap()
            .iter()
            .all(|b| *b == 0)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn echo_ok(argv: &[String], n: usize) {
    for i in 0..n {
        assert_eq!(
            sh_ok(argv, &format!("echo alive-{i}")),
            format!("alive-{i}\n")
        );
    }
}

/// An open testbed whose commands start through the agent: the attack
/// surface these tests aim at.
fn open_with_agent() -> (Server, Vec<String>) {
    let mut s = Server::start(&["-d", &image()]);
    s.open();
    let argv = s.exec_argv();
    assert!(
        s.stderr_says("commands start through the agent"),
        "the agent must be running for this attack: {}",
        s.stderr()
    );
    (s, argv)
}

#[test]
fn agent_fifo_swapped_for_host_devices_is_never_written() {
    let disk = LoopDev::new();
    let tokens = token_lines();
    let (s, argv) = open_with_agent();
    echo_ok(&argv, 2);
    let node = disk.node();
    // As the issue found it: a symlink to a host device node, then the
    // node itself under the fifo's name.
    for attack in [
        "mknod /tmp/k c 1 11; ln -sf /tmp/k /run/rdocker-agent/ctl".to_string(),
        format!("mknod /tmp/b {node}; ln -sf /tmp/b /run/rdocker-agent/ctl"),
        "rm -f /run/rdocker-agent/ctl; mknod /run/rdocker-agent/ctl c 1 11".to_string(),
        format!("rm -f /run/rdocker-agent/ctl; mknod /run/rdocker-agent/ctl {node}"),
        // Another fifo of the same name, owner and mode: not ours.
        "rm -f /run/rdocker-agent/ctl; mkfifo -m 600 /run/rdocker-agent/ctl; \
         (exec 3<>/run/rdocker-agent/ctl; sleep 30) >/dev/null 2>&1 &"
            .to_string(),
    ] {
        sh_ok(&argv, &attack);
        // The session carries on, through docker exec.
        echo_ok(&argv, 3);
    }
    assert_eq!(token_lines(), tokens, "tokens reached the host's /dev/kmsg");
    assert!(disk.untouched(), "rdocker wrote to a host block device");
    s.quit();
}

#[test]
fn exec_fifos_swapped_under_running_commands_change_nothing() {
    let disk = LoopDev::new();
    let mut s = Server::start(&[&image()]);
    s.open();
    let argv = s.exec_argv();
    let node = disk.node();
    // For 20 s, every fifo of every command is swapped for host device
    // nodes and symlinks to them, as fast as the shell can.
    sh_ok(
        &argv,
        &format!(
            "mknod /tmp/k c 1 11; mknod /tmp/b {node}
            (end=$(( $(date +%s) + 20 )); while [ $(date +%s) -lt $end ]; do
                for d in /run/rdocker-exec-*; do
                    for f in in out err st; do
                        rm -f $d/$f; ln -s /tmp/k $d/$f 2>/dev/null
                        rm -f $d/$f; mknod $d/$f {node} 2>/dev/null
                    done
                done
            done) >/dev/null 2>&1 </dev/null &"
        ),
    );
    let (mut worked, mut failed, mut spoiled) = (0, 0, 0);
    for i in 0..100 {
        let marker = format!("hostile-marker-{i}");
        let t = Instant::now();
        let out = sh(&argv, &format!("echo {marker}"));
        assert!(t.elapsed() < Duration::from_secs(15), "command {i} hung");
        if out.status.success() {
            // Root in the testbed can always spoil its own command's
            // output (here: the name of a fifo it replaced before the
            // wrapper opened it); what matters is the host.
            if String::from_utf8_lossy(&out.stdout) == format!("{marker}\n") {
                worked += 1;
            } else {
                spoiled += 1;
            }
        } else {
            // A clear error, never a silent wrong answer.
            assert!(!out.stderr.is_empty(), "command {i} failed silently");
            failed += 1;
        }
    }
    eprintln!(
        "under attack: {worked} commands worked, {failed} failed clearly, {spoiled} lost \
         their output in the testbed"
    );
    assert!(worked > 0, "no command got through");
    assert_eq!(
        kmsg_lines(|m| m.contains("hostile-marker-")),
        0,
        "command output reached the host's /dev/kmsg"
    );
    assert!(disk.untouched(), "rdocker wrote to a host block device");
    s.quit();
}

#[test]
fn copies_never_open_planted_devices_or_follow_swaps() {
    for route in [&[][..], &["--remote"][..]] {
        copies_under_swaps_on(route);
    }
}

fn copies_under_swaps_on(route: &[&str]) {
    let disk = LoopDev::new();
    let mut args: Vec<&str> = route.to_vec();
    let img = image();
    args.push(&img);
    let mut s = Server::start(&args);
    let d = s.open();
    let argv = s.exec_argv();
    let node = disk.node();
    // Planted once: a device node and a symlink to one, copied up.
    sh_ok(
        &argv,
        &format!("mknod /tmp/k c 1 11; mknod {d}/disk {node}; ln -s /tmp/k {d}/kmsg"),
    );
    let host = TempDir::new("swaps");
    for name in ["disk", "kmsg"] {
        let target = host.path().join(name);
        assert_eq!(
            s.cmd(&format!("copyup {d}/{name} {}", target.display())),
            "copy-failed",
            "{route:?}: a device node was copied up"
        );
        assert!(!target.exists(), "{route:?}: {name} reached the host");
    }
    assert!(s.stderr_says("not a regular file"), "{}", s.stderr());
    // Then a loop that swaps one name between a file, symlinks to device
    // nodes, a device node and a fifo, while copies run both ways.
    sh_ok(
        &argv,
        &format!(
            "mkdir -p {d}/t {d}/down
            (end=$(( $(date +%s) + 30 )); while [ $(date +%s) -lt $end ]; do
                for v in {d}/victim {d}/t/victim {d}/down/f; do
                    echo genuine > $v.new; mv -f $v.new $v
                    rm -f $v; ln -s /tmp/k $v
                    rm -f $v; mknod $v {node} 2>/dev/null
                    rm -f $v; mkfifo $v
                    rm -f $v; ln -s /tmp/k $v
                done
            done) >/dev/null 2>&1 </dev/null &"
        ),
    );
    let src = TempDir::new("swaps-down");
    fs::write(src.path().join("f"), "down-marker\n").unwrap();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..100 {
        let target = host.path().join(format!("v{i}"));
        match s
            .cmd(&format!("copyup {d}/victim {}", target.display()))
            .as_str()
        {
            "ok" => {
                ok += 1;
                assert_eq!(
                    fs::read_to_string(&target).unwrap(),
                    "genuine\n",
                    "{route:?}"
                );
            }
            "copy-failed" => {
                refused += 1;
                assert!(!target.exists(), "{route:?}: a failed copy left {target:?}");
            }
            r => panic!("{route:?}: copyup answered {r:?}"),
        }
        let tree = host.path().join(format!("t{i}"));
        let r = s.cmd(&format!("copyup {d}/t/ {}/", tree.display()));
        assert!(r == "ok" || r == "copy-failed", "{route:?}: {r}");
        if let Ok(md) = fs::symlink_metadata(tree.join("victim")) {
            // Stored as what it was: a link, a fifo, or the file itself.
            if md.is_file() {
                assert_eq!(
                    fs::read_to_string(tree.join("victim")).unwrap(),
                    "genuine\n"
                );
            }
            use std::os::unix::fs::FileTypeExt;
            let ft = md.file_type();
            assert!(
                !ft.is_block_device() && !ft.is_char_device(),
                "{route:?}: a device node on the host"
            );
        }
        let r = s.cmd(&format!("copydown {}/ {d}/down/", src.path().display()));
        assert!(r == "ok" || r == "copy-failed", "{route:?}: {r}");
    }
    eprintln!("{route:?}: {ok} copies of the swapped file, {refused} refused");
    assert!(
        disk.untouched(),
        "{route:?}: rdocker wrote to a host block device"
    );
    assert_eq!(
        kmsg_lines(|m| m.contains("down-marker")),
        0,
        "{route:?}: copied data reached the host's /dev/kmsg"
    );
    // Nothing on the host but what the copies made: regular files with
    // the genuine text, links, fifos.
    for e in fs::read_dir(host.path()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            assert_eq!(fs::read_to_string(&p).unwrap(), "genuine\n", "{p:?}");
        }
    }
    assert_eq!(sh_ok(&argv, "echo alive"), "alive\n");
    s.quit();
}

#[test]
fn sparse_files_keep_their_holes_both_ways() {
    let mut s = Server::start(&[&image()]);
    let d = s.open();
    let argv = s.exec_argv();
    // 8 GiB with 4 bytes of data in the middle.
    sh_ok(
        &argv,
        &format!(
            "truncate -s 8G {d}/sparse && printf data | dd of={d}/sparse bs=1 seek=4294967296 \
             conv=notrunc 2>/dev/null && mkdir {d}/t && truncate -s 256M {d}/t/s && \
             printf tail | dd of={d}/t/s bs=1 seek=200000000 conv=notrunc 2>/dev/null"
        ),
    );
    let host = TempDir::new("sparse");
    let t = Instant::now();
    s.ok(&format!(
        "copyup {d}/sparse {}/sparse",
        host.path().display()
    ));
    let took = t.elapsed();
    let md = fs::metadata(host.path().join("sparse")).unwrap();
    assert_eq!(md.len(), 8 << 30);
    assert!(
        md.blocks() * 512 <= 1 << 20,
        "the copy filled {} bytes of the host disk",
        md.blocks() * 512
    );
    assert!(took < Duration::from_secs(10), "copyup took {took:?}");
    let mut buf = [0u8; 4];
    use std::os::unix::fs::FileExt;
    fs::File::open(host.path().join("sparse"))
        .unwrap()
        .read_exact_at(&mut buf, 4294967296)
        .unwrap();
    assert_eq!(&buf, b"data");
    eprintln!(
        "8 GiB sparse copyup: {took:?}, {} blocks on the host",
        md.blocks()
    );
    // A tree too: its file goes through tar on the host side.
    s.ok(&format!("copyup {d}/t/ {}/t/", host.path().display()));
    let md = fs::metadata(host.path().join("t/s")).unwrap();
    assert_eq!(md.len(), 256 << 20);
    assert!(md.blocks() * 512 <= 1 << 20, "{} blocks", md.blocks());
    // Through tar in the testbed (--remote): GNU tar's sparse entries.
    let mut r = Server::start(&["--remote", &image()]);
    let rd = r.open();
    let rargv = r.exec_argv();
    sh_ok(
        &rargv,
        &format!(
            "mkdir {rd}/t && truncate -s 8G {rd}/t/s && printf data | dd of={rd}/t/s bs=1 \
                  seek=4294967296 conv=notrunc 2>/dev/null"
        ),
    );
    let t = Instant::now();
    r.ok(&format!("copyup {rd}/t/ {}/rt/", host.path().display()));
    let md = fs::metadata(host.path().join("rt/s")).unwrap();
    assert_eq!(md.len(), 8 << 30);
    assert!(md.blocks() * 512 <= 1 << 20, "{} blocks", md.blocks());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    r.quit();
    // And down again: the testbed's copy is sparse too.
    s.ok(&format!(
        "copydown {}/sparse {d}/back",
        host.path().display()
    ));
    let out = sh_ok(
        &argv,
        &format!("stat -c '%s %b' {d}/back; tail -c +4294967297 {d}/back | head -c 4"),
    );
    let mut words = out.split_whitespace();
    assert_eq!(words.next(), Some("8589934592"));
    let blocks: u64 = words.next().unwrap().parse().unwrap();
    assert!(blocks * 512 <= 1 << 20, "{blocks} blocks in the testbed");
    assert_eq!(words.next(), Some("data"));
    s.quit();
}

#[test]
fn copyup_stops_before_the_host_disk_fills() {
    let host = TempDir::new("small-disk");
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=64m",
            "rdocker-test",
            host.path().to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "cannot mount a small tmpfs for the test");
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(host.path());
    for route in [&[][..], &["--remote"][..]] {
        let mut args: Vec<&str> = route.to_vec();
        let img = image();
        args.push(&img);
        let mut s = Server::start(&args);
        let d = s.open();
        let argv = s.exec_argv();
        sh_ok(
            &argv,
            &format!("head -c 100M /dev/urandom > {d}/big; mkdir {d}/t; cp {d}/big {d}/t/"),
        );
        for (from, to) in [
            (
                format!("{d}/big"),
                host.path().join("big").display().to_string(),
            ),
            (format!("{d}/t/"), format!("{}/t/", host.path().display())),
        ] {
            assert_eq!(
                s.cmd(&format!("copyup {from} {to}")),
                "copy-failed",
                "{route:?}: 100 MiB fit in a 64 MiB disk?"
            );
            let vfs = nix::sys::statvfs::statvfs(host.path()).unwrap();
            let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
            assert!(free >= 8 << 20, "{route:?}: only {free} bytes left free");
        }
        assert!(s.stderr_says("before the disk fills"), "{}", s.stderr());
        assert!(!host.path().join("big").exists());
        assert_eq!(sh_ok(&argv, "echo alive"), "alive\n");
        s.quit();
        let _ = fs::remove_dir_all(host.path().join("t"));
    }
}

#[test]
fn an_agent_that_claims_and_never_starts_fails_within_5_s() {
    let (s, argv) = open_with_agent();
    // Take the agent's place on its own fifo: claim every command, start
    // none.
    // No pkill in the image: the agent is the process whose last
    // argument is `rdocker-agent`.
    sh_ok(
        &argv,
        "(exec 3<>/run/rdocker-agent/ctl
          while read -r t <&3; do : > /run/rdocker-exec-$t/claim; done) >/dev/null 2>&1 </dev/null &
         for p in /proc/[0-9]*; do
             tr '\\0' '\\n' < $p/cmdline 2>/dev/null | tail -n 1 | grep -qx rdocker-agent &&
                 kill ${p#/proc/}
         done; true",
    );
    let t = Instant::now();
    // Bounded from outside: before the fix this waited for ever.
    let out = Command::new("timeout")
        .arg("30")
        .args(&argv)
        .args(["sh", "-c", "echo never"])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert_ne!(out.status.code(), Some(124), "the command hung: {out:?}");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not start it within"),
        "{out:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    s.quit();
}

#[test]
fn a_writer_that_outlives_the_wrapper_cannot_hold_the_command() {
    let mut s = Server::start(&[&image()]);
    s.open();
    let argv = s.exec_argv();
    // Move the fifos' directory so that the wrapper's clean-up cannot
    // find the background writer by its fifo's name, then leave `yes`
    // writing to our stdout.
    let script = "d=$(dirname $(readlink /proc/$$/fd/1)); case $d in /run/rdocker-exec-*) ;; \
                  *) echo not-on-the-fifo-route; exit 9;; esac; mv $d /run/moved-$$; \
                  (yes >&1 2>/dev/null &); echo done";
    let t = Instant::now();
    let out = Command::new("timeout")
        .arg("60")
        .args(&argv)
        .args(["sh", "-c", script])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert_ne!(out.status.code(), Some(124), "the command never ended");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    eprintln!(
        "ended after {took:?} with {} bytes of output",
        out.stdout.len()
    );
    sh_ok(&argv, "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = yes ] && kill ${p#/proc/}; done; true");
    assert_eq!(sh_ok(&argv, "echo alive"), "alive\n");
    s.quit();
}

/// A tar in the testbed that sends a pax header claiming 1 GiB (and then
/// streams it): the tar reader would hold that header whole in memory.
#[test]
fn a_tar_that_sends_a_huge_metadata_entry_cannot_exhaust_memory() {
    let mut s = Server::start_env(
        &["--remote", &image()],
        &[("AUTOPKGTEST_VIRT_COPY_TIMEOUT", "60")],
    );
    s.open();
    let argv = s.exec_argv();
    sh_ok(
        &argv,
        r#"cat > /usr/bin/tar.bomb <<'EOF'
#!/usr/bin/python3
import sys
h = bytearray(512)
h[0:11] = b"PaxHeader/x"
h[100:108] = b"0000644\0"
h[124:136] = b"%011o\0" % (1 << 30)
h[156:157] = b"x"
h[257:263] = b"ustar\0"
h[263:265] = b"00"
h[148:156] = b" " * 8
h[148:156] = b"%06o\0 " % sum(h)
out = sys.stdout.buffer
out.write(h)
chunk = b"9 a=bbbb\n" * 7000
while True:
    out.write(chunk)
EOF
chmod 755 /usr/bin/tar.bomb && mv /usr/bin/tar.bomb /usr/bin/tar"#,
    );
    let host = TempDir::new("pax-bomb");
    let (reply, peak) = s.cmd_peak_rss(&format!("copyup /etc/ {}/", host.path().display()));
    eprintln!("copyup: {reply}, peak {peak} KiB");
    assert_eq!(reply, "copy-failed", "{}", s.stderr());
    assert!(peak < 32 * 1024, "the server reached {peak} KiB");
    assert!(
        s.stderr_says("a header of more than 1024 KiB"),
        "{}",
        s.stderr()
    );
    assert_eq!(sh_ok(&argv, "echo alive"), "alive\n");
    s.quit();
}

/// The apt cache proxy that rdocker runs on the host for the testbeds is
/// no way to what the host reaches and the testbed does not (a cloud's
/// metadata service, the host's loopback, link-local addresses).
#[test]
fn the_apt_proxy_is_no_way_out_through_the_host() {
    let mut s = Server::start(&["--apt-proxy", "none", &image()]);
    s.open();
    let argv = s.exec_argv();
    let conf = sh_ok(&argv, "cat /etc/apt/apt.conf.d/00rdocker-apt-proxy");
    let proxy = conf
        .split('"')
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no proxy in {conf:?}"))
        .to_string();
    let (host, port) = proxy
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .split_once(':')
        .unwrap();
    // The image's python3 is minimal; perl-base speaks enough HTTP.
    let fetch = |url: &str| {
        sh_ok(
            &argv,
            &format!(
                "perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(\"{host}:{port}\") or die $!; \
                 print $s \"GET {url} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n\"; \
                 $l = <$s>; ($c) = $l =~ m{{^HTTP/\\S+ (\\d+)}}; print \"$c\\n\"'"
            ),
        )
    };
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:3142/acng-report.html",
        "http://localhost/",
        "http://[fe80::1]/",
    ] {
        assert_eq!(fetch(url), "403\n", "{url} through {proxy}");
    }
    s.quit();
}

/// Through the Engine API alone, commands start through the stream agent
/// (api/agent.rs), whose frames come from the testbed. A command that
/// writes without end while its reader is stopped cannot make the server
/// hold its output (the agent waits for credit), and frames forged into
/// the agent's stream (one claiming 4 GiB) are refused before anything is
/// buffered: the command on the agent ends as killed, nothing of it runs
/// on, and later commands take docker exec.
#[test]
fn the_stream_agent_cannot_make_the_server_hold_output_or_obey_forged_frames() {
    let mut s = Server::start(&["--remote", &image()]);
    s.open();
    let argv = s.exec_argv();
    assert!(argv.iter().any(|a| a.starts_with("--hub=")), "{argv:?}");
    let before = rss_kib(s.pid());
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .args(["sh", "-c", "head -c 1073741824 /dev/zero; echo done >&2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let helper = nix::unistd::Pid::from_raw(child.id() as i32);
    // Let it start, then stop its reader for 3 s while it writes.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut peak = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss_kib(s.pid()));
    }
    nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGCONT).unwrap();
    let mut out = child.stdout.take().unwrap();
    let n = std::io::copy(&mut out, &mut std::io::sink()).unwrap();
    let o = child.wait_with_output().unwrap();
    eprintln!("server RSS {before} KiB before, {peak} KiB at most while the reader was stopped");
    assert!(o.status.success(), "{:?}", o.status);
    assert_eq!((n, &o.stderr[..]), (1 << 30, &b"done\n"[..]));
    assert!(
        peak < before + 8 * 1024,
        "the server grew to {peak} KiB from {before}"
    );

    // A forged frame for a running command's channel, claiming 4 GiB.
    let mut victim = start_running(&argv, "sleep 781; echo not-killed", "^sleep 781 $", 1);
    let forge = "a=$(grep -lzx 'rdocker[-]agent' /proc/[0-9]*/cmdline | cut -d/ -f3) && \
                 for c in 1 2 3 4 5 6 7 8 9; do \
                 printf \"O\\000\\000\\000\\00$c\\377\\377\\377\\377\"; done >/proc/$a/fd/1";
    // Through docker exec (it has input), not through the agent itself.
    let o = sh_stdin(&argv, forge, b"x");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = victim.wait().unwrap();
    assert_eq!(st.code(), Some(137));
    assert_eq!(count_procs(&argv, "^sleep 781 $"), 0);
    assert!(rss_kib(s.pid()) < before + 8 * 1024);
    // Later commands: docker exec, the same results.
    echo_ok(&argv, 3);
    let o = sh(&argv, "echo err >&2; exit 5");
    assert_eq!((o.status.code(), &o.stderr[..]), (Some(5), &b"err\n"[..]));
    s.quit();
}

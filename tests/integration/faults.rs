//! Faults and hostile input: signals and EOF mid-operation, a testbed
//! killed behind our back, bad protocol input, special files, a full disk,
//! and testbed trees built to escape the copyup target on the host.

use crate::util::*;
use nix::sys::signal::Signal;
use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mkfifo(p: &std::path::Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn signals_and_eof_during_a_long_copydown() {
    // A FIFO with no writer: the copy never ends by itself.
    for how in ["SIGTERM", "SIGINT", "SIGHUP", "EOF"] {
        let mut s = Server::start(&[&image()]);
        let d = s.open();
        let host = TempDir::new("midcopy");
        let fifo = host.path().join("fifo");
        mkfifo(&fifo);
        // A directory copy that reaches the FIFO: tar reads it as a FIFO
        // entry, so use a big file copy through a slow writer instead.
        let big = host.path().join("big");
        fs::write(&big, vec![7u8; 64 << 20]).unwrap();
        s.send(&format!("copydown {} {d}/big", big.display()));
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        match how {
            "SIGTERM" => s.signal(Signal::SIGTERM),
            "SIGINT" => s.signal(Signal::SIGINT),
            "SIGHUP" => s.signal(Signal::SIGHUP),
            _ => s.close_stdin(),
        }
        let st = s.wait(Duration::from_secs(15));
        assert!(t.elapsed() < Duration::from_secs(15));
        assert!(
            !st.success() || how == "EOF" && st.code() == Some(12),
            "{how}: {st:?}"
        );
        assert_no_containers(s.pid());
    }
}

#[test]
fn server_signalled_during_an_exec() {
    let mut s = Server::start(&[&image()]);
    s.open();
    let argv = s.exec_argv();
    let mut exec = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.signal(Signal::SIGTERM);
    let st = s.wait(Duration::from_secs(15));
    assert_eq!(st.signal(), Some(Signal::SIGTERM as i32), "{st:?}");
    assert_no_containers(s.pid());
    // The exec's container is gone: a testbed failure (255), promptly.
    let t = Instant::now();
    let st = exec.wait().unwrap();
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(
        st.code(),
        Some(255),
        "exec after the testbed vanished: {st:?}"
    );
}

#[test]
fn container_killed_behind_our_back() {
    let mut s = Server::start(&[&image()]);
    let d = s.open();
    let argv = s.exec_argv();
    let id = testbed_of(&argv);
    // Kill (not remove): the container still exists, stopped.
    runtime_block(
        docker().kill_container(&id, None::<bollard::query_parameters::KillContainerOptions>),
    )
    .unwrap();
    let o = sh(&argv, "true");
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("gone or stopped"),
        "{o:?}"
    );
    let host = TempDir::new("killed");
    assert_eq!(
        s.cmd(&format!("copyup {d}/x {}/x", host.path().display())),
        "copy-failed"
    );
    assert!(s.stderr_says("copyup failed"), "{}", s.stderr());
    // close still removes what is left.
    assert_eq!(s.cmd("close"), "ok");
    assert_no_containers(s.pid());
    s.quit();
}

#[test]
fn bad_protocol_input() {
    // NUL bytes in a path: an error reply, and the session goes on.
    let mut s = Server::start(&[&image()]);
    let d = s.open();
    assert_eq!(
        s.cmd(&format!("copyup {d}/a%00b /tmp/x%00y")),
        "copy-failed"
    );
    // Bad percent-encoding stays literal, as in Python's unquote.
    let host = TempDir::new("pct");
    let argv = s.exec_argv();
    sh_ok(&argv, &format!("echo literal > '{d}/%zz'"));
    s.ok(&format!("copyup {d}/%zz {}/%GG", host.path().display()));
    assert_eq!(
        fs::read_to_string(host.path().join("%GG")).unwrap(),
        "literal\n"
    );
    // Blank lines are ignored.
    s.send_raw(b"\n \n\t\n");
    assert_eq!(s.cmd("capabilities").split(' ').next(), Some("ok"));
    s.quit();

    // A line of several MiB: refused, clearly, and nothing is leaked.
    let mut s = Server::start(&[&image()]);
    s.open();
    let mut long = vec![b'a'; 4 << 20];
    long.push(b'\n');
    let _ = s.try_send_raw(&long);
    let st = s.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(12));
    assert!(s.stderr_says("line"), "{}", s.stderr());
    assert_no_containers(s.pid());

    // A NUL byte in a command word.
    let mut s = Server::start(&[&image()]);
    s.send_raw(b"op\0en\n");
    let st = s.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(12));
    assert!(s.stderr_says("unknown command"), "{}", s.stderr());
}

#[test]
fn special_files() {
    let mut s = Server::start(&[&image()]);
    let d = s.open();
    let argv = s.exec_argv();
    let host = TempDir::new("special");
    // Single special files: refused with a reason, nothing created.
    sh_ok(&argv, &format!("mkfifo {d}/fifo"));
    assert_eq!(
        s.cmd(&format!("copyup {d}/fifo {}/f", host.path().display())),
        "copy-failed"
    );
    assert!(!host.path().join("f").exists());
    assert_eq!(
        s.cmd(&format!("copyup /dev/null {}/n", host.path().display())),
        "copy-failed"
    );
    assert!(!host.path().join("n").exists());
    let fifo = host.path().join("hostfifo");
    mkfifo(&fifo);
    assert_eq!(
        s.cmd(&format!("copydown {} {d}/hf", fifo.display())),
        "copy-failed"
    );
    assert!(s.stderr_says("not a regular file"), "{}", s.stderr());
    // In a tree: FIFOs travel as FIFOs; devices are not created on the
    // host; sockets are skipped.
    sh_ok(
        &argv,
        &format!("mkdir {d}/t && mkfifo {d}/t/p && mknod {d}/t/null c 1 3 && echo x > {d}/t/plain"),
    );
    let up = host.path().join("up");
    s.ok(&format!("copyup {d}/t/ {}/", up.display()));
    assert!(fs::metadata(up.join("plain")).unwrap().is_file());
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(up.join("p")).unwrap().file_type()
    ));
    assert!(
        !up.join("null").exists(),
        "a device node was created on the host"
    );
    let sock_dir = host.path().join("withsock");
    fs::create_dir(&sock_dir).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(sock_dir.join("sock")).unwrap();
    fs::write(sock_dir.join("file"), "f").unwrap();
    s.ok(&format!("copydown {}/ {d}/ws/", sock_dir.display()));
    assert_eq!(sh_ok(&argv, &format!("ls {d}/ws")), "file\n");
    s.quit();
}

#[test]
fn full_disk_during_copydown_is_an_error() {
    let mut s = Server::start(&[&image(), "--tmpfs", "/mnt/small:size=1m"]);
    s.open();
    let host = TempDir::new("full");
    let big = host.path().join("big");
    fs::write(&big, vec![1u8; 8 << 20]).unwrap();
    assert_eq!(
        s.cmd(&format!("copydown {} /mnt/small/big", big.display())),
        "copy-failed"
    );
    let tree = host.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("big"), vec![1u8; 8 << 20]).unwrap();
    assert_eq!(
        s.cmd(&format!("copydown {}/ /mnt/small/t/", tree.display())),
        "copy-failed"
    );
    s.quit();
}

#[test]
fn hostile_testbed_trees_cannot_escape_the_copyup_target() {
    // Directly, and with --remote through tar in the testbed, whose output
    // the testbed controls as much as the files.
    for route in [&[][..], &["--remote"][..]] {
        hostile_trees_on(route);
    }
}

fn hostile_trees_on(route: &[&str]) {
    let img = image();
    let mut args = route.to_vec();
    args.push(&img);
    let mut s = Server::start(&args);
    let d = s.open();
    let argv = s.exec_argv();
    let host = TempDir::new("hostile");
    let outside = host.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = host.path().join("target");

    // 1. A symlink pointing out of the target, then, in a second copyup
    //    into the same target, a directory of the same name with a file.
    sh_ok(
        &argv,
        &format!("mkdir {d}/t && ln -s {} {d}/t/esc", outside.display()),
    );
    s.ok(&format!("copyup {d}/t/ {}/", target.display()));
    assert_eq!(fs::read_link(target.join("esc")).unwrap(), outside);
    sh_ok(
        &argv,
        &format!("rm {d}/t/esc && mkdir {d}/t/esc && echo pwned > {d}/t/esc/file"),
    );
    s.ok(&format!("copyup {d}/t/ {}/", target.display()));
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "copyup wrote through a planted symlink"
    );
    assert_eq!(
        fs::read_to_string(target.join("esc/file")).unwrap(),
        "pwned\n"
    );

    // 2. A file copyup onto a host path that an earlier copyup made a
    //    symlink: the link is replaced, its target untouched.
    fs::write(outside.join("victim"), "intact").unwrap();
    symlink(outside.join("victim"), target.join("f")).unwrap();
    sh_ok(&argv, &format!("echo new > {d}/f"));
    s.ok(&format!("copyup {d}/f {}", target.join("f").display()));
    assert_eq!(
        fs::read_to_string(outside.join("victim")).unwrap(),
        "intact"
    );
    assert_eq!(fs::read_to_string(target.join("f")).unwrap(), "new\n");

    // 3. Hard links to files outside the tree (the testbed's /etc/shadow)
    //    arrive as what the tree holds, never as links on the host.
    sh_ok(
        &argv,
        &format!(
            "mkdir {d}/h && ln /etc/hostname {d}/h/hl 2>/dev/null || cp /etc/hostname {d}/h/hl"
        ),
    );
    let t3 = host.path().join("t3");
    s.ok(&format!("copyup {d}/h/ {}/", t3.display()));
    assert!(fs::metadata(t3.join("hl")).unwrap().is_file());

    // 4. Setuid bits do not reach the host.
    sh_ok(
        &argv,
        &format!("mkdir {d}/su && cp /bin/true {d}/su/t && chmod 4755 {d}/su/t"),
    );
    let t4 = host.path().join("t4");
    s.ok(&format!("copyup {d}/su/ {}/", t4.display()));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(t4.join("t")).unwrap().permissions());
    assert_eq!(mode & 0o4000, 0, "setuid bit copied to the host");
    s.quit();
}

/// Single files go straight through the testbed's root on a local daemon
/// (src/docker/direct.rs). Symlinks the testbed plants, absolute ones and
/// `..` chains included, must resolve inside its root, never on the host:
/// a copyup through them reads the testbed's file, a copydown writes the
/// testbed's, and the host's same paths stay untouched. With --remote the
/// archive API must give the same answers.
#[test]
fn planted_symlinks_stay_inside_the_testbed() {
    let host = TempDir::new("direct");
    let secret = host.path().join("secret");
    fs::write(&secret, "host secret\n").unwrap();
    let victim_dir = host.path().join("victim");
    fs::create_dir(&victim_dir).unwrap();
    let src = host.path().join("payload");
    fs::write(&src, "payload\n").unwrap();
    for extra in [&["-d"][..], &["--remote"][..]] {
        let mut args = extra.to_vec();
        let img = image();
        args.push(&img);
        let mut s = Server::start(&args);
        let d = s.open();
        let argv = s.exec_argv();
        // The same absolute paths as on the host, in the testbed.
        sh_ok(
            &argv,
            &format!(
                "mkdir -p {v} $(dirname {sec}) && echo testbed secret > {sec} && \
                 ln -s {sec} {d}/abs && ln -s ../../../../../../../..{sec} {d}/rel && \
                 ln -s {v} {d}/dirlink",
                v = victim_dir.display(),
                sec = secret.display()
            ),
        );
        for link in ["abs", "rel"] {
            let out = host.path().join(format!("got-{link}"));
            s.ok(&format!("copyup {d}/{link} {}", out.display()));
            assert_eq!(
                fs::read_to_string(&out).unwrap(),
                "testbed secret\n",
                "{extra:?}: copyup through {link} read the host's file"
            );
        }
        s.ok(&format!("copydown {} {d}/dirlink/dropped", src.display()));
        assert_eq!(
            fs::read_dir(&victim_dir).unwrap().count(),
            0,
            "{extra:?}: copydown wrote through a planted symlink onto the host"
        );
        assert_eq!(
            sh_ok(&argv, &format!("cat {}/dropped", victim_dir.display())),
            "payload\n"
        );
        assert_eq!(fs::read_to_string(&secret).unwrap(), "host secret\n");

        // Trees: a planted link as the target, and as an entry in the way.
        let tree = host.path().join("tree");
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/x"), "tree payload\n").unwrap();
        sh_ok(
            &argv,
            &format!(
                "rm -f {v}/dropped && mkdir {d}/t2 && ln -s {v} {d}/t2/sub",
                v = victim_dir.display()
            ),
        );
        s.ok(&format!("copydown {}/ {d}/dirlink/", tree.display()));
        s.ok(&format!("copydown {}/ {d}/t2/", tree.display()));
        assert_eq!(
            fs::read_dir(&victim_dir).unwrap().count(),
            0,
            "{extra:?}: a tree copydown wrote through a planted symlink onto the host"
        );
        // As the daemon's extraction does, both links became directories.
        assert_eq!(
            sh_ok(
                &argv,
                &format!(
                    "cat {d}/dirlink/sub/x {d}/t2/sub/x; ls -A {v}; \
                     for l in {d}/dirlink {d}/t2/sub; do test -d $l -a ! -L $l && echo real; done",
                    v = victim_dir.display()
                )
            ),
            "tree payload\ntree payload\nreal\nreal\n",
            "{extra:?}"
        );
        let up = host.path().join(format!("up{}", extra[0]));
        sh_ok(
            &argv,
            &format!("mkdir {d}/t3 && ln -s {} {d}/t3/abs", secret.display()),
        );
        s.ok(&format!("copyup {d}/t3/ {}/", up.display()));
        assert!(
            fs::symlink_metadata(up.join("abs"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{extra:?}: a tree copyup followed a link in the testbed"
        );
        s.ok(&format!("copyup {d}/dirlink/ {}/", up.display()));
        assert_eq!(
            fs::read_to_string(up.join("sub/x")).unwrap(),
            "tree payload\n",
            "{extra:?}: a tree copyup through a planted link read the host"
        );
        assert_eq!(fs::read_to_string(&secret).unwrap(), "host secret\n");
        if extra == ["-d"] {
            assert!(
                s.stderr_says(
                    "files and directories are copied through the testbed's root directly"
                ),
                "the direct route was not taken: {}",
                s.stderr()
            );
        }
        s.quit();
    }
}

/// A test may replace tar: on the Engine API route (--remote) trees go
/// through the testbed's tar, and `yes` in its place writes for ever.
/// rdocker keeps a bounded part of what it captures, so its memory stays
/// flat; the copies fail saying why, and the session goes on.
#[test]
fn a_tar_that_writes_for_ever_cannot_exhaust_memory() {
    let mut s = Server::start_env(
        &["--remote", &image()],
        &[("AUTOPKGTEST_VIRT_COPY_TIMEOUT", "60")],
    );
    let d = s.open();
    let argv = s.exec_argv();
    let host = TempDir::new("yes-tar");
    let src = host.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/f"), "data\n").unwrap();
    sh_ok(
        &argv,
        "printf '#!/bin/sh\\nexec yes\\n' > /usr/bin/tar.yes && chmod 755 /usr/bin/tar.yes && \
         mv /usr/bin/tar.yes /usr/bin/tar",
    );
    let before = rss_kib(s.pid());
    for line in [
        format!("copydown {}/ {d}/t/", src.display()),
        format!("copyup /etc/ {}/", host.path().join("back").display()),
    ] {
        let t = Instant::now();
        let (reply, peak) = s.cmd_peak_rss(&line);
        eprintln!(
            "{line}: {reply} after {:?}, RSS {before} KiB before, peak {peak} KiB",
            t.elapsed()
        );
        assert_eq!(reply, "copy-failed", "`{line}'; stderr: {}", s.stderr());
        assert!(peak < 32 * 1024, "`{line}': the server reached {peak} KiB");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "`{line}' took {:?}",
            t.elapsed()
        );
    }
    assert!(
        s.stderr_says("tar in the testbed wrote more than 64 KiB"),
        "{}",
        s.stderr()
    );
    // The session goes on, and the runaway tars are gone.
    assert_eq!(sh_ok(&argv, "echo alive"), "alive\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_procs(&argv, "^yes $") != 0 {
        assert!(Instant::now() < deadline, "a `yes' outlived its copy");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.quit();
}

/// An image whose /bin/sh cannot run here (as a foreign image without its
/// binfmt handler): the daemon starts the container, and its first process
/// dies of an exec format error. `open` must fail, saying so, and leave
/// nothing behind; before, it answered ok and every command then failed.
#[test]
fn open_fails_when_the_first_process_dies() {
    let broken = "rdocker-test/broken-sh:1";
    let have = std::process::Command::new("docker")
        .args(["image", "inspect", broken])
        .output()
        .expect("the docker CLI makes the broken image");
    if !have.status.success() {
        let name = format!("rdocker-it-broken-{}", std::process::id());
        let run = std::process::Command::new("docker")
            .args(["run", "--name", &name, &image(), "sh", "-c"])
            .arg("rm /bin/sh && printf '\\177ELF\\2\\1\\1garbage' > /bin/sh && chmod 755 /bin/sh")
            .status()
            .unwrap();
        assert!(run.success());
        let commit = std::process::Command::new("docker")
            .args(["commit", &name, broken])
            .status()
            .unwrap();
        let _ = std::process::Command::new("docker")
            .args(["rm", &name])
            .status();
        assert!(commit.success());
    }
    let mut s = Server::start(&[broken]);
    s.send("open");
    let st = s.wait(Duration::from_secs(60));
    assert_ne!(st.code(), Some(0), "{}", s.stderr());
    assert!(
        s.stderr_says("stopped right after it started") && s.stderr_says("exited with status"),
        "{}",
        s.stderr()
    );
    assert_no_containers(s.pid());
}

//! The daemon restarts under an open testbed. This stops and starts the
//! machine's dockerd, so it is ignored in the parallel run; ci/test.sh
//! runs it alone:
//!   cargo test --test integration -- --ignored --test-threads=1

use crate::util::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn dockerd_pid() -> Option<i32> {
    let o = Command::new("pidof").arg("dockerd").output().ok()?;
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn stop_dockerd() {
    let pid = dockerd_pid().expect(
        "this test restarts the local dockerd, and none runs here; \
         start one (ci/provision.sh does) or leave out --ignored",
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dockerd_pid().is_some() {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_dockerd() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "setsid -f dockerd >>/var/log/rdocker-test-dockerd.log 2>&1 </dev/null",
    ]);
    // cargo starts this test binary through glibc's posix_spawn, which
    // leaves glibc's internal signals 32 and 33 ignored in the child; a
    // dockerd started with them ignored passes that on to every process
    // of every container. glibc's sigaction refuses to touch them, and a
    // shell cannot undo an ignore it inherits: reset them with the raw
    // system call. An all-zero kernel sigaction is SIG_DFL, no flags, on
    // every architecture.
    unsafe {
        cmd.pre_exec(|| {
            let dfl = [0u64; 4];
            for sig in 1..=64 {
                nix::libc::syscall(
                    nix::libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
            Ok(())
        });
    }
    let st = cmd.status().unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = Command::new("sh")
            .args([
                "-c",
                "curl -sf --unix-socket /var/run/docker.sock http://d/_ping >/dev/null 2>&1",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if up {
            return;
        }
        assert!(Instant::now() < deadline, "dockerd did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "restarts dockerd; run alone with --ignored --test-threads=1"]
fn daemon_restart_under_an_open_testbed() {
    // 1. Commands while the daemon is down fail promptly and clearly.
    let mut s = Server::start(&[&image()]);
    let d = s.open();
    let argv = s.exec_argv();
    stop_dockerd();
    let t = Instant::now();
    let o = sh(&argv, "true");
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unix:///var/run/docker.sock")
            || String::from_utf8_lossy(&o.stderr).contains("daemon"),
        "{o:?}"
    );
    let host = TempDir::new("restart");
    assert_eq!(
        s.cmd(&format!("copyup {d}/x {}/x", host.path().display())),
        "copy-failed"
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?} with the daemon down",
        t.elapsed()
    );
    start_dockerd();
    // 2. Back up: the container is stopped (no live-restore); the exec
    //    says so, and close removes it.
    let o = sh(&argv, "true");
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    assert_eq!(s.cmd("close"), "ok", "{}", s.stderr());
    assert_no_containers(s.pid());
    s.quit();

    // 3. quit while the daemon is down: rdocker waits for it to return,
    //    then removes its container.
    let mut s = Server::start(&[&image()]);
    s.open();
    stop_dockerd();
    s.send("quit");
    std::thread::sleep(Duration::from_secs(2));
    start_dockerd();
    let st = s.wait(Duration::from_secs(60));
    assert_eq!(st.code(), Some(0), "{}", s.stderr());
    assert_no_containers(s.pid());
}

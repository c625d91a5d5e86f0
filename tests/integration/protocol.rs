//! Each protocol command, its replies, and each error path.

use crate::util::*;
use std::time::Duration;

/// The exit status and message of VirtSubproc's bomb().
fn assert_bombed(mut s: Server, msg: &str) {
    let st = s.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(12), "exit {st:?}; stderr: {}", s.stderr());
    assert!(s.stderr_says(msg), "stderr lacks {msg:?}: {}", s.stderr());
    assert_no_containers(s.pid());
}

#[test]
fn full_session() {
    let mut s = Server::start(&[&image()]);
    let caps = s.capabilities();
    for c in ["revert", "revert-full-system", "root-on-testbed"] {
        assert!(
            caps.contains(&c.to_string()),
            "capabilities {caps:?} lack {c}"
        );
    }
    assert!(
        !caps.iter().any(|c| c == "reboot"),
        "reboot advertised: {caps:?}"
    );
    // Only --init gives tests a booted init system.
    assert!(
        !caps.iter().any(|c| c == "isolation-container"),
        "isolation-container advertised without --init: {caps:?}"
    );
    assert!(
        !caps.iter().any(|c| c.starts_with("downtmp-host=")),
        "{caps:?}"
    );
    let d = s.open();
    assert!(d.starts_with("/tmp/autopkgtest."), "scratch {d}");
    let argv = s.exec_argv();
    assert_eq!(
        sh_ok(&argv, &format!("test -d {d} -a -w {d} && id -u")),
        "0\n"
    );
    assert_eq!(s.ok("close"), Vec::<String>::new());
    // After close the testbed is gone.
    assert_no_containers(s.pid());
    let d2 = s.open();
    assert_eq!(s.ok("revert"), vec![d2.clone()]);
    s.quit();
}

/// Revert swaps in the spare made while the testbed ran, removes the old
/// one, and starts the next spare; a spare that died meanwhile is not
/// used. Every testbed has the same scratch directory, clean.
#[test]
fn revert_gives_a_fresh_container_with_the_same_scratch() {
    let mut s = Server::start(&[&image()]);
    let d = s.open();
    let clean = format!("ls -A {d}; test -e /etc/dirty || echo clean");
    let argv = s.exec_argv();
    let first = testbed_of(&argv);
    sh_ok(&argv, &format!("touch /etc/dirty {d}/also-dirty"));
    let both = owned(s.pid(), 2);
    assert!(both.contains(&first), "{both:?}");
    let spare = both.iter().find(|c| **c != first).unwrap().clone();
    let t = std::time::Instant::now();
    assert_eq!(s.ok("revert"), vec![d.clone()]);
    let took = t.elapsed();
    // Well under Docker's 10 s stop grace.
    assert!(took < Duration::from_secs(5), "revert took {took:?}");
    // The old testbed is ended at once and removed in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while containers_of(s.pid()).contains(&first) {
        assert!(
            std::time::Instant::now() < deadline,
            "revert left the old container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let argv = s.exec_argv();
    assert_eq!(testbed_of(&argv), spare, "revert did not use the spare");
    assert_eq!(sh_ok(&argv, &clean), "clean\n");
    sh_ok(&argv, "touch /etc/dirty");
    // Reverted testbeds whose removal is still running are waited for by
    // close, below.
    sh_ok(&argv, "sleep 1000 >/dev/null 2>&1 &");
    assert_eq!(s.ok("revert"), vec![d.clone()]);
    let argv = s.exec_argv();
    assert_eq!(sh_ok(&argv, &clean), "clean\n");
    sh_ok(&argv, "touch /etc/dirty");

    // The next spare dies before it is needed: revert makes a testbed anew.
    let current = testbed_of(&argv);
    let both = owned(s.pid(), 2);
    let dead = both.iter().find(|c| **c != current).unwrap().clone();
    remove_container(&dead);
    assert_eq!(s.ok("revert"), vec![d.clone()]);
    let argv = s.exec_argv();
    let now = testbed_of(&argv);
    assert!(now != dead && now != current, "{now}");
    assert_eq!(sh_ok(&argv, &clean), "clean\n");
    let pid = s.pid();
    s.ok("close");
    assert!(
        containers_of(pid).is_empty(),
        "close left {:?}",
        containers_of(pid)
    );
    s.quit();
}

#[test]
fn close_is_prompt() {
    let mut s = Server::start(&[&image()]);
    s.open();
    let t = std::time::Instant::now();
    s.ok("close");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "close took {took:?}");
    assert_no_containers(s.pid());
    s.quit();
}

#[test]
fn blank_lines_and_dash_underscore() {
    let mut s = Server::start(&[&image()]);
    s.send("");
    s.send("   ");
    // print_execute_command is the same command as print-execute-command.
    s.open();
    let r = s.cmd("print_execute_command");
    assert!(r.starts_with("ok "), "{r}");
    let r = s.cmd("auxverb-debug-fail");
    assert_eq!(r, "ok");
    s.quit();
}

#[test]
fn unknown_command_bombs() {
    let mut s = Server::start(&[&image()]);
    s.open();
    s.send("frobnicate now");
    assert_bombed(s, "unknown command `frobnicate'");
}

#[test]
fn wrong_argument_count_bombs() {
    let mut s = Server::start(&[&image()]);
    s.open();
    s.send("copydown /etc/hostname");
    assert_bombed(s, "too few arguments to command `copydown'");
}

#[test]
fn too_many_arguments_bombs() {
    let mut s = Server::start(&[&image()]);
    s.send("open now");
    assert_bombed(s, "too many arguments to command `open'");
}

#[test]
fn wrong_state_bombs() {
    let mut s = Server::start(&[&image()]);
    s.send("revert");
    assert_bombed(s, "`revert' when not open");

    let mut s = Server::start(&[&image()]);
    s.send("print-execute-command");
    assert_bombed(s, "when not open");

    let mut s = Server::start(&[&image()]);
    s.open();
    s.send("open");
    assert_bombed(s, "`open' when already open");
}

#[test]
fn reboot_is_not_advertised_and_bombs() {
    let mut s = Server::start(&[&image()]);
    s.open();
    s.send("reboot");
    // Refused, with why: no init, nothing reboots (see reboot.rs for
    // the --init case).
    assert_bombed(
        s,
        "`reboot' when `reboot' not advertised: rdocker reboots a testbed only under --init",
    );
}

#[test]
fn quit_when_stdout_is_a_closed_pipe() {
    use std::process::{Command, Stdio};
    docker();
    // stdout is a pipe whose reader is gone before quit: the reply
    // write fails with EPIPE, which must not become an error.
    let script = format!(
        "(sleep 0; printf 'capabilities\\nquit\\n') | {BIN} {} | head -c 0; echo ${{PIPESTATUS[1]}}",
        image()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        code,
        "0",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn auxverb_debug_fail_describes_the_testbed() {
    let mut s = Server::start(&[&image()]);
    s.open();
    assert_eq!(s.cmd("auxverb_debug_fail"), "ok");
    let name = format!("rdocker-{}-", s.pid());
    assert!(s.stderr_says(&name), "stderr: {}", s.stderr());
    s.quit();
}

#[test]
fn suggested_normal_user_from_the_image() {
    // As the reference, it is known once the testbed is open.
    let mut s = Server::start(&[&user_image()]);
    s.open();
    let caps = s.capabilities();
    assert!(
        caps.contains(&"suggested-normal-user=tester".to_string()),
        "{caps:?}"
    );
    s.quit();
    // The plain image has no user with uid 1000-59999.
    let mut s = Server::start(&[&image()]);
    s.open();
    let caps = s.capabilities();
    assert!(
        !caps.iter().any(|c| c.starts_with("suggested-normal-user")),
        "{caps:?}"
    );
    s.quit();
}

#[test]
fn vanished_container_gives_a_clear_error() {
    let mut s = Server::start(&[&image()]);
    s.open();
    let argv = s.exec_argv();
    let id = testbed_of(&argv);
    remove_container(&id);
    // The exec argv reports a testbed failure, not a test failure.
    let o = sh(&argv, "true");
    assert_eq!(o.status.code(), Some(255), "{:?}", o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("container") && err.contains("gone"),
        "stderr: {err}"
    );
    // The next command that needs the container answers with an error.
    let host = TempDir::new("vanished");
    let r = s.cmd(&format!(
        "copyup /etc/hostname {}",
        quote(&host.path().join("h").to_string_lossy())
    ));
    assert_eq!(r, "copy-failed", "{}", s.stderr());
    s.send("revert");
    // revert recreates from the image: it works, or bombs clearly.
    match s.line(REPLY_TIMEOUT) {
        Some(l) => assert!(l.starts_with("ok "), "{l}"),
        None => assert!(s.stderr_says("failure"), "{}", s.stderr()),
    }
    drop(s);
}

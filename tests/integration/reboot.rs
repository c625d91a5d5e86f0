//! `reboot` and `reboot prepare-only` under --init: the same container
//! shuts down and boots again; files and the scratch directory stay,
//! processes and /run do not; the exec argv handed out before still works;
//! the spare is not handed out. Without an init, reboot is refused
//! (protocol.rs).

use crate::util::*;
use std::process::{Command, Stdio};

fn init_server() -> Server {
    let image = systemd_image();
    let mut args = vec!["-d", "--init", image.as_str()];
    args.extend(SYSTEMD_RUN_OPTIONS);
    Server::start(&args)
}

/// When the daemon last started the container: a reboot starts it again.
fn started_at(id: &str) -> String {
    runtime_block(docker().inspect_container(id, None))
        .expect("cannot inspect the testbed")
        .state
        .and_then(|s| s.started_at)
        .expect("no StartedAt")
}

fn root_handle(argv: &[String]) -> Option<&str> {
    argv.iter().find_map(|a| a.strip_prefix("--root="))
}

#[test]
fn reboot_keeps_files_and_scratch_and_ends_processes_and_run() {
    let mut s = init_server();
    let d = s.open();
    let caps = s.capabilities();
    assert!(caps.contains(&"reboot".to_string()), "{caps:?}");
    let before = s.exec_argv();
    let id = testbed_of(&before);
    let started = started_at(&id);
    let mut both = owned(s.pid(), 2);
    both.sort();
    sh_ok(
        &before,
        &format!(
            "echo kept >/etc/rdocker-kept && echo scratch >{d}/kept && echo gone >/run/rdocker-gone"
        ),
    );
    // A process of this boot, started by PID 1 (the exec's own children
    // are cleaned up with it): not enabled, so no boot starts it again.
    sh_ok(
        &before,
        "printf '[Service]\\nExecStart=/bin/sleep 1000\\n' >/etc/systemd/system/sleeper.service \
         && systemctl daemon-reload && systemctl start sleeper",
    );
    assert_eq!(count_procs(&before, "^/bin/sleep 1000"), 1);

    assert_eq!(s.ok("reboot"), Vec::<String>::new());

    assert_ne!(
        started_at(&id),
        started,
        "the container was not started again"
    );
    assert!(s.stderr_says("rebooted in"), "{}", s.stderr());
    // The argv handed out before: its root handle is stale (another PID 1)
    // and it must take the API, in the same container.
    assert_booted(&before);
    assert_eq!(sh_ok(&before, "cat /etc/rdocker-kept"), "kept\n");
    let after = s.exec_argv();
    assert_eq!(
        testbed_of(&after),
        id,
        "reboot handed out another container"
    );
    assert_booted(&after);
    assert_eq!(sh_ok(&after, &format!("cat {d}/kept")), "scratch\n");
    assert_eq!(sh_ok(&after, &format!("stat -c %a {d}")), "1777\n");
    assert_eq!(
        sh(&after, "test -e /run/rdocker-gone").status.code(),
        Some(1)
    );
    assert_eq!(count_procs(&after, "^/bin/sleep 1000"), 0);
    assert_eq!(
        sh(
            &after,
            "ls /var/cache/autopkgtest-tmpdir.tar /home/autopkgtest-tmpdir.tar"
        )
        .status
        .code(),
        Some(2),
        "the saved scratch directory was left behind"
    );
    // The direct route is back, for the new PID 1.
    let (old, new) = (root_handle(&before), root_handle(&after));
    assert!(
        new.is_some() && old.is_some() && new != old,
        "{old:?} {new:?}"
    );
    let tmp = TempDir::new("reboot-copy");
    let f = tmp.path().join("f");
    std::fs::write(&f, b"after the reboot").unwrap();
    s.ok(&format!("copydown {} {d}/f", quote(&f.to_string_lossy())));
    assert_eq!(sh_ok(&after, &format!("cat {d}/f")), "after the reboot");
    // The spare stayed the spare: the same two containers, none new.
    let mut now = owned(s.pid(), 2);
    now.sort();
    assert_eq!(now, both, "the reboot changed the containers");
    // And a revert still hands it out, booted.
    s.ok("revert");
    let reverted = s.exec_argv();
    assert_ne!(testbed_of(&reverted), id);
    assert_booted(&reverted);
    s.quit();
}

/// As autopkgtest drives it: the test calls /tmp/autopkgtest-reboot-prepare
/// (which kills the test's wrapper and waits for the mark to go), the
/// caller finds the mark and sends `reboot prepare-only`, and the test
/// reboots the testbed itself once let go.
#[test]
fn reboot_prepare_only_waits_for_the_test_to_reboot() {
    // The test's own `reboot` needs D-Bus (reboot_plain.rs).
    let image = logind_image();
    let mut args = vec!["-d", "--init", image.as_str()];
    args.extend(SYSTEMD_RUN_OPTIONS);
    let mut s = Server::start(&args);
    let d = s.open();
    let argv = s.exec_argv();
    let id = testbed_of(&argv);
    let started = started_at(&id);
    s.ok(&format!(
        "copydown /usr/share/autopkgtest/lib/in-testbed/reboot-prepare.sh \
         {d}/autopkgtest-reboot-prepare"
    ));
    sh_ok(
        &argv,
        &format!(
            "chmod 755 {d}/autopkgtest-reboot-prepare && \
             ln -fns {d}/autopkgtest-reboot-prepare /tmp/autopkgtest-reboot-prepare && \
             echo saved >{d}/kept"
        ),
    );
    // wrapper.sh's part: its pid in /tmp/autopkgtest_script_pid, the test
    // a child of it, with its output away from the exec's.
    let test = "echo $$ >/tmp/autopkgtest_script_pid; \
                sh -c '/tmp/autopkgtest-reboot-prepare mark1; touch /var/post-prepare; reboot' \
                </dev/null >/dev/null 2>&1; exit $?";
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).args(["sh", "-c", test]);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the exec argv");
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert_eq!(
        sh_ok(&argv, "cat /run/autopkgtest-reboot-prepare-mark"),
        "mark1\n"
    );
    // Still up: the test waits for the mark to go.
    assert_eq!(started_at(&id), started);

    assert_eq!(s.ok("reboot prepare-only"), Vec::<String>::new());

    assert_ne!(
        started_at(&id),
        started,
        "the container was not started again"
    );
    assert!(
        s.stderr_says("waiting for the test to reboot"),
        "{}",
        s.stderr()
    );
    let after = s.exec_argv();
    assert_eq!(testbed_of(&after), id);
    assert_booted(&after);
    // The test went on after the mark was removed, then rebooted.
    assert_eq!(
        sh(&after, "test -e /var/post-prepare").status.code(),
        Some(0)
    );
    assert_eq!(
        sh(&after, "test -e /run/autopkgtest-reboot-prepare-mark")
            .status
            .code(),
        Some(1)
    );
    assert_eq!(sh_ok(&after, &format!("cat {d}/kept")), "saved\n");
    s.quit();
}

/// A shutdown that hangs (a unit whose stop never ends) is cut short
/// once it has gone on for 30 s, and the testbed still comes back booted.
#[test]
fn a_hung_shutdown_is_cut_short() {
    let mut s = init_server();
    s.open();
    let argv = s.exec_argv();
    sh_ok(
        &argv,
        "printf '[Service]\\nExecStart=/bin/sleep 1000\\nExecStop=/bin/sleep 1000\\n\
         TimeoutStopSec=infinity\\n' >/etc/systemd/system/stuck.service \
         && systemctl daemon-reload && systemctl start stuck && echo kept >/etc/kept",
    );
    let t = std::time::Instant::now();
    assert_eq!(s.ok("reboot"), Vec::<String>::new());
    let took = t.elapsed();
    assert!(
        s.stderr_says("still shutting down after 30 s: killing it"),
        "{}",
        s.stderr()
    );
    assert!(took.as_secs() < 90, "the reboot took {took:?}");
    let after = s.exec_argv();
    assert_booted(&after);
    assert_eq!(sh_ok(&after, "cat /etc/kept"), "kept\n");
    s.quit();
}

/// Through the Engine API alone, the stream agent (api/agent.rs) dies
/// with the boot and is started again: commands after the reboot, with
/// the argv handed out before or after, start through the new one.
#[test]
fn reboot_through_the_api_starts_the_stream_agent_again() {
    let image = systemd_image();
    let mut args = vec!["-d", "--remote", "--init", image.as_str()];
    args.extend(SYSTEMD_RUN_OPTIONS);
    let mut s = Server::start(&args);
    s.open();
    let before = s.exec_argv();
    assert!(before.iter().any(|a| a.starts_with("--hub=")), "{before:?}");
    let agent = "grep -lzx 'rdocker[-]agent' /proc/[0-9]*/cmdline | cut -d/ -f3";
    let parent = "p=$(cut -d' ' -f4 /proc/$PPID/stat); tr '\\0' ' ' </proc/$p/cmdline";
    assert_eq!(sh_ok(&before, agent).lines().count(), 1);
    assert!(sh_ok(&before, parent).contains("rdocker-agent"));
    assert_eq!(s.ok("reboot"), Vec::<String>::new());
    let after = s.exec_argv();
    assert!(after.iter().any(|a| a.starts_with("--hub=")), "{after:?}");
    assert_booted(&after);
    for argv in [&before, &after] {
        assert!(
            sh_ok(argv, parent).contains("rdocker-agent"),
            "not through the agent after the reboot"
        );
    }
    // One agent: the boot's (the old one went with its PID namespace).
    let second = sh_ok(&after, agent);
    assert_eq!(second.lines().count(), 1, "{second:?}");
    s.quit();
}

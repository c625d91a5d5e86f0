//! The timeout kill against a root test that deletes rdocker's records of
//! its commands (issue 26, item 7): the kill finds the command's session
//! in the testbed, not only the PID the wrapper wrote down.

use crate::util::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Beside this daemon (fifos, host/agent.rs's agent), and through the
/// Engine API alone (api/agent.rs's stream agent).
const ROUTES: [&[&str]; 2] = [&[], &["--remote"]];

/// Deletes every record rdocker keeps of the running command (the PID
/// files, and on the host route its cmd file), leaves one child in the
/// background that double-forks away from the wrapper's tree (only the
/// session still ties it to the command), then sleeps.
const HOSTILE: &str = r#"p=$$
while ! tok=$(tr '\0' '\n' </proc/$p/cmdline | grep -xE 'rdocker-exec-[0-9a-f]+'); do
    p=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2)
done
rm -rf /run/rdocker-pids/* /run/rdocker-exec-*/cmd
( sleep 4711 </dev/null >/dev/null 2>&1 & )
sleep 4712 &
ls -d /run/rdocker-pids/${tok#rdocker-exec-} >/tmp/left 2>/dev/null || echo gone >/tmp/left
touch /tmp/ready
wait
echo not-killed
"#;

const LEFT: &str = "^sleep 471[12] $";

#[test]
fn the_kill_holds_when_the_test_deletes_the_records() {
    for route in ROUTES {
        let mut args = route.to_vec();
        let img = image();
        args.push(&img);
        let mut s = Server::start(&args);
        s.open();
        let argv = s.exec_argv();
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["sh", "-c", HOSTILE])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while sh(&argv, "test -e /tmp/ready").status.code() != Some(0) {
            assert!(
                Instant::now() < deadline,
                "{route:?}: the command never got ready; it exited {:?}",
                child.try_wait()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(count_procs(&argv, LEFT), 2, "{route:?}");
        // The command's record really is gone.
        assert_eq!(sh_ok(&argv, "cat /tmp/left"), "gone\n", "{route:?}");
        // autopkgtest's timeout: SIGTERM to the exec helper.
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let st = child.wait().unwrap();
        let took = t.elapsed();
        assert!(!st.success(), "{route:?}: {st:?}");
        assert!(
            took < Duration::from_secs(12),
            "{route:?}: the helper took {took:?} to end"
        );
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(!out.contains("not-killed"), "{route:?}: {out}");
        // Nothing of the command is left: the kill ended the session
        // before the helper exited.
        assert_eq!(
            count_procs(&argv, LEFT),
            0,
            "{route:?}: the command survived its timeout"
        );
        s.quit();
    }
}

/// With the records deleted, a normal user's decoys (the command's token
/// as their argv[0], each in a session of its own) are not taken for
/// the command's session: they are not root's and their parent is in the
/// testbed. The command itself still dies.
#[test]
fn decoys_of_a_normal_user_are_not_a_session_of_rdocker() {
    for route in ROUTES {
        let mut args = route.to_vec();
        let img = user_image();
        args.push(&img);
        let mut s = Server::start(&args);
        s.open();
        let argv = s.exec_argv();
        let script = r#"p=$$
while ! tok=$(tr '\0' '\n' </proc/$p/cmdline | grep -xE 'rdocker-exec-[0-9a-f]+'); do
    p=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2)
done
rm -rf /run/rdocker-pids/*
for i in 1 2 3; do
    su tester -s /bin/sh -c 'setsid bash -c '\''exec -a "$0" sleep 4343'\'' "$1" </dev/null >/dev/null 2>&1 &' - "$tok"
done
sleep 4712 &
wait
echo not-killed
"#;
        let decoy = "^rdocker-exec-[0-9a-f]+ 4343 $";
        let mut child = start_running(&argv, script, "^sleep 4712 $", 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while count_procs(&argv, decoy) != 3 {
            assert!(
                Instant::now() < deadline,
                "{route:?}: the decoys never started"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(!child.wait().unwrap().success());
        assert_eq!(count_procs(&argv, "^sleep 4712 $"), 0, "{route:?}");
        assert_eq!(
            count_procs(&argv, decoy),
            3,
            "{route:?}: the kill reached the decoys"
        );
        s.quit();
    }
}

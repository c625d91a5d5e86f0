//! `reboot prepare-only` on a plain systemd image (systemd-sysv, without
//! dbus and libpam-systemd), driven as upstream's test_reboot_prepare
//! does, through autopkgtest's own wrapper.sh: the test's `reboot` would
//! print "Failed to connect to bus" to a stderr whose reader (the
//! wrapper's tee) is gone, die of SIGPIPE, and leave rdocker waiting
//! 120 s. rdocker refuses at once, naming what the image lacks; with D-Bus
//! the same test reboots.

use crate::util::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IN_TESTBED: &str = "/usr/share/autopkgtest/lib/in-testbed";

fn server(image: &str) -> Server {
    let mut args = vec!["-d", "--init", image];
    args.extend(SYSTEMD_RUN_OPTIONS);
    Server::start(&args)
}

/// Run upstream's test_reboot_prepare's test as autopkgtest does, up to
/// its wait for `reboot prepare-only`; returns the exec argv.
fn test_waits_for_prepare(s: &mut Server) -> Vec<String> {
    let d = s.open();
    let argv = s.exec_argv();
    for f in ["wrapper.sh", "reboot-prepare.sh"] {
        s.ok(&format!("copydown {IN_TESTBED}/{f} {d}/{f}"));
    }
    sh_ok(
        &argv,
        &format!(
            "chmod 755 {d}/wrapper.sh {d}/reboot-prepare.sh && \
             ln -fns {d}/reboot-prepare.sh /tmp/autopkgtest-reboot-prepare"
        ),
    );
    // Upstream's test: nothing on its output after the prepare.
    let test = "echo test beginning; /tmp/autopkgtest-reboot-prepare mark1; \
                touch /var/post-prepare-1; reboot";
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .arg(format!("{d}/wrapper.sh"))
        .args(["--script-pid-file=/tmp/autopkgtest_script_pid", "--"])
        .args(["sh", "-c", test])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the exec argv");
    // The wrapper was killed by reboot-prepare.
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert_eq!(
        sh_ok(&argv, "cat /run/autopkgtest-reboot-prepare-mark"),
        "mark1\n"
    );
    argv
}

#[test]
fn reboot_prepare_on_a_plain_systemd_image_fails_at_once_naming_dbus() {
    let image = systemd_image();
    let mut s = server(&image);
    let argv = test_waits_for_prepare(&mut s);
    assert_eq!(
        sh(&argv, "test -S /run/dbus/system_bus_socket")
            .status
            .code(),
        Some(1),
        "{image} has a system bus: it is not the plain systemd image"
    );
    let t = Instant::now();
    s.send("reboot prepare-only");
    let st = s.wait(Duration::from_secs(10));
    eprintln!("reboot prepare-only failed in {:?}", t.elapsed());
    assert_eq!(st.code(), Some(12), "{}", s.stderr());
    for needed in ["dbus", "libpam-systemd"] {
        assert!(s.stderr_says(needed), "{needed} not named: {}", s.stderr());
    }
    assert_no_containers(s.pid());
}

/// The same test on the image with D-Bus: the test's own `reboot` works.
#[test]
fn reboot_prepare_with_dbus_reboots() {
    let mut s = server(&logind_image());
    let argv = test_waits_for_prepare(&mut s);
    let t = Instant::now();
    assert_eq!(s.ok("reboot prepare-only"), Vec::<String>::new());
    eprintln!("reboot prepare-only took {:?}", t.elapsed());
    let after = s.exec_argv();
    assert_eq!(testbed_of(&after), testbed_of(&argv));
    assert_booted(&after);
    assert_eq!(
        sh(&after, "test -e /var/post-prepare-1").status.code(),
        Some(0)
    );
    s.quit();
}

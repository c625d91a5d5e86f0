//! --init: the image's init system as PID 1, booted before the testbed is
//! handed out, and isolation-container advertised.

use crate::util::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn init_server() -> Server {
    let image = systemd_image();
    let mut args = vec!["-d", "--init", image.as_str()];
    args.extend(SYSTEMD_RUN_OPTIONS);
    Server::start(&args)
}

#[test]
fn init_boots_and_the_testbed_works_as_usual() {
    let mut s = init_server();
    let d = s.open();
    let caps = s.capabilities();
    assert!(
        caps.contains(&"isolation-container".to_string()),
        "{caps:?}"
    );
    let argv = s.exec_argv();
    assert_booted(&argv);
    // The scratch directory was made after the boot, and is still there.
    assert_eq!(sh_ok(&argv, &format!("stat -c %a {d}")), "1777\n");
    // A service can be started, by PID 1.
    sh_ok(
        &argv,
        "printf '[Service]\\nType=oneshot\\nExecStart=/bin/sh -c \"echo $$PPID >/run/probe\"\\n' \
         >/run/systemd/system/probe.service && systemctl daemon-reload && systemctl start probe",
    );
    assert_eq!(sh_ok(&argv, "cat /run/probe"), "1\n");
    // Copies still take the testbed's root: PID 1 carries the name.
    let tmp = TempDir::new("init-copy");
    let f = tmp.path().join("f");
    std::fs::write(&f, b"through the root").unwrap();
    s.ok(&format!("copydown {} {d}/f", quote(&f.to_string_lossy())));
    assert_eq!(sh_ok(&argv, &format!("cat {d}/f")), "through the root");
    // A revert gives a fresh, booted testbed.
    sh_ok(&argv, "touch /etc/dirty");
    s.ok("revert");
    let argv = s.exec_argv();
    assert_booted(&argv);
    assert_eq!(sh(&argv, "test -e /etc/dirty").status.code(), Some(1));
    let err = s.quit();
    assert!(err.contains("booted in"), "{err}");
    assert!(
        err.contains("copied through the testbed's root directly")
            && !err.contains("go through the archive API too"),
        "{err}"
    );
}

#[test]
fn an_init_that_cannot_boot_is_named_with_what_it_lacks() {
    // systemd without a writable /run and its cgroups exits at once.
    let err = open_fails(&systemd_image());
    assert!(
        err.contains("/sbin/init, --init) exited with status") && err.contains("--tmpfs /run"),
        "{err}"
    );
    // An image without an init system.
    let err = open_fails(&image());
    assert!(
        err.contains("needs an init system in the image") && err.contains("/sbin/init"),
        "{err}"
    );
}

/// `open` with --init on `image` fails as a bomb, leaving nothing behind;
/// returns what the server said.
fn open_fails(image: &str) -> String {
    let mut s = Server::start(&["--init", image]);
    s.send("open");
    let st = s.wait(Duration::from_secs(60));
    assert_eq!(st.code(), Some(12), "{}", s.stderr());
    // stderr is read on another thread, and can lag behind the exit.
    assert!(s.stderr_says("failure: "), "{}", s.stderr());
    assert_no_containers(s.pid());
    s.stderr()
}

/// autopkgtest runs a test with `Restrictions: isolation-container` only
/// through --init, and skips it otherwise.
#[test]
fn autopkgtest_runs_isolation_container_tests_with_init() {
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pkg/rdocker-service");
    let run = |extra: &[&str]| {
        let image = systemd_image();
        let mut server = vec![BIN];
        server.extend(extra);
        server.push(&image);
        server.extend(SYSTEMD_RUN_OPTIONS);
        let o = Command::new("autopkgtest")
            // No build: the test needs no binaries of the package.
            .arg("-B")
            .arg(format!("{}/", pkg.display()))
            .arg("--")
            .args(&server)
            .output()
            .expect("cannot run autopkgtest (ci/provision.sh installs it)");
        let log =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        (o.status.code(), log)
    };
    let (code, log) = run(&["--init"]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("services             PASS"), "{log}");
    // Without --init: skipped (autopkgtest's 8, no test ran).
    let (code, log) = run(&[]);
    assert_eq!(code, Some(8), "{log}");
    assert!(
        log.contains("requires testbed capability \"isolation-container\""),
        "{log}"
    );
}

/// The systemd image labelled as autopkgtest-build-docker (5.40 and later)
/// labels it, with `org.debian.autopkgtest.init=VALUE` (made once, by the
/// docker CLI: a commit of a created, never started, container).
fn labelled_image(value: &str) -> String {
    let tag = format!("rdocker-test/labelled-init-{value}:bookworm");
    let have = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .expect("the docker CLI labels the test image");
    if have.status.success() {
        return tag;
    }
    let name = format!("rdocker-it-label-{value}-{}", std::process::id());
    let created = Command::new("docker")
        .args(["create", "--name", &name, &systemd_image()])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let mut commit = Command::new("docker");
    commit.arg("commit");
    for (k, v) in [
        ("init", value),
        ("dpkg_architecture", "amd64"),
        ("release", "bookworm"),
        ("vendor", "debian"),
    ] {
        commit.args(["--change", &format!("LABEL org.debian.autopkgtest.{k}={v}")]);
    }
    let ok = commit.args([&name, &tag]).status().unwrap();
    let _ = Command::new("docker").args(["rm", &name]).output();
    assert!(ok.success());
    tag
}

fn pid1(s: &mut Server) -> (Vec<String>, String) {
    s.open();
    let caps = s.capabilities();
    let argv = s.exec_argv();
    let comm = sh_ok(&argv, "cat /proc/1/comm");
    (caps, comm)
}

#[test]
fn an_image_labelled_with_an_init_boots_it_unless_no_init() {
    let image = labelled_image("systemd");
    let mut args = vec!["-d", image.as_str()];
    args.extend(SYSTEMD_RUN_OPTIONS);
    let mut s = Server::start(&args);
    let (caps, comm) = pid1(&mut s);
    assert_eq!(comm, "systemd\n");
    assert!(
        caps.contains(&"isolation-container".to_string()),
        "{caps:?}"
    );
    assert!(
        s.stderr_says("as its label org.debian.autopkgtest.init=systemd says"),
        "{}",
        s.stderr()
    );
    assert!(
        s.stderr_says("org.debian.autopkgtest.release=bookworm"),
        "{}",
        s.stderr()
    );
    assert_booted(&s.exec_argv());
    s.quit();

    let mut args = vec!["-d", "--no-init", image.as_str()];
    args.extend(SYSTEMD_RUN_OPTIONS);
    let mut s = Server::start(&args);
    let (caps, comm) = pid1(&mut s);
    assert_ne!(comm, "systemd\n");
    assert!(
        !caps.contains(&"isolation-container".to_string()),
        "{caps:?}"
    );
    assert!(s.stderr_says("--no-init"), "{}", s.stderr());
    s.quit();

    // A label that names no init.
    let none = labelled_image("none");
    let mut s = Server::start(&["-d", &none]);
    let (caps, comm) = pid1(&mut s);
    assert_ne!(comm, "systemd\n");
    assert!(
        !caps.contains(&"isolation-container".to_string()),
        "{caps:?}"
    );
    assert!(s.stderr_says("not booting an init"), "{}", s.stderr());
    s.quit();
}

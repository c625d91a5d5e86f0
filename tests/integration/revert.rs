//! Revert when the old testbed could reach the next one (a shared
//! network namespace, a writable mount, a booted init): the old one is
//! dead before revert answers. Otherwise it ends in the background.

use crate::util::*;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// What revert may cost, with its spare ready, or booting the next
/// testbed once the old one is dead.
const REVERT_LIMIT: Duration = Duration::from_secs(1);

/// Wait until the server has said `needle` `n` times on stderr.
fn said_times(s: &Server, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.stderr().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "the server never said {needle:?} {n} times; stderr: {}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn timed_revert(s: &mut Server) -> Duration {
    let t = Instant::now();
    s.ok("revert");
    let took = t.elapsed();
    eprintln!("revert took {took:?}");
    took
}

#[test]
fn init_with_host_network_frees_the_old_testbeds_ports() {
    let image = systemd_image();
    let mut args = vec!["-d", "--init", image.as_str()];
    args.extend(SYSTEMD_RUN_OPTIONS);
    args.extend(["--network", "host"]);
    let mut s = Server::start(&args);
    s.open();
    let argv = s.exec_argv();
    // A free port, then a service of the testbed's systemd listening on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The image has perl-base, but no python3 http.server.
    sh_ok(
        &argv,
        &format!(
            "systemd-run --unit=rdocker-listen perl -MIO::Socket::INET -e \
             'my $s = IO::Socket::INET->new(LocalAddr => \"127.0.0.1\", LocalPort => {port}, \
             Listen => 5) or die $!; sleep'"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the testbed's service never listened on port {port} of the host: {}",
            String::from_utf8_lossy(
                &sh(
                    &argv,
                    "systemctl status rdocker-listen; journalctl -u rdocker-listen"
                )
                .stdout
            )
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No spare: booted beside this testbed on the host's network, its
    // services would have met the test's.
    assert!(
        s.stderr_says("no spare testbed: under --init"),
        "{}",
        s.stderr()
    );
    owned(s.pid(), 1);
    let took = timed_revert(&mut s);
    let freed = TcpListener::bind(("127.0.0.1", port));
    assert!(
        freed.is_ok(),
        "port {port} still taken when revert answered ({:?}); stderr: {}",
        freed.err(),
        s.stderr()
    );
    assert!(
        s.stderr_says("before handing out the next testbed")
            && s.stderr_says("--network host")
            && s.stderr_says("--init"),
        "{}",
        s.stderr()
    );
    // A boot, not a swap: measured 0.8-2.1 s here, by load.
    assert!(took <= Duration::from_secs(5), "revert took {took:?}");
    drop(freed);
    // The new testbed is booted and does not run the old one's service.
    let argv = s.exec_argv();
    assert_eq!(sh_ok(&argv, "cat /proc/1/comm"), "systemd\n");
    assert_ne!(
        sh_ok(&argv, "systemctl is-active rdocker-listen || true"),
        "active\n"
    );
    s.quit();
}

#[test]
fn a_bind_mount_is_left_alone_once_revert_answers() {
    // A booted init, which does not end on SIGTERM, and a testbed that does.
    let init = systemd_image();
    let mut init_args = vec!["--init", init.as_str()];
    init_args.extend(SYSTEMD_RUN_OPTIONS);
    let plain = image();
    for args in [init_args, vec![plain.as_str()]] {
        bind_mount_case(&args);
    }
}

fn bind_mount_case(args: &[&str]) {
    let host = TempDir::new("revert-bind");
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let bind = format!("{}:/shared", host.path().display());
    let mut all = vec!["-d"];
    all.extend(args);
    all.extend(["-v", &bind]);
    let mut s = Server::start(&all);
    s.open();
    let argv = s.exec_argv();
    sh_ok(
        &argv,
        "setsid -f sh -c 'while :; do date +%s%N >>/shared/ticks; sleep 0.01; done' \
         </dev/null >/dev/null 2>&1",
    );
    let ticks = host.path().join("ticks");
    let size = || std::fs::metadata(&ticks).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = size();
    while size() <= first + 100 {
        assert!(
            Instant::now() < deadline,
            "{all:?}: the testbed's loop never wrote to {} (size {})",
            ticks.display(),
            size()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The spare is ready: revert only swaps. A second, as a test's run
    // time, for it to be prepared on this loaded machine.
    owned(s.pid(), 2);
    if args.contains(&"--init") {
        said_times(&s, "booted in", 2);
    }
    said_times(&s, "ready in", 1);
    std::thread::sleep(Duration::from_secs(1));
    let took = timed_revert(&mut s);
    let a = size();
    std::thread::sleep(Duration::from_millis(200));
    let b = size();
    assert_eq!(
        a,
        b,
        "{all:?}: the old testbed still wrote to the bind mount after revert answered; \
         stderr: {}",
        s.stderr()
    );
    assert!(
        s.stderr_says("before handing out the next testbed") && s.stderr_says(&bind),
        "{}",
        s.stderr()
    );
    assert!(took <= REVERT_LIMIT, "{all:?}: revert took {took:?}");
    s.quit();
}

#[test]
fn nothing_shared_keeps_the_background_path() {
    let mut s = Server::start(&["-d", &image()]);
    s.open();
    owned(s.pid(), 2);
    // Made (and warmed only after a revert, apt/warm.rs): revert only swaps.
    said_times(&s, "ready in", 1);
    let took = timed_revert(&mut s);
    assert!(s.stderr_says("ends in the background"), "{}", s.stderr());
    assert!(
        !s.stderr().contains("before handing out the next testbed"),
        "{}",
        s.stderr()
    );
    assert!(took <= REVERT_LIMIT, "revert took {took:?}");
    s.quit();
}

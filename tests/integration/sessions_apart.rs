//! Sessions apart (issue 26 item 10). The test is hostile: root in its
//! testbed, it connects to a port that another session's test listens on,
//! to send it data or read its answers. Without `--network`, rdocker puts
//! its testbeds on one shared network with container-to-container traffic
//! off: the connection must fail, while both testbeds still reach the host
//! (the gateway, where the apt cache listens). `--network bridge` keeps
//! Docker's default, where they connect, as before. On Podman, whose
//! networks cannot turn that traffic off, each session has a network of
//! its own, gone at close and after `--reap`.

use crate::util::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NETWORK: &str = "rdocker-testbeds-";
const LABEL: &str = "org.debian.autopkgtest.rdocker.network=apart";
const PORT: u16 = 7011;

/// The race test removes the shared network: never while another test
/// here is between choosing it and creating its testbed.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The testbed's networks on daemon `d`: name to (id, address, gateway).
fn networks_on(d: &bollard::Docker, argv: &[String]) -> HashMap<String, (String, String, String)> {
    let c = runtime_block(d.inspect_container(&testbed_of(argv), None))
        .expect("cannot inspect the testbed");
    c.network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, e)| {
            let f = |v: Option<String>| v.unwrap_or_default();
            (name, (f(e.network_id), f(e.ip_address), f(e.gateway)))
        })
        .collect()
}

/// The one network of a testbed: name, id, address, gateway.
fn only_network(argv: &[String]) -> (String, String, String, String) {
    only_network_on(&docker(), argv)
}

fn only_network_on(d: &bollard::Docker, argv: &[String]) -> (String, String, String, String) {
    let nets = networks_on(d, argv);
    assert_eq!(nets.len(), 1, "the testbed is on {nets:?}");
    let (name, (id, ip, gw)) = nets.into_iter().next().unwrap();
    (name, id, ip, gw)
}

/// A listener in the testbed on every address, answering `secret` to
/// whoever connects, in the background; returns once the host reaches it.
fn listen_in(argv: &[String], ip: &str, secret: &str) {
    let script = format!(
        "setsid perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(Listen => 5, \
         LocalPort => {PORT}, ReuseAddr => 1) or die $!; \
         while ($c = $s->accept) {{ print $c \"{secret}\\n\"; close $c }}' \
         </dev/null >/dev/null 2>&1 &"
    );
    sh_ok(argv, &script);
    // The host reaches every testbed: the listener is up and answers.
    // (30 s: the whole suite runs beside it on 2 cores.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(
            &format!("{ip}:{PORT}").parse().unwrap(),
            Duration::from_secs(1),
        ) {
            let mut got = String::new();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.read_to_string(&mut got);
            assert_eq!(
                got.trim(),
                secret,
                "the listener in the testbed answered {got:?}"
            );
            return;
        }
        if Instant::now() > deadline {
            let ps = sh(
                argv,
                "for p in /proc/[0-9]*; do echo \"$p $(tr '\\0' ' ' <$p/cmdline)\"; done; \
                 cat /proc/net/tcp",
            );
            panic!(
                "the listener in the testbed at {ip}:{PORT} never came up; the testbed is on \
                 {:?}; its processes and sockets:\n{}{}",
                networks_on(&docker(), argv),
                String::from_utf8_lossy(&ps.stdout),
                String::from_utf8_lossy(&ps.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a connection from the testbed to `addr` reads: the first line,
/// or `FAILED ...`.
fn connect_from(argv: &[String], addr: &str) -> String {
    let script = format!(
        "perl -MIO::Socket::INET -e '$c = IO::Socket::INET->new(PeerAddr => \"{addr}\", \
         Timeout => 2); if ($c) {{ $l = <$c>; print \"READ $l\" }} else {{ print \"FAILED $@\\n\" }}'"
    );
    sh_ok(argv, &script).trim().to_string()
}

/// A listener on the host at `ip` (a gateway) that greets whoever
/// connects; the thread ends with the test.
fn host_listener(ip: &str) -> String {
    let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| {
        panic!("cannot listen on {ip}, the testbeds' gateway, on the host: {e}")
    });
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"host\n");
        }
    });
    addr
}

/// The apt proxy the testbed's apt is given: its host:port.
fn apt_proxy_of(argv: &[String]) -> String {
    let conf = sh_ok(argv, "cat /etc/apt/apt.conf.d/00rdocker-apt-proxy");
    let url = conf
        .lines()
        .find_map(|l| l.strip_prefix("Acquire::http::Proxy \""))
        .unwrap_or_else(|| panic!("no proxy in the testbed's apt.conf.d file: {conf}"));
    url.trim_end_matches("\";")
        .trim_start_matches("http://")
        .to_string()
}

/// Whether the testbed opens a TCP connection to `addr` (an HTTP proxy
/// says nothing first).
fn opens(argv: &[String], addr: &str) -> bool {
    let script = format!(
        "perl -MIO::Socket::INET -e 'exit(IO::Socket::INET->new(PeerAddr => \"{addr}\", \
         Timeout => 2) ? 0 : 1)'"
    );
    sh(argv, &script).status.success()
}

fn labelled_networks() -> Vec<String> {
    let filters = HashMap::from([("label".to_string(), vec![LABEL.to_string()])]);
    let opts = bollard::query_parameters::ListNetworksOptionsBuilder::new()
        .filters(&filters)
        .build();
    runtime_block(docker().list_networks(Some(opts)))
        .expect("cannot list networks")
        .into_iter()
        .filter_map(|n| n.id)
        .collect()
}

#[test]
fn a_session_cannot_reach_another_sessions_testbed() {
    let _one = serial();
    let image = image();
    let mut a = Server::start(&["-d", &image]);
    let mut b = Server::start(&["-d", &image]);
    a.open();
    b.open();
    let (argv_a, argv_b) = (a.exec_argv(), b.exec_argv());
    let (name_a, net_a, ip_a, gw_a) = only_network(&argv_a);
    let (_, net_b, ip_b, gw_b) = only_network(&argv_b);
    assert!(
        name_a.starts_with(NETWORK),
        "session A's testbed is on {name_a}"
    );
    assert_eq!(
        (&net_a, &gw_a),
        (&net_b, &gw_b),
        "the sessions share one network"
    );
    assert_ne!(ip_a, ip_b);

    // The attack: B's test connects to the port that A's test listens
    // on. Before: "READ secret-of-a" (both on the default bridge).
    listen_in(&argv_a, &ip_a, "secret-of-a");
    let got = connect_from(&argv_b, &format!("{ip_a}:{PORT}"));
    assert!(
        got.starts_with("FAILED"),
        "session B's testbed reached session A's listener at {ip_a}:{PORT}: {got}"
    );
    // And the other way round.
    listen_in(&argv_b, &ip_b, "secret-of-b");
    let got = connect_from(&argv_a, &format!("{ip_b}:{PORT}"));
    assert!(got.starts_with("FAILED"), "A reached B: {got}");
    // A testbed still reaches its own listener.
    assert_eq!(
        connect_from(&argv_a, &format!("{ip_a}:{PORT}")),
        "READ secret-of-a"
    );

    // Both still reach the host: a listener on the gateway, and the apt
    // cache rdocker serves them there.
    let host = host_listener(&gw_a);
    for argv in [&argv_a, &argv_b] {
        assert_eq!(connect_from(argv, &host), "READ host");
        let proxy = apt_proxy_of(argv);
        assert!(
            proxy.starts_with(&format!("{gw_a}:")),
            "the apt proxy {proxy} is not on the gateway {gw_a}"
        );
        assert!(
            opens(argv, &proxy),
            "the testbed cannot reach the apt cache at {proxy}"
        );
    }
    // Nothing of this reaches the server: it stays small.
    for s in [&a, &b] {
        let kib = rss_kib(s.pid());
        assert!(kib < 32 * 1024, "server at {kib} KiB");
    }
    // A's revert: the next testbed is on the same network, and what A's
    // old testbed left listening is gone with it.
    a.ok("revert");
    let argv_a2 = a.exec_argv();
    let (_, net_a2, _, _) = only_network(&argv_a2);
    assert_eq!(net_a2, net_a);
    a.quit();
    b.quit();
}

/// The same with `--remote` (what CI job containers use): the Engine
/// API alone, no apt cache, and still apart.
#[test]
fn remote_sessions_cannot_reach_each_other() {
    let _one = serial();
    let image = image();
    let mut a = Server::start(&["--remote", "-d", &image]);
    let mut b = Server::start(&["--remote", "-d", &image]);
    a.open();
    b.open();
    let (argv_a, argv_b) = (a.exec_argv(), b.exec_argv());
    let (name_a, net_a, ip_a, gw_a) = only_network(&argv_a);
    let (_, net_b, _, _) = only_network(&argv_b);
    assert!(name_a.starts_with(NETWORK), "A's testbed is on {name_a}");
    assert_eq!(net_a, net_b);
    listen_in(&argv_a, &ip_a, "secret-of-a");
    let got = connect_from(&argv_b, &format!("{ip_a}:{PORT}"));
    assert!(got.starts_with("FAILED"), "B reached A: {got}");
    let host = host_listener(&gw_a);
    assert_eq!(connect_from(&argv_b, &host), "READ host");
    a.quit();
    b.quit();
}

#[test]
fn network_bridge_keeps_the_default_bridge() {
    let _one = serial();
    let image = image();
    let mut a = Server::start(&["-d", &image, "--network", "bridge"]);
    let mut b = Server::start(&["-d", &image, "--network=bridge"]);
    a.open();
    b.open();
    let (argv_a, argv_b) = (a.exec_argv(), b.exec_argv());
    let (name_a, _, ip_a, _) = only_network(&argv_a);
    let (name_b, _, _, _) = only_network(&argv_b);
    assert_eq!((name_a.as_str(), name_b.as_str()), ("bridge", "bridge"));
    // What --network bridge says: Docker's default bridge, where
    // containers reach each other.
    listen_in(&argv_a, &ip_a, "bridged");
    assert_eq!(
        connect_from(&argv_b, &format!("{ip_a}:{PORT}")),
        "READ bridged"
    );
    // A session without --network reaches nothing on the default bridge
    // either (Docker isolates bridges from each other).
    let mut c = Server::start(&["-d", &image]);
    c.open();
    let argv_c = c.exec_argv();
    let (name_c, _, _, _) = only_network(&argv_c);
    assert!(name_c.starts_with(NETWORK), "C's testbed is on {name_c}");
    let got = connect_from(&argv_c, &format!("{ip_a}:{PORT}"));
    assert!(
        got.starts_with("FAILED"),
        "C reached the default bridge: {got}"
    );
    a.quit();
    b.quit();
    c.quit();
}

#[test]
fn racing_sessions_make_one_network_and_leave_no_other() {
    let _one = serial();
    let image = image();
    // Race its making: remove it, unless a testbed (another test's) is on
    // it; then three sessions open at once.
    for id in labelled_networks() {
        let _ = runtime_block(docker().remove_network(&id));
    }
    let absent = labelled_networks().is_empty();
    let servers: Vec<Server> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut srv = Server::start(&["-d", &image]);
                    srv.open();
                    srv
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut servers = servers;
    let nets: Vec<String> = servers
        .iter_mut()
        .map(|s| only_network(&s.exec_argv()).1)
        .collect();
    let left = labelled_networks();
    assert_eq!(
        left.len(),
        1,
        "networks named {NETWORK}: {left:?} (absent before: {absent})"
    );
    assert!(
        nets.iter().all(|n| *n == left[0]),
        "the sessions' testbeds are on {nets:?}, not all on {left:?}"
    );
    // Close, and kill -9 one in the middle of its session: the shared
    // network stays, and nothing else (no container, no other network).
    let killed = servers.pop().unwrap();
    let pid = killed.pid();
    killed.signal(nix::sys::signal::Signal::SIGKILL);
    for s in servers {
        s.quit();
    }
    drop(killed);
    // A copy that two sessions made at once, whose maker was killed
    // before it removed its own.
    let copy = runtime_block(
        docker().create_network(bollard::models::NetworkCreateRequest {
            name: format!("{NETWORK}copy-{}", std::process::id()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".into(),
                "false".into(),
            )])),
            labels: Some(HashMap::from([(
                "org.debian.autopkgtest.rdocker.network".into(),
                "apart".into(),
            )])),
            ..Default::default()
        }),
    );
    let reap = std::process::Command::new(BIN)
        .arg("--reap")
        .output()
        .expect("cannot run --reap");
    assert!(reap.status.success(), "--reap failed: {reap:?}");
    assert_no_containers(pid);
    let out = String::from_utf8_lossy(&reap.stdout);
    let copy = copy.expect("cannot make a copy of the shared network");
    assert!(
        out.contains(&format!("{NETWORK}copy-")),
        "--reap left the copy {}: {out}",
        copy.id
    );
    assert_eq!(
        labelled_networks(),
        left,
        "the shared network changed: {out}"
    );
}

const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// Podman's Docker API, as ci/provision.sh starts it.
fn podman() -> bollard::Docker {
    assert!(
        std::path::Path::new(PODMAN_SOCKET).exists(),
        "podman's Docker API socket {PODMAN_SOCKET} is missing: start `podman system service \
         --time=0 unix://{PODMAN_SOCKET}' (ci/provision.sh does)"
    );
    let d = bollard::Docker::connect_with_unix(PODMAN_SOCKET, 120, bollard::API_DEFAULT_VERSION)
        .unwrap();
    runtime_block(d.negotiate_version())
        .unwrap_or_else(|e| panic!("podman's Docker API at {PODMAN_SOCKET} does not answer: {e}"))
}

/// Networks on `d` that rdocker `pid` made.
fn networks_of(d: &bollard::Docker, pid: u32) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_OWNER_PID}={pid}")],
    )]);
    let opts = bollard::query_parameters::ListNetworksOptionsBuilder::new()
        .filters(&filters)
        .build();
    runtime_block(d.list_networks(Some(opts)))
        .expect("cannot list networks")
        .into_iter()
        .filter_map(|n| n.name)
        .collect()
}

#[test]
fn podman_sessions_apart_and_their_networks_go() {
    let p = podman();
    let host = format!("unix://{PODMAN_SOCKET}");
    let env = [("DOCKER_HOST", host.as_str())];
    let image = image();
    let mut a = Server::start_env(&["-d", &image], &env);
    let mut b = Server::start_env(&["-d", &image], &env);
    a.open();
    b.open();
    let (argv_a, argv_b) = (a.exec_argv(), b.exec_argv());
    let (name_a, _, ip_a, gw_a) = only_network_on(&p, &argv_a);
    let (name_b, _, _, _) = only_network_on(&p, &argv_b);
    assert!(
        name_a.starts_with(&format!("rdocker-{}-", a.pid())),
        "session A's testbed is on {name_a}"
    );
    assert_ne!(name_a, name_b, "the sessions share a network");
    // The attack, as on Docker: B connects to A's listener.
    listen_in(&argv_a, &ip_a, "secret-of-a");
    let got = connect_from(&argv_b, &format!("{ip_a}:{PORT}"));
    assert!(
        got.starts_with("FAILED"),
        "B reached A's listener at {ip_a}:{PORT}: {got}"
    );
    // The host still: the gateway, and the apt cache there.
    let proxy = apt_proxy_of(&argv_a);
    assert!(
        proxy.starts_with(&format!("{gw_a}:")),
        "apt proxy {proxy}, gateway {gw_a}"
    );
    assert!(
        opens(&argv_a, &proxy),
        "A cannot reach the apt cache at {proxy}"
    );

    // Close: A's network goes with it.
    let pid_a = a.pid();
    a.send("close");
    assert_eq!(
        a.line(REPLY_TIMEOUT).as_deref(),
        Some("ok"),
        "{}",
        a.stderr()
    );
    assert_eq!(networks_of(&p, pid_a), Vec::<String>::new());
    a.send("quit");
    a.wait(Duration::from_secs(30));
    // kill -9: B's stays, until --reap.
    let pid_b = b.pid();
    b.signal(nix::sys::signal::Signal::SIGKILL);
    b.wait(Duration::from_secs(10));
    assert_eq!(networks_of(&p, pid_b).len(), 1);
    let reap = std::process::Command::new(BIN)
        .arg("--reap")
        .env("DOCKER_HOST", &host)
        .output()
        .expect("cannot run --reap");
    assert!(reap.status.success(), "--reap failed: {reap:?}");
    assert_eq!(
        networks_of(&p, pid_b),
        Vec::<String>::new(),
        "--reap left B's network: {}",
        String::from_utf8_lossy(&reap.stdout)
    );
}

/// rdocker in a CI job container (the host's socket mounted in, no
/// --remote) cannot listen on the shared network's gateway: each session
/// makes a network of its own and the job container joins it, where the
/// testbeds reach its apt cache. Sessions stay apart; close, and kill -9
/// then --reap, leave the job container on its own network alone.
#[test]
fn a_job_container_joins_a_network_of_each_session() {
    let _one = serial();
    let job = JobContainer::start("sessions", None);
    let before = job.networks();
    let mut a = JobServer::start(&job);
    let mut b = JobServer::start(&job);
    assert!(a.cmd("open").starts_with("ok "));
    assert!(b.cmd("open").starts_with("ok "));
    let argv_a = job.argv(&a.exec_argv());
    let argv_b = job.argv(&b.exec_argv());
    let (name_a, _, ip_a, _) = only_network(&argv_a);
    let (name_b, _, _, _) = only_network(&argv_b);
    assert!(name_a.starts_with("rdocker-") && !name_a.starts_with(NETWORK));
    assert_ne!(name_a, name_b, "the sessions share a network");
    let joined = job.networks();
    assert!(
        joined.contains(&name_a) && joined.contains(&name_b),
        "the job container is on {joined:?}"
    );
    // The attack.
    listen_in_from(&argv_a, "secret-of-a");
    let got = connect_from(&argv_b, &format!("{ip_a}:{PORT}"));
    assert!(got.starts_with("FAILED"), "B reached A: {got}");
    // The apt cache, in the job container, on A's network.
    let proxy = apt_proxy_of(&argv_a);
    assert!(
        opens(&argv_a, &proxy),
        "A cannot reach the apt cache at {proxy}"
    );

    // Close A: its network goes, and the job container leaves it.
    assert_eq!(a.cmd("close"), "ok");
    let after = job.networks();
    assert!(
        !after.contains(&name_a),
        "the job container is still on {after:?}"
    );
    assert!(runtime_block(docker().inspect_network(&name_a, None)).is_err());
    // kill -9 B's server in the job container (its pid there, from its
    // testbed's label), then --reap there.
    let c = runtime_block(docker().inspect_container(&testbed_of(&argv_b), None)).unwrap();
    let pid_b = c.config.and_then(|c| c.labels).unwrap_or_default()[LABEL_OWNER_PID].clone();
    sh_ok(&job.argv(&[]), &format!("kill -9 {pid_b}"));
    drop(b);
    drop(a);
    let reap = sh_ok(&job.argv(&[]), "rdocker --reap");
    assert!(reap.contains(&name_b), "--reap left {name_b}: {reap}");
    assert!(runtime_block(docker().inspect_network(&name_b, None)).is_err());
    assert_eq!(
        job.networks(),
        before,
        "the job container's networks changed"
    );
}

/// A job container on a network of its own (GitHub's
/// `github_network_<id>`, where the job's service containers live): its
/// testbeds reach the apt cache, in the job container on their session's
/// network, and nothing on the job's network, neither a service container
/// there nor the job container's own address there.
#[test]
fn a_job_on_a_network_of_its_own_keeps_that_network_from_its_testbeds() {
    let _one = serial();
    let job = JobContainer::start("own-net", Some("ownnet"));
    let net = job.own_network().unwrap().to_string();
    let service = Service::start(&net);
    let (svc_ip, job_ip) = (address_on(&service.0, &net), job.address_on(&net));
    // Listeners on the job's network: the service's, and the job
    // container's on its address there.
    let job_sh = job.argv(&[]);
    sh_ok(
        &job_sh,
        &format!(
            "setsid perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(Listen => 5, \
             LocalAddr => \"{job_ip}:{PORT}\", ReuseAddr => 1) or die $!; \
             while ($c = $s->accept) {{ print $c \"secret-of-the-job\\n\"; close $c }}' \
             </dev/null >/dev/null 2>&1 &"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let svc = connect_from(&job_sh, &format!("{svc_ip}:{PORT}"));
        let own = connect_from(&job_sh, &format!("{job_ip}:{PORT}"));
        if svc == "READ secret-of-the-service" && own == "READ secret-of-the-job" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the listeners on {net} never came up: {svc}; {own}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut s = JobServer::start(&job);
    assert!(s.cmd("open").starts_with("ok "));
    let argv = job.argv(&s.exec_argv());
    let (name, _, _, _) = only_network(&argv);
    assert!(
        name.starts_with("rdocker-") && name != net,
        "the testbed is on {name}"
    );
    let proxy = apt_proxy_of(&argv);
    assert!(
        opens(&argv, &proxy),
        "the testbed cannot reach the apt cache at {proxy}"
    );
    // The attacks.
    for addr in [format!("{svc_ip}:{PORT}"), format!("{job_ip}:{PORT}")] {
        let got = connect_from(&argv, &addr);
        assert!(
            got.starts_with("FAILED"),
            "the testbed reached {addr} on {net}: {got}"
        );
    }
    assert_eq!(s.cmd("close"), "ok");
}

/// A service container on a job's network, listening on PORT; removed
/// when dropped.
struct Service(String);

impl Service {
    fn start(net: &str) -> Service {
        let name = format!("rdocker-test-service-{}", std::process::id());
        let out = std::process::Command::new("docker")
            .args(["run", "-d", "--name", &name, "--network", net, &image()])
            .args([
                "perl",
                "-MIO::Socket::INET",
                "-e",
                &format!(
                    "$s = IO::Socket::INET->new(Listen => 5, LocalPort => {PORT}, ReuseAddr => 1) \
                     or die $!; while ($c = $s->accept) {{ print $c \"secret-of-the-service\\n\"; \
                     close $c }}"
                ),
            ])
            .output()
            .expect("the docker CLI must run");
        assert!(
            out.status.success(),
            "cannot start a service container: {out:?}"
        );
        Service(name)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

/// `listen_in` for a testbed the host cannot reach (behind a job
/// container's network): the testbed checks its own listener.
fn listen_in_from(argv: &[String], secret: &str) {
    let script = format!(
        "setsid perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(Listen => 5, \
         LocalPort => {PORT}, ReuseAddr => 1) or die $!; \
         while ($c = $s->accept) {{ print $c \"{secret}\\n\"; close $c }}' \
         </dev/null >/dev/null 2>&1 &"
    );
    sh_ok(argv, &script);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect_from(argv, &format!("127.0.0.1:{PORT}")) != format!("READ {secret}") {
        assert!(
            Instant::now() < deadline,
            "the listener in the testbed never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An open cut off by SIGTERM while it makes the session's network on
/// Podman (or just after) leaves no network behind.
#[test]
fn podman_open_cut_off_leaves_no_network() {
    let p = podman();
    let host = format!("unix://{PODMAN_SOCKET}");
    for ms in [100, 300, 600] {
        let mut s = Server::start_env(&[&image()], &[("DOCKER_HOST", host.as_str())]);
        let pid = s.pid();
        s.send("open");
        std::thread::sleep(Duration::from_millis(ms));
        s.signal(nix::sys::signal::Signal::SIGTERM);
        s.wait(Duration::from_secs(30));
        assert_eq!(
            networks_of(&p, pid),
            Vec::<String>::new(),
            "SIGTERM {ms} ms into open: {}",
            s.stderr()
        );
    }
}

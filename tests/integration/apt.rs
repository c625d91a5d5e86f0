//! apt in the testbed: the host's apt proxy (a real apt-cacher-ng on
//! 127.0.0.1:3142, which ci/provision.sh starts) handed to the testbed's
//! apt at an address it reaches, and rdocker's package cache serving a
//! reinstall after revert. Each test installs a few small packages from
//! the mirror; one that cannot reach the apt-cacher-ng fails saying so.

use crate::util::*;
use std::path::Path;

const PKGS: &str = "hello figlet sl cowsay";
const ACNG_LOG: &str = "/var/log/apt-cacher-ng/apt-cacher.log";
const CONF: &str = "/etc/apt/apt.conf.d/00rdocker-apt-proxy";

fn need_acng() {
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 3142)).is_ok(),
        "these tests need an apt-cacher-ng on 127.0.0.1:3142 (all interfaces, so that the \
         testbeds reach it at the bridge's gateway): run `sudo ci/provision.sh`"
    );
    assert!(
        Path::new(ACNG_LOG).exists(),
        "no apt-cacher-ng log at {ACNG_LOG}: run `sudo ci/provision.sh`"
    );
}

/// apt-cacher-ng's log from byte `from` on.
fn acng_log_since(from: u64) -> String {
    let all = std::fs::read(ACNG_LOG).expect("cannot read apt-cacher-ng's log");
    String::from_utf8_lossy(&all[from as usize..]).into_owned()
}

fn acng_log_len() -> u64 {
    std::fs::metadata(ACNG_LOG).map(|m| m.len()).unwrap_or(0)
}

fn install(argv: &[String]) -> String {
    sh_ok(
        argv,
        &format!(
            "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y \
             -q --no-install-recommends {PKGS} && hello && apt-config dump | grep -i proxy"
        ),
    )
}

/// The testbed's address and its network's gateway, from the daemon.
fn addresses_of(argv: &[String]) -> (String, String) {
    let id = testbed_of(argv);
    let i = runtime_block(docker().inspect_container(&id, None)).expect("inspect");
    i.network_settings
        .and_then(|n| n.networks)
        .and_then(|n| {
            n.into_values()
                .find_map(|e| Some((e.ip_address?, e.gateway?)))
        })
        .filter(|(a, g)| !a.is_empty() && !g.is_empty())
        .expect("the testbed has no address or gateway")
}

fn gateway_of(argv: &[String]) -> String {
    addresses_of(argv).1
}

/// apt-cacher-ng's log lines of one client (other tests use it at once).
fn lines_of<'a>(log: &'a str, client: &str) -> Vec<&'a str> {
    let field = format!("|{client}|");
    log.lines().filter(|l| l.contains(&field)).collect()
}

/// The counts in `-d`'s `n`th "apt cache" summary (one is printed at each
/// revert and at close): (from the cache, fetched). stderr is read on
/// another thread and can lag behind the reply, so wait for it.
fn cache_counts(s: &Server, n: usize) -> (u64, u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.stderr().matches(".debs from the cache").count() < n
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stderr = s.stderr();
    let line = stderr
        .lines()
        .rfind(|l| l.contains(".debs from the cache"))
        .unwrap_or_else(|| panic!("no apt cache summary on stderr: {stderr}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn host_apt_cacher_ng_is_handed_to_the_testbed_at_its_gateway() {
    need_acng();
    let image = image();
    // The package cache off: the testbed talks to apt-cacher-ng itself.
    let mut s = Server::start(&["-d", "--apt-cache", "off", &image]);
    s.open();
    let argv = s.exec_argv();
    let gw = gateway_of(&argv);
    assert!(
        s.stderr_says("found in a proxy (apt-cacher-ng's port) listening on 127.0.0.1:3142"),
        "{}",
        s.stderr()
    );
    let out = install(&argv);
    assert!(
        out.contains(&format!("Acquire::http::Proxy \"http://{gw}:3142\";")),
        "the testbed's apt-config dump: {out}"
    );
    // Nothing else of the testbed is told: no proxy in its environment.
    let env = sh_ok(&argv, "env | grep -i proxy || true");
    assert_eq!(
        env.trim(),
        "",
        "proxy variables in the testbed's environment"
    );
    s.ok("revert");
    let argv = s.exec_argv();
    let (ip, _) = addresses_of(&argv);
    let before = acng_log_len();
    install(&argv);
    let log = acng_log_since(before);
    let log = lines_of(&log, &ip).join("\n");
    // A fresh testbed's second install: every package went out of
    // apt-cacher-ng (O) and none came in from the mirror (I).
    let hello: Vec<&str> = log.lines().filter(|l| l.contains("/hello_")).collect();
    assert!(
        hello.iter().any(|l| l.contains("|O|")),
        "hello did not come through apt-cacher-ng: {log}"
    );
    assert!(
        !log.lines().any(|l| l.contains("|I|") && l.contains(".deb")),
        "a package came from the mirror again, not apt-cacher-ng's cache: {log}"
    );
    s.quit();
}

#[test]
fn package_cache_serves_the_reinstall_after_revert_without_a_proxy() {
    let image = image();
    let mut s = Server::start(&["-d", "--apt-proxy", "none", &image]);
    s.open();
    let argv = s.exec_argv();
    let gw = gateway_of(&argv);
    // What the image has under /var/cache/apt, before apt runs; apt's
    // binary cache aside, which a reverted testbed has (warm.rs).
    let listing = "find /var/cache/apt ! -name '*pkgcache.bin' | sort";
    let cache_before = sh_ok(&argv, listing);
    let out = install(&argv);
    assert!(
        out.contains(&format!("Acquire::http::Proxy \"http://{gw}:")),
        "the testbed's apt-config dump: {out}"
    );
    s.ok("revert");
    let (hits, fetched) = cache_counts(&s, 1);
    assert_eq!(hits, 0, "hits before any reinstall: {}", s.stderr());
    assert!(
        fetched >= 4,
        "fewer packages kept than {PKGS}: {}",
        s.stderr()
    );
    let argv = s.exec_argv();
    assert_eq!(
        sh_ok(&argv, listing),
        cache_before,
        "a fresh testbed's /var/cache/apt differs from the image's"
    );
    install(&argv);
    s.ok("close");
    let (hits, fetched_after) = cache_counts(&s, 2);
    assert_eq!(
        fetched_after,
        fetched,
        "the reinstall fetched packages again: {}",
        s.stderr()
    );
    assert!(
        hits >= fetched,
        "the reinstall did not come from the cache: {}",
        s.stderr()
    );
    // This session's cache is gone with it.
    let dir = s
        .stderr()
        .lines()
        .find_map(|l| {
            l.split("apt cache: ")
                .nth(1)?
                .split(' ')
                .next()
                .filter(|d| d.starts_with('/'))
                .map(String::from)
        })
        .expect("no cache directory on stderr");
    assert!(!Path::new(&dir).exists(), "{dir} is left after close");
    s.quit();
}

#[test]
fn package_cache_chains_to_the_host_proxy_and_fetches_each_deb_once() {
    need_acng();
    let image = image();
    let mut s = Server::start(&["-d", &image]);
    s.open();
    let argv = s.exec_argv();
    install(&argv);
    s.ok("revert");
    let argv = s.exec_argv();
    let before = acng_log_len();
    install(&argv);
    // rdocker's cache reaches apt-cacher-ng from the host's loopback.
    let log = acng_log_since(before);
    let log = lines_of(&log, "127.0.0.1").join("\n");
    assert!(
        !log.lines().any(|l| l.contains(".deb")),
        "the reinstall asked apt-cacher-ng for packages rdocker's cache has: {log}"
    );
    assert!(
        log.contains("InRelease"),
        "apt's indices did not go through apt-cacher-ng: {log:?}"
    );
    s.quit();
}

#[test]
fn none_and_off_leave_apt_as_the_image_has_it() {
    let image = image();
    let mut s = Server::start(&["--apt-proxy", "none", "--apt-cache", "off", &image]);
    s.open();
    let argv = s.exec_argv();
    let out = sh_ok(
        &argv,
        &format!("test ! -e {CONF} && echo absent; apt-config dump | grep -ic proxy || true"),
    );
    assert_eq!(out.trim(), "absent\n0", "{out}");
    s.quit();
}

#[test]
fn runs_at_once_share_a_cache_directory() {
    let dir = TempDir::new("apt-cache");
    let d = dir.path().to_str().unwrap().to_string();
    let image = image();
    // Two runs at once, cold: both fetch; neither waits for the other
    // or leaves a partial file.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (d, image) = (d.clone(), image.clone());
            std::thread::spawn(move || {
                let mut s =
                    Server::start(&["-d", "--apt-proxy", "none", "--apt-cache", &d, &image]);
                s.open();
                let argv = s.exec_argv();
                install(&argv);
                s.ok("close");
                let counts = cache_counts(&s, 1);
                s.quit();
                counts
            })
        })
        .collect();
    let mut kept = 0;
    for r in runs {
        // The later of the two may find some packages the other kept.
        let (hits, fetched) = r.join().expect("a run failed");
        assert!(
            hits + fetched >= 4,
            "a run got {hits} + {fetched} packages through the cache"
        );
        kept += fetched;
    }
    assert!(kept >= 4, "the two runs kept {kept} packages");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("_hello_2.10-3_amd64.deb")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with(".tmp-")),
        "partial files left: {names:?}"
    );
    // A later run starts warm.
    let mut s = Server::start(&["-d", "--apt-proxy", "none", "--apt-cache", &d, &image]);
    s.open();
    let argv = s.exec_argv();
    install(&argv);
    s.ok("close");
    let (hits, fetched) = cache_counts(&s, 1);
    assert!(
        hits >= 4 && fetched == 0,
        "the third run was not served from {d}: {}",
        s.stderr()
    );
    assert!(Path::new(&d).exists(), "--apt-cache DIR was removed");
    s.quit();
}

#[test]
fn host_network_keeps_the_loopback_address() {
    need_acng();
    let image = image();
    let mut s = Server::start(&["-d", "--apt-cache", "off", &image, "--network", "host"]);
    s.open();
    let argv = s.exec_argv();
    let out = install(&argv);
    assert!(
        out.contains("Acquire::http::Proxy \"http://127.0.0.1:3142\";"),
        "the testbed's apt-config dump: {out}"
    );
    s.quit();
}

#[test]
fn a_proxy_only_on_the_hosts_loopback_is_not_handed_out() {
    // Listens on 127.0.0.1 only: the testbed could not reach it at the
    // gateway, and apt would fail every download through it.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    let image = image();
    let mut s = Server::start(&["-d", "--apt-proxy", &url, "--apt-cache", "off", &image]);
    s.open();
    let argv = s.exec_argv();
    assert!(
        s.stderr_says("listens only on the host's loopback"),
        "{}",
        s.stderr()
    );
    let out = sh_ok(&argv, &format!("test ! -e {CONF} && echo absent"));
    assert_eq!(out.trim(), "absent");
    s.quit();
}

//! The apt cache against a hostile test (issue 26): from inside the
//! testbed, the test talks to rdocker's package cache as apt would not,
//! unchained and chained to the host's apt-cacher-ng (ci/provision.sh
//! starts it on port 3142). The servers it fetches from are a small Perl
//! HTTP server in a container of its own on the default bridge (an
//! address that is not the host's), removed at the end.

use crate::util::*;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACNG: &str = "http://127.0.0.1:3142";

/// The origin server: paths below `/archive/` (apt-cacher-ng remaps
/// `/debian/`), each a behaviour.
const ORIGIN: &str = r#"
use IO::Socket::INET; use strict; $SIG{CHLD} = 'IGNORE';
my $l = IO::Socket::INET->new(LocalPort => 80, Listen => 256, ReuseAddr => 1) or die "listen: $!";
while (1) {
  my $c = $l->accept or next;
  my $pid = fork; if (!defined $pid || $pid) { close $c; next }
  close $l;
  my $head = '';
  while (my $line = <$c>) { $head .= $line; last if $line =~ /^\r?\n$/ }
  my ($path) = $head =~ m{^\S+ (\S+)};
  $path =~ s{^http://[^/]*}{};
  my ($host) = $head =~ m{^Host: *([^\r\n]*)}mi;
  if ($path =~ m{/dists/echo}) { reply($c, $head) }
  elsif ($path =~ m{/dists/open}) { my @o = glob('/tmp/open.*'); reply($c, scalar(@o) . "\n") }
  elsif ($path =~ m{/pool/main/h/host_}) { my $w = $host =~ /^evil/i ? 'EVIL' : 'GOOD'; reply($c, $w x 1000) }
  elsif ($path =~ m{/pool/main/b/big-\w+_(\d+)_}) {
    my $n = $1; print $c "HTTP/1.1 200 OK\r\nContent-Length: $n\r\nConnection: close\r\n\r\n";
    my $p = 'x' x 65536; while ($n > 0) { my $k = $n < 65536 ? $n : 65536; print $c substr($p, 0, $k); $n -= $k; select(undef, undef, undef, 0.002) }
  }
  elsif ($path =~ m{/pool/main/c/chunked-\w+_(\d+)_}) {
    my $n = $1; print $c "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    my $p = 'x' x 65536; while ($n > 0) { my $k = $n < 65536 ? $n : 65536; printf $c "%x\r\n%s\r\n", $k, substr($p, 0, $k); $n -= $k; select(undef, undef, undef, 0.002) }
    print $c "0\r\n\r\n";
  }
  elsif ($path =~ m{/pool/main/s/slow-head}) { hold($c) }
  elsif ($path =~ m{/pool/main/s/slow-body}) { $c->autoflush(1); print $c "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789"; hold($c) }
  else { print $c "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" }
  close $c; exit 0;
}
sub reply { my ($c, $b) = @_; print $c "HTTP/1.1 200 OK\r\nContent-Length: " . length($b) . "\r\nConnection: close\r\n\r\n$b" }
sub hold {
  my $c = shift; open(my $f, '>', "/tmp/open.$$"); close $f;
  my $r = ''; vec($r, fileno($c), 1) = 1;
  while (1) { my $rr = $r; if (select($rr, undef, undef, 0.2)) { last if !sysread($c, my $b, 4096) } }
  unlink "/tmp/open.$$";
}
"#;

/// The test's HTTP client in the testbed: sends its stdin as is to
/// HOST:PORT, prints what comes back then `<EOF>` (closed) or `<TIMEOUT>`.
/// With `count`, prints the status code and the body's length instead.
const CLIENT: &str = r#"
use IO::Socket::INET; $SIG{PIPE} = 'IGNORE';
my ($hp, $t, $mode) = @ARGV; local $/; my $req = <STDIN>; $req =~ s/\r?\n/\r\n/g;
my $s = IO::Socket::INET->new($hp) or die "connect: $!";
print $s $req; my $all = ''; my $end = '<EOF>';
eval { local $SIG{ALRM} = sub { die "t\n" }; alarm $t; while (sysread($s, my $b, 65536)) { $all .= $b } alarm 0; 1 } or $end = '<TIMEOUT>';
if ($mode eq 'count') { my ($h, $body) = split(/\r\n\r\n/, $all, 2); my ($code) = $h =~ m{^HTTP/\S+ (\d+)}; printf "%s %d %s\n", $code // '-', length($body // ''), $end }
else { print $all, "\n", $end, "\n" }
"#;

/// The Perl origin server, in a container of its own.
struct Origin {
    id: String,
    ip: String,
}

impl Origin {
    fn start() -> Origin {
        use bollard::models::ContainerCreateBody;
        let name = format!(
            "rdocker-it-origin-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let body = ContainerCreateBody {
            image: Some(image()),
            cmd: Some(vec!["perl".into(), "-e".into(), ORIGIN.into()]),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(&name)
            .build();
        let d = docker();
        let id = runtime_block(d.create_container(Some(opts), body))
            .expect("cannot create the origin server's container")
            .id;
        let o = Origin {
            id,
            ip: String::new(),
        };
        runtime_block(d.start_container(
            &o.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        ))
        .expect("cannot start the origin server's container");
        let i = runtime_block(d.inspect_container(&o.id, None)).expect("inspect");
        let ip = i
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.into_values().find_map(|e| e.ip_address))
            .filter(|a| !a.is_empty())
            .expect("the origin server has no address");
        let mut o = o;
        o.ip = ip;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((o.ip.as_str(), 80)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the origin server does not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        o
    }

    /// How many of its connections are held open (slow-head, slow-body).
    fn open(&self) -> usize {
        let mut s = std::net::TcpStream::connect((self.ip.as_str(), 80)).unwrap();
        s.write_all(b"GET /archive/dists/open HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.rsplit("\r\n\r\n")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        remove_container(&self.id);
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A session with the cache, chained to apt-cacher-ng or not, and the
/// cache's address as the testbed's apt.conf.d names it.
fn session(chained: bool, extra: &[&str], env: &[(&str, &str)]) -> (Server, Vec<String>, String) {
    if chained {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", 3142)).is_ok(),
            "the chained tests need an apt-cacher-ng on 127.0.0.1:3142: run `sudo ci/provision.sh`"
        );
    }
    let mut args = vec!["-d", "--apt-proxy", if chained { ACNG } else { "none" }];
    args.extend_from_slice(extra);
    let image = image();
    args.push(&image);
    let mut s = Server::start_env(&args, env);
    s.open();
    let argv = s.exec_argv();
    let proxy = cache_address(&argv);
    (s, argv, proxy)
}

fn cache_address(argv: &[String]) -> String {
    let conf = sh_ok(argv, "cat /etc/apt/apt.conf.d/00rdocker-apt-proxy");
    assert!(
        conf.contains("package cache"),
        "not rdocker's cache: {conf}"
    );
    let url = conf
        .split('"')
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no proxy in {conf:?}"));
    sh_ok(argv, &format!("cat > /tmp/h.pl <<'EOF'\n{CLIENT}\nEOF"));
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Send `req` from the testbed to the cache; what came back.
fn ask(argv: &[String], proxy: &str, req: &str, secs: u32) -> String {
    let o = sh_stdin(
        argv,
        &format!("perl /tmp/h.pl {proxy} {secs}"),
        req.as_bytes(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status(resp: &str) -> &str {
    resp.split_whitespace().nth(1).unwrap_or("-")
}

fn get(url: &str) -> String {
    format!("GET {url} HTTP/1.1\nHost: x\nConnection: close\n\n")
}

/// The testbeds' gateway and one more address of this host's.
fn host_addresses(argv: &[String]) -> (String, String) {
    let id = testbed_of(argv);
    let i = runtime_block(docker().inspect_container(&id, None)).expect("inspect");
    let gw = i
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.into_values().find_map(|e| e.gateway))
        .expect("no gateway");
    let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    u.connect("192.0.2.1:9").unwrap();
    (gw, u.local_addr().unwrap().ip().to_string())
}

#[test]
fn no_spelling_of_the_hosts_addresses_gets_through_chained_or_not() {
    // A service of the host's, on every address of it.
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            r.fetch_add(1, Ordering::Relaxed);
            drop(c);
        }
    });
    for chained in [false, true] {
        let (s, argv, proxy) = session(chained, &[], &[]);
        let (gw, me) = host_addresses(&argv);
        for host in [
            "127.1",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "0",
            "localhost",
            "LOCALHOST",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "169.254.169.254",
            &gw,
            &me,
        ] {
            let resp = ask(
                &argv,
                &proxy,
                &get(&format!("http://{host}:{port}/archive/dists/x/InRelease")),
                20,
            );
            assert_eq!(status(&resp), "403", "{host} (chained: {chained}): {resp}");
        }
        s.quit();
    }
    assert_eq!(
        reached.load(Ordering::Relaxed),
        0,
        "the host's service was reached through the apt cache"
    );
}

#[test]
fn the_tests_host_header_goes_nowhere_and_cannot_poison_a_shared_cache() {
    let origin = Origin::start();
    for chained in [false, true] {
        let dir = TempDir::new("apt-poison");
        let d = dir.path().to_str().unwrap().to_string();
        let deb = format!(
            "http://{}/archive/pool/main/h/host_{}{}_all.deb",
            origin.ip,
            std::process::id(),
            chained
        );
        let forged = format!(
            "GET {deb} HTTP/1.1\nHost: evil.example\nX-Forged: 1\nUser-Agent: evil\n\
             Connection: close\n\n"
        );
        let (s, argv, proxy) = session(chained, &["--apt-cache", &d], &[]);
        let resp = ask(&argv, &proxy, &forged, 20);
        assert!(
            resp.contains("GOODGOOD") && !resp.contains("EVIL"),
            "chained: {chained}: {resp}"
        );
        let echo = ask(
            &argv,
            &proxy,
            &format!(
                "GET http://{}/archive/dists/echo/InRelease HTTP/1.1\nHost: evil.example\nX-Forged: 1\n\
                 User-Agent: evil\nRange: bytes=0-\nConnection: close\n\n",
                origin.ip
            ),
            20,
        );
        // Chained, the origin sees apt-cacher-ng's request, made from
        // rdocker's.
        let echo = echo.to_ascii_lowercase();
        assert!(
            echo.contains(&format!("host: {}", origin.ip))
                && !echo.contains("evil")
                && !echo.contains("x-forged")
                && (chained || echo.contains("user-agent: autopkgtest-virt-rdocker")),
            "what the origin was asked (chained: {chained}): {echo}"
        );
        s.quit();
        // A later session sharing the cache directory: the right bytes.
        let (s, argv, proxy) = session(chained, &["--apt-cache", &d], &[]);
        let resp = ask(&argv, &proxy, &get(&deb), 20);
        assert!(
            resp.contains("GOODGOOD") && !resp.contains("EVIL"),
            "chained: {chained}: {resp}"
        );
        s.quit();
    }
}

/// A small filesystem of its own for the cache, unmounted when dropped.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn new(mib: u64) -> Tmpfs {
        let d = TempDir::new("apt-tmpfs");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(d.path())
            .status()
            .expect("cannot run mount");
        assert!(st.success(), "cannot mount a tmpfs (the test needs root)");
        Tmpfs(d)
    }

    fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(self.0.path()).unwrap();
        #[allow(clippy::unnecessary_cast)]
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        free
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn parallel_downloads_never_take_the_cache_below_its_margin() {
    let origin = Origin::start();
    // 64 MiB: the margin is its least, 16 MiB; room for two of three
    // 20 MiB packages.
    let fs = Tmpfs::new(64);
    let margin = 16u64 << 20;
    let d = fs.0.path().to_str().unwrap().to_string();
    let (s, argv, proxy) = session(false, &["--apt-cache", &d], &[]);
    let before = rss_kib(s.pid());
    let least = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (least, done, path) = (least.clone(), done.clone(), fs.0.path().to_path_buf());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(st) = nix::sys::statvfs::statvfs(&path) {
                    #[allow(clippy::unnecessary_cast)]
                    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
                    least.fetch_min(free, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let size = 20u64 << 20;
    // Known lengths first, then bodies of unknown length (chunked).
    for kind in ["big", "chunked"] {
        let mut script = String::new();
        for n in ["a", "b", "c"] {
            let url = format!(
                "http://{}/archive/pool/main/{}/{kind}-{n}_{size}_all.deb",
                origin.ip,
                &kind[..1]
            );
            script.push_str(&format!(
                "printf 'GET {url} HTTP/1.0\\r\\n\\r\\n' | \
                 perl /tmp/h.pl {proxy} 60 count > /tmp/out.{n} & "
            ));
        }
        script.push_str("wait; cat /tmp/out.a /tmp/out.b /tmp/out.c");
        let out = sh_ok(&argv, &script);
        for line in out.lines() {
            assert_eq!(line, format!("200 {size} <EOF>"), "{kind}: {out}");
        }
    }
    done.store(true, Ordering::Relaxed);
    watch.join().unwrap();
    let least = least.load(Ordering::Relaxed);
    let peak = rss_kib(s.pid());
    s.quit();
    let kept = std::fs::read_dir(fs.0.path())
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            !n.to_string_lossy().starts_with('.')
        })
        .count();
    eprintln!(
        "least free {} KiB (margin {} KiB), {kept} packages kept, server RSS {before} -> {peak} \
         KiB, now {} KiB free",
        least >> 10,
        margin >> 10,
        fs.free() >> 10
    );
    assert!(least >= margin, "free space fell to {least} bytes");
    assert!(kept >= 2, "only {kept} packages kept");
    assert!(
        peak < before + 16 * 1024 && peak < 32 * 1024,
        "the server grew from {before} to {peak} KiB"
    );
}

#[test]
fn a_slow_server_is_timed_out_and_frees_its_slots() {
    let origin = Origin::start();
    for chained in [false, true] {
        let (s, argv, proxy) = session(chained, &[], &[("RDOCKER_APT_TEST_TIMEOUT", "2")]);
        let before = rss_kib(s.pid());
        // 20 parked requests from one testbed: 16 slots, 4 refused at once.
        let t = Instant::now();
        let mut script = String::new();
        for n in 0..20 {
            let url = format!(
                "http://{}/archive/pool/main/s/slow-head-{n}-{chained}_1_all.deb",
                origin.ip
            );
            script.push_str(&format!(
                "printf 'GET {url} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | \
                 perl /tmp/h.pl {proxy} 20 count > /tmp/slow.{n} 2>&1 & "
            ));
        }
        script.push_str("wait; cat /tmp/slow.*");
        let out = sh_ok(&argv, &script);
        let took = t.elapsed();
        let timed_out = out.lines().filter(|l| l.starts_with("504 ")).count();
        assert!(
            timed_out >= 16 && !out.contains("<TIMEOUT>"),
            "chained: {chained}, after {took:?}: {out}"
        );
        assert!(took < Duration::from_secs(12), "{took:?}");
        // The body that stalls half way: cut within the idle timeout.
        let t = Instant::now();
        let resp = ask(
            &argv,
            &proxy,
            &get(&format!(
                "http://{}/archive/pool/main/s/slow-body-{chained}_1_all.deb",
                origin.ip
            )),
            20,
        );
        assert!(
            resp.contains("<EOF>") && t.elapsed() < Duration::from_secs(8),
            "{:?}: {resp}",
            t.elapsed()
        );
        // Slots free again: the next request is served.
        let resp = ask(
            &argv,
            &proxy,
            &get(&format!(
                "http://{}/archive/dists/echo/InRelease",
                origin.ip
            )),
            20,
        );
        assert_eq!(status(&resp), "200", "{resp}");
        if !chained {
            // 16 clients that ask for a large package and never read it:
            // cut after the idle timeout, and their slots free again.
            let mut script = String::new();
            for n in 0..16 {
                let url = format!(
                    "http://{}/archive/pool/main/b/big-unread{n}_{}_all.deb",
                    origin.ip,
                    64 << 20
                );
                script.push_str(&format!(
                    "perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(\"{proxy}\") or die; \
                     print $s \"GET {url} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\"; sleep 60' \
                     >/dev/null 2>&1 & "
                ));
            }
            sh_ok(&argv, &format!("{script} sleep 1"));
            let echo = get(&format!(
                "http://{}/archive/dists/echo/InRelease",
                origin.ip
            ));
            let t = Instant::now();
            let mut resp = ask(&argv, &proxy, &echo, 20);
            while status(&resp) != "200" && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(500));
                resp = ask(&argv, &proxy, &echo, 20);
            }
            assert_eq!(status(&resp), "200", "after {:?}: {resp}", t.elapsed());
            eprintln!("unread answers cut, a slot free after {:?}", t.elapsed());
        }
        let after = rss_kib(s.pid());
        eprintln!("chained: {chained}: server RSS {before} -> {after} KiB");
        assert!(
            after < before + 8 * 1024 && after < 32 * 1024,
            "the server grew from {before} to {after} KiB"
        );
        // Whatever rdocker asked the origin for, it let go (chained,
        // apt-cacher-ng's connections are its own).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !chained && origin.open() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} requests held at the origin",
                origin.open()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s.quit();
    }
}

#[test]
fn a_testbeds_parked_requests_end_at_revert() {
    let origin = Origin::start();
    let (mut s, argv, proxy) = session(false, &[], &[]);
    // 16 requests parked on a server that never answers (the default
    // timeouts: a minute), left running in the testbed.
    let mut script = String::new();
    for n in 0..16 {
        let url = format!(
            "http://{}/archive/pool/main/s/slow-head-r{n}_1_all.deb",
            origin.ip
        );
        script.push_str(&format!(
            "printf 'GET {url} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | \
             nohup perl /tmp/h.pl {proxy} 600 >/dev/null 2>&1 & "
        ));
    }
    sh_ok(&argv, &script);
    let deadline = Instant::now() + Duration::from_secs(20);
    while origin.open() < 16 {
        assert!(Instant::now() < deadline, "only {} parked", origin.open());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A 17th from the same testbed gets no slot.
    let resp = ask(
        &argv,
        &proxy,
        &get(&format!(
            "http://{}/archive/dists/echo/InRelease",
            origin.ip
        )),
        10,
    );
    assert_eq!(resp.trim(), "<EOF>", "{resp}");
    s.ok("revert");
    let t = Instant::now();
    while origin.open() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} requests of the reverted testbed still held",
            origin.open()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let argv = s.exec_argv();
    let proxy = cache_address(&argv);
    let resp = ask(
        &argv,
        &proxy,
        &get(&format!(
            "http://{}/archive/dists/echo/InRelease",
            origin.ip
        )),
        10,
    );
    assert_eq!(status(&resp), "200", "{resp}");
    s.quit();
}

#[test]
fn connection_close_is_honoured_chained_or_not() {
    let origin = Origin::start();
    for chained in [false, true] {
        let (s, argv, proxy) = session(chained, &[], &[]);
        let echo = format!("http://{}/archive/dists/echo/InRelease", origin.ip);
        for first in [
            format!("GET {echo} HTTP/1.1\nHost: x\nConnection: close\n\n"),
            format!("GET {echo} HTTP/1.0\n\n"),
        ] {
            // A second request pipelined behind: never answered.
            let req = format!("{first}GET {echo} HTTP/1.1\nHost: x\n\n");
            let t = Instant::now();
            let resp = ask(&argv, &proxy, &req, 10);
            assert_eq!(
                resp.matches("200 OK").count(),
                1,
                "chained: {chained}: {resp}"
            );
            assert!(
                resp.trim_end().ends_with("<EOF>") && t.elapsed() < Duration::from_secs(5),
                "not closed (chained: {chained}): {resp}"
            );
        }
        // Without it, the connection stays for the next request; a HEAD's
        // answer has no body.
        let req = format!(
            "HEAD {echo} HTTP/1.1\nHost: x\n\nGET {echo} HTTP/1.1\nHost: x\nConnection: close\n\n"
        );
        let resp = ask(&argv, &proxy, &req, 10);
        assert_eq!(resp.matches("200 OK").count(), 2, "{resp}");
        assert_eq!(
            resp.matches("/archive/dists/echo/InRelease HTTP/1.1")
                .count(),
            1,
            "{resp}"
        );
        s.quit();
    }
}

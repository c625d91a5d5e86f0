//! Every daemon the docker CLI reaches (issue 6), each through a real
//! server on loopback in front of the test daemon: plain TCP (socat), TCP
//! with mutual TLS (socat terminating TLS, certificates made by openssl
//! here), ssh (a throwaway sshd running the remote `docker system
//! dial-stdio`), docker contexts made by `docker context create`, and
//! podman's Docker API. Each runs a whole protocol session: open, copies
//! both ways, commands through print-execute-command, revert, close.
//!
//! Nothing is skipped: a missing tool fails the test, saying what to
//! install (`sudo ci/provision.sh` installs and starts all of it).

use crate::util::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SETUP: &str = "sudo ci/provision.sh installs and starts everything these tests need";
const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

fn need(tool: &str, package: &str) -> PathBuf {
    let found = which::which(tool)
        .ok()
        .or_else(|| Some(Path::new("/usr/sbin").join(tool)).filter(|p| p.exists()));
    found.unwrap_or_else(|| panic!("`{tool}' is missing: install {package} ({SETUP})"))
}

/// A helper process for one test, killed when the test ends.
struct Bg {
    child: Child,
    log: PathBuf,
}

impl Bg {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Bg {
        let f = fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Bg { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until it accepts connections on this port.
    fn wait_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("helper exited ({st}) before listening: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "helper not listening on {port}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test daemon as a socat address.
fn local_daemon() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => format!("UNIX-CONNECT:{}", &h[7..]),
        Ok(h) if h.starts_with("tcp://") => format!("TCP:{}", h[6..].trim_end_matches('/')),
        _ => "UNIX-CONNECT:/var/run/docker.sock".into(),
    }
}

/// socat in front of the test daemon on a loopback port; `listen` is the
/// socat listening address without its port.
fn socat(dir: &Path, listen: &str, tag: &str) -> (Bg, u16) {
    let socat = need("socat", "socat");
    let port = free_port();
    let mut bg = Bg::spawn(
        // -t: after one side's EOF (an exec's stdin closed at once),
        // socat's default is to cut the whole connection within 0.5 s,
        // which a command slower to answer then sees as a lost stream.
        Command::new(socat).args([
            "-t",
            "86400",
            &format!("{listen}:{port},bind=127.0.0.1,reuseaddr,fork"),
            &local_daemon(),
        ]),
        dir.join(format!("socat-{tag}.log")),
    );
    bg.wait_port(port);
    (bg, port)
}

fn plain_tcp(dir: &Path) -> (Bg, u16) {
    socat(dir, "TCP-LISTEN", "tcp")
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and a client
/// certificate: dir/ca.pem, dir/server-{cert,key}.pem, and dir/client/
/// laid out as DOCKER_CERT_PATH wants (ca.pem, cert.pem, key.pem).
fn make_certs(dir: &Path) -> PathBuf {
    let openssl = need("openssl", "openssl");
    let ossl = |args: &[&str]| {
        run(Command::new(&openssl).current_dir(dir).args(args));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let req = |key: &str, out: &str, subj: &str, x509: bool| {
        let mut a = vec!["req"];
        if x509 {
            a.extend(["-x509", "-days", "2"]);
        }
        a.extend(ec);
        a.extend(["-keyout", key, "-out", out, "-subj", subj]);
        ossl(&a);
    };
    req("ca-key.pem", "ca.pem", "/CN=rdocker test CA", true);
    req("server-key.pem", "server.csr", "/CN=127.0.0.1", false);
    req(
        "client-key.pem",
        "client.csr",
        "/CN=rdocker test client",
        false,
    );
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (csr, out, ext) in [
        ("server.csr", "server-cert.pem", "server.ext"),
        ("client.csr", "client-cert.pem", "client.ext"),
    ] {
        ossl(&[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            out,
            "-extfile",
            ext,
        ]);
    }
    let client = dir.join("client");
    fs::create_dir_all(&client).unwrap();
    fs::copy(dir.join("ca.pem"), client.join("ca.pem")).unwrap();
    fs::copy(dir.join("client-cert.pem"), client.join("cert.pem")).unwrap();
    fs::copy(dir.join("client-key.pem"), client.join("key.pem")).unwrap();
    client
}

/// socat terminating mutual TLS in front of the test daemon: it wants a
/// client certificate signed by the test CA.
fn tls(dir: &Path) -> (Bg, u16, PathBuf) {
    let client = make_certs(dir);
    let listen = format!(
        "OPENSSL-LISTEN:{{port}},cert={0}/server-cert.pem,key={0}/server-key.pem,\
         cafile={0}/ca.pem,verify=1",
        dir.display()
    );
    // socat wants its options after the port: split the template there.
    let (head, tail) = listen.split_once("{port}").unwrap();
    let socat = need("socat", "socat");
    let port = free_port();
    let mut bg = Bg::spawn(
        // -t as in socat() above: an exec's stdin ends at once.
        Command::new(socat).args([
            "-t",
            "86400",
            &format!("{head}{port}{tail},bind=127.0.0.1,reuseaddr,fork"),
            &local_daemon(),
        ]),
        dir.join("socat-tls.log"),
    );
    bg.wait_port(port);
    (bg, port, client)
}

/// A throwaway sshd on loopback that lets the current user in with a
/// generated key, and an `ssh' wrapper (first on PATH) whose client config
/// uses that key and trusts that host key: rdocker runs the real ssh, which
/// reads ~/.ssh/config from the password database, not from $HOME.
struct Sshd {
    _bg: Bg,
    port: u16,
    /// Directory with the `ssh' wrapper, for PATH.
    bin: PathBuf,
    user: String,
}

impl Sshd {
    fn start(dir: &Path, force_command: Option<&str>) -> Sshd {
        let sshd = need("sshd", "openssh-server");
        let keygen = need("ssh-keygen", "openssh-client");
        need("ssh", "openssh-client");
        let _ = fs::create_dir_all("/run/sshd");
        for key in ["hostkey", "userkey"] {
            run(Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", ""])
                .arg("-f")
                .arg(dir.join(key)));
        }
        fs::copy(dir.join("userkey.pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let mut conf = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile none\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n",
            d = dir.display()
        );
        if let Some(c) = force_command {
            conf.push_str(&format!("ForceCommand {c}\n"));
        }
        fs::write(dir.join("sshd_config"), conf).unwrap();
        let hostkey = fs::read_to_string(dir.join("hostkey.pub")).unwrap();
        fs::write(
            dir.join("known_hosts"),
            format!("[127.0.0.1]:{port} {hostkey}"),
        )
        .unwrap();
        fs::write(
            dir.join("ssh_config"),
            format!(
                "Host 127.0.0.1\n  IdentityFile {d}/userkey\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  \
                 BatchMode yes\n  LogLevel ERROR\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let bin = dir.join("bin");
        write_script(
            &bin.join("ssh"),
            &format!(
                "#!/bin/sh\nexec ssh -F {}/ssh_config \"$@\"\n",
                dir.display()
            ),
        );
        let mut bg = Bg::spawn(
            Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config")),
            dir.join("sshd.log"),
        );
        bg.wait_port(port);
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        Sshd {
            _bg: bg,
            port,
            bin,
            user,
        }
    }

    /// How many ssh logins sshd has accepted so far.
    fn logins(&self) -> usize {
        self._bg.log().matches("Accepted publickey").count()
    }

    /// The daemon address; with the test daemon's socket when it is not
    /// the remote docker CLI's default.
    fn url(&self) -> String {
        let path = match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") && h != "unix:///var/run/docker.sock" => {
                h[7..].to_string()
            }
            _ => String::new(),
        };
        format!("ssh://{}@127.0.0.1:{}{path}", self.user, self.port)
    }

    /// PATH with the wrapper first. The wrapper finds the real ssh further
    /// on, as it runs `ssh' with this PATH minus its own directory.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

fn write_script(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    // The wrapper must not find itself: it names the real ssh by path.
    let real = which::which("ssh").map(|p| p.display().to_string());
    let text = match real {
        Ok(r) => text.replace("exec ssh ", &format!("exec {r} ")),
        Err(_) => text.to_string(),
    };
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run a testbed command through the exec argv, with this environment (the
/// exec helper is started by autopkgtest, with autopkgtest's environment).
fn exec(argv: &[String], env: &[(&str, &str)], script: &str, input: &[u8]) -> Output {
    sh_stdin_env(argv, env, script, input)
}

fn exec_ok(argv: &[String], env: &[(&str, &str)], script: &str) -> String {
    let o = exec(argv, env, script, b"");
    assert!(
        o.status.success(),
        "`{script}' failed with {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A whole protocol session against one daemon: open, copydown of a tree,
/// commands (output, status, stdin), copyup both of the tree and of a file
/// made in the testbed, revert (which must forget the testbed's changes),
/// close, quit. Prints its timings; returns the server's stderr and pid.
fn session(label: &str, args: &[&str], env: &[(&str, &str)]) -> (String, u32) {
    let t0 = Instant::now();
    let mut s = Server::start_env(args, env);
    let pid = s.pid();
    let t_start = t0.elapsed();
    let t = Instant::now();
    let scratch = s.open();
    let t_open = t.elapsed();

    let host = TempDir::new(&format!("daemons-{label}"));
    let down = host.path().join("down");
    fs::create_dir_all(down.join("sub")).unwrap();
    fs::write(down.join("hello.txt"), format!("hello over {label}\n")).unwrap();
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(down.join("sub/blob"), &blob).unwrap();
    fs::write(down.join("sub/run"), "#!/bin/sh\necho ran \"$@\"\n").unwrap();
    fs::set_permissions(down.join("sub/run"), fs::Permissions::from_mode(0o755)).unwrap();

    let t = Instant::now();
    s.ok(&format!("copydown {}/ {scratch}/down/", down.display()));
    let t_down = t.elapsed();

    let argv = s.exec_argv();
    assert_eq!(
        exec_ok(&argv, env, &format!("cat {scratch}/down/hello.txt")),
        format!("hello over {label}\n")
    );
    assert_eq!(
        exec_ok(&argv, env, &format!("{scratch}/down/sub/run a b")),
        "ran a b\n"
    );
    let o = exec(
        &argv,
        env,
        "cat; echo to-stderr >&2; exit 7",
        b"from stdin\n",
    );
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout, b"from stdin\n");
    assert_eq!(o.stderr, b"to-stderr\n");
    exec_ok(
        &argv,
        env,
        &format!("head -c 200000 /dev/urandom > {scratch}/made; touch /rdocker-marker"),
    );
    let mut execs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        exec_ok(&argv, env, "true");
        execs.push(t.elapsed());
    }

    let up = host.path().join("up");
    let t = Instant::now();
    s.ok(&format!("copyup {scratch}/down/ {}/", up.display()));
    s.ok(&format!(
        "copyup {scratch}/made {}",
        host.path().join("made").display()
    ));
    let t_up = t.elapsed();
    assert_eq!(fs::read(up.join("sub/blob")).unwrap(), blob);
    assert_eq!(
        fs::read_to_string(up.join("hello.txt")).unwrap(),
        format!("hello over {label}\n")
    );
    let made = fs::read(host.path().join("made")).unwrap();
    assert_eq!(made.len(), 200_000);
    let sum = exec_ok(&argv, env, &format!("sha256sum {scratch}/made"));
    assert!(sum.starts_with(&sha256(&made)), "{sum}");

    let t = Instant::now();
    let after = s.ok("revert").remove(0);
    let t_revert = t.elapsed();
    assert_eq!(after, scratch);
    let argv = s.exec_argv();
    assert_eq!(
        exec_ok(
            &argv,
            env,
            "test -e /rdocker-marker && echo kept || echo gone"
        ),
        "gone\n"
    );
    s.ok("close");
    let err = s.quit();
    eprintln!(
        "daemons: {label}: start {}, open {}, copydown {}, exec median {}, copyup {}, revert {}, \
         whole session {}",
        ms(t_start),
        ms(t_open),
        ms(t_down),
        ms(median(execs)),
        ms(t_up),
        ms(t_revert),
        ms(t0.elapsed())
    );
    (err, pid)
}

/// The server's stderr when it fails before its banner.
fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let o = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "it started: {err}");
    assert!(o.stdout.is_empty(), "it printed a banner: {err}");
    err
}

#[test]
fn plain_tcp_session() {
    let dir = TempDir::new("tcp");
    let (_socat, port) = plain_tcp(dir.path());
    let host = format!("tcp://127.0.0.1:{port}");
    let (err, _) = session("tcp", &["-d", &image()], &[("DOCKER_HOST", &host)]);
    assert!(
        err.contains(&format!("daemon: {host} (from DOCKER_HOST)")),
        "{err}"
    );
    assert!(err.contains("plain TCP"), "{err}");
    assert!(
        err.contains("not through a local socket, so no shared directory"),
        "{err}"
    );
    let err = fails(&["--shared-dir", "/tmp", "-H", &host, &image()], &[]);
    assert!(err.contains("--shared-dir") && err.contains(&host), "{err}");
}

#[test]
fn mutual_tls_session() {
    let dir = TempDir::new("tls");
    let (_socat, port, client) = tls(dir.path());
    let host = format!("tcp://127.0.0.1:{port}");
    let certs = client.to_str().unwrap();
    let env = [
        ("DOCKER_HOST", host.as_str()),
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", certs),
    ];
    let (err, _) = session("tls", &["-d", &image()], &env);
    assert!(err.contains("TLS, verifying the daemon against"), "{err}");
    assert!(err.contains("no shared directory"), "{err}");

    // What goes wrong is said with the file and what to do.
    let bad = dir.path().join("bad");
    fs::create_dir_all(&bad).unwrap();
    let bad_s = bad.to_str().unwrap();
    let fail_with = |path: &str| {
        fails(
            &[&image()],
            &[
                ("DOCKER_HOST", &host),
                ("DOCKER_TLS_VERIFY", "1"),
                ("DOCKER_CERT_PATH", path),
            ],
        )
    };
    let err = fail_with(bad_s);
    assert!(
        err.contains(&format!("{bad_s}/ca.pem")) && err.contains("DOCKER_CERT_PATH"),
        "{err}"
    );
    fs::write(bad.join("ca.pem"), "garbage\n").unwrap();
    let err = fail_with(bad_s);
    assert!(
        err.contains("no PEM certificate") && err.contains(bad_s),
        "{err}"
    );
    // The right CA, no client certificate: the daemon refuses us.
    fs::copy(client.join("ca.pem"), bad.join("ca.pem")).unwrap();
    let err = fail_with(bad_s);
    assert!(err.contains("wants a client certificate"), "{err}");
    // Another CA: the daemon's certificate is not signed by it.
    let other = dir.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let other_client = make_certs(&other);
    let err = fail_with(other_client.to_str().unwrap());
    assert!(err.contains("not signed by"), "{err}");
    // A key that is not the certificate's.
    fs::copy(client.join("cert.pem"), bad.join("cert.pem")).unwrap();
    fs::copy(other_client.join("key.pem"), bad.join("key.pem")).unwrap();
    let err = fail_with(bad_s);
    assert!(
        err.contains("do not make a usable client certificate") || err.contains("refused"),
        "{err}"
    );
}

#[test]
fn ssh_session_and_exec_overhead() {
    let dir = TempDir::new("ssh");
    let sshd = Sshd::start(dir.path(), None);
    let url = sshd.url();
    let path = sshd.path();
    let env = [("DOCKER_HOST", url.as_str()), ("PATH", path.as_str())];
    let (err, _) = session("ssh", &["-d", &image()], &env);
    assert!(
        err.contains(&format!("daemon: {url} (from DOCKER_HOST)")),
        "{err}"
    );
    assert!(err.contains("one ssh connection for the session"), "{err}");
    assert!(err.contains("no shared directory"), "{err}");
    let err = fails(&["--shared-dir", "/tmp", &image()], &env);
    assert!(err.contains("--shared-dir") && err.contains(&url), "{err}");

    // No ssh client: said so.
    let empty = dir.path().join("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let err = fails(
        &[&image()],
        &[("DOCKER_HOST", &url), ("PATH", empty.to_str().unwrap())],
    );
    assert!(
        err.contains("no `ssh' on PATH") && err.contains("openssh-client"),
        "{err}"
    );

    // ssh is refused (another user's key): ssh's own words, and what to check.
    let stranger = dir.path().join("stranger");
    fs::create_dir_all(&stranger).unwrap();
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(stranger.join("key")));
    fs::write(
        dir.path().join("ssh_config_stranger"),
        fs::read_to_string(dir.path().join("ssh_config"))
            .unwrap()
            .replace(
                &format!("{}/userkey", dir.path().display()),
                &format!("{}/key", stranger.display()),
            ),
    )
    .unwrap();
    write_script(
        &stranger.join("bin/ssh"),
        &format!(
            "#!/bin/sh\nexec ssh -F {}/ssh_config_stranger \"$@\"\n",
            dir.path().display()
        ),
    );
    let spath = format!(
        "{}/bin:{}",
        stranger.display(),
        std::env::var("PATH").unwrap()
    );
    let err = fails(&[&image()], &[("DOCKER_HOST", &url), ("PATH", &spath)]);
    assert!(
        err.contains("Permission denied") && err.contains("without a prompt"),
        "{err}"
    );

    // The per-exec cost of the ssh hop: 20 `true' each, alternating.
    let mut local = Server::start(&[&image()]);
    local.open();
    let local_argv = local.exec_argv();
    let mut remote = Server::start_env(&[&image()], &env);
    remote.open();
    let remote_argv = remote.exec_argv();
    let logins = sshd.logins();
    let (mut l, mut r) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        exec_ok(&local_argv, &[], "true");
        l.push(t.elapsed());
        let t = Instant::now();
        exec_ok(&remote_argv, &env, "true");
        r.push(t.elapsed());
    }
    // The commands ran over the session's one ssh connection.
    assert_eq!(sshd.logins(), logins, "{}", sshd._bg.log());
    let (l, r) = (median(l), median(r));
    eprintln!(
        "daemons: per-exec cost, median of 20 `true': local socket {}, ssh {} (+{})",
        ms(l),
        ms(r),
        ms(r.saturating_sub(l))
    );
    local.quit();
    let remote_pid = remote.pid();
    assert_ne!(tunnel_leftovers(remote_pid), (vec![], vec![]));
    remote.quit();
    assert_eq!(tunnel_leftovers(remote_pid), (vec![], vec![]));
    // Nothing of ours is left running: no ssh, no dial-stdio.
    std::thread::sleep(Duration::from_millis(300));
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    let port = format!("-p {}", sshd.port);
    assert!(
        !ps.lines()
            .any(|l| l.contains(&port) && l.contains("dial-stdio")),
        "ssh processes left behind:\n{ps}"
    );
}

/// The ssh processes (by command line) and private directories of server
/// `pid`'s tunnel.
fn tunnel_leftovers(pid: u32) -> (Vec<String>, Vec<PathBuf>) {
    let tag = format!("rdocker-run-{pid}-");
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let procs = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_string)
        .collect();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dirs = fs::read_dir(base)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&tag))
        .map(|e| e.path())
        // The hub's (api/hub.rs), beside it, is not the tunnel's.
        .filter(|p| !p.join("agents.sock").exists())
        .collect();
    (procs, dirs)
}

/// Wait until `pid`'s tunnel has no ssh left; its directories as then.
fn tunnel_gone(pid: u32) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (procs, dirs) = tunnel_leftovers(pid);
        if procs.is_empty() {
            return dirs;
        }
        assert!(Instant::now() < deadline, "ssh left running: {procs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The session's ssh connection and its directory go with the server,
/// however it ends: SIGTERM removes both; SIGKILL leaves the directory,
/// which the next server removes. An exec helper whose server is gone
/// reaches the daemon on its own.
#[test]
fn ssh_tunnel_ends_with_the_server() {
    let dir = TempDir::new("ssh-tunnel");
    let sshd = Sshd::start(dir.path(), None);
    let url = sshd.url();
    let path = sshd.path();
    let env = [("DOCKER_HOST", url.as_str()), ("PATH", path.as_str())];

    let mut s = Server::start_env(&["-d", &image()], &env);
    s.open();
    let pid = s.pid();
    let (procs, dirs) = tunnel_leftovers(pid);
    assert_eq!((procs.len(), dirs.len()), (1, 1), "{procs:?} {dirs:?}");
    let mode = fs::metadata(&dirs[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // The connection lost mid-session: the server and its helpers go on,
    // each connection over its own ssh.
    let ps = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    let master: i32 = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .find(|l| l.contains(&format!("rdocker-run-{pid}-")))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tunnel_gone(pid);
    s.ok("revert");
    let o = exec(&s.exec_argv(), &env, "echo on its own", b"");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.stdout, b"on its own\n", "{err}");
    assert!(err.contains("does not answer"), "{err}");
    assert!(s.stderr().contains("does not answer"), "{}", s.stderr());
    s.signal(nix::sys::signal::Signal::SIGTERM);
    s.wait(Duration::from_secs(60));
    assert_eq!(tunnel_gone(pid), Vec::<PathBuf>::new());
    assert_no_containers(pid);

    let mut s = Server::start_env(&["-d", &image()], &env);
    s.open();
    let pid = s.pid();
    let argv = s.exec_argv();
    assert!(argv.iter().any(|a| a.starts_with("--via=")), "{argv:?}");
    s.signal(nix::sys::signal::Signal::SIGKILL);
    s.wait(Duration::from_secs(10));
    let left = tunnel_gone(pid);
    assert_eq!(left.len(), 1, "{left:?}");
    // Its testbed is still there: the helper goes round the dead socket.
    let o = exec(&argv, &env, "echo still here", b"");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.stdout, b"still here\n", "{err}");
    assert!(err.contains("does not answer"), "{err}");
    for id in containers_of(pid) {
        remove_container(&id);
    }
    let s = Server::start_env(&[&image()], &env);
    assert!(!left[0].exists(), "{} not swept", left[0].display());
    s.quit();
}

/// A proxy that cuts a connection 0.5 s after one side half-closes it
/// (socat's default): a command without input keeps its stream whole,
/// and one whose input ended is reported as a testbed failure that names
/// the cause, not as its own status.
#[test]
fn proxy_that_drops_half_closed_connections() {
    let dir = TempDir::new("halfclose");
    let socat = need("socat", "socat");
    let port = free_port();
    let mut bg = Bg::spawn(
        Command::new(socat).args([
            &format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"),
            &local_daemon(),
        ]),
        dir.path().join("socat.log"),
    );
    bg.wait_port(port);
    let host = format!("tcp://127.0.0.1:{port}");
    let env = [("DOCKER_HOST", host.as_str())];
    let mut s = Server::start_env(&[&image()], &env);
    s.open();
    let argv = s.exec_argv();
    // As autopkgtest runs every command: stdin is /dev/null.
    let o = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["sh", "-c", "sleep 1.5; echo done; exit 3"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        (o.status.code(), o.stdout.as_slice()),
        (Some(3), &b"done\n"[..]),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = exec(&argv, &env, "cat; sleep 1.5; echo done", b"input\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(255), "{err}");
    assert!(err.contains("half-closed"), "{err}");
    // Quick input still round-trips.
    assert_eq!(exec(&argv, &env, "cat", b"echoed\n").stdout, b"echoed\n");
    s.quit();
}

/// The project's test package through autopkgtest, over ssh: built in the
/// testbed, its .debs copied up, its tests run.
#[test]
fn autopkgtest_over_ssh() {
    need("autopkgtest", "autopkgtest");
    let dir = TempDir::new("ssh-autopkgtest");
    let sshd = Sshd::start(dir.path(), None);
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pkg/rdocker-hello");
    let out = dir.path().join("out");
    let t = Instant::now();
    let o = Command::new("autopkgtest")
        .arg(format!("{}/", pkg.display()))
        .arg("-o")
        .arg(&out)
        .args(["--", BIN, &user_image()])
        .env("DOCKER_HOST", sshd.url())
        .env("PATH", sshd.path())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "autopkgtest over ssh failed ({}):\n{log}",
        o.status
    );
    assert!(
        fs::read_dir(out.join("binaries"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".deb")),
        "no .deb copied up:\n{log}"
    );
    assert_eq!(
        fs::read_to_string(out.join("artifacts/greeting"))
            .unwrap()
            .trim(),
        "hello, artifacts"
    );
    eprintln!(
        "daemons: autopkgtest over ssh passed in {} ms",
        t.elapsed().as_millis()
    );
}

#[test]
fn ssh_to_a_host_without_docker() {
    let dir = TempDir::new("ssh-nodocker");
    let script = dir.path().join("nodocker.sh");
    fs::write(
        &script,
        "#!/bin/sh\nPATH=/nonexistent exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let sshd = Sshd::start(dir.path(), Some(script.to_str().unwrap()));
    let err = fails(
        &[&image()],
        &[("DOCKER_HOST", &sshd.url()), ("PATH", &sshd.path())],
    );
    assert!(err.contains("docker: not found"), "{err}");
    assert!(err.contains("needs the docker CLI"), "{err}");
}

#[test]
fn contexts_as_the_docker_cli_makes_them() {
    let docker_cli = need("docker", "docker.io (the docker CLI)");
    let dir = TempDir::new("contexts");
    let (_tcp, tcp_port) = plain_tcp(dir.path());
    let tls_dir = dir.path().join("tls");
    fs::create_dir_all(&tls_dir).unwrap();
    let (_tls, tls_port, client) = tls(&tls_dir);
    let ssh_dir = dir.path().join("ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    let sshd = Sshd::start(&ssh_dir, None);
    let config = dir.path().join("docker-config");
    let cfg = config.to_str().unwrap();
    let ctx = |args: &[&str]| {
        run(Command::new(&docker_cli)
            .env("DOCKER_CONFIG", cfg)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .arg("context")
            .args(args));
    };
    ctx(&[
        "create",
        "rd-tcp",
        "--docker",
        &format!("host=tcp://127.0.0.1:{tcp_port}"),
    ]);
    let c = client.display();
    ctx(&[
        "create",
        "rd-tls",
        "--docker",
        &format!("host=tcp://127.0.0.1:{tls_port},ca={c}/ca.pem,cert={c}/cert.pem,key={c}/key.pem"),
    ]);
    ctx(&[
        "create",
        "rd-ssh",
        "--docker",
        &format!("host={}", sshd.url()),
    ]);
    let path = sshd.path();

    // --context, with DOCKER_HOST and DOCKER_CONTEXT set to something else.
    let env = [
        ("DOCKER_CONFIG", cfg),
        ("DOCKER_HOST", ""),
        ("DOCKER_CONTEXT", "rd-ssh"),
        ("PATH", path.as_str()),
    ];
    let (err, _) = session(
        "context-tcp",
        &["-d", "--context", "rd-tcp", &image()],
        &env,
    );
    assert!(
        err.contains(&format!(
            "daemon: tcp://127.0.0.1:{tcp_port} (from context `rd-tcp' named by --context)"
        )),
        "{err}"
    );
    // DOCKER_CONTEXT; the exec helper finds the context's TLS material.
    let env = [
        ("DOCKER_CONFIG", cfg),
        ("DOCKER_HOST", ""),
        ("DOCKER_CONTEXT", "rd-tls"),
    ];
    let (err, _) = session("context-tls", &["-d", &image()], &env);
    assert!(
        err.contains("(from context `rd-tls' named by DOCKER_CONTEXT)"),
        "{err}"
    );
    assert!(err.contains("contexts/tls/"), "{err}");
    // --context naming a TLS context: the exec helpers too.
    let env = [
        ("DOCKER_CONFIG", cfg),
        ("DOCKER_HOST", ""),
        ("DOCKER_CONTEXT", ""),
    ];
    let (err, _) = session(
        "context-tls-flag",
        &["-d", "--context", "rd-tls", &image()],
        &env,
    );
    assert!(
        err.contains("(from context `rd-tls' named by --context)"),
        "{err}"
    );

    // The current context of config.json (`docker context use').
    ctx(&["use", "rd-ssh"]);
    let env = [
        ("DOCKER_CONFIG", cfg),
        ("DOCKER_HOST", ""),
        ("DOCKER_CONTEXT", ""),
        ("PATH", path.as_str()),
    ];
    let (err, _) = session("context-ssh", &["-d", &image()], &env);
    let want = format!(
        "daemon: {} (from context `rd-ssh' in {cfg}/config.json)",
        sshd.url()
    );
    assert!(err.contains(&want), "{err}");

    // DOCKER_HOST wins over the current context; --host over everything.
    let local = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let s = Server::start_env(
        &["-d", &image()],
        &[
            ("DOCKER_CONFIG", cfg),
            ("DOCKER_HOST", &local),
            ("DOCKER_CONTEXT", ""),
        ],
    );
    let err = s.quit();
    assert!(err.contains("(from DOCKER_HOST)"), "{err}");

    // Unknown contexts are named, wherever they were named.
    let env = [
        ("DOCKER_CONFIG", cfg),
        ("DOCKER_HOST", ""),
        ("DOCKER_CONTEXT", ""),
    ];
    let err = fails(&["--context", "no-such", &image()], &env);
    assert!(
        err.contains("`no-such' named by --context") && err.contains("docker context ls"),
        "{err}"
    );
    let env = [
        ("DOCKER_CONFIG", cfg),
        ("DOCKER_HOST", ""),
        ("DOCKER_CONTEXT", "gone"),
    ];
    let err = fails(&[&image()], &env);
    assert!(err.contains("`gone' named by DOCKER_CONTEXT"), "{err}");
    let err = fails(&["--context", "rd-tcp", "--host", &local, &image()], &env);
    assert!(err.contains("--context") && err.contains("--host"), "{err}");
}

/// podman's Docker API, on the socket `podman system service` serves.
fn podman() -> bollard::Docker {
    need("podman", "podman");
    assert!(
        Path::new(PODMAN_SOCKET).exists(),
        "podman's Docker API socket {PODMAN_SOCKET} is missing: start `podman system service \
         --time=0 unix://{PODMAN_SOCKET}' ({SETUP})"
    );
    let d = bollard::Docker::connect_with_unix(PODMAN_SOCKET, 120, bollard::API_DEFAULT_VERSION)
        .unwrap();
    let d = runtime_block(d.negotiate_version()).unwrap_or_else(|e| {
        panic!("podman's Docker API at {PODMAN_SOCKET} does not answer: {e} ({SETUP})")
    });
    let img = image();
    assert!(
        runtime_block(d.inspect_image(&img)).is_ok(),
        "podman has no {img}: `docker save {img} | podman load' ({SETUP})"
    );
    d
}

fn assert_none_left_on_podman(p: &bollard::Docker, pid: u32) {
    let label = format!("{LABEL_OWNER_PID}={pid}");
    let filters = std::collections::HashMap::from([("label".to_string(), vec![label])]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let left = runtime_block(p.list_containers(Some(opts))).unwrap();
    assert!(left.is_empty(), "containers left on podman: {left:?}");
}

#[test]
fn podman_session() {
    let p = podman();
    let host = format!("unix://{PODMAN_SOCKET}");
    let (err, pid) = session("podman", &["-d", &image()], &[("DOCKER_HOST", &host)]);
    assert!(
        err.contains(&format!("daemon: {host} (from DOCKER_HOST)")),
        "{err}"
    );
    // Nothing left on podman either.
    assert_none_left_on_podman(&p, pid);
}

/// Podman sets a container up for systemd itself when its command is
/// /sbin/init (its systemd mode, through the Docker API too): --init
/// needs no docker run options there.
#[test]
fn podman_boots_init_without_options() {
    let p = podman();
    let img = systemd_image();
    assert!(
        runtime_block(p.inspect_image(&img)).is_ok(),
        "podman has no {img}: `docker save {img} | podman load' ({SETUP})"
    );
    let host = format!("unix://{PODMAN_SOCKET}");
    let env = [("DOCKER_HOST", host.as_str())];
    let mut s = Server::start_env(&["-d", "--init", &img], &env);
    s.open();
    assert!(
        s.capabilities()
            .contains(&"isolation-container".to_string()),
        "{}",
        s.stderr()
    );
    let argv = s.exec_argv();
    let got = exec_ok(
        &argv,
        &env,
        "cat /proc/1/comm; systemctl is-system-running || true",
    );
    assert!(
        got == "systemd\nrunning\n" || got == "systemd\ndegraded\n",
        "{got:?}"
    );
    // And reboots: the same container stops and boots again (Podman's
    // systemd mode gives it a fresh /run and /tmp), the files stay.
    assert!(s.capabilities().contains(&"reboot".to_string()));
    exec_ok(&argv, &env, "echo kept >/etc/kept; echo gone >/run/gone");
    let started = |p: &bollard::Docker| {
        let id = testbed_of(&argv);
        runtime_block(p.inspect_container(&id, None))
            .unwrap()
            .state
            .and_then(|s| s.started_at)
    };
    let before = started(&p);
    assert_eq!(s.ok("reboot"), Vec::<String>::new());
    assert_ne!(started(&p), before, "not started again");
    let got = exec_ok(
        &argv,
        &env,
        "cat /proc/1/comm /etc/kept; test ! -e /run/gone && systemctl is-system-running || true",
    );
    assert!(
        got == "systemd\nkept\nrunning\n" || got == "systemd\nkept\ndegraded\n",
        "{got:?}"
    );
    let pid = s.pid();
    s.quit();
    assert_none_left_on_podman(&p, pid);
}

/// --podman finds Podman's socket by Podman's rules (root's here), not
/// Docker's; --docker, the reference's other spelling, is the default.
#[test]
fn podman_and_docker_flags() {
    let p = podman();
    let mut s = Server::start_env(
        &["-d", "--podman", &image()],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    s.open();
    let argv = s.exec_argv();
    assert_eq!(exec_ok(&argv, &[], "echo on podman"), "on podman\n");
    let pid = s.pid();
    let err = s.quit();
    assert!(
        err.contains(&format!(
            "daemon: unix://{PODMAN_SOCKET} (from Podman's system socket (--podman))"
        )),
        "{err}"
    );
    assert_none_left_on_podman(&p, pid);

    let o = Command::new(BIN)
        .args(["--podman", &image()])
        .env("CONTAINER_HOST", "unix:///nonexistent/podman.sock")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("Podman's API service is unreachable at unix:///nonexistent/podman.sock")
            && err.contains("CONTAINER_HOST"),
        "{err}"
    );

    let mut s = Server::start(&["-d", "--docker", &image()]);
    s.open();
    let err = s.quit();
    assert!(!err.contains("podman"), "{err}");
}

/// The exec helper speaks TLS exactly as the server resolved it (here
/// from a context named by --context), whatever its own environment says:
/// print-execute-command's argv carries the mode and the files. Without
/// them the same argv cannot reach the daemon.
#[test]
fn exec_helpers_use_the_servers_tls_not_their_environment() {
    let docker_cli = need("docker", "docker.io (the docker CLI)");
    let dir = TempDir::new("exec-tls");
    let (_tls, port, client) = tls(dir.path());
    let config = dir.path().join("docker-config");
    let cfg = config.to_str().unwrap();
    let c = client.display();
    run(Command::new(&docker_cli)
        .env("DOCKER_CONFIG", cfg)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .args(["context", "create", "rd-exec-tls", "--docker"])
        .arg(format!(
            "host=tcp://127.0.0.1:{port},ca={c}/ca.pem,cert={c}/cert.pem,key={c}/key.pem"
        )));
    let env = [
        ("DOCKER_CONFIG", cfg),
        ("DOCKER_HOST", ""),
        ("DOCKER_CONTEXT", ""),
    ];
    let mut s = Server::start_env(&["--context", "rd-exec-tls", &image()], &env);
    s.open();
    let argv = s.exec_argv();
    let ctx_dir = format!("{cfg}/contexts/tls/");
    for flag in ["--tls-ca=", "--tls-cert=", "--tls-key="] {
        assert!(
            argv.iter()
                .any(|a| a.starts_with(flag) && a[flag.len()..].starts_with(&ctx_dir)),
            "no {flag} in the context's store: {argv:?}"
        );
    }
    assert!(argv.iter().any(|a| a == "--tls=verify"), "{argv:?}");
    // An environment that names no context, another config and another
    // daemon: the helper must not look there.
    let elsewhere = [
        ("DOCKER_CONFIG", "/nonexistent"),
        ("DOCKER_HOST", "unix:///nonexistent.sock"),
        ("DOCKER_CONTEXT", ""),
        ("DOCKER_TLS_VERIFY", ""),
    ];
    assert_eq!(exec_ok(&argv, &elsewhere, "echo over tls"), "over tls\n");
    // Through the server's relay, and without it, on its own TLS.
    assert!(argv.iter().any(|a| a.starts_with("--via=")), "{argv:?}");
    let direct: Vec<String> = argv
        .iter()
        .filter(|a| !a.starts_with("--via="))
        .cloned()
        .collect();
    assert_eq!(exec_ok(&direct, &elsewhere, "echo direct"), "direct\n");
    let bare: Vec<String> = direct
        .iter()
        .filter(|a| !a.starts_with("--tls"))
        .cloned()
        .collect();
    let o = exec(&bare, &elsewhere, "echo over tls", b"");
    assert_eq!(
        o.status.code(),
        Some(255),
        "plain TCP to a TLS daemon worked: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Through the relay, a helper does no TLS of its own: it needs no key.
    let key = argv
        .iter()
        .find_map(|a| a.strip_prefix("--tls-key="))
        .unwrap();
    fs::rename(key, format!("{key}.away")).unwrap();
    assert_eq!(exec_ok(&argv, &elsewhere, "echo relayed"), "relayed\n");
    assert_eq!(
        exec(&direct, &elsewhere, "true", b"").status.code(),
        Some(255)
    );
    // The relay's directory goes with the server.
    let pid = s.pid();
    assert_eq!(tunnel_leftovers(pid).1.len(), 1);
    s.quit();
    assert_eq!(tunnel_leftovers(pid), (vec![], vec![]));
}

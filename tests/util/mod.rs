//! Shared helpers for the integration tests: a virt server driven over its
//! protocol, the real Docker daemon, and the test images. Nothing here
//! mocks Docker: every test talks to the daemon the server talks to.

#![allow(dead_code)]

mod job;
pub use job::{address_on, JobContainer, JobServer};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_autopkgtest-virt-rdocker");
pub const LABEL_OWNER_PID: &str = "org.debian.autopkgtest.rdocker.owner-pid";

/// The image autopkgtest-build-docker prepared (ci/provision.sh makes it).
pub fn image() -> String {
    std::env::var("RDOCKER_TEST_IMAGE")
        .unwrap_or_else(|_| "rdocker-test/autopkgtest:bookworm".into())
}

/// The same image with a normal user (uid 1000) added.
pub fn user_image() -> String {
    std::env::var("RDOCKER_TEST_USER_IMAGE").unwrap_or_else(|_| "rdocker-test/user:bookworm".into())
}

/// The image with systemd as /sbin/init, for --init.
pub fn systemd_image() -> String {
    std::env::var("RDOCKER_TEST_SYSTEMD_IMAGE")
        .unwrap_or_else(|_| "rdocker-test/systemd:bookworm".into())
}

/// The systemd image with D-Bus and libpam-systemd, as autopkgtest's
/// system images have them (ci/provision.sh).
pub fn logind_image() -> String {
    std::env::var("RDOCKER_TEST_LOGIND_IMAGE")
        .unwrap_or_else(|_| "rdocker-test/systemd-logind:bookworm".into())
}

/// What systemd needs to boot in a container on this cgroup v1 host.
pub const SYSTEMD_RUN_OPTIONS: [&str; 6] = [
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:ro",
];

/// How long a single protocol reply may take before the test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Run a daemon call from a test.
pub fn runtime_block<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// The daemon the tests use, found as rdocker finds it. A test that cannot
/// reach it fails here with a message saying so: never a silent skip.
pub fn docker() -> bollard::Docker {
    static CHECKED: OnceLock<()> = OnceLock::new();
    let d = match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("tcp://") || h.starts_with("http://") => {
            bollard::Docker::connect_with_http(&h, 120, bollard::API_DEFAULT_VERSION)
        }
        Ok(h) if h.starts_with("unix://") => {
            bollard::Docker::connect_with_unix(&h, 120, bollard::API_DEFAULT_VERSION)
        }
        _ => bollard::Docker::connect_with_unix(
            "unix:///var/run/docker.sock",
            120,
            bollard::API_DEFAULT_VERSION,
        ),
    }
    .expect("cannot set up a Docker client");
    let d = runtime().block_on(async { d.negotiate_version().await });
    let d = match d {
        Ok(d) => d,
        Err(e) => panic!(
            "integration tests need a running Docker daemon, and it is unreachable ({e}). \
             Run `sudo ci/test.sh` (it starts dockerd and builds the test images), \
             or set DOCKER_HOST."
        ),
    };
    CHECKED.get_or_init(|| {
        for img in [image(), user_image()] {
            let found = runtime().block_on(d.inspect_image(&img));
            assert!(
                found.is_ok(),
                "test image {img} is missing from the daemon; run `sudo ci/provision.sh` to build it"
            );
        }
    });
    d
}

/// Containers on the daemon whose rdocker owner had this pid.
pub fn containers_of(pid: u32) -> Vec<String> {
    let d = docker();
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_OWNER_PID}={pid}")],
    )]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    runtime()
        .block_on(d.list_containers(Some(opts)))
        .expect("cannot list containers")
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// The testbed's container, from its print-execute-command argv.
pub fn testbed_of(argv: &[String]) -> String {
    argv.iter()
        .find_map(|a| a.strip_prefix("--container="))
        .expect("no --container= in the exec argv")
        .to_string()
}

/// Wait until rdocker `pid` owns `n` containers (an open testbed and the
/// spare made beside it: 2), and return them.
pub fn owned(pid: u32, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = containers_of(pid);
        if c.len() == n {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "rdocker (pid {pid}) owns {c:?}, not {n} containers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait (briefly) until no container of this owner is left, and fail if
/// one is.
pub fn assert_no_containers(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = containers_of(pid);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("rdocker (pid {pid}) left containers behind: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kill and remove a container behind rdocker's back.
pub fn remove_container(id: &str) {
    let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
        .force(true)
        .build();
    runtime()
        .block_on(docker().remove_container(id, Some(opts)))
        .expect("cannot remove container");
}

/// A virt server process driven over its protocol.
pub struct Server {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pub scratch: Option<String>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// Start with IMAGE and docker-run options; checks the `ok` banner.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with(args, env, |_| {})
    }

    /// The same, with `setup` applied to the command first (a session,
    /// a controlling terminal).
    pub fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
        setup: impl FnOnce(&mut Command),
    ) -> Server {
        let mut s = Server::spawn_with(args, env, setup);
        let banner = s.line(REPLY_TIMEOUT);
        assert_eq!(
            banner.as_deref(),
            Some("ok"),
            "no banner; stderr: {}",
            s.stderr()
        );
        s
    }

    /// Start without reading anything.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_with(args, env, |_| {})
    }

    /// Start the server as the last word of `under` (unshare, setpriv,
    /// ...), then IMAGE and options; checks the banner.
    pub fn start_under(under: &[&str], args: &[&str]) -> Server {
        let mut s = Server::spawn_cmd(under, args, &[], |_| {});
        let banner = s.line(REPLY_TIMEOUT);
        assert_eq!(
            banner.as_deref(),
            Some("ok"),
            "no banner; stderr: {}",
            s.stderr()
        );
        s
    }

    fn spawn_with(args: &[&str], env: &[(&str, &str)], setup: impl FnOnce(&mut Command)) -> Server {
        Server::spawn_cmd(&[], args, env, setup)
    }

    fn spawn_cmd(
        under: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        setup: impl FnOnce(&mut Command),
    ) -> Server {
        docker();
        let mut cmd = match under.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("cannot start the server binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let stdin = child.stdin.take();
        Server {
            child,
            stdin,
            lines,
            stderr,
            scratch: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Whether stderr says this within a few seconds: it is read on
    /// another thread, so it can lag behind a reply on stdout.
    pub fn stderr_says(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The next reply line, or None on EOF. Panics on timeout.
    pub fn line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no reply within {timeout:?}; stderr: {}", self.stderr())
            }
        }
    }

    /// The next reply line if one comes within `wait`: Err(()) when none
    /// did yet, Ok(None) on EOF.
    pub fn poll_line(&mut self, wait: Duration) -> Result<Option<String>, ()> {
        match self.lines.recv_timeout(wait) {
            Ok(l) => Ok(Some(l)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => Err(()),
        }
    }

    /// Send a command and wait for its reply, reading the server's
    /// resident memory (KiB) every 50 ms meanwhile; returns the reply and
    /// the highest reading.
    pub fn cmd_peak_rss(&mut self, line: &str) -> (String, u64) {
        self.send(line);
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut peak = rss_kib(self.pid());
        loop {
            match self.poll_line(Duration::from_millis(50)) {
                Ok(Some(l)) => return (l, peak.max(rss_kib(self.pid()))),
                Ok(None) => panic!("server quit after `{line}'; stderr: {}", self.stderr()),
                Err(()) => {
                    peak = peak.max(rss_kib(self.pid()));
                    assert!(
                        Instant::now() < deadline,
                        "no reply to `{line}' (peak RSS {peak} KiB); stderr: {}",
                        self.stderr()
                    );
                }
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{line}").expect("cannot write to the server");
        stdin.flush().unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(bytes).expect("cannot write to the server");
        stdin.flush().unwrap();
    }

    /// Write, tolerating a server that stopped reading (it may refuse a
    /// line before the whole of it arrives).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(bytes).and_then(|_| stdin.flush())
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Send a command and return its reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        match self.line(REPLY_TIMEOUT) {
            Some(l) => l,
            None => panic!("server quit after `{line}'; stderr: {}", self.stderr()),
        }
    }

    /// A command that must answer `ok ...`; returns the words after ok.
    pub fn ok(&mut self, line: &str) -> Vec<String> {
        let r = self.cmd(line);
        let mut words = r.split(' ');
        assert_eq!(
            words.next(),
            Some("ok"),
            "`{line}' answered {r:?}; stderr: {}",
            self.stderr()
        );
        words.map(unquote).collect()
    }

    pub fn open(&mut self) -> String {
        let d = self.ok("open").remove(0);
        self.scratch = Some(d.clone());
        d
    }

    pub fn capabilities(&mut self) -> Vec<String> {
        self.ok("capabilities")
    }

    /// The exec argv from print-execute-command.
    pub fn exec_argv(&mut self) -> Vec<String> {
        // One comma-joined list; each element was quoted on its own.
        let r = self.cmd("print-execute-command");
        let list = r
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("print-execute-command answered {r:?}"));
        assert!(
            !list.contains(' '),
            "print-execute-command gave several words: {r:?}"
        );
        list.split(',').map(unquote).collect()
    }

    /// Wait for the process to exit; returns its status.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "server did not exit within {timeout:?}; stderr: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// quit, and check that it exits 0 leaving nothing behind; returns
    /// what the server said on stderr.
    pub fn quit(mut self) -> String {
        self.send("quit");
        let st = self.wait(Duration::from_secs(30));
        assert_eq!(
            st.code(),
            Some(0),
            "quit exited {st:?}; stderr: {}",
            self.stderr()
        );
        assert_no_containers(self.pid());
        std::thread::sleep(Duration::from_millis(50));
        self.stderr()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test must not leak its container either.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !std::thread::panicking() {
            return;
        }
        for id in containers_of(self.child.id()) {
            let _ = std::panic::catch_unwind(|| remove_container(&id));
        }
    }
}

/// A process's resident memory in KiB (VmRSS), 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Percent-decoding as Python's urllib.parse.unquote.
pub fn unquote(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Percent-encoding as Python's urllib.parse.quote (safe '/').
pub fn quote(s: &str) -> String {
    let mut out = String::new();
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"_.-~/".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Run a shell command in the testbed through the exec argv, with
/// /dev/null as its stdin, as autopkgtest runs every command.
pub fn sh(argv: &[String], script: &str) -> Output {
    Command::new(&argv[0])
        .args(&argv[1..])
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the exec argv")
}

pub fn sh_stdin(argv: &[String], script: &str, input: &[u8]) -> Output {
    sh_stdin_env(argv, &[], script, input)
}

/// The same, with these variables added to the exec argv's environment.
pub fn sh_stdin_env(argv: &[String], env: &[(&str, &str)], script: &str, input: &[u8]) -> Output {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .args(["sh", "-c", script])
        .envs(env.iter().copied());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot run the exec argv");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    out
}

/// The testbed command's stdout, which must have succeeded.
pub fn sh_ok(argv: &[String], script: &str) -> String {
    let o = sh(argv, script);
    assert!(
        o.status.success(),
        "`{script}' failed with {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("rdocker-it-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Start `script` through the exec argv as autopkgtest would (stdin
/// /dev/null, stdout piped), and wait until `n` processes in the testbed
/// match `pattern` (count_procs).
pub fn start_running(
    argv: &[String],
    script: &str,
    pattern: &str,
    n: usize,
) -> std::process::Child {
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run the exec argv");
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_procs(argv, pattern) != n {
        assert!(Instant::now() < deadline, "`{script}' never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// How many processes in the testbed have a command line matching this
/// extended regexp (args joined by spaces). Reads /proc: minimal images
/// have no ps.
pub fn count_procs(argv: &[String], pattern: &str) -> usize {
    let script = format!(
        "for p in /proc/[0-9]*; do [ \"$p\" = /proc/$$ ] && continue; \
         tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -cE '{pattern}' || true"
    );
    sh_ok(argv, &script).trim().parse().unwrap()
}

/// The testbed's systemd has booted: PID 1, the system running (or
/// degraded), and no job left.
pub fn assert_booted(argv: &[String]) {
    assert_eq!(sh_ok(argv, "cat /proc/1/comm"), "systemd\n");
    let state = sh(argv, "systemctl is-system-running").stdout;
    assert!(
        state == b"running\n" || state == b"degraded\n",
        "system state {:?}",
        String::from_utf8_lossy(&state)
    );
    assert_eq!(
        sh_ok(argv, "systemctl list-jobs --no-legend | wc -l"),
        "0\n"
    );
}

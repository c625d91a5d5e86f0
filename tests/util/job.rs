//! A CI job container on the real daemon, as a runner makes one: the
//! host's socket and this build's rdocker mounted in, on the daemon's
//! default network or on a network of its own (GitHub's
//! `github_network_<id>`); and an rdocker server in it, driven over its
//! protocol.

use super::*;

/// A job container, removed when dropped, with its testbeds (found by its
/// host name), its sessions' networks, and the network made for it.
pub struct JobContainer(pub String, Option<String>);

impl JobContainer {
    /// `tag` names it (with this process's pid); `own_network`: on a
    /// `github_network_<id>` network made for it, else on the default one.
    pub fn start(tag: &str, own_network: Option<&str>) -> JobContainer {
        let name = format!("rdocker-test-job-{tag}-{}", std::process::id());
        let mut job = JobContainer(name.clone(), None);
        let mut run = Command::new("docker");
        run.args(["run", "-d", "--name", &name, "--hostname", &name]);
        if let Some(id) = own_network {
            let net = format!("github_network_{id}{}", std::process::id());
            let out = Command::new("docker")
                .args(["network", "create", &net])
                .output()
                .expect("the docker CLI must run: the test makes a job network with it");
            assert!(out.status.success(), "cannot make network {net}: {out:?}");
            run.args(["--network", &net]);
            job.1 = Some(net);
        }
        let out = run
            .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
            .args(["-v", &format!("{BIN}:/usr/local/bin/rdocker:ro")])
            .args([&image(), "sleep", "600"])
            .output()
            .expect("the docker CLI must run: the test makes a job container with it");
        assert!(
            out.status.success(),
            "cannot start a job container: {out:?}"
        );
        job
    }

    /// The `github_network_<id>` made for it.
    pub fn own_network(&self) -> Option<&str> {
        self.1.as_deref()
    }

    /// Its address on network `net`.
    pub fn address_on(&self, net: &str) -> String {
        address_on(&self.0, net)
    }

    /// The job container's full id.
    pub fn id(&self) -> String {
        runtime_block(docker().inspect_container(&self.0, None))
            .expect("cannot inspect the job container")
            .id
            .unwrap_or_default()
    }

    /// The exec argv of a testbed, as run from the host.
    pub fn argv(&self, inside: &[String]) -> Vec<String> {
        let mut a = vec!["docker".into(), "exec".into(), self.0.clone()];
        a.extend(inside.iter().cloned());
        a
    }

    pub fn networks(&self) -> Vec<String> {
        let c = runtime_block(docker().inspect_container(&self.0, None)).unwrap();
        let mut n: Vec<String> = c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_keys()
            .collect();
        n.sort();
        n
    }

    /// What its rdocker labels as its own: its host name.
    fn owner_filter(&self) -> HashMap<String, Vec<String>> {
        let host = format!("org.debian.autopkgtest.rdocker.owner-host={}", self.0);
        HashMap::from([("label".to_string(), vec![host])])
    }

    /// The testbeds (and spares) its rdocker made: by its host name.
    pub fn testbeds(&self) -> Vec<String> {
        let filters = self.owner_filter();
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let mut ids: Vec<String> = runtime_block(docker().list_containers(Some(opts)))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.id)
            .collect();
        ids.sort();
        ids
    }

    /// The session networks its rdocker made: by its host name.
    pub fn session_networks(&self) -> Vec<String> {
        let filters = self.owner_filter();
        let opts = bollard::query_parameters::ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut names: Vec<String> = runtime_block(docker().list_networks(Some(opts)))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| n.name)
            .collect();
        names.sort();
        names
    }

    /// `docker kill` and `docker rm`, as a runner does to a cancelled job.
    pub fn kill(&self) {
        for args in [["kill", &self.0], ["rm", &self.0]] {
            let out = Command::new("docker").args(args).output().unwrap();
            assert!(out.status.success(), "docker {args:?}: {out:?}");
        }
    }
}

impl Drop for JobContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        for c in self.testbeds() {
            let _ = std::panic::catch_unwind(|| remove_container(&c));
        }
        for n in self.session_networks().into_iter().chain(self.1.clone()) {
            let _ = Command::new("docker").args(["network", "rm", &n]).output();
        }
    }
}

/// A server in a job container, driven over its protocol.
pub struct JobServer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl JobServer {
    pub fn start(job: &JobContainer) -> JobServer {
        let mut child = Command::new("docker")
            .args(["exec", "-i", &job.0, "rdocker", "-d", &image()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run docker exec");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut s = JobServer {
            child,
            stdin,
            lines,
        };
        assert_eq!(
            s.reply(),
            "ok",
            "the server in the job container did not start"
        );
        s
    }

    pub fn reply(&mut self) -> String {
        self.lines
            .recv_timeout(REPLY_TIMEOUT)
            .expect("no reply from the server in the job container")
    }

    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.reply()
    }

    pub fn exec_argv(&mut self) -> Vec<String> {
        let r = self.cmd("print-execute-command");
        let list = r.strip_prefix("ok ").unwrap_or_else(|| panic!("{r}"));
        list.split(',').map(unquote).collect()
    }
}

impl Drop for JobServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address of container `c` on network `net`.
pub fn address_on(c: &str, net: &str) -> String {
    runtime_block(docker().inspect_container(c, None))
        .expect("cannot inspect the container")
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut n| n.remove(net))
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| panic!("{c} has no address on {net}"))
}

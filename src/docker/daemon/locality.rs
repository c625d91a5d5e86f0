//! Whether the daemon can see this machine's filesystem and processes,
//! and so which copy route rdocker takes.
//!
//! The rules are pure functions over gathered evidence, so that they can be
//! unit-tested without a daemon or a container.

use std::path::Path;

use super::client::Client;
use super::endpoint::Endpoint;

/// Evidence that this process runs inside a container, where a path of
/// ours means nothing to the daemon even when its socket is mounted in.
#[derive(Debug, Default, Clone)]
pub struct Evidence {
    pub dockerenv: bool,
    pub containerenv: bool,
    pub cgroup: String,
    pub mountinfo_root: Option<String>,
    /// The whole of /proc/self/mountinfo: the files a runtime bind-mounts
    /// in (/etc/hostname, /etc/hosts) come from its container's directory.
    pub mountinfo: String,
}

impl Evidence {
    pub fn gather() -> Evidence {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Evidence {
            dockerenv: Path::new("/.dockerenv").exists(),
            containerenv: Path::new("/run/.containerenv").exists(),
            cgroup: std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default(),
            mountinfo_root: root_mount_line(&mountinfo).map(str::to_string),
            mountinfo,
        }
    }

    /// Why we think we are in a container, if we do.
    pub fn container_reason(&self) -> Option<String> {
        if self.dockerenv {
            return Some("/.dockerenv exists".into());
        }
        if self.containerenv {
            return Some("/run/.containerenv exists".into());
        }
        for marker in [
            "docker",
            "kubepods",
            "containerd",
            "libpod",
            "lxc",
            "actions_job",
        ] {
            if let Some(line) = self.cgroup.lines().find(|l| {
                l.rsplit(':')
                    .next()
                    .is_some_and(|path| path.contains(marker))
            }) {
                return Some(format!("/proc/1/cgroup names a container: {line}"));
            }
        }
        if let Some(root) = &self.mountinfo_root {
            for marker in ["/docker/", "/containers/storage/", "/kubelet/", "overlay"] {
                if root.contains(marker) {
                    return Some(format!("the root filesystem is a container's: {root}"));
                }
            }
        }
        None
    }
}

/// The ids that may be this process's container: a 64-hex name right
/// under a `…containers` directory in the source of a mount (Docker's
/// /var/lib/docker/containers/ID/hostname, Podman's
/// overlay-containers/ID/userdata/hosts), or in a cgroup path (cgroup v1:
/// /docker/ID, docker-ID.scope). Only candidates: the daemon confirms.
pub fn container_candidates(e: &Evidence) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut add = |id: &str| {
        if is_container_id(id) && !found.iter().any(|f| f == id) {
            found.push(id.to_string());
        }
    };
    for line in e.mountinfo.lines() {
        let Some(root) = line.split_whitespace().nth(3) else {
            continue;
        };
        let parts: Vec<&str> = root.split('/').collect();
        for w in parts.windows(2) {
            if w[0].ends_with("containers") {
                add(w[1]);
            }
        }
    }
    for line in e.cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for part in path.split('/') {
            let part = part.strip_suffix(".scope").unwrap_or(part);
            add(part.rsplit('-').next().unwrap_or(part));
        }
    }
    found
}

/// A container's full id, as the Engine API gives it.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The container this process runs in, if it runs on `client`'s daemon:
/// the first candidate the daemon knows and runs (a job container beside
/// the daemon; not a dind's outer container, which that daemon does not
/// know).
pub async fn own_container(client: &Client, e: &Evidence) -> Option<String> {
    for id in container_candidates(e) {
        match client.docker.inspect_container(&id, None).await {
            Ok(c)
                if c.id.as_deref() == Some(id.as_str())
                    && c.state.as_ref().and_then(|s| s.running) == Some(true) =>
            {
                return Some(id)
            }
            Ok(_) => {}
            Err(e) => crate::debug!("container {}: not on the daemon ({e})", &id[..12]),
        }
    }
    None
}

/// The mountinfo line of the mount at "/".
fn root_mount_line(mountinfo: &str) -> Option<&str> {
    mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
}

/// How copies reach the testbed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyMode {
    /// Through the Engine API's archive endpoints ("docker cp"). `local`:
    /// the daemon is on a unix socket and --remote was not given, so it may
    /// share our view of processes; single files then go straight through
    /// the testbed's root if root.rs can prove it sees the right one
    /// (which it cannot from a CI job container, say).
    Api { why: String, local: bool },
    /// Through a directory bind-mounted at the same path in the testbed.
    /// `doubt`: why we may be in a container; the first testbed then
    /// proves that it sees our directory (host/shared.rs), as a marker
    /// file alone cannot tell a host's /.dockerenv from a container's.
    Shared {
        dir: std::path::PathBuf,
        why: String,
        doubt: Option<String>,
    },
}

/// Decide the copy mode. A shared directory needs a daemon that sees our
/// filesystem: a unix socket, and, where we may be in a container, a
/// testbed that proves it sees our directory.
pub fn choose_copy_mode(
    endpoint: &Endpoint,
    evidence: &Evidence,
    remote_flag: bool,
    shared_dir: Option<&Path>,
) -> Result<CopyMode, String> {
    let far = if remote_flag {
        Some("--remote was given".to_string())
    } else if endpoint.unix_path().is_none() {
        Some(format!(
            "the daemon is reached at {} (from {}), not through a local socket",
            endpoint.host, endpoint.source
        ))
    } else {
        None
    };
    let inside = evidence
        .container_reason()
        .map(|r| format!("rdocker runs inside a container ({r})"));
    if let (Some(dir), Some(why)) = (shared_dir, &far) {
        return Err(format!(
            "--shared-dir {} needs a daemon that sees this machine's filesystem, \
             but {why}; drop --shared-dir to copy through the Engine API",
            dir.display()
        ));
    }
    let remote_reason = far.or(inside.clone());
    match (shared_dir, remote_reason) {
        (Some(dir), _) => Ok(CopyMode::Shared {
            dir: dir.to_path_buf(),
            why: format!(
                "--shared-dir was given and the daemon is local ({})",
                endpoint.host
            ),
            doubt: inside,
        }),
        (None, Some(why)) => Ok(CopyMode::Api {
            why: format!("{why}, so no shared directory"),
            local: !remote_flag && endpoint.unix_path().is_some(),
        }),
        (None, None) => Ok(CopyMode::Api {
            why: "no --shared-dir was given".into(),
            local: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::daemon::endpoint::DEFAULT_HOST;

    fn local() -> Endpoint {
        Endpoint::resolve(None, None, &Default::default()).unwrap()
    }

    fn at(host: &str) -> Endpoint {
        Endpoint::resolve(Some(host), None, &Default::default()).unwrap()
    }

    #[test]
    fn host_precedence() {
        assert_eq!(local().host, DEFAULT_HOST);
        assert_eq!(at("unix:///x.sock").host, "unix:///x.sock");
        assert_eq!(at("unix:///x.sock").source, "--host");
    }

    #[test]
    fn container_evidence() {
        assert!(Evidence::default().container_reason().is_none());
        let e = Evidence {
            dockerenv: true,
            ..Default::default()
        };
        assert!(e.container_reason().unwrap().contains(".dockerenv"));
        let e = Evidence {
            cgroup: "0::/system.slice/docker-abc.scope\n".into(),
            ..Default::default()
        };
        assert!(e.container_reason().is_some());
        let e = Evidence {
            cgroup: "0::/user.slice/session-2.scope\n".into(),
            ..Default::default()
        };
        assert!(e.container_reason().is_none());
        let e = Evidence {
            mountinfo_root: root_mount_line(
                "1 0 0:1 / / rw - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X\n",
            )
            .map(str::to_string),
            ..Default::default()
        };
        assert!(e.container_reason().is_some());
    }

    #[test]
    fn container_ids_from_mounts_and_cgroups() {
        let id = "0123456789abcdef".repeat(4);
        let other = "fedcba9876543210".repeat(4);
        let docker = format!(
            "1 0 0:1 / / rw - overlay overlay rw\n\
             2 1 8:1 /var/lib/docker/containers/{id}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n\
             3 1 8:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n\
             4 1 8:2 /containers/{other}/hosts /etc/hosts rw - ext4 /dev/sdb1 rw\n"
        );
        let e = Evidence {
            mountinfo: docker,
            ..Default::default()
        };
        assert_eq!(container_candidates(&e), vec![id.clone(), other.clone()]);
        let podman = format!(
            "5 1 0:30 /containers/storage/overlay-containers/{id}/userdata/hostname /etc/hostname rw - tmpfs tmpfs rw\n"
        );
        let e = Evidence {
            mountinfo: podman,
            ..Default::default()
        };
        assert_eq!(container_candidates(&e), vec![id.clone()]);
        for cgroup in [
            format!("12:pids:/docker/{id}\n"),
            format!("0::/system.slice/docker-{id}.scope\n"),
        ] {
            let e = Evidence {
                cgroup,
                ..Default::default()
            };
            assert_eq!(container_candidates(&e), vec![id.clone()], "{}", e.cgroup);
        }
        // A host: nothing; nor a short, upper-case or non-hex name.
        let e = Evidence {
            mountinfo: "1 0 0:1 / / rw - ext4 /dev/sda1 rw\n\
                        2 1 0:2 /containers/abc/x /x rw - ext4 /dev/sda1 rw\n"
                .into(),
            cgroup: "0::/user.slice/session-2.scope\n".into(),
            ..Default::default()
        };
        assert!(container_candidates(&e).is_empty());
        assert!(is_container_id(&id));
        assert!(!is_container_id(&id.to_uppercase()));
        assert!(!is_container_id(&id[..12]));
        assert!(!is_container_id(&format!("{}g", &id[..63])));
    }

    #[test]
    fn shared_dir_only_on_a_local_daemon() {
        let dir = Path::new("/srv/shared");
        let none = Evidence::default();
        assert!(matches!(
            choose_copy_mode(&local(), &none, false, Some(dir)),
            Ok(CopyMode::Shared { .. })
        ));
        assert!(matches!(
            choose_copy_mode(&local(), &none, false, None),
            Ok(CopyMode::Api { .. })
        ));
        // Only a daemon that shares our view may be reached around the API.
        assert!(matches!(
            choose_copy_mode(&local(), &none, false, None),
            Ok(CopyMode::Api { local: true, .. })
        ));
        assert!(matches!(
            choose_copy_mode(&local(), &none, true, None),
            Ok(CopyMode::Api { local: false, .. })
        ));
        let tcp = at("tcp://127.0.0.1:2375");
        let err = choose_copy_mode(&tcp, &none, false, Some(dir)).unwrap_err();
        assert!(err.contains("tcp://127.0.0.1:2375"), "{err}");
        // Every remote form: never a shared directory.
        for host in ["ssh://me@127.0.0.1:2222", "tcp://h:2376", "127.0.0.1:2375"] {
            let e = at(host);
            assert!(
                choose_copy_mode(&e, &none, false, Some(dir)).is_err(),
                "{host}"
            );
            assert!(
                matches!(
                    choose_copy_mode(&e, &none, false, None),
                    Ok(CopyMode::Api { local: false, .. })
                ),
                "{host}"
            );
        }
        assert!(choose_copy_mode(&local(), &none, true, Some(dir)).is_err());
        let inside = Evidence {
            containerenv: true,
            ..Default::default()
        };
        // Maybe in a container: allowed, with the doubt for the first
        // testbed to settle.
        match choose_copy_mode(&local(), &inside, false, Some(dir)) {
            Ok(CopyMode::Shared { doubt: Some(d), .. }) => {
                assert!(d.contains("inside a container"), "{d}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            choose_copy_mode(&local(), &none, false, Some(dir)),
            Ok(CopyMode::Shared { doubt: None, .. })
        ));
    }
}

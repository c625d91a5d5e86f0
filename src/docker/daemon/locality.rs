//! Whether the daemon can see this machine's filesystem and processes,
//! and so which copy route rdocker takes.
//!
//! The rules are pure functions over gathered evidence, so that they can be
//! unit-tested without a daemon or a container.

use std::path::Path;

use super::endpoint::Endpoint;

/// Evidence that this process runs inside a container, where a path of
/// ours means nothing to the daemon even when its socket is mounted in.
#[derive(Debug, Default, Clone)]
pub struct Evidence {
    pub dockerenv: bool,
    pub containerenv: bool,
    pub cgroup: String,
    pub mountinfo_root: Option<String>,
}

impl Evidence {
    pub fn gather() -> Evidence {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Evidence {
            dockerenv: Path::new("/.dockerenv").exists(),
            containerenv: Path::new("/run/.containerenv").exists(),
            cgroup: std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default(),
            mountinfo_root: root_mount_line(&mountinfo).map(str::to_string),
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

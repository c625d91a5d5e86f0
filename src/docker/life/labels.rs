//! The labels that mark a container as rdocker's and name the process
//! that owns it (its pid, start time, pid namespace, boot and host), so
//! that orphans are found by label and a reused pid is never taken for
//! their owner.

/// Labels that mark a container as rdocker's and name its owner process,
/// so that orphans can be found (and reaped) by label.
pub const LABEL_MANAGED: &str = "org.debian.autopkgtest.rdocker";
pub const LABEL_OWNER_PID: &str = "org.debian.autopkgtest.rdocker.owner-pid";
pub const LABEL_OWNER_HOST: &str = "org.debian.autopkgtest.rdocker.owner-host";
/// The owner's start time, so that a reused pid is not taken for it.
pub const LABEL_OWNER_START: &str = "org.debian.autopkgtest.rdocker.owner-start";
/// The owner's pid namespace and boot: a pid means something only in the
/// namespace, and the boot, it was taken in.
pub const LABEL_OWNER_PIDNS: &str = "org.debian.autopkgtest.rdocker.owner-pidns";
pub const LABEL_OWNER_BOOT: &str = "org.debian.autopkgtest.rdocker.owner-boot";
/// The container the owner ran in, on the testbed's daemon (a CI job
/// container beside it): once that container is gone, so is the owner,
/// whatever its pid namespace.
pub const LABEL_OWNER_CONTAINER: &str = "org.debian.autopkgtest.rdocker.owner-container";

/// The container this process runs in, once found on the daemon.
static OWN_CONTAINER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Record the container this process runs in (its full id), for the
/// labels of what it makes from now on.
pub fn set_own_container(id: String) {
    let _ = OWN_CONTAINER.set(id);
}

/// Where the process that owns a container lives.
pub struct Owner {
    pub host: String,
    pub start: Option<u64>,
    pub pidns: Option<String>,
    pub boot: Option<String>,
    /// Its container on the daemon, if it runs in one there.
    pub container: Option<String>,
}

impl Owner {
    pub fn current() -> Owner {
        Owner {
            host: hostname(),
            start: start_time(std::process::id()),
            pidns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|b| b.trim().to_string()),
            container: OWN_CONTAINER.get().cloned(),
        }
    }

    /// The labels that mark a container or network as rdocker's and name
    /// this owner.
    pub fn labels(&self) -> std::collections::HashMap<String, String> {
        let mut l = std::collections::HashMap::from([
            (LABEL_MANAGED.to_string(), "1".to_string()),
            (LABEL_OWNER_PID.to_string(), std::process::id().to_string()),
            (LABEL_OWNER_HOST.to_string(), self.host.clone()),
        ]);
        for (k, v) in [
            (LABEL_OWNER_START, self.start.map(|s| s.to_string())),
            (LABEL_OWNER_PIDNS, self.pidns.clone()),
            (LABEL_OWNER_BOOT, self.boot.clone()),
            (LABEL_OWNER_CONTAINER, self.container.clone()),
        ] {
            if let Some(v) = v {
                l.insert(k.to_string(), v);
            }
        }
        l
    }
}

/// The start time of a process, in clock ticks since boot (field 22 of
/// /proc/PID/stat): a pid with another start time is another process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses; fields resume after
    // the last ')'. starttime is the 20th field after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 0 0";
        assert_eq!(parse_start_time(stat), Some(123456));
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(parse_start_time("garbage"), None);
    }
}

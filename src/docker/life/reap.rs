//! `--reap`: remove rdocker containers whose owner process is gone (an
//! rdocker killed with SIGKILL cannot clean up after itself), and no
//! others. Containers are matched by label, never by name; so are the
//! networks of sessions (network.rs, Podman), and copies of the shared
//! network that a race left.

use anyhow::{Context, Result};
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use std::collections::HashMap;

use super::labels::{
    start_time, Owner, LABEL_MANAGED, LABEL_OWNER_BOOT, LABEL_OWNER_HOST, LABEL_OWNER_PID,
    LABEL_OWNER_PIDNS, LABEL_OWNER_START,
};
use crate::docker::daemon::client::{status_of, Client};

/// What to do with one labelled container.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its owner is gone: remove it.
    Orphan(String),
    /// Its owner still runs here.
    Owned,
    /// Owned by another machine (or its labels are unreadable): we cannot
    /// tell whether the owner lives, so it stays.
    Foreign(String),
}

/// Decide for one container from its labels. `alive(pid)` gives the start
/// time of a running process, or None.
pub fn judge(
    labels: &HashMap<String, String>,
    me: &Owner,
    alive: impl Fn(u32) -> Option<u64>,
) -> Verdict {
    let label = |k: &str| labels.get(k).map(String::as_str);
    let host = label(LABEL_OWNER_HOST).unwrap_or("");
    if host != me.host {
        return Verdict::Foreign(format!("owned by host {host:?}"));
    }
    // A container's processes share the host's name under --network host,
    // but not its pids.
    if let (Some(theirs), Some(ours)) = (label(LABEL_OWNER_PIDNS), me.pidns.as_deref()) {
        if theirs != ours {
            return Verdict::Foreign(format!("owned by another pid namespace ({theirs})"));
        }
    }
    if let (Some(theirs), Some(ours)) = (label(LABEL_OWNER_BOOT), me.boot.as_deref()) {
        if theirs != ours {
            return Verdict::Orphan("its owner ran before this machine rebooted".into());
        }
    }
    let Some(pid) = labels
        .get(LABEL_OWNER_PID)
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return Verdict::Foreign("no readable owner-pid label".into());
    };
    let want_start = labels
        .get(LABEL_OWNER_START)
        .and_then(|s| s.parse::<u64>().ok());
    match alive(pid) {
        None => Verdict::Orphan(format!("owner pid {pid} is gone")),
        Some(start) => match want_start {
            Some(w) if w != start => {
                Verdict::Orphan(format!("owner pid {pid} is gone (the pid was reused)"))
            }
            _ => Verdict::Owned,
        },
    }
}

pub async fn reap(client: &Client) -> Result<()> {
    let list = super::container::labelled(client, vec![format!("{LABEL_MANAGED}=1")])
        .await
        .with_context(|| format!("cannot list containers on {}", client.endpoint.host))?;
    let me = Owner::current();
    let (mut removed, mut kept, mut foreign) = (0, 0, 0);
    for c in list {
        let id = c.id.unwrap_or_default();
        let name = c
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| id.clone());
        match judge(&c.labels.unwrap_or_default(), &me, start_time) {
            Verdict::Orphan(why) => {
                let opts = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                match client.docker.remove_container(&id, Some(opts)).await {
                    Ok(()) => {}
                    Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => {}
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("cannot remove orphaned container {name}")))
                    }
                }
                println!("removed {name}: {why}");
                removed += 1;
            }
            Verdict::Owned => kept += 1,
            Verdict::Foreign(why) => {
                crate::debug!("left {name}: {why}");
                foreign += 1;
            }
        }
    }
    println!(
        "reaped {removed} orphaned container(s); {kept} in use here; {foreign} of other hosts left alone"
    );
    // Sessions' networks (Podman, job containers) once their testbeds
    // are gone.
    let mut nets = 0;
    for (id, name, labels) in super::network::sessions(client).await? {
        match judge(&labels, &me, start_time) {
            Verdict::Orphan(why) => {
                let joined = labels.get(super::network::LABEL_JOINED).map(String::as_str);
                super::network::remove_when_free(client, &id, &name, joined).await?;
                println!("removed network {name}: {why}");
                nets += 1;
            }
            Verdict::Owned => {}
            Verdict::Foreign(why) => crate::debug!("left network {name}: {why}"),
        }
    }
    if nets > 0 {
        println!("reaped {nets} orphaned network(s)");
    }
    super::network::reap_copies(client).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner {
            host: "h".into(),
            start: None,
            pidns: Some("pid:[1]".into()),
            boot: Some("b1".into()),
        }
    }

    fn labels(host: &str, pid: &str, start: Option<&str>) -> HashMap<String, String> {
        let mut l = HashMap::from([
            (LABEL_MANAGED.to_string(), "1".to_string()),
            (LABEL_OWNER_HOST.to_string(), host.to_string()),
            (LABEL_OWNER_PID.to_string(), pid.to_string()),
        ]);
        if let Some(s) = start {
            l.insert(LABEL_OWNER_START.to_string(), s.to_string());
        }
        l
    }

    #[test]
    fn judges_by_host_pid_and_start_time() {
        let alive = |pid: u32| (pid == 10).then_some(500u64);
        let me = me();
        assert_eq!(
            judge(&labels("h", "10", Some("500")), &me, alive),
            Verdict::Owned
        );
        assert!(matches!(
            judge(&labels("h", "11", Some("500")), &me, alive),
            Verdict::Orphan(_)
        ));
        // Same pid, another process.
        assert!(matches!(
            judge(&labels("h", "10", Some("499")), &me, alive),
            Verdict::Orphan(_)
        ));
        // Without a start label, a live pid counts as the owner.
        assert_eq!(judge(&labels("h", "10", None), &me, alive), Verdict::Owned);
        assert!(matches!(
            judge(&labels("other", "11", None), &me, alive),
            Verdict::Foreign(_)
        ));
        assert!(matches!(
            judge(&labels("h", "x", None), &me, alive),
            Verdict::Foreign(_)
        ));
        // Same host name, but a container's pid namespace: not ours to judge.
        let mut l = labels("h", "11", Some("500"));
        l.insert(LABEL_OWNER_PIDNS.into(), "pid:[2]".into());
        assert!(matches!(judge(&l, &me, alive), Verdict::Foreign(_)));
        // Same namespace, earlier boot: whatever the pid, its owner is gone.
        let mut l = labels("h", "10", Some("500"));
        l.insert(LABEL_OWNER_PIDNS.into(), "pid:[1]".into());
        l.insert(LABEL_OWNER_BOOT.into(), "b0".into());
        assert!(matches!(judge(&l, &me, alive), Verdict::Orphan(_)));
    }
}

//! `--reap`: remove rdocker containers whose owner process is gone (an
//! rdocker killed with SIGKILL cannot clean up after itself, nor one in a
//! CI job container removed when the job was cancelled), and no others. Containers are matched by label, never by name; so are the
//! networks of sessions (network.rs, Podman), and copies of the shared
//! network that a race left.

use anyhow::{Context, Result};
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use std::collections::{HashMap, HashSet};

use super::labels::{
    start_time, Owner, LABEL_MANAGED, LABEL_OWNER_BOOT, LABEL_OWNER_CONTAINER, LABEL_OWNER_HOST,
    LABEL_OWNER_PID, LABEL_OWNER_PIDNS, LABEL_OWNER_START,
};
use crate::docker::daemon::client::{status_of, Client};
use crate::docker::daemon::locality::{self, is_container_id, Evidence};

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
/// time of a running process, or None; `exists(id)`, whether the daemon
/// has a container of that full id (in any state).
pub fn judge(
    labels: &HashMap<String, String>,
    me: &Owner,
    alive: impl Fn(u32) -> Option<u64>,
    exists: impl Fn(&str) -> bool,
) -> Verdict {
    let label = |k: &str| labels.get(k).map(String::as_str);
    // Its owner ran in a container on this daemon (labels.rs): that
    // container gone, its processes are. Ours: its pids are ours to judge.
    if let Some(c) = label(LABEL_OWNER_CONTAINER) {
        if !is_container_id(c) {
            return Verdict::Foreign(format!("unreadable owner-container label {c:?}"));
        }
        if me.container.as_deref() != Some(c) {
            return if exists(c) {
                Verdict::Foreign(format!(
                    "its owner's container {} is still on the daemon (`--reap` in it \
                     removes what its killed rdockers left)",
                    &c[..12]
                ))
            } else {
                Verdict::Orphan(format!(
                    "its owner's container {} is gone from the daemon",
                    &c[..12]
                ))
            };
        }
    }
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
    let mut me = Owner::current();
    let evidence = Evidence::gather();
    if evidence.container_reason().is_some() {
        me.container = locality::own_container(client, &evidence).await;
    }
    // Every container on the daemon, listed after the labelled ones: an
    // owner's container made since is listed too, and never taken for gone.
    let opts = ListContainersOptionsBuilder::new().all(true).build();
    let all: HashSet<String> = client
        .docker
        .list_containers(Some(opts))
        .await
        .with_context(|| format!("cannot list containers on {}", client.endpoint.host))?
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    let exists = |id: &str| all.contains(id);
    let (mut removed, mut kept, mut foreign) = (0, 0, 0);
    for c in list {
        let id = c.id.unwrap_or_default();
        let name = c
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| id.clone());
        match judge(&c.labels.unwrap_or_default(), &me, start_time, exists) {
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
        "reaped {removed} orphaned container(s); {kept} in use here; {foreign} of other hosts or \
         live containers left alone"
    );
    // Sessions' networks (Podman, job containers) once their testbeds
    // are gone.
    let mut nets = 0;
    for (id, name, labels) in super::network::sessions(client).await? {
        match judge(&labels, &me, start_time, exists) {
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
            container: None,
        }
    }

    fn none(_: &str) -> bool {
        false
    }

    const JOB: &str = "1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a";
    const OTHER: &str = "2222222222222222222222222222222222222222222222222222222222222222";

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
            judge(&labels("h", "10", Some("500")), &me, alive, none),
            Verdict::Owned
        );
        assert!(matches!(
            judge(&labels("h", "11", Some("500")), &me, alive, none),
            Verdict::Orphan(_)
        ));
        // Same pid, another process.
        assert!(matches!(
            judge(&labels("h", "10", Some("499")), &me, alive, none),
            Verdict::Orphan(_)
        ));
        // Without a start label, a live pid counts as the owner.
        assert_eq!(
            judge(&labels("h", "10", None), &me, alive, none),
            Verdict::Owned
        );
        assert!(matches!(
            judge(&labels("other", "11", None), &me, alive, none),
            Verdict::Foreign(_)
        ));
        assert!(matches!(
            judge(&labels("h", "x", None), &me, alive, none),
            Verdict::Foreign(_)
        ));
        // Same host name, but a container's pid namespace: not ours to judge.
        let mut l = labels("h", "11", Some("500"));
        l.insert(LABEL_OWNER_PIDNS.into(), "pid:[2]".into());
        assert!(matches!(judge(&l, &me, alive, none), Verdict::Foreign(_)));
        // Same namespace, earlier boot: whatever the pid, its owner is gone.
        let mut l = labels("h", "10", Some("500"));
        l.insert(LABEL_OWNER_PIDNS.into(), "pid:[1]".into());
        l.insert(LABEL_OWNER_BOOT.into(), "b0".into());
        assert!(matches!(judge(&l, &me, alive, none), Verdict::Orphan(_)));
    }

    #[test]
    fn judges_a_job_containers_testbeds_by_that_container() {
        // Owned from a job container: another host name, another pid
        // namespace, a pid that means nothing here.
        let mut l = labels("job-host", "7", Some("500"));
        l.insert(LABEL_OWNER_PIDNS.into(), "pid:[9]".into());
        l.insert(LABEL_OWNER_CONTAINER.into(), JOB.into());
        let me = me();
        let alive = |_: u32| None;
        // The job container gone from the daemon: its owner too.
        match judge(&l, &me, alive, |c| c == OTHER) {
            Verdict::Orphan(why) => assert!(why.contains("1a1a1a1a1a1a is gone"), "{why}"),
            v => panic!("{v:?}"),
        }
        // Still there (running or stopped): left alone, whatever its pids.
        match judge(&l, &me, alive, |c| c == JOB) {
            Verdict::Foreign(why) => assert!(why.contains("still on the daemon"), "{why}"),
            v => panic!("{v:?}"),
        }
        // Without the label, as before: another host's, left alone.
        let mut plain = l.clone();
        plain.remove(LABEL_OWNER_CONTAINER);
        assert!(matches!(
            judge(&plain, &me, alive, none),
            Verdict::Foreign(_)
        ));
        // A label that is no full id is never looked up (a prefix could
        // match nothing and pass for gone).
        for bad in ["1a1a1a1a1a1a", "", "../x", &JOB.to_uppercase()] {
            let mut b = l.clone();
            b.insert(LABEL_OWNER_CONTAINER.into(), bad.into());
            assert!(
                matches!(judge(&b, &me, alive, none), Verdict::Foreign(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn in_the_owners_own_container_its_pids_decide() {
        // --reap run in the job container itself: the container exists,
        // and is ours, so the pid and start time decide as on a host.
        let me = Owner {
            host: "job-host".into(),
            container: Some(JOB.into()),
            pidns: Some("pid:[9]".into()),
            ..me()
        };
        let mut l = labels("job-host", "7", Some("500"));
        l.insert(LABEL_OWNER_PIDNS.into(), "pid:[9]".into());
        l.insert(LABEL_OWNER_CONTAINER.into(), JOB.into());
        let exists = |c: &str| c == JOB;
        assert_eq!(
            judge(&l, &me, |p| (p == 7).then_some(500), exists),
            Verdict::Owned
        );
        assert!(matches!(
            judge(&l, &me, |_| None, exists),
            Verdict::Orphan(_)
        ));
        // Another job container's, from in this one: by its container.
        l.insert(LABEL_OWNER_CONTAINER.into(), OTHER.into());
        assert!(matches!(
            judge(&l, &me, |p| (p == 7).then_some(500), exists),
            Verdict::Orphan(_)
        ));
        assert!(matches!(
            judge(&l, &me, |_| None, |_| true),
            Verdict::Foreign(_)
        ));
    }
}

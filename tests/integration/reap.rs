//! `--reap`: orphans of an rdocker killed with SIGKILL are found by label
//! and removed; containers with a live owner, or an owner we cannot see,
//! are left alone. Those of an rdocker in a CI job container go once that
//! container is gone from the daemon (a cancelled job), and only then.

use crate::util::*;
use std::collections::HashMap;
use std::process::Command;

fn reap() -> String {
    let o = Command::new(BIN).arg("--reap").output().unwrap();
    assert!(
        o.status.success(),
        "--reap failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn reap_removes_orphans_and_nothing_else() {
    // An rdocker killed with SIGKILL leaves its container.
    let mut dead = Server::start(&[&image()]);
    dead.open();
    let dead_pid = dead.pid();
    // The testbed and its spare.
    let mut orphan = owned(dead_pid, 2);
    dead.signal(nix::sys::signal::Signal::SIGKILL);
    dead.wait(std::time::Duration::from_secs(10));
    let mut left = containers_of(dead_pid);
    orphan.sort();
    left.sort();
    assert_eq!(
        left, orphan,
        "SIGKILL cannot clean up; the test needs the orphan"
    );

    // A live rdocker's container, and one owned by a process in another
    // pid namespace (an rdocker in a CI job container) under our host name.
    let mut live = Server::start(&[&image()]);
    live.open();
    owned(live.pid(), 2);
    let foreign = create_foreign_container();

    let out = reap();
    assert!(
        out.contains(&format!("owner pid {dead_pid} is gone")),
        "{out}"
    );
    assert!(
        containers_of(dead_pid).is_empty(),
        "the orphan survived --reap"
    );
    assert_eq!(
        containers_of(live.pid()).len(),
        2,
        "--reap removed a live rdocker's container"
    );
    let still_there = runtime_block(docker().inspect_container(&foreign, None));
    remove_container(&foreign);
    assert!(
        still_there.is_ok(),
        "--reap removed a container of another pid namespace"
    );
    live.quit();
    drop(dead);
}

const LABEL_OWNER_CONTAINER: &str = "org.debian.autopkgtest.rdocker.owner-container";

/// Wait until the job's rdocker has its testbed and the spare beside it.
fn two_testbeds(job: &JobContainer) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let t = job.testbeds();
        if t.len() == 2 {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rdocker in {} has {t:?}, not a testbed and a spare",
            job.0
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A cancelled CI job: the runner kills and removes its job container (on
/// a `github_network_<id>` of its own), whose rdocker leaves its testbed,
/// the spare and its session's network. `--reap` on the host removes
/// those, by the job container's id in their labels, and leaves a running
/// job container's alone, as its rdocker still uses them.
#[test]
fn reap_removes_what_a_removed_job_container_left_and_only_that() {
    let gone = JobContainer::start("reap-gone", Some("reapgone"));
    let live = JobContainer::start("reap-live", Some("reaplive"));
    let mut a = JobServer::start(&gone);
    let mut b = JobServer::start(&live);
    assert!(a.cmd("open").starts_with("ok "));
    assert!(b.cmd("open").starts_with("ok "));
    let argv_b = live.argv(&b.exec_argv());
    let gone_id = gone.id();
    let testbed_a = testbed_of(&a.exec_argv());
    let labels = runtime_block(docker().inspect_container(&testbed_a, None))
        .unwrap()
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default();
    assert_eq!(
        labels.get(LABEL_OWNER_CONTAINER),
        Some(&gone_id),
        "the testbed does not name its owner's container"
    );
    let left = two_testbeds(&gone);
    let nets = gone.session_networks();
    assert_eq!(nets.len(), 1, "the job's rdocker made networks {nets:?}");
    let kept = two_testbeds(&live);
    let kept_nets = live.session_networks();
    assert_eq!(kept_nets.len(), 1, "{kept_nets:?}");

    gone.kill();
    drop(a);
    assert_eq!(
        gone.testbeds(),
        left,
        "a killed job's rdocker cannot clean up; the test needs what it left"
    );
    let out = reap();
    let why = format!("its owner's container {} is gone", &gone_id[..12]);
    assert_eq!(
        out.lines().filter(|l| l.contains(&why)).count(),
        3,
        "not the testbed, the spare and the network: {out}"
    );
    assert_eq!(
        gone.testbeds(),
        Vec::<String>::new(),
        "--reap left them: {out}"
    );
    assert_eq!(
        gone.session_networks(),
        Vec::<String>::new(),
        "--reap left the network: {out}"
    );
    assert_eq!(live.testbeds(), kept, "--reap removed a live job's: {out}");
    assert_eq!(live.session_networks(), kept_nets, "{out}");
    assert_eq!(sh_ok(&argv_b, "echo still here"), "still here\n");
    assert_eq!(b.cmd("close"), "ok");
}

fn create_foreign_container() -> String {
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let labels = HashMap::from([
        (
            "org.debian.autopkgtest.rdocker".to_string(),
            "1".to_string(),
        ),
        (LABEL_OWNER_PID.to_string(), "999999".to_string()),
        (
            "org.debian.autopkgtest.rdocker.owner-host".to_string(),
            host,
        ),
        (
            "org.debian.autopkgtest.rdocker.owner-pidns".to_string(),
            "pid:[1]".to_string(),
        ),
    ]);
    let body = bollard::models::ContainerCreateBody {
        image: Some(image()),
        cmd: Some(vec!["true".into()]),
        labels: Some(labels),
        ..Default::default()
    };
    runtime_block(docker().create_container(
        None::<bollard::query_parameters::CreateContainerOptions>,
        body,
    ))
    .expect("cannot create a container")
    .id
}

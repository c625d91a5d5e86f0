//! `--reap`: orphans of an rdocker killed with SIGKILL are found by label
//! and removed; containers with a live owner, or an owner we cannot see,
//! are left alone.

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

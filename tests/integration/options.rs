//! Command-line handling: docker run options, copy mode choice, daemon
//! address errors.

use crate::util::*;
use std::process::Command;
use std::time::Duration;

fn inspect(id: &str) -> bollard::models::ContainerInspectResponse {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(docker().inspect_container(
        id,
        None::<bollard::query_parameters::InspectContainerOptions>,
    ))
    .unwrap()
}

#[test]
fn docker_run_options_reach_the_container() {
    let host = TempDir::new("vol");
    std::fs::write(host.path().join("marker"), "from the host volume").unwrap();
    let vol = format!("{}:/srv/vol:ro", host.path().display());
    let mut s = Server::start(&[
        &image(),
        "-v",
        &vol,
        "--env=RDOCKER_RUN_ENV=1",
        "--tmpfs",
        "/mnt/scratch",
        "--add-host",
        "example.invalid:10.9.8.7",
        "--memory",
        "512m",
        "--cpus=1.5",
        "--shm-size",
        "128m",
        "--cap-add",
        "SYS_PTRACE",
        "--network",
        "bridge",
    ]);
    s.open();
    let argv = s.exec_argv();
    assert_eq!(sh_ok(&argv, "cat /srv/vol/marker"), "from the host volume");
    assert_eq!(
        sh_ok(
            &argv,
            "awk '$2 == \"/mnt/scratch\" {print $3}' /proc/mounts"
        ),
        "tmpfs\n"
    );
    assert_eq!(
        sh_ok(&argv, "getent hosts example.invalid | cut -d' ' -f1"),
        "10.9.8.7\n"
    );
    let id = testbed_of(&s.exec_argv());
    let hc = inspect(&id).host_config.unwrap();
    assert_eq!(hc.memory, Some(512 * 1024 * 1024));
    assert_eq!(hc.nano_cpus, Some(1_500_000_000));
    assert_eq!(hc.shm_size, Some(128 * 1024 * 1024));
    assert_eq!(hc.cap_add, Some(vec!["SYS_PTRACE".to_string()]));
    assert_eq!(hc.privileged, Some(false));
    let cfg = inspect(&id).config.unwrap();
    assert!(cfg.env.unwrap().contains(&"RDOCKER_RUN_ENV=1".to_string()));
    // Never the Docker socket, never privileged unless asked.
    let mounts = inspect(&id).mounts.unwrap_or_default();
    assert!(!mounts
        .iter()
        .any(|m| m.source.as_deref().unwrap_or("").contains("docker.sock")));
    s.quit();
}

#[test]
fn labels_and_name_identify_the_container() {
    let mut s = Server::start(&[&image()]);
    s.open();
    let id = testbed_of(&s.exec_argv());
    let c = inspect(&id);
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(
        labels
            .get("org.debian.autopkgtest.rdocker")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(labels.get(LABEL_OWNER_PID), Some(&s.pid().to_string()));
    assert!(c
        .name
        .unwrap()
        .starts_with(&format!("/rdocker-{}-", s.pid())));
    s.quit();
}

#[test]
fn unsupported_run_option_is_named() {
    docker();
    let o = Command::new(BIN)
        .args([&image(), "--device", "/dev/kvm"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--device"),
        "error does not name the option: {err}"
    );
    assert!(o.stdout.is_empty(), "printed a banner before failing");
}

#[test]
fn unreachable_daemon_says_where_it_looked() {
    let o = Command::new(BIN)
        .arg("rdocker-test/none")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unix:///nonexistent/docker.sock"), "{err}");
    assert!(err.contains("DOCKER_HOST"), "{err}");
    let o = Command::new(BIN)
        .args(["-H", "tcp://127.0.0.1:1", "rdocker-test/none"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("127.0.0.1:1") && err.contains("--host"),
        "{err}"
    );
}

#[test]
fn missing_image_fails_open_clearly() {
    let mut s = Server::start(&["rdocker-test/no-such-image:latest"]);
    s.send("open");
    let st = s.wait(std::time::Duration::from_secs(30));
    assert_eq!(st.code(), Some(12));
    assert!(
        s.stderr_says("rdocker-test/no-such-image:latest is not on the daemon"),
        "{}",
        s.stderr()
    );
    // It tried to pull it, as docker run does, and says why that failed.
    assert!(s.stderr_says("cannot pull"), "{}", s.stderr());
    assert_no_containers(s.pid());
}

#[test]
fn debug_says_which_copy_mode_and_why() {
    let s = Server::start(&["-d", &image()]);
    let err = s.quit();
    assert!(err.contains("copies go through the Engine API"), "{err}");
    assert!(err.contains("daemon: "), "{err}");
}

#[test]
fn remote_never_shares_a_directory() {
    let mut s = Server::start(&["--remote", &image()]);
    s.open();
    let caps = s.capabilities();
    assert!(
        !caps.iter().any(|c| c.starts_with("downtmp-host=")),
        "{caps:?}"
    );
    s.quit();
}

#[test]
fn shared_dir_with_a_remote_daemon_is_refused() {
    let o = Command::new(BIN)
        .args([
            "--shared-dir",
            "/tmp",
            "-H",
            "tcp://127.0.0.1:2375",
            &image(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--shared-dir"), "{err}");
}

/// The daemon answers a start before the runtime's init has exec'd the
/// entrypoint; under load the testbed's PID 1 is still the runtime's init
/// when rdocker looks (1 open in 14 with 8 at once, before the wait in
/// open_root). Every testbed of a local daemon gets the direct route all
/// the same: 8 servers open at once, each with its spare.
#[test]
fn testbeds_started_at_once_all_get_the_direct_route() {
    let mut servers: Vec<Server> = (0..8).map(|_| Server::start(&["-d", &image()])).collect();
    for s in &mut servers {
        s.send("open");
    }
    for s in &mut servers {
        let r = s.line(Duration::from_secs(120));
        assert!(
            r.as_deref().is_some_and(|r| r.starts_with("ok ")),
            "open answered {r:?}; stderr: {}",
            s.stderr()
        );
    }
    // quit waits for each spare, so both testbeds have said their route.
    for s in servers {
        let err = s.quit();
        let direct = err
            .matches("copied through the testbed's root directly")
            .count();
        assert!(
            direct == 2 && !err.contains("go through the archive API too"),
            "a testbed of a local daemon missed the direct route: {err}"
        );
    }
}

//! --pull of an image behind a login, with the docker CLI's credentials:
//! what `docker login` stored in config.json, or a credential helper.
//! ci/provision.sh runs the registry and pushes the image.

use crate::util::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn registry() -> String {
    std::env::var("RDOCKER_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5123".into())
}

fn private_image() -> String {
    format!("{}/rdocker-test/private:bookworm", registry())
}

/// The image must come from the registry, not from an earlier pull.
fn forget_image() {
    let img = private_image();
    match runtime_block(docker().remove_image(
        &img,
        None::<bollard::query_parameters::RemoveImageOptions>,
        None,
    )) {
        Ok(_) => {}
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => panic!("cannot remove {img} before the test: {e}"),
    }
}

/// open with --pull under DOCKER_CONFIG=`config` (and PATH); the stderr.
fn pull_open(config: &TempDir, path: Option<&str>) -> (bool, String) {
    open_with(&["--pull"], config, path)
}

/// The same with rdocker's `options` before the image.
fn open_with(options: &[&str], config: &TempDir, path: Option<&str>) -> (bool, String) {
    forget_image();
    let dir = config.path().to_string_lossy().into_owned();
    let mut env = vec![("DOCKER_CONFIG", dir.as_str())];
    if let Some(p) = path {
        env.push(("PATH", p));
    }
    let img = private_image();
    let mut args = options.to_vec();
    args.push(&img);
    let mut s = Server::start_env(&args, &env);
    s.send("open");
    // A failed open is a bomb: the server exits without a reply.
    if let Some(reply) = s.line(REPLY_TIMEOUT) {
        assert!(reply.starts_with("ok"), "open answered {reply:?}");
        return (true, s.quit());
    }
    let st = s.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(12), "{}", s.stderr());
    assert!(s.stderr_says("failure: "), "{}", s.stderr());
    assert_no_containers(s.pid());
    (false, s.stderr())
}

#[test]
fn pull_sends_the_docker_cli_credentials() {
    let reg = registry();
    let ping = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{reg}/v2/"))
        .output()
        .expect("curl is missing (ci/provision.sh installs it)");
    assert_eq!(
        ping.stdout, b"401",
        "no registry with a login at {reg}: run ci/provision.sh as root"
    );

    // No credentials: the error says how to log in.
    let none = TempDir::new("pull-none");
    let (ok, err) = pull_open(&none, None);
    assert!(!ok);
    assert!(err.contains(&format!("`docker login {reg}`")), "{err}");

    // What `docker login` writes (tester:s3cret).
    let stored = TempDir::new("pull-stored");
    std::fs::write(
        stored.path().join("config.json"),
        format!(r#"{{"auths": {{"{reg}": {{"auth": "dGVzdGVyOnMzY3JldA=="}}}}}}"#),
    )
    .unwrap();
    let (ok, err) = pull_open(&stored, None);
    assert!(ok, "{err}");
    // Without --pull, a missing image is pulled too, as `docker run` does.
    let (ok, err) = open_with(&["-d"], &stored, None);
    assert!(ok, "{err}");
    assert!(err.contains("is not on the daemon: pulling it"), "{err}");

    // Wrong ones are sent, and the registry's refusal shows.
    let wrong = TempDir::new("pull-wrong");
    std::fs::write(
        wrong.path().join("config.json"),
        format!(r#"{{"auths": {{"{reg}": {{"auth": "dGVzdGVyOndyb25n"}}}}}}"#),
    )
    .unwrap();
    let (ok, err) = pull_open(&wrong, None);
    assert!(!ok);
    assert!(
        err.contains("were sent") && err.contains("unauthorized"),
        "{err}"
    );

    // A credential store: docker-credential-NAME get, the registry on stdin.
    let helper = TempDir::new("pull-helper");
    std::fs::write(
        helper.path().join("config.json"),
        r#"{"auths": {}, "credsStore": "rdtest"}"#,
    )
    .unwrap();
    let prog = helper.path().join("docker-credential-rdtest");
    std::fs::write(
        &prog,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] && [ \"$(cat)\" = {reg} ] || exit 1\n\
             echo '{{\"ServerURL\":\"{reg}\",\"Username\":\"tester\",\"Secret\":\"s3cret\"}}'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        helper.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (ok, err) = pull_open(&helper, Some(&path));
    assert!(ok, "{err}");
    forget_image();
}
